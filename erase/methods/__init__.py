"""Erasure methods, each in its own file behind `erase.methods.base`; `build_method` makes one from a config."""

from __future__ import annotations

from typing import Any, Mapping

from erase.methods.ablation import ConceptAblation
from erase.methods.adversarial import AdversarialErasure
from erase.methods.edit_refusal import EditRefusal
from erase.methods.base import ClosedFormMethod, FineTuneMethod, Method, MethodError, NonFiniteLossError
from erase.methods.esd import ESD
from erase.methods.uce import UCE

METHODS: dict[str, type[Method]] = {
    "esd": ESD,
    "uce": UCE,
    "ablation": ConceptAblation,
    "adversarial": AdversarialErasure,
    "edit_refusal": EditRefusal,
}


def register(name: str, cls: type[Method]) -> None:
    METHODS[name] = cls


def build_method(name: str, params: Mapping[str, Any] | None = None) -> Method:
    if name not in METHODS:
        raise MethodError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    try:
        return METHODS[name](**dict(params or {}))
    except TypeError as e:
        raise MethodError(f"bad parameters for method {name!r}: {e}") from e


__all__ = [
    "METHODS", "build_method", "register", "Method", "FineTuneMethod", "ClosedFormMethod", "MethodError",
    "NonFiniteLossError", "ESD", "UCE", "ConceptAblation", "AdversarialErasure", "EditRefusal",
]
