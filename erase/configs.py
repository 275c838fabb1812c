"""How the YAML in configs/ meets the code: defaults from the classes, run names, run folders, unknown keys.

- Defaults live once, in the classes. Every registered method's constructor defaults are stored as the Hydra
  config `method_params/<name>` and `erase.training.TrainConfig`'s fields as `train/base`; a method config
  composes them (`- /method_params@params: esd`, `- /train@train: default`) and its YAML only overrides. So
  `method.params.num_steps=3` works without `+` and shows the class's value in the saved config.yaml.
- `${erase_label:}` names a run after what it ran (esd-x, esd-u, esd-x+lora, uce, ...): run folders, sweep
  subfolders, summaries, cards and leaderboard rows (`erase.methods.method_label`).
- `${erase_run_dir:}` / `${erase_sweep_dir:}` put Hydra's own folder (.hydra/, the log) in `out_dir` when one is
  given, so nothing lands in the working directory but the run's folder.
- `check_config(cfg)`: a key no config or class knows (`+expor=false`, `+model.bogus=1`) is an error naming the
  valid keys, before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from erase.methods import registry
from erase.methods.base import MethodError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# TrainConfig fields a config does not set: the seed and the flags come from the top level (seed, cpu, wandb),
# the adapter from `method.lora`.
TRAIN_FROM_ELSEWHERE = ("seed", "lora", "cpu", "wandb")
# Keys of a model / concept config the code reads besides those the shipped configs use.
MODEL_KEYS = ("name", "path", "family", "size")
CONCEPT_FILE_KEYS = ("prompts_file", "edits_file")
METHOD_KEYS = ("name", "label", "params", "train", "lora", "stages")


class ConfigError(ValueError):
    """A configuration that names something nothing reads (a typo), or misses a key it needs."""


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def store_method(name: str, cls: type) -> None:
    """Store the method's constructor defaults as `method_params/<name>` (called for every registered method)."""
    defaults = {k: _plain(v) for k, v in registry.method_defaults(cls).items()}
    ConfigStore.instance().store(group="method_params", name=name, node=defaults)


def train_defaults() -> dict[str, Any]:
    from erase.training import TrainConfig

    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in TRAIN_FROM_ELSEWHERE:
            continue
        out[f.name] = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return out


def store_schemas() -> None:
    for name, cls in registry.REGISTRY.items():
        store_method(name, cls)
    ConfigStore.instance().store(group="train", name="base", node=train_defaults())


# -- resolvers --------------------------------------------------------------------------------------
def _label(*, _root_: DictConfig) -> str:
    method = OmegaConf.to_container(_root_.method, resolve=False)
    if not isinstance(method, Mapping) or not (method.get("name") or method.get("stages")):
        return "run"
    return registry.method_label(method)


def _explicit_out_dir(root: DictConfig) -> str | None:
    """out_dir as the user set it, or None while it is still the default (Hydra's own run folder)."""
    if OmegaConf.is_interpolation(root, "out_dir"):
        return None
    value = root.get("out_dir")
    return None if value in (None, "") else str(value)


def _run_dir(default: str, *, _root_: DictConfig) -> str:
    out = _explicit_out_dir(_root_)
    if out and Path(out).expanduser().is_file():
        raise ConfigError(f"out_dir={out} is a file: out_dir must be a folder (a new one, or an earlier run's to resume it)")
    return out or default


for _name, _fn in (("erase_label", _label), ("erase_run_dir", _run_dir), ("erase_sweep_dir", _run_dir)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn, use_cache=False)

store_schemas()
registry.ON_REGISTER.append(store_method)


# -- unknown keys -----------------------------------------------------------------------------------
def _yaml_keys(group: str) -> set[str]:
    keys: set[str] = set()
    for f in (CONFIGS / group).glob("*.yaml"):
        data = yaml.safe_load(f.read_text()) or {}
        keys |= {k for k in data if k != "defaults"}
    return keys


def top_level_keys() -> set[str]:
    """What the top level may hold: config.yaml's own keys and its groups."""
    data = yaml.safe_load((CONFIGS / "config.yaml").read_text()) or {}
    groups = {next(iter(d)) if isinstance(d, dict) else d for d in data.get("defaults", [])}
    groups = {g.split("@")[0].replace("optional ", "").strip("/") for g in groups if g != "_self_"}
    return (set(data) - {"defaults"}) | groups | {"hydra"}


def _refuse(unknown: list[str], valid: set[str] | list[str], where: str, fix: str = "") -> None:
    if not unknown:
        return
    hints = [f"{k!r} -> {m[0]!r}?" for k in unknown if (m := difflib.get_close_matches(k, list(valid), 1))]
    raise ConfigError(
        f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} in {where}; valid keys: "
        f"{', '.join(sorted(valid))}" + (f" (did you mean {'; '.join(hints)})" if hints else "") + (f". {fix}" if fix else "")
    )


def check_method(method: Mapping[str, Any], where: str = "method") -> None:
    """Every key of a method config (and of each stage) is one the method, the training loop or LoRA reads."""
    from erase.training import LoraSpec

    _refuse(sorted(set(method) - set(METHOD_KEYS)), set(METHOD_KEYS), where)
    if method.get("stages"):
        stages = method["stages"]
        items = stages.items() if isinstance(stages, Mapping) else enumerate(stages)
        for key, stage in items:
            check_method(stage, f"{where}.stages.{key}")
        return
    if "name" not in method:
        raise ConfigError(f"{where} has no name: choose a method, e.g. method=toy_esd (registered: {', '.join(sorted(registry.REGISTRY))})")
    try:
        cls = registry.method_class(str(method["name"]))
    except MethodError as e:
        raise ConfigError(str(e)) from None
    _refuse(sorted(set(method.get("params") or {}) - set(registry.method_defaults(cls))),
            set(registry.method_defaults(cls)), f"{where}.params (method {method['name']!r})")
    train_valid = set(train_defaults())
    _refuse(sorted(set(method.get("train") or {}) - train_valid), train_valid, f"{where}.train")
    lora_valid = {f.name for f in dataclasses.fields(LoraSpec)}
    _refuse(sorted(set(method.get("lora") or {}) - lora_valid), lora_valid, f"{where}.lora")


def check_config(cfg: Mapping[str, Any]) -> None:
    """Refuse keys nothing reads, naming the valid ones (before a model is loaded)."""
    from erase.concept import Concept

    top = top_level_keys()
    _refuse(sorted(set(cfg) - top), top, "the top-level config", "Set an existing key without '+'.")
    if "model" in cfg:
        valid = set(MODEL_KEYS) | _yaml_keys("model")
        _refuse(sorted(set(cfg["model"]) - valid), valid, "model")
    if "concept" in cfg:
        valid = set(Concept.__dataclass_fields__) | set(CONCEPT_FILE_KEYS) | _yaml_keys("concept")
        _refuse(sorted(set(cfg["concept"]) - valid), valid, "concept")
    if "method" in cfg:
        check_method(cfg["method"])
