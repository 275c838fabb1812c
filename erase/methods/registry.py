"""Methods by name: `@register("name")` on the class in its own file; configs name it (`method.name`).

A method's constructor keyword defaults are its defaults (the one place they live): a config's `params` only
override them, and a key the constructor does not take is refused with the keys it does take.

    @register("my_method", label=lambda p: f"my-{p['mode']}")   # label: how runs of it are named (optional)
    class MyMethod(FineTuneMethod): ...
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from erase.methods.base import Method, MethodError

REGISTRY: dict[str, type[Method]] = {}
_LABELS: dict[str, Callable[[Mapping[str, Any]], str]] = {}
ON_REGISTER: list[Callable[[str, type[Method]], None]] = []  # erase.configs stores each method's defaults for Hydra


def register(name: str, *, label: Callable[[Mapping[str, Any]], str] | None = None) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make the method buildable as `method.name=<name>`. `label(params)` names its runs
    (params are the effective ones: defaults with the config's overrides), default: the name."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise MethodError(f"method name {name!r} is taken by {REGISTRY[name].__module__}.{REGISTRY[name].__qualname__}")
        cls.name = name
        REGISTRY[name] = cls
        if label is not None:
            _LABELS[name] = label
        for hook in ON_REGISTER:
            hook(name, cls)
        return cls

    return decorate


def unregister(name: str) -> None:
    """Remove a method (tests that register an example method clean up with this)."""
    REGISTRY.pop(name, None)
    _LABELS.pop(name, None)


def method_class(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise MethodError(f"unknown method {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def method_defaults(cls: type[Method]) -> dict[str, Any]:
    """The constructor's keyword defaults, following `**kwargs` into the base classes' constructors
    (AdversarialErasure passes its ESD keywords on)."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                out.setdefault(p.name, None if p.default is inspect.Parameter.empty else p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def check_keys(given: Mapping[str, Any], valid: Mapping[str, Any] | list[str], where: str) -> None:
    """Refuse keys not in `valid`, naming the valid ones (and the closest, for a typo)."""
    unknown = sorted(set(given) - set(valid))
    if not unknown:
        return
    hints = [f"{k!r} -> did you mean {m[0]!r}?" for k in unknown if (m := difflib.get_close_matches(k, list(valid), 1))]
    raise MethodError(
        f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
        f"valid keys: {', '.join(sorted(valid))}" + (f" ({'; '.join(hints)})" if hints else "")
    )


def build_method(name: str, params: Mapping[str, Any] | None = None) -> Method:
    """The registered method `name` with `params` overriding its defaults."""
    cls = method_class(name)
    params = dict(params or {})
    try:
        check_keys(params, method_defaults(cls), f"the parameters of method {name!r} (method.params)")
    except MethodError as e:
        raise MethodError(f"bad parameters for method {name!r}: {e}") from None
    try:
        return cls(**params)
    except TypeError as e:
        raise MethodError(f"bad parameters for method {name!r}: {e}") from e


def stage_list(method_cfg: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The stages of a method config, in order: `stages` as a list or a mapping {stage id: method config}
    (a mapping lets an experiment compose a shared method config into one stage), else the config itself."""
    stages = method_cfg.get("stages")
    if not stages:
        return [method_cfg]
    return list(stages.values()) if isinstance(stages, Mapping) else list(stages)


def method_label(method_cfg: Mapping[str, Any]) -> str:
    """How runs of this config are named (summary, card, run folders, leaderboard rows): an explicit `label`, else
    each stage's registered label ("esd-x", "esd-u", ...) with "+lora" for a LoRA adapter, joined by "+"."""
    if method_cfg.get("label"):
        return str(method_cfg["label"])
    parts = []
    for stage in stage_list(method_cfg):
        name = str(stage["name"])
        label = name
        if name in _LABELS:
            params = {**method_defaults(REGISTRY[name]), **dict(stage.get("params") or {})}
            label = _LABELS[name](params)
        parts.append(label + ("+lora" if stage.get("lora") else ""))
    return "+".join(parts)
