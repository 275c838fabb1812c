"""Every config composes and builds what it names; defaults live in the classes; unknown keys are refused.

Composition only (no model is loaded), except the example method, which runs once on a tiny model.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from erase.concept import Concept, ConceptError
from erase.configs import CONFIGS, ConfigError, check_config, train_defaults
from erase.methods import (
    REGISTRY, ClosedFormMethod, FineTuneMethod, MethodError, build_method, method_defaults, method_label, register,
    stage_list, unregister,
)
from erase.run import make_train_config
from erase.training import TrainConfig


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    with initialize_config_dir(str(CONFIGS), version_base=None):  # once: composing is then fast
        yield


def _cfg(overrides, out_dir: str = "/tmp/unused"):
    return compose("config", overrides=[*overrides, f"out_dir={out_dir}"])


def _names(group: str) -> list[str]:
    return sorted(f.stem for f in (CONFIGS / group).glob("*.yaml"))


def _build_method_config(method: dict) -> list:
    """What run.erase builds from a method config: each stage's method, and its training config."""
    built = []
    for stage in stage_list(method):
        m = build_method(stage["name"], stage.get("params"))
        if isinstance(m, FineTuneMethod):
            make_train_config(stage.get("train"), stage.get("lora"), seed=0)
        built.append(m)
    return built


# ------------------------------------------------------------------ every config of every group
@pytest.mark.parametrize("name", _names("method"))
def test_every_method_config_builds_its_methods(name):
    cfg = _cfg([f"method={name}"])
    check_config(cfg)
    method = OmegaConf.to_container(cfg.method, resolve=True)
    built = _build_method_config(method)
    assert built and all(type(m) is REGISTRY[s["name"]] for m, s in zip(built, stage_list(method)))
    # The composed params hold every constructor keyword (class defaults, YAML overrides on top), so each can be
    # set without `+`, and nothing else.
    for stage in stage_list(method):
        assert set(stage["params"]) == set(method_defaults(REGISTRY[stage["name"]]))


@pytest.mark.parametrize("name", _names("experiment"))
def test_every_experiment_composes_and_builds(name):
    cfg = _cfg([f"+experiment={name}"])
    check_config(cfg)
    _build_method_config(OmegaConf.to_container(cfg.method, resolve=True))
    Concept.from_config(OmegaConf.to_container(cfg.concept, resolve=True))


@pytest.mark.parametrize("name", _names("model"))
def test_every_model_config_composes(name):
    cfg = _cfg([f"model={name}"])
    check_config(cfg)
    assert cfg.model.name and cfg.model.path and int(cfg.model.size) > 0


@pytest.mark.parametrize("name", _names("concept"))
def test_every_concept_config_builds_or_says_what_is_missing(name):
    cfg = _cfg([f"concept={name}"])
    check_config(cfg)
    data = OmegaConf.to_container(cfg.concept, resolve=True)
    given = data.get("prompts_file")
    if data.get("prompts") or (given and not str(given).startswith("???")):
        assert Concept.from_config(data).prompts
    else:  # the real concept ships no phrasings: the user's file is required, and the error says so
        with pytest.raises(ConceptError, match="prompts_file"):
            Concept.from_config(data)


@pytest.mark.parametrize("name", _names("eval"))
def test_every_eval_config_builds_or_names_the_setting_to_give(name):
    from erase.evaluation.attack_items import AttackSpec
    from erase.evaluation.config import build_settings, build_suites, build_variants

    cfg = _cfg([f"eval={name}"])
    check_config(cfg)
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    if ev.get("sampling") is not None:
        build_settings(ev["sampling"])
    build_variants(ev.get("baselines"))
    for attack in ev.get("attacks") or []:
        AttackSpec.from_config(attack)
    needs_files = any(isinstance(v, str) and v.startswith("???") for s in (ev.get("suites") or {}).values() if s
                      for v in s.values())
    if needs_files:  # i2p / photo_edits: the user's data, named by the error
        with pytest.raises(ValueError, match="is not set"):
            build_suites(ev["suites"], 32)
    elif not any(s and s.get("source") == "toy" for s in (ev.get("suites") or {}).values()):
        assert build_suites(ev.get("suites") or {}, 32) == []


