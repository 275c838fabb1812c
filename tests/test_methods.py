"""Erasure methods on tiny random models of every family: equations, the shared loop, resume, errors."""

from __future__ import annotations

import pytest
import torch

from erase.concept import Concept, ConceptError, check_tokenizes
from erase.methods import build_method
from erase.methods.ablation import ConceptAblation
from erase.methods.adversarial import AdversarialErasure
from erase.methods.base import MethodError, NonFiniteLossError
from erase.methods.esd import ESD, esd_target
from erase.methods.uce import UCE, UCEFitter, edit_targets, text_vectors
from erase.models.adapter import DiffusionAdapter
from erase.models.families import FAMILY_NAMES, get_family
from erase.models.tiny import tiny_pipeline
from erase.training import LoraSpec, TrainConfig, latest_checkpoint, train

CONCEPT = Concept(id="cat", prompts=["a cat"], anchor="a dog", preserve=["a bird", "a tree"])
FAST_ESD = dict(num_steps=3, trajectories=2, refresh_every=2, batch_size=1)


def tiny_adapter(family: str) -> DiffusionAdapter:
    a = DiffusionAdapter(tiny_pipeline(family))
    a.default_size = 32
    return a


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 2, "lr": 1e-3, "cpu": True, **kw})


# ---------------------------------------------------------------- equations
def test_esd_conventions_agree():
    """The reference v2 code's eta equals the original paper's eta + 1 (when erase_from is unset)."""
    e0, ep = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.allclose(esd_target(e0, ep, 1.0, "original"), esd_target(e0, ep, 2.0, "v2"), atol=1e-6)
    assert torch.allclose(esd_target(e0, ep, 1.0, "original"), e0 - (ep - e0))
    assert not torch.allclose(esd_target(e0, ep, 1.0, "original"), esd_target(e0, ep, 1.0, "v2"))


def test_uce_fitter_matches_equation():
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    c_e, v_e = torch.randn(2, 5), torch.randn(2, 6)
    c_p = torch.randn(3, 5)
    lamb, se, sp = 0.5, 1.3, 0.7
    f = UCEFitter(w, lamb)
    f.update(c_e, v_e, se)
    f.preserve(c_p, sp)
    lhs = lamb * w + se * v_e.T @ c_e + sp * (w @ c_p.T) @ c_p
    rhs = lamb * torch.eye(5) + se * c_e.T @ c_e + sp * c_p.T @ c_p
    assert torch.allclose(f.solve(), lhs @ torch.inverse(rhs), atol=1e-5)


def test_uce_maps_concept_to_guide():
    """With a tiny lambda and no preserve set, the edited map sends the concept token where the guide went."""
    a = tiny_adapter("sd1")
    before = {n: m.weight.clone() for n, (m, _) in edit_targets(a).items()}
    c, _ = text_vectors(a, "a cat", "last")
    g, _ = text_vectors(a, "a dog", "last")
    UCE(lamb=1e-4, preserve_scale=0.0).apply(a, Concept(id="cat", prompts=["a cat"], anchor="a dog"))
    for name, (module, _) in edit_targets(a).items():
        assert torch.allclose(module.weight @ c[0], before[name] @ g[0], atol=1e-3)
        assert not torch.equal(module.weight, before[name])


