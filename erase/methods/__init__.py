"""Erasure methods, each in its own file behind `erase.methods.base`, registered by name with `@register`
(`erase.methods.registry`); `build_method` makes one from a config. Adding a method: one file with a registered
class, one config in configs/method/ (docs/architecture.md, "Add a method")."""

from __future__ import annotations

from erase.methods.base import ClosedFormMethod, FineTuneMethod, Method, MethodError, NonFiniteLossError
from erase.methods.registry import (
    REGISTRY, build_method, method_class, method_defaults, method_label, register, stage_list, unregister,
)

# Importing the method files registers them (each carries its own @register line).
from erase.methods.ablation import ConceptAblation
from erase.methods.adversarial import AdversarialErasure
from erase.methods.edit_refusal import EditRefusal
from erase.methods.esd import ESD
from erase.methods.uce import UCE

METHODS = REGISTRY  # the older name, kept for callers

__all__ = [
    "REGISTRY", "METHODS", "build_method", "method_class", "method_defaults", "method_label", "register",
    "stage_list", "unregister", "Method", "FineTuneMethod", "ClosedFormMethod", "MethodError", "NonFiniteLossError",
    "ESD", "UCE", "ConceptAblation", "AdversarialErasure", "EditRefusal",
]