def test_train_default_is_the_dataclass():
    """configs/train/default.yaml adds nothing: TrainConfig's fields are the defaults."""
    cfg = _cfg(["method=esd_x"])
    composed = OmegaConf.to_container(cfg.method.train, resolve=True)
    for key, value in train_defaults().items():
        if key not in ("steps", "checkpoint_every"):  # the two ESD's config sets
            assert composed[key] == value, key
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(composed) <= fields


def test_defaults_that_used_to_disagree_now_agree():
    assert _cfg(["method=esd"]).method.params.variant == method_defaults(REGISTRY["esd"])["variant"] == "esd-x"
    assert _cfg(["method=esd_u"]).method.params.variant == "esd-u"
    assert _cfg(["method=ablation"]).method.params.anchor_images == build_method("ablation").anchor_images == 64
    assert _cfg(["method=edit_refusal"]).method.params.photos is None is build_method("edit_refusal").photo_cfg


def test_plain_erase_runs_the_toy_recipe():
    cfg = _cfg([])
    assert cfg.model.path == "toy:t2i" and method_label(OmegaConf.to_container(cfg.method)) == "esd-x"
    assert cfg.method.params.loss_weighting == "x0" and cfg.method.params.uncond_weight > 0


def test_experiments_extend_the_one_toy_recipe():
    recipe = OmegaConf.to_container(OmegaConf.load(CONFIGS / "recipe" / "toy_esd.yaml"))
    changed = {"toy_editor_esd": {"eta", "preserve_weight"}, "toy_t2i": {"eta"}}
    for name in ("toy_esd", "toy_safety_lora", "toy_editor_esd", "toy_t2i", "toy_adversarial"):
        method = OmegaConf.to_container(_cfg([f"+experiment={name}"]).method, resolve=True)
        params = stage_list(method)[0]["params"]
        skip = changed.get(name, set()) | ({"preserve_weight"} if name == "toy_adversarial" else set())
        assert {k: params[k] for k in recipe if k not in skip} == {k: v for k, v in recipe.items() if k not in skip}, name


# ------------------------------------------------------------------ method identity
@pytest.mark.parametrize("overrides,label", [
    (["method=esd_x"], "esd-x"), (["method=esd_u"], "esd-u"), (["method=esd"], "esd-x"),
    (["method=safety_lora"], "esd-u+lora"), (["+experiment=toy_safety_lora"], "esd-x+lora"),
    (["method=uce"], "uce"), (["+experiment=toy_t2i"], "esd-x+edit_refusal"),
    (["method=esd_x", "method.params.variant=esd-all"], "esd-all"),
])
def test_runs_are_named_after_what_they_ran(overrides, label):
    cfg = _cfg(overrides)
    assert method_label(OmegaConf.to_container(cfg.method, resolve=True)) == label
    from erase.configs import _label

    assert _label(_root_=cfg) == label  # the name the run and sweep folders carry (${erase_label:})


# ------------------------------------------------------------------ unknown keys
@pytest.mark.parametrize("override,where,valid", [
    ("+method.params.bogus=1", "method.params", "eta"),
    ("+method.train.bogus=1", "method.train", "steps"),
    ("+method.lora.bogus=1", "method.lora", "rank"),
    ("+model.bogus=1", "model", "path"),
    ("+concept.bogus=1", "concept", "prompts"),
    ("+expor=false", "top-level", "export"),
])
def test_unknown_key_is_refused_naming_the_valid_ones(override, where, valid):
    cfg = _cfg([override, "method=safety_lora"] if "lora" in override else [override])
    with pytest.raises((ConfigError, MethodError), match=rf"'bogus'|'expor'") as err:
        check_config(cfg)
    assert where in str(err.value) and "valid keys" in str(err.value) and valid in str(err.value)
    if override == "+expor=false":
        assert "did you mean" in str(err.value)