def test_esd_regularisers_regress_onto_the_frozen_model():
    """preserve/uncond terms are zero while the model equals the original, positive once it moves, and the
    unconditional term is exactly the x0-weighted MSE to the frozen empty-prompt prediction."""
    from erase.methods.base import Original

    a = tiny_adapter("sd1")
    esd = ESD(variant="esd-all", preserve_weight=2.0, uncond_weight=0.5, loss_weighting="x0", **FAST_ESD)
    original = Original(a, lora=False)
    esd.setup(a, CONCEPT, original, seed=0)
    s = esd._draw(0, torch.Generator().manual_seed(0))
    cond = esd.cond.select(s.which)
    total, logs = esd.objective(a.denoiser, s, cond)
    assert set(logs) == {"erase_loss", "preserve_loss", "uncond_loss"}
    assert logs["preserve_loss"] == pytest.approx(0.0, abs=1e-10) and logs["uncond_loss"] == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        for p in a.denoiser.parameters():
            p.add_(0.01 * torch.randn_like(p))
    total, logs = esd.objective(a.denoiser, s, cond)
    uncond = esd.uncond.repeat(len(s))
    with torch.no_grad():
        err = (a.predict(s.x_t, s.t, uncond) - original.predict(s.x_t, s.t, uncond)).pow(2).flatten(1).mean(1)
        expected = (a.x0_weight(s.t) * err).mean()
    assert logs["uncond_loss"] == pytest.approx(float(expected), rel=1e-4) and logs["preserve_loss"] > 0
    assert total.item() == pytest.approx(logs["erase_loss"] + 2.0 * logs["preserve_loss"] + 0.5 * logs["uncond_loss"], rel=1e-4)
    with pytest.raises(MethodError, match="preserve"):
        ESD(preserve_weight=1.0, **FAST_ESD).setup(a, Concept(id="cat", prompts=["a cat"]), original, seed=0)


def test_esd_pool_holds_the_frozen_trajectories_and_predictions_and_is_drawn_without_replacement():
    """Every pooled state lies on the adapter's own sampler trajectory, its cached predictions are the frozen
    model's at that state, and one pool's draws visit each state exactly once before the next pool is sampled."""
    from erase.methods.base import Original

    a = tiny_adapter("sd1")
    esd = ESD(variant="esd-x", num_steps=3, trajectories=2, batch_size=2, preserve_weight=1.0)
    original = Original(a, lora=False)
    esd.setup(a, CONCEPT, original, seed=0)
    pool = esd._sample(2, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    which = torch.randint(len(esd.cond), (2,), generator=g)
    x_T = torch.randn(a.latent_shape(2), generator=g)
    cond = esd.cond.select(which)
    states = [x for _, _, x in a.sample_trajectory(cond, esd.uncond.repeat(2), 3, esd.start_guidance, until=3, x_T=x_T)]
    for chain in range(2):
        for i in range(3):
            row = chain * 3 + i
            assert torch.allclose(pool.x_t[row], states[i][chain], atol=1e-5)
            one = torch.tensor([row])
            x, t = pool.x_t[one], pool.t[one]
            assert torch.allclose(pool.e_0[row], original.predict(x, t, esd.uncond)[0], atol=1e-5)
            assert torch.allclose(pool.e_p[row], original.predict(x, t, cond.select(torch.tensor([chain])))[0], atol=1e-5)
            benign = esd.preserve.select(pool.preserve_which[one])
            assert torch.allclose(pool.keep[row], original.predict(x, t, benign)[0], atol=1e-5)
    drawn = [esd._draw(step, g).x_t for step in range(3)]  # 6 states, batches of 2: steps 0-2 spend pool 0
    flat = torch.cat(drawn).flatten(1)
    assert len({tuple(r.tolist()) for r in flat.round(decimals=5)}) == 6, "a state was drawn twice within one pool"
    assert esd._pool_id == 0 and esd._draw(3, g) is not None and esd._pool_id == 1


def test_later_stages_compare_against_the_model_before_the_first(tmp_path, monkeypatch):
    """In a staged run (e.g. ESD then edit refusal) the second stage's 'original' is the base model, not the
    stage-1 result: on an erased model the concept direction is reversed and would undo the erasure."""
    from erase.run import erase

    a = tiny_adapter("sd1")
    base = {n: p.clone() for n, p in a.denoiser.named_parameters()}
    seen = []
    real_setup = ESD.setup

    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        cond = a.encode_prompts(["a cat"])
        base_pred = a.predict(x, t, cond)

    def spy(self, adapter, concept, original, seed):
        seen.append(original.predict(x, t, cond))
        real_setup(self, adapter, concept, original, seed)

    monkeypatch.setattr(ESD, "setup", spy)
    stage = {"name": "esd", "params": {"variant": "esd-x", **FAST_ESD}, "train": {"steps": 2, "lr": 1e-2, "cpu": True}}
    erase(a, {"name": "two-stage", "stages": [stage, stage]}, CONCEPT, tmp_path, do_export=False)
    assert len(seen) == 2
    assert torch.equal(seen[0], base_pred) and torch.equal(seen[1], base_pred), "stage 2 compared against a changed model"
    assert any(not torch.equal(p, base[n]) for n, p in a.denoiser.named_parameters())


# ---------------------------------------------------------------- every method on every family
def _methods_for(family: str):
    spec = get_family(family)
    single_clip = spec.architecture == "unet" and len(spec.text_encoders) == 1
    yield "esd", ESD(variant="esd-x", **FAST_ESD)
    yield "esd-u-lora", ESD(variant="esd-u", **FAST_ESD)
    yield "ablation", ConceptAblation(anchor_images=2, num_steps=2, batch_size=1)
    yield "adversarial", AdversarialErasure(attack="prefix" if single_clip else "embedding", attack_steps=2, **FAST_ESD)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_every_method_runs_on_every_family(family, tmp_path):
    for label, method in _methods_for(family):
        a = tiny_adapter(family)
        before = {n: p.clone() for n, p in a.denoiser.named_parameters()}
        lora = LoraSpec(rank=2) if label.endswith("lora") else None
        result = train(method, a, CONCEPT, cfg(lora=lora), tmp_path / label)
        assert result.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history)
        changed = [n for n, p in a.denoiser.named_parameters() if n in before and not torch.equal(p, before[n])]
        if lora is None:
            assert changed, f"{label} on {family} changed no weights"
            assert set(changed) <= set(a.module_group(method.group)), f"{label} trained outside its group"
        else:
            assert any("lora_" in n for n, _ in a.denoiser.named_parameters())
    a = tiny_adapter(family)
    UCE().apply(a, CONCEPT)


