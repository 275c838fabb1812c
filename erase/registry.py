"""Pieces by name: suites, detectors, photo sources, attack material, sampling presets and model aliases.

The core never imports a world of its own (the toy world included): a config names a piece (`detector: toy`,
`sampling: toy`, `model.path=toy:t2i`, `suites.prompts.source: toy`) and the registry finds it. A name that is not
registered yet makes the registry import its plugins (`PLUGINS`, plus the modules listed in the environment
variable `ERASE_PLUGINS`, comma-separated) once; each plugin registers its own pieces when imported.

    from erase import registry
    registry.register("detector", "mine", "my_pkg.detect:load_detector")   # "module:attribute", imported on use
    registry.register("sampling", "mine", {"steps": 30, "guidance": 6.0})    # or the object itself
    registry.get("detector", "mine")

Kinds and what an entry is:
    suite            a callable (kind, name, size, **options) -> Suite, for `suites.<kind>: {source: <name>}`
    detector         a callable (**options) -> detector
    photos           a callable (n, size, seed, **options) -> erase.photos.PhotoSet
    attack_material  a callable (n, size, seed, concept) -> erase.evaluation.attack_items.AttackMaterial
    sampling         a mapping of GenSettings fields (or a GenSettings)
    model            a callable () -> path of a pipeline folder, for `model.path=<name>` (e.g. "toy:t2i")
    base_eval        a callable (cache key) -> folder of finished, read-only base-evaluation work for that
                     `eval.base_cache` key (parts/rank-0-of-1.jsonl, images/, seed.json), or None (erase.cli)
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Callable

log = logging.getLogger("erase.registry")

KINDS: tuple[str, ...] = ("suite", "detector", "photos", "attack_material", "sampling", "model", "base_eval")
PLUGINS: list[str] = ["erase.toyworld"]  # imported lazily, the first time a name is not found

_entries: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
_imported: set[str] = set()
_failed: dict[str, str] = {}


class RegistryError(KeyError):
    """A name that no loaded module or plugin registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _kind(kind: str) -> dict[str, Any]:
    if kind not in _entries:
        raise ValueError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")
    return _entries[kind]


def register(kind: str, name: str, entry: Any = None) -> Any:
    """Register `entry` under (kind, name); without an entry, return a decorator that registers what it wraps.

    An entry given as "module:attribute" is imported only when it is used (so a plugin costs nothing until then).
    Registering a name twice replaces the earlier entry (a plugin may override a default)."""
    table = _kind(kind)
    if entry is None:
        def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
            table[name] = obj
            return obj
        return decorate
    table[name] = entry
    return entry


def plugins() -> list[str]:
    extra = [p.strip() for p in os.environ.get("ERASE_PLUGINS", "").split(",") if p.strip()]
    return list(dict.fromkeys(PLUGINS + extra))


def load_plugins() -> None:
    """Import every plugin not imported yet. A plugin that cannot be imported is noted (its names stay unknown)."""
    for module in plugins():
        if module in _imported or module in _failed:
            continue
        try:
            importlib.import_module(module)
            _imported.add(module)
        except ImportError as e:
            _failed[module] = str(e)
            log.debug("plugin %s not loaded: %s", module, e)


def _resolve(entry: Any) -> Any:
    if isinstance(entry, str) and ":" in entry and not entry.startswith(("/", ".")):
        module, _, attr = entry.partition(":")
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return entry


def get(kind: str, name: str) -> Any:
    """The entry registered as (kind, name), importing the plugins first if needed."""
    table = _kind(kind)
    if name not in table:
        load_plugins()
    if name not in table:
        known = ", ".join(sorted(table)) or "none"
        failed = "".join(f"; plugin {m} could not be imported ({why})" for m, why in _failed.items())
        raise RegistryError(f"no {kind} named {name!r} is registered (known: {known}{failed}); a plugin registers "
                            f"its own with erase.registry.register({kind!r}, {name!r}, ...)")
    return _resolve(table[name])


def has(kind: str, name: str) -> bool:
    table = _kind(kind)
    if name not in table:
        load_plugins()
    return name in table


def names(kind: str) -> list[str]:
    """Every registered name of a kind (plugins loaded)."""
    load_plugins()
    return sorted(_kind(kind))


def resolve_model(path: str) -> str | None:
    """The pipeline folder a registered model alias (`toy:t2i`) names, or None when `path` is not an alias."""
    if ":" not in path or os.path.exists(path):
        return None
    prefix = path.split(":", 1)[0]
    if prefix in ("tiny", "http", "https"):
        return None
    table = _kind("model")
    if path not in table:
        load_plugins()
    if path in table:
        return str(_resolve(table[path])())
    siblings = sorted(n for n in table if n.split(":", 1)[0] == prefix)
    if siblings:
        raise RegistryError(f"unknown model {path!r}: use one of {', '.join(siblings)}")
    return None


# The core's own pieces (the real-world detector); plugins add theirs.
register("detector", "nudenet", "erase.detect.nudenet:NudeNetDetector")