def test_unknown_key_without_plus_is_refused_by_composition():
    with pytest.raises(ConfigCompositionException, match="method.params.bogus"):
        _cfg(["method.params.bogus=1"])


def test_unknown_key_is_refused_before_any_file_is_written(tmp_path):
    from erase.cli import run_task

    out = tmp_path / "run"
    cfg = _cfg(["+expor=false", "task=erase"], out_dir=str(out))
    with pytest.raises(ConfigError, match="expor"):
        run_task(cfg)
    assert not out.exists()


def test_unknown_method_names_the_registered_ones():
    with pytest.raises(ConfigError, match="available: .*esd"):
        check_config(_cfg(["method=uce", "method.name=nope"]))


# ------------------------------------------------------------------ adding a method: one file + one config
EXAMPLE_CONFIG = """\
# A closed-form example: the concept's cross-attention values scaled by `factor`.
defaults:
  - /method_params@params: example_scale
  - /train@train: default
  - _self_
name: example_scale
params:
  factor: 0.5
"""


class ExampleScale(ClosedFormMethod):
    """Scale every cross-attention value projection (a stand-in for a real edit; shows the plumbing)."""

    def __init__(self, factor: float = 0.9, group: str = "xattn-kv"):
        if not 0 < factor:
            raise MethodError(f"factor must be positive, got {factor}")
        self.factor, self.group = factor, group

    @torch.no_grad()
    def apply(self, adapter, concept):
        layers = [m for n, m in adapter.linear_modules(self.group).items() if n.endswith("to_v")]
        for m in layers:
            m.weight.mul_(self.factor)
        return {"scaled_layers": float(len(layers))}


@pytest.fixture
def example_method(tmp_path):
    register("example_scale", label=lambda p: f"scale-{p['factor']}")(ExampleScale)
    (tmp_path / "method").mkdir()
    (tmp_path / "method" / "example_scale.yaml").write_text(EXAMPLE_CONFIG)
    yield tmp_path
    unregister("example_scale")


def test_a_new_method_is_one_registered_class_and_one_config(example_method, tmp_path):
    from erase.models.adapter import DiffusionAdapter
    from erase.models.tiny import tiny_pipeline
    from erase.run import erase

    cfg = _cfg(["method=example_scale", f"hydra.searchpath=[file://{example_method}]", "model=tiny_sd1"])
    check_config(cfg)
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    assert method_cfg["params"] == {"factor": 0.5, "group": "xattn-kv"}  # the class's default + the YAML's override
    assert method_label(method_cfg) == "scale-0.5"
    adapter = DiffusionAdapter(tiny_pipeline("sd1"))
    name, layer = next((n, m) for n, m in adapter.linear_modules("xattn-kv").items() if n.endswith("to_v"))
    before = layer.weight.detach().clone()
    result = erase(adapter, method_cfg, Concept(id="c", prompts=["a cat"]), tmp_path / "run", do_export=False)
    assert torch.allclose(layer.weight, before * 0.5) and result.method == "scale-0.5"
    with pytest.raises(ConfigError, match="valid keys: factor, group"):
        check_config(_cfg(["method=example_scale", f"hydra.searchpath=[file://{example_method}]", "+method.params.scale=2"]))


def test_every_registered_method_has_a_config_and_builds_with_its_defaults():
    named = set()
    for name in _names("method"):
        method = OmegaConf.to_container(_cfg([f"method={name}"]).method, resolve=True)
        named |= {s["name"] for s in stage_list(method)}
    for name, cls in REGISTRY.items():
        assert name in named, f"method {name!r} is registered but no configs/method/*.yaml runs it"
        assert isinstance(build_method(name), cls)