def test_method_family_mismatch_is_refused_at_config_time():
    with pytest.raises(MethodError, match="single CLIP text encoder"):
        AdversarialErasure(attack="prefix").check(get_family("flux"))
    with pytest.raises(MethodError, match="unknown method"):
        build_method("nope")
    with pytest.raises(MethodError, match="bad parameters"):
        build_method("esd", {"nonsense": 1})


# ---------------------------------------------------------------- loop guarantees
def test_resumed_run_equals_uninterrupted(tmp_path):
    kw = dict(steps=6, checkpoint_every=2, lr=1e-2)
    a = tiny_adapter("sd1")
    train(ESD(**FAST_ESD), a, CONCEPT, cfg(**kw), tmp_path / "full")
    full = {n: p.clone() for n, p in a.denoiser.named_parameters()}

    b = tiny_adapter("sd1")
    r1 = train(ESD(**FAST_ESD), b, CONCEPT, cfg(stop_after=3, **kw), tmp_path / "cut")  # "killed" after 3 steps
    assert r1.steps == 3 and latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step-0000003"
    c = tiny_adapter("sd1")  # a fresh process: original weights, state only from the checkpoint
    r2 = train(ESD(**FAST_ESD), c, CONCEPT, cfg(**kw), tmp_path / "cut")
    assert r2.resumed_from == 3 and r2.steps == 6
    for n, p in c.denoiser.named_parameters():
        assert torch.equal(p, full[n]), n


def test_nan_loss_stops_without_damage(tmp_path):
    a = tiny_adapter("sd1")
    train(ESD(**FAST_ESD), a, CONCEPT, cfg(steps=4, stop_after=2), tmp_path)
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    saved = (ckpt / "trainable.safetensors").read_bytes()

    class Exploding(ESD):
        def loss(self, model, step, generator):
            loss, logs = super().loss(model, step, generator)
            return loss * float("nan"), logs

    with pytest.raises(NonFiniteLossError, match="nothing from this step"):
        train(Exploding(**FAST_ESD), tiny_adapter("sd1"), CONCEPT, cfg(steps=4), tmp_path)
    assert (ckpt / "trainable.safetensors").read_bytes() == saved


def test_bad_concepts_are_clear_errors():
    with pytest.raises(ConceptError, match="no prompts"):
        Concept(id="x", prompts=["  ", ""])
    with pytest.raises(ConceptError, match="no id"):
        Concept(id="", prompts=["a"])
    with pytest.raises(ConceptError, match="no file"):
        Concept.from_config({"id": "x", "prompts_file": "/nonexistent/prompts.txt"})

    class WordTokenizer:  # unknown words -> unk, like the toy world's word-level tokenizer
        unk_token_id, all_special_ids = 0, [0, 1, 2]

        def __call__(self, text, add_special_tokens=False):
            return type("T", (), {"input_ids": [0 if w not in {"cat"} else 5 for w in text.split()]})()

    check_tokenizes(Concept(id="x", prompts=["a cat"]), WordTokenizer())
    with pytest.raises(ConceptError, match="tokenises to nothing"):
        check_tokenizes(Concept(id="x", prompts=["qwzx vvv"]), WordTokenizer())


def test_gpu_paths_run_on_cpu(tmp_path):
    """bf16 autocast, gradient checkpointing and grad accumulation: the GPU code paths, exercised on the CPU."""
    a = tiny_adapter("sd1")
    before = {n: p.clone() for n, p in a.denoiser.named_parameters()}
    r = train(ESD(**FAST_ESD), a, CONCEPT, cfg(mixed_precision="bf16", gradient_checkpointing=True, grad_accum=2), tmp_path)
    assert r.steps == 2 and a.denoiser.is_gradient_checkpointing
    assert any(not torch.equal(p, before[n]) for n, p in a.denoiser.named_parameters())
    with pytest.raises(ImportError, match="erase\\[gpu\\]"):
        train(ESD(**FAST_ESD), tiny_adapter("sd1"), CONCEPT, cfg(attention="xformers"), tmp_path / "x")


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_adapter_sampler_matches_the_pipeline(family):
    """ESD's trajectories come from the adapter's sampler: it must visit the pipeline's timesteps and land where
    the pipeline lands (DDIM, eps and v prediction), so erasure trains on the states generation passes through."""
    a = tiny_adapter(family)
    with torch.no_grad():
        c, u = a.encode_prompts(["a cat"] * 2), a.encode_prompts([""] * 2)
        x_T = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        mine = a.sample(c, u, 5, 4.0, x_T=x_T)
        ref = a.pipe(["a cat"] * 2, latents=x_T, num_inference_steps=5, guidance_scale=4.0, output_type="latent",
                     height=32, width=32).images
    assert torch.allclose(mine, ref, atol=1e-4), (mine - ref).abs().max()


def test_x0_weighting_puts_the_loss_where_content_is_decided():
    a = tiny_adapter("sd1")
    w = a.x0_weight(torch.tensor([999, 500, 10]))
    assert w[0] > w[1] > w[2]
    x_t, t = torch.randn(3, 4, 16, 16), torch.tensor([999, 500, 10])
    err = torch.randn(3, 4, 16, 16) * 1e-2
    x0_err = (a.x0_from_prediction(x_t, t, err) - a.x0_from_prediction(x_t, t, torch.zeros_like(err))).pow(2).flatten(1).mean(1)
    assert torch.allclose(x0_err, w * err.pow(2).flatten(1).mean(1), rtol=1e-3)


def test_original_keeps_only_the_trained_parameters_and_still_predicts_the_model_before():
    """Full fine-tuning keeps no frozen copy of the network: only the trained group's tensors are saved, swapped in
    for each frozen call, and the result equals the untouched model's however far the live weights moved."""
    from erase.methods.base import Original

    a = tiny_adapter("sd1")
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([300, 700])
    with torch.no_grad():
        cond = a.encode_prompts(["a cat", "a dog"])
        before = a.predict(x, t, cond)
    params = a.set_trainable("xattn")
    original = Original(a, lora=False)
    assert set(original.saved) == set(a.module_group("xattn"))
    assert sum(v.numel() for v in original.saved.values()) == sum(p.numel() for p in params)
    assert not list(original.denoiser().parameters()), "the frozen view must own no parameters"
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(a.predict(x, t, cond), before, atol=1e-4)
    assert torch.allclose(original.predict(x, t, cond), before, atol=1e-6)


def test_checkpointing_defaults_on_for_real_sizes_and_8bit_adam_needs_a_gpu(tmp_path, monkeypatch):
    import erase.training as training

    a = tiny_adapter("sd1")
    train(ESD(**FAST_ESD), a, CONCEPT, cfg(steps=1), tmp_path / "tiny")
    assert not a.denoiser.is_gradient_checkpointing, "a tiny model only loses time to checkpointing"
    monkeypatch.setattr(training, "REAL_SIZE", 1)  # as if the tiny UNet were real-size
    b = tiny_adapter("sd1")
    train(ESD(**FAST_ESD), b, CONCEPT, cfg(steps=1), tmp_path / "real")
    assert b.denoiser.is_gradient_checkpointing
    with pytest.raises(ValueError, match="adamw8bit needs a CUDA GPU"):
        train(ESD(**FAST_ESD), tiny_adapter("sd1"), CONCEPT, cfg(optimizer="adamw8bit"), tmp_path / "8bit")


@pytest.mark.parametrize("name,kind", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed_zero2", "DEEPSPEED")])
def test_accelerate_configs_parse(name, kind):
    """The shipped launch files are what accelerate reads (ddp.yaml is also launched, on CPU, in tests/test_cli.py)."""
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    c = load_config_from_file(str(Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{name}.yaml"))
    assert c.distributed_type.name == kind and c.num_machines == 1
    if kind == "FSDP":
        assert c.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD" and c.fsdp_config["fsdp_use_orig_params"]
    if kind == "DEEPSPEED":
        assert c.deepspeed_config["zero_stage"] == 2


@pytest.mark.parametrize("lora", [False, True])
def test_attacks_see_the_training_loops_original(lora):
    """One wrapper for the model before erasure: the training loop's Original, handed to an attack through
    AttackTarget.require_original, predicts the untouched model, for full fine-tuning (saved tensors swapped in)
    and LoRA (adapters off)."""
    from erase.evaluation.attacks import AttackTarget
    from erase.methods.base import Original
    from erase.training import add_lora

    a = tiny_adapter("sd1")
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([400])
    with torch.no_grad():
        cond = a.encode_prompts(["a cat"])
        before = a.predict(x, t, cond)
    params = add_lora(a, "xattn", LoraSpec(rank=2), "cat") if lora else a.set_trainable("xattn")
    view = AttackTarget(prompts=["a cat"], original=Original(a, lora=lora)).require_original(a, "test")
    with torch.no_grad():
        for p in params:
            p.add_(0.5 * torch.randn_like(p))
        assert not torch.allclose(a.predict(x, t, cond), before, atol=1e-4)
    assert torch.allclose(view.predict(x, t, cond), before, atol=1e-6)


def test_a_lora_run_is_decided_by_its_seed_not_by_what_ran_before_it(tmp_path):
    """peft draws a new LoRA's initial weights from torch's global generator, whose state depends on what ran before
    in the process (a base evaluation computed, or read from the cache): the same toy_safety_lora command then
    trained from a different adapter each time (held-out leakage 0% on one run, 60.4% on another). The init comes
    from the run's seed, and the caller's global generator is left as it was."""
    from erase.training import add_lora

    def lora_after(global_seed: int, seed: int = 0, steps: int = 2) -> dict[str, torch.Tensor]:
        a = tiny_adapter("sd1")
        torch.manual_seed(global_seed)  # a different history of the process before the run
        train(ESD(**FAST_ESD), a, CONCEPT, cfg(steps=steps, seed=seed, lora=LoraSpec(rank=2)), tmp_path / f"{global_seed}-{seed}-{steps}")
        return {n: p.detach().clone() for n, p in a.denoiser.named_parameters() if "lora_" in n}

    one, other = lora_after(1), lora_after(2)
    assert one and one.keys() == other.keys()
    assert all(torch.equal(one[n], other[n]) for n in one), "the global generator's state changed the trained LoRA"
    at_init = lora_after(1, steps=1)  # lora_B starts at zero; lora_A is the random draw
    assert any(not torch.equal(at_init[n], lora_after(1, seed=1, steps=1)[n]) for n in at_init if "lora_A" in n), \
        "the run's seed must decide the LoRA's initial weights"

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    add_lora(tiny_adapter("sd1"), "xattn", LoraSpec(rank=2), "cat", seed=0)
    assert torch.equal(torch.rand(3), expected), "adding a LoRA must leave the global generator as it was"
