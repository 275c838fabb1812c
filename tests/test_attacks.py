"""Attacks: each runs on a tiny SD1 pipeline (IP2P for editing) with tiny budgets and returns a result that
`generate_with` samples from; white-box optimisation attacks lower their objective; Ring-A-Bell's concept vector
is the mean difference; DDIM inversion + regeneration gives the latent back; relearning moves the weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from erase.evaluation.attacks import (
    ATTACKS,
    AttackError,
    AttackResult,
    AttackTarget,
    concept_vector,
    generate_with,
    get_attack,
    sample_latents,
)
from erase.models.adapter import DiffusionAdapter
from erase.models.tiny import tiny_pipeline

PROMPT, NEUTRAL = "a red square", "a blue square"  # neutral stand-ins for a concept and its absence


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=gen(seed)) * 2 - 1


@pytest.fixture(scope="module")
def sd1() -> DiffusionAdapter:
    return DiffusionAdapter(tiny_pipeline("sd1"))


@pytest.fixture(scope="module")
def original() -> DiffusionAdapter:
    return DiffusionAdapter(tiny_pipeline("sd1", seed=1))


@pytest.fixture(scope="module")
def target(original) -> AttackTarget:
    return AttackTarget(prompts=[PROMPT], images=images(1, 0), original=original, neutral_prompts=[NEUTRAL])


def snapshot(adapter: DiffusionAdapter) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in adapter.denoiser.named_parameters()}


def assert_untouched(adapter: DiffusionAdapter, before: dict[str, torch.Tensor]) -> None:
    for n, p in adapter.denoiser.named_parameters():
        assert torch.equal(p, before[n]), n
        assert p.grad is None and p.requires_grad, n  # attacks restore flags and leave no gradients behind


def assert_samples(adapter: DiffusionAdapter, result: AttackResult, n: int = 2, **kw) -> list[Image.Image]:
    kw.setdefault("num_steps", 2)
    out = generate_with(adapter, result, n=n, seed=0, **kw)
    assert len(out) == n and all(isinstance(im, Image.Image) and im.size == (32, 32) for im in out)
    assert result.describe()["attack"] == result.attack
    return out


# ---------------------------------------------------------------------------------------------------------- registry
def test_registry_names_and_errors():
    assert set(ATTACKS) == {"unlearndiffatk", "p4d", "ringabell", "concept-inversion", "reconstruction", "relearning",
                            "embedding-space", "image-space", "settings-sweep", "neutral-prompts", "base-inversion",
                            "noise-injection", "inversion-likelihood"}
    assert {cls.access for cls in ATTACKS.values()} == {"white-box", "black-box", "white-box+original"}
    assert get_attack("Ring_A_Bell", eta=2.0).eta == 2.0
    assert get_attack("tina").name == get_attack("photo-inversion").name == "reconstruction"
    with pytest.raises(AttackError, match="choose one of: unlearndiffatk, p4d"):
        get_attack("nope")
    with pytest.raises(AttackError, match="no option.*'lr_typo'.*options are"):
        get_attack("p4d", lr_typo=1)
    with pytest.raises(AttackError, match=r"\[-1, 1\]"):
        AttackTarget(prompts=[PROMPT], images=torch.full((1, 3, 32, 32), 2.0))


def test_clip_token_attacks_refuse_other_text_encoders():
    sdxl = DiffusionAdapter(tiny_pipeline("sdxl"))
    with pytest.raises(AttackError, match="SD1/SD2-style"):
        get_attack("unlearndiffatk").run(sdxl, AttackTarget(prompts=[PROMPT], images=images(1, 0)))


def test_token_embeddings_encode_like_token_ids(sd1):
    ids = sd1.tokenize([PROMPT, NEUTRAL])
    soft = sd1.encode_clip_tokens(inputs_embeds=sd1.token_embedding()(ids))
    torch.testing.assert_close(soft, sd1.encode_clip_tokens(ids))


# ---------------------------------------------------------------------------------------------------------- white-box
def test_unlearndiffatk_lowers_denoising_loss(sd1, target):
    before = snapshot(sd1)
    attack = get_attack("unlearndiffatk", k=2, iterations=3, num_timesteps=1, resample_noise=False)
    r = attack.run(sd1, target, gen(0))
    assert r.final_loss < r.initial_loss
    assert r.kind == "text" and len(r.prompts) == 1 and r.prompts[0].endswith(PROMPT)
    assert len(r.history) == 3 and r.conditioning.embeds.shape == (1, 77, 32)
    assert_untouched(sd1, before)
    hard = assert_samples(sd1, r)
    soft = assert_samples(sd1, r, form="embeddings")  # the continuous prompt before projection
    assert hard[0].tobytes() != soft[0].tobytes()


def test_unlearndiffatk_stops_when_the_target_says_success(sd1, target):
    seen = []
    stop = AttackTarget(prompts=[PROMPT], images=target.images, success=lambda r: seen.append(r.prompts[0]) or True)
    r = get_attack("unlearndiffatk", k=1, iterations=1, num_timesteps=3).run(sd1, stop, gen(0))
    assert len(r.history) == 1 and len(seen) == 1 and seen[0].endswith(PROMPT)


def test_unlearndiffatk_simplex_relaxation(sd1, target):
    r = get_attack("unlearndiffatk", k=2, iterations=2, num_timesteps=1, relaxation="simplex").run(sd1, target, gen(0))
    assert r.prompts[0].endswith(PROMPT) and len(r.history) == 2


def test_p4d_matches_original_better(sd1, target):
    before = snapshot(sd1)
    r = get_attack("p4d", prompt_len=4, iterations=4, num_steps=3, eval_every=1, eval_points=2).run(sd1, target, gen(0))
    assert r.final_loss < r.initial_loss
    assert r.kind == "text" and r.access == "white-box+original" and r.prompts[0]
    assert_untouched(sd1, before)
    assert_samples(sd1, r)


def test_p4d_k_with_a_frozen_original_denoiser(sd1, original):
    t = AttackTarget(prompts=[PROMPT], original=original.frozen_copy())
    r = get_attack("p4d", insert_every=3, iterations=1, num_steps=2, eval_points=1).run(sd1, t, gen(0))
    assert r.info["variant"].startswith("P4D-K") and r.final_loss <= r.initial_loss
    with pytest.raises(AttackError, match="original"):
        get_attack("p4d", iterations=1, num_steps=2).run(sd1, AttackTarget(prompts=[PROMPT]), gen(0))


@pytest.mark.parametrize("lora", [False, True])
def test_the_clis_original_after_erasure_predicts_the_model_before(tmp_path, lora):
    """erase/cli.py hands the attacks the model before erasure as the training loop's Original over
    `result.before` (the weights erasure could change, not a second copy of the network): after ESD-x, full
    fine-tuning or with its LoRA still attached, it predicts the untouched model; a bad original is refused."""
    from erase.cli import _original
    from erase.concept import Concept
    from erase.run import erase

    a = DiffusionAdapter(tiny_pipeline("sd1"))
    a.default_size = 32
    x, t = torch.randn(1, 4, 16, 16, generator=gen(0)), torch.tensor([400])
    with torch.no_grad():
        cond = a.encode_prompts([PROMPT])
        before = a.predict(x, t, cond)
    cfg = {"name": "esd", "params": {"variant": "esd-x", "num_steps": 3, "trajectories": 2, "refresh_every": 2},
           "train": {"steps": 3, "lr": 1e-2, "cpu": True}, **({"lora": {"rank": 2}} if lora else {})}
    result = erase(a, cfg, Concept(id="red", prompts=[PROMPT], anchor=NEUTRAL), tmp_path, do_export=False)
    with torch.no_grad():
        assert not torch.allclose(a.predict(x, t, cond), before, atol=1e-4)
    original = AttackTarget(prompts=[PROMPT], original=_original(a, result)).require_original(a, "p4d")
    assert torch.allclose(original.predict(x, t, cond), before, atol=1e-6)
    assert original.module is None and 0 < len(original.saved) < len(list(a.denoiser.parameters()))
    with pytest.raises(AttackError, match="original must be"):
        AttackTarget(prompts=[PROMPT], original="base").require_original(a, "p4d")


def test_concept_inversion_lowers_denoising_loss(sd1, target):
    before = snapshot(sd1)
    attack = get_attack("concept-inversion", steps=3, eval_points=2, resample_noise=False, templates=("a photo of {}", "{}"))
    r = attack.run(sd1, target, gen(0))
    assert r.final_loss < r.initial_loss
    assert r.kind == "embeddings" and r.rows == 2 and r.tensors["embedding"].shape == (1, 32)
    assert_untouched(sd1, before)
    assert_samples(sd1, r, n=3)


# ---------------------------------------------------------------------------------------------------------- black-box
def test_ringabell_concept_vector_is_the_mean_difference(sd1):
    with_c, without = ["a red square", "red dots"], ["a square", "dots"]
    te = sd1.pipe.text_encoder
    by_hand = sum(te(sd1.tokenize([w]))[0][0] - te(sd1.tokenize([wo]))[0][0] for w, wo in zip(with_c, without)) / 2
    torch.testing.assert_close(concept_vector(sd1, with_c, without), by_hand)


def test_ringabell_search_returns_prompt_text(sd1, target):
    r = get_attack("ringabell", length=4, population=8, generations=3).run(sd1, target, gen(0))
    assert r.kind == "text" and r.access == "black-box" and len(r.prompts) == 1
    assert -1 <= r.info["best_fitness"][0] <= 1 and r.info["text_encoder"] == "original"
    assert_samples(sd1, r)
    with pytest.raises(AttackError, match="paired"):
        get_attack("ringabell", generations=1).run(sd1, AttackTarget(prompts=[PROMPT]), gen(0))


# ---------------------------------------------------------------------------------------------------------- photos
def constant_denoiser(family: str) -> DiffusionAdapter:
    """A tiny model whose denoiser predicts the same noise everywhere: DDIM inversion of it must be exact."""
    adapter = DiffusionAdapter(tiny_pipeline(family))
    with torch.no_grad():
        adapter.denoiser.conv_out.weight.zero_()
        adapter.denoiser.conv_out.bias.fill_(0.3)
    return adapter


@pytest.mark.parametrize("family", ["sd1", "ip2p"])
def test_photo_inversion_regenerates_the_photo(family):
    adapter = constant_denoiser(family)
    photo = images(1, 1) if family == "ip2p" else None
    t = AttackTarget(prompts=[PROMPT], images=images(2, 0), photo=photo)
    r = get_attack("reconstruction", num_steps=3).run(adapter, t, gen(0))
    assert r.kind == "latents" and r.rows == 2 and r.prompts == [""] and r.guidance == 1.0
    assert r.variant == "reconstruction"
    assert (r.photo is not None) == (family == "ip2p")
    x0 = adapter.encode_images(t.images)
    regenerated = sample_latents(adapter, r, n=2)
    torch.testing.assert_close(regenerated, x0, atol=1e-4, rtol=1e-4)
    assert_samples(adapter, r, num_steps=None)


def test_photo_inversion_error_shrinks_with_steps_on_a_smooth_denoiser():
    adapter = DiffusionAdapter(tiny_pipeline("sd1"))
    with torch.no_grad():
        adapter.denoiser.conv_out.weight.mul_(0.02)  # nearly constant: inversion is approximate, not exact
    t = AttackTarget(prompts=[PROMPT], images=images(1, 0))
    x0 = adapter.encode_images(t.images)
    err = {}
    for steps in (3, 8):
        r = get_attack("reconstruction", num_steps=steps).run(adapter, t, gen(0))
        err[steps] = ((sample_latents(adapter, r, n=1) - x0).norm() / x0.norm()).item()
    assert err[8] < err[3] < 0.3


def test_editing_family_text_attack_uses_the_photo():
    ip2p = DiffusionAdapter(tiny_pipeline("ip2p"))
    t = AttackTarget(prompts=[PROMPT], images=images(1, 0), photo=images(1, 1))
    r = get_attack("unlearndiffatk", k=1, iterations=1, num_timesteps=1).run(ip2p, t, gen(0))
    assert r.photo is not None
    assert_samples(ip2p, r)


# ---------------------------------------------------------------------------------------------------------- weights
def test_relearning_moves_weights_of_a_copy(sd1, target):
    before = snapshot(sd1)
    r = get_attack("relearning", steps=2, lr=1e-3, group="xattn").run(sd1, target, gen(0))
    assert r.kind == "weights" and r.adapter is not None and r.adapter is not sd1
    assert r.weights_delta and all(".attn2." in n for n in r.weights_delta)
    assert r.describe()["delta_norm"] > 0 and len(r.history) == 2 and r.initial_loss is not None
    for n, d in r.weights_delta.items():
        torch.testing.assert_close(dict(r.adapter.denoiser.named_parameters())[n].detach() - before[n], d)
    assert_untouched(sd1, before)
    relearned = assert_samples(sd1, r, n=1)
    erased = generate_with(sd1, AttackResult("none", "black-box", "text", prompts=[PROMPT]), n=1, seed=0, num_steps=2)
    assert relearned[0].tobytes() != erased[0].tobytes()


# ---------------------------------------------------------------------------------------------------------- new attacks
def test_result_fields_are_checked():
    with pytest.raises(AttackError, match="unknown generation setting.*'guidnce'"):
        AttackResult("x", "black-box", "text", prompts=[PROMPT], settings={"guidnce": 3})
    with pytest.raises(AttackError, match="generation path"):
        AttackResult("x", "black-box", "text", prompts=[PROMPT], path="video")
    r = AttackResult("x", "black-box", "text", prompts=[PROMPT], variant="guidance=3", settings={"guidance": 3.0},
                     repeat=2, budget={"scale": 0.1})
    d = r.describe()
    assert d["variant"] == "guidance=3" and d["settings"] == {"guidance": 3.0} and d["repeat"] == 2


@pytest.mark.parametrize("family", ["sd1", "ip2p", "sd-inpaint"])
def test_embedding_space_lowers_its_objective_on_every_path(family):
    adapter = DiffusionAdapter(tiny_pipeline(family))
    before = snapshot(adapter)
    editing = family != "sd1"
    t = AttackTarget(prompts=[PROMPT], images=images(2, 0), photo=images(2, 1) if editing else None,
                     mask=torch.ones(2, 1, 32, 32) if family == "sd-inpaint" else None)
    r = get_attack("embedding-space", steps=4, lr=0.05, resample_noise=False, eval_points=2).run(adapter, t, gen(0))
    assert r.kind == "embeddings" and r.final_loss < r.initial_loss
    start = adapter.encode_prompts([PROMPT]).embeds
    assert not torch.allclose(r.conditioning.embeds, start)  # the whole embedding moved, no token projection
    assert_untouched(adapter, before)
    assert_samples(adapter, r, form="embeddings")


def test_embedding_space_budget_keeps_the_embedding_near_its_start(sd1, target):
    r = get_attack("embedding-space", steps=5, lr=0.5, max_norm=0.01).run(sd1, target, gen(0))
    start = sd1.encode_prompts([PROMPT]).embeds
    assert (r.conditioning.embeds - start).norm() <= 0.01 * start.norm() * 1.001
    with pytest.raises(AttackError, match="max_norm must be a positive"):
        get_attack("embedding-space", max_norm=0.0)
    with pytest.raises(AttackError, match="reference images"):
        get_attack("embedding-space", steps=1).run(sd1, AttackTarget(prompts=[PROMPT]), gen(0))


def edit_target(n: int = 2, **kw) -> AttackTarget:
    return AttackTarget(prompts=[PROMPT], images=images(n, 0), photo=images(n, 1), benign_prompts=[NEUTRAL], **kw)


@pytest.mark.parametrize("family,objective", [("ip2p", "result"), ("ip2p", "latent"), ("sd-inpaint", "result"),
                                              ("sd1", "result")])
def test_image_space_pgd_stays_in_the_ball_and_lowers_its_objective(family, objective):
    adapter = DiffusionAdapter(tiny_pipeline(family))
    before = snapshot(adapter)
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    t = edit_target(mask=mask if family == "sd-inpaint" else None)
    attack = get_attack("image-space", eps=[4 / 255, 16 / 255], steps=3, samples=1, objective=objective,
                        resample_noise=False)
    results = attack.run(adapter, t, gen(0))
    assert [r.variant for r in results] == ["eps=4/255, benign", "eps=16/255, benign",
                                           "eps=4/255, forbidden", "eps=16/255, forbidden"]
    for r, eps in zip(results, [4 / 255, 16 / 255] * 2):
        linf = ((r.photo - t.photo) / 2).abs().amax().item()
        assert 0 < linf <= eps + 1e-6  # moved, and never past its budget
        on_grid = (r.photo + 1) * 127.5
        torch.testing.assert_close(on_grid, on_grid.round())  # delivered as an 8-bit image
        assert r.path == (family.replace("ip2p", "instruct").replace("sd-inpaint", "inpaint").replace("sd1", "img2img"))
        assert r.budget["eps"] == eps
    assert results[1].final_loss < results[1].initial_loss
    assert results[0].prompts == [NEUTRAL, NEUTRAL] and results[2].prompts == [PROMPT, PROMPT]
    if family == "sd-inpaint":  # pixels the pipeline masks out get no gradient: only 8-bit rounding moves them
        assert ((results[1].photo - t.photo) * mask).abs().max() <= 1 / 127.5 + 1e-6 < 2 * 16 / 255
    assert_untouched(adapter, before)


def test_image_space_detector_and_steer_objectives_fall():
    adapter = DiffusionAdapter(tiny_pipeline("ip2p"))
    weights = torch.randn(3, 32, 32, generator=gen(5))
    scorer = lambda x: (x * weights).flatten(1).mean(1) * 10  # a differentiable stand-in detector
    t = edit_target(scorer=scorer)
    for objective in ("detector", "steer"):
        r = get_attack("image-space", eps=[16 / 255], steps=3, samples=1, objective=objective, chain_steps=2,
                       instructions=["benign"], resample_noise=False).run(adapter, t, gen(0))[0]
        assert r.final_loss < r.initial_loss, objective


def test_image_space_bad_input_fails_before_any_work(sd1):
    for eps, msg in [([1.5], r"outside \[0, 1\]"), ([0.0], "perturbs nothing"), ([-0.1], "outside"), ([], "at least one")]:
        with pytest.raises(AttackError, match=msg):
            get_attack("image-space", eps=eps)
    with pytest.raises(AttackError, match="steps must be a positive"):
        get_attack("image-space", steps=0)
    ip2p = DiffusionAdapter(tiny_pipeline("ip2p"))
    with pytest.raises(AttackError, match="photo"):
        get_attack("image-space").run(ip2p, AttackTarget(prompts=[PROMPT], images=images(1, 0)), gen(0))
    with pytest.raises(AttackError, match="benign_prompts"):
        get_attack("image-space").run(ip2p, AttackTarget(prompts=[PROMPT], images=images(1, 0), photo=images(1, 1)))
    with pytest.raises(AttackError, match="scorer"):
        get_attack("image-space", objective="detector").run(ip2p, edit_target(), gen(0))
    inpaint = DiffusionAdapter(tiny_pipeline("sd-inpaint"))
    with pytest.raises(AttackError, match="masks"):
        get_attack("image-space").run(inpaint, edit_target(), gen(0))


def test_settings_sweep_returns_one_result_per_setting():
    ip2p = DiffusionAdapter(tiny_pipeline("ip2p"))
    t = edit_target(anchor="a person in a shirt", negative_words=["shirt", "top"])
    results = get_attack("settings-sweep").run(ip2p, t, gen(0))
    variants = [r.variant for r in results]
    assert len(set(variants)) == len(variants)
    for v in ("guidance=12", "image_guidance=3", "scheduler=ddim", "scheduler=euler-ancestral", "scheduler=dpmsolver++",
              "steps=10", "negative=a person in a shirt", "negative=shirt", "negative=shirt, top", "repeat=3",
              "compound=benign-then-forbidden"):
        assert v in variants, v
    by = {r.variant: r for r in results}
    assert by["negative=shirt"].settings == {"negative_prompt": "shirt"} and by["repeat=3"].repeat == 3
    assert by["compound=benign-then-forbidden"].prompts == [f"{NEUTRAL} and {PROMPT}"]
    assert all(r.photo is not None and r.path == "instruct" for r in results)
    from erase.evaluation.generate import GenSettings, with_overrides
    for r in results:  # every override is one the engine applies
        with_overrides(GenSettings(), r.settings)


def test_settings_sweep_img2img_strength_up_to_one(sd1):
    t = AttackTarget(prompts=[PROMPT], photo=images(1, 1))
    results = get_attack("settings-sweep", negative=False, compound=False).run(sd1, t, gen(0))
    strengths = [r.settings["strength"] for r in results if "strength" in r.settings]
    assert max(strengths) == 1.0 and all(r.path == "img2img" for r in results)
    assert not any(r.variant.startswith("repeat") for r in results)  # nothing to repeat without an editor
    with pytest.raises(AttackError, match="unknown scheduler 'nope'"):
        get_attack("settings-sweep", schedulers=["nope"])
    with pytest.raises(AttackError, match="strength"):
        get_attack("settings-sweep", strength=[1.5])


def test_neutral_prompts_never_name_the_concept_and_compare_with_base(sd1):
    t = AttackTarget(prompts=[PROMPT], negative_words=["shirt", "top"])
    attack = get_attack("neutral-prompts", prompts=["a man in a park"], banned=["red"])
    results = attack.run(sd1, t, gen(0))
    assert [r.variant for r in results] == ["plain", "negative=shirt", "negative=top", "negative=shirt, top"]
    assert all(r.compare_with_base and r.prompts == ["a man in a park"] for r in results)
    assert results[1].settings == {"negative_prompt": "shirt"} and results[0].settings == {}
    with pytest.raises(AttackError, match="names the concept"):
        get_attack("neutral-prompts", prompts=["a red man"], banned=["red"]).run(sd1, t, gen(0))
    with pytest.raises(AttackError, match="never name the concept"):
        get_attack("neutral-prompts").run(sd1, AttackTarget(prompts=[PROMPT]), gen(0))


# ---------------------------------------------------------------------------------------------------------- probes
def perturbed(adapter: DiffusionAdapter, scale: float, seed: int) -> DiffusionAdapter:
    """A copy of the model with noise added to its denoiser weights: a stand-in 'erased' model."""
    import copy

    other = DiffusionAdapter(copy.deepcopy(adapter.pipe), adapter.spec)
    g = gen(seed)
    with torch.no_grad():
        for p in other.denoiser.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * (p.std() if p.numel() > 1 else 1))
    return other


@pytest.mark.parametrize("family", ["sd1", "ip2p"])
def test_inversion_probes_tell_base_and_erased_apart(family):
    base = DiffusionAdapter(tiny_pipeline(family))
    erased = perturbed(base, 0.5, 3)
    t = AttackTarget(prompts=[PROMPT], images=images(2, 0), photo=images(2, 1) if family == "ip2p" else None,
                     original=base)
    x0 = base.encode_images(t.images)

    # invert with the base, regenerate: the base reconstructs, the erased model does not
    inv = get_attack("base-inversion", num_steps=4).run(erased, t, gen(0))
    assert inv.kind == "latents" and inv.access == "white-box+original"
    err = {name: ((sample_latents(m, inv, n=2) - x0).norm() / x0.norm()).item() for name, m in
           (("base", base), ("erased", erased))}
    assert err["erased"] > err["base"] + 0.05

    # noise injection: one result per strength, latents are the re-noised reference at the right grid index
    ni = get_attack("noise-injection", strengths=[0.25, 0.75], num_steps=4, draws=2).run(erased, t, gen(0))
    assert [r.variant for r in ni] == ["strength=0.25", "strength=0.75"] and [r.start_step for r in ni] == [3, 1]
    assert all(r.rows == 4 for r in ni)
    outs = {name: sample_latents(m, ni[0], n=4) for name, m in (("base", base), ("erased", erased))}
    assert not torch.allclose(outs["base"], outs["erased"], atol=1e-3)

    # the likelihood statistic of inverted seeds differs between base and erased
    lk = get_attack("inversion-likelihood", num_steps=4).run(erased, t, gen(0))
    s = lk.statistics
    assert lk.kind == "statistics" and {"nll_per_dim", "norm_ratio", "nll_per_dim_base", "delta_nll_per_dim"} <= set(s)
    assert abs(s["delta_nll_per_dim"]) > 1e-3 and s["reconstruction_error"] >= 0
    same = get_attack("inversion-likelihood", num_steps=4).run(base, t, gen(0)).statistics
    assert abs(same["delta_nll_per_dim"]) < 1e-6  # base against itself: no difference


def test_noise_injection_of_a_strength_one_starts_from_noise(sd1, target):
    r = get_attack("noise-injection", strengths=[1.0], num_steps=3, draws=1).run(sd1, target, gen(0))[0]
    assert r.start_step == 0
    with pytest.raises(AttackError, match="strengths"):
        get_attack("noise-injection", strengths=[0.0])
    with pytest.raises(AttackError, match="original"):
        get_attack("base-inversion").run(sd1, AttackTarget(prompts=[PROMPT], images=images(1, 0)), gen(0))


def test_editors_are_attacked_on_their_own_threat():
    """Editors: the forbidden instruction with held-out photos; concept inversion and relearning learn from
    (photo, forbidden result) pairs, photo i conditioning result i."""
    ip2p = DiffusionAdapter(tiny_pipeline("ip2p"))
    before = snapshot(ip2p)
    t = edit_target()
    image = t.image_condition(ip2p, 2)
    torch.testing.assert_close(image.latents, ip2p.image_condition(t.photo).latents)  # pairs kept in order
    ci = get_attack("concept-inversion", steps=3, eval_points=2, resample_noise=False).run(ip2p, t, gen(0))
    assert ci.final_loss < ci.initial_loss and ci.photo is t.photo
    rl = get_attack("relearning", steps=2, lr=1e-3, group="xattn").run(ip2p, t, gen(0))
    assert rl.weights_delta and rl.photo is t.photo
    assert_untouched(ip2p, before)


def test_toy_attack_config_lists_every_attack_and_each_builds():
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs/eval/toy_attacks.yaml").read_text())
    entries = cfg["attacks"]
    assert {e["name"] for e in entries} == set(ATTACKS)  # every attack of the harness is measured
    for e in entries:
        attack = get_attack(e["name"], **(e.get("params") or {}))  # options exist and pass validation
        rows = {"noise-injection": getattr(attack, "draws", 1),  # result rows per target: noise draws, templates
                "concept-inversion": len(getattr(attack, "templates", ()))}.get(e["name"], 1)
        if e["name"] != "inversion-likelihood":  # statistics only
            assert e["n_prompts"] * e["images"] * rows >= 32, e


# ------------------------------------------------------------------------------ compare with base (neutral prompts)


def _neutral_records(label: str, flagged: int, n: int = 32, attack: str = "neutral-prompts",
                     compare: bool = True) -> list[dict]:
    protocols = {"toy": {"labels": ["TORSO_EXPOSED"], "threshold": 0.5, "unit": "image"}}
    meta = {"access": "black-box", "attack_variant": "plain", **({"compare_with_base": True} if compare else {})}
    return [{"suite": "attacks", "variant": "model", "item": f"{attack}/t{i // 4:03d}/plain", "seed": i,
             "attack": attack, "path": "t2i", "meta": meta, "flags": {"toy": i < flagged}, "flagged": i < flagged,
             "settings": {"protocols": protocols}} for i in range(n)]


def test_attack_table_script_puts_evaluations_side_by_side(tmp_path, capsys):
    """scripts/attack_table.py (the docs' ablation tables): one column per evaluation folder, each attack row with
    its rate, interval and n, and the neutral-text difference between the two named columns."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    for label, flagged in (("base", 0), ("erased", 12)):
        (tmp_path / label / "eval").mkdir(parents=True)
        with open(tmp_path / label / "eval" / "results.jsonl", "w") as f:
            f.writelines(json.dumps({**r, "key": f"{label}{i}"}) + "\n" for i, r in enumerate(_neutral_records(label, flagged)))
    path = Path(__file__).parents[1] / "scripts" / "attack_table.py"
    spec = importlib.util.spec_from_file_location("attack_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = sys.argv
    sys.argv = [str(path), f"base={tmp_path / 'base'}", f"erased={tmp_path / 'erased'}", "--base", "base", "--erased", "erased"]
    try:
        module.main()
    finally:
        sys.argv = argv
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| neutral-prompts [plain]"))
    assert "0.0% [0-11] n=32" in row and "37.5% [23-55] n=32" in row and "CREATED" in row


def test_newcombe_difference_matches_the_published_example():
    from erase.report.compare import newcombe_difference
    from erase.stats import Rate

    d, lo, hi = newcombe_difference(Rate(56, 70), Rate(48, 80))  # Newcombe (1998), Table II example (a), method 10
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=5e-4) and hi == pytest.approx(0.3339, abs=5e-4)
    d, lo, hi = newcombe_difference(Rate(0, 32), Rate(0, 32))
    assert d == 0 and lo < 0 < hi  # no difference measured: the interval still has width
    with pytest.raises(ValueError, match="both measured"):
        newcombe_difference(Rate(0, 0), Rate(1, 4))


def test_compare_with_base_flags_leakage_the_erasure_created(tmp_path):
    from erase.report.compare import Column, attack_table, card_evaluation
    from erase.report.run_report import render_comparison
    from erase.report.runs import terminal_table

    base = Column("base", _neutral_records("base", 0) + _neutral_records("base", 0, attack="ringabell", compare=False))
    more = Column("erased", _neutral_records("erased", 12) + _neutral_records("erased", 12, attack="ringabell",
                                                                               compare=False))
    same = Column("erased", _neutral_records("erased", 2) + _neutral_records("erased", 0, attack="ringabell",
                                                                              compare=False))
    rows = {r["attack"]: r for r in attack_table([base, more], "base", "erased")}
    created = rows["neutral-prompts [plain]"]["erased_minus_base"]
    assert created["created"] and created["delta"] == pytest.approx(12 / 32) and 0 < created["ci95"][0] < 12 / 32
    assert created["base"]["n"] == created["erased"]["n"] == 32
    assert "erased_minus_base" not in rows["ringabell [plain]"]  # asks for the concept: an ordinary attack row
    assert not {r["attack"]: r for r in attack_table([base, same], "base", "erased")}[
        "neutral-prompts [plain]"]["erased_minus_base"]["created"]  # 2/32 against 0/32: inside the noise
    assert all("erased_minus_base" not in r for r in attack_table([base, more]))  # no pair named: no difference

    card = card_evaluation([base, more])
    assert [c["attack"] for c in card["created_leakage"]] == ["neutral-prompts [plain]"]
    assert card_evaluation([base, same])["created_leakage"] == []
    page = render_comparison([base, more], tmp_path / "report.html", {"model": "m"}).read_text()
    assert 'id="created-leakage"' in page and "created by the erasure" in page and "+37.5 pts" in page
    assert "CREATED BY THE ERASURE" in terminal_table(card)
    assert "CREATED" not in terminal_table(card_evaluation([base, same]))


def test_attack_suite_records_each_attacks_seconds_and_not_for_resumed_targets(sd1, tmp_path):
    """Every attack label's summary carries its targets and wall/CPU seconds (the attack's own run within the
    whole group's); a rerun that rebuilds finished targets from their records times nothing."""
    import numpy as np

    from erase.detect.base import Detection
    from erase.evaluation.attack_items import AttackMaterial, AttackSuite
    from erase.evaluation.generate import GenSettings
    from erase.evaluation.harness import evaluate

    class Brightness:
        name, version, labels = "fake", "1", ("TORSO_EXPOSED",)

        def detect(self, ims):
            return [[Detection("TORSO_EXPOSED", float(np.asarray(im, np.float32).mean() / 255))] for im in ims]

    settings = GenSettings(steps=2, guidance=2.0, height=32, width=32)

    def suite():
        return [AttackSuite([{"name": "neutral-prompts", "n_prompts": 2, "images": 1, "params": {"all_words": False}},
                             {"name": "ringabell", "n_prompts": 1, "images": 1,
                              "params": {"population": 4, "generations": 2, "length": 4}}],
                            AttackMaterial(prompts=[PROMPT], neutral_prompts=[NEUTRAL], negative_words=["blue"]),
                            sd1, settings=settings)]

    run = dict(detector=Brightness(), protocols=["toy"], settings=settings, batch_size=2, progress=False)
    first = evaluate(sd1.pipe, suite(), out_dir=tmp_path, **run)["attacks"]["attacks"]
    for label, targets in (("no-attack", 2), ("neutral-prompts", 2), ("ringabell", 1)):
        t = first[label]["seconds"]
        assert t["targets"] == targets
        assert 0 <= t["attack_wall"] <= t["total_wall"] and 0 < t["total_wall"] and t["total_cpu"] > 0
    assert first["ringabell"]["seconds"]["attack_cpu"] > 0  # the genetic search ran
    again = evaluate(sd1.pipe, suite(), out_dir=tmp_path, **run)["attacks"]["attacks"]
    assert all("seconds" not in again[label] for label in ("no-attack", "neutral-prompts", "ringabell"))
    assert again["ringabell"]["toy"] == first["ringabell"]["toy"]


def test_toy_blackbox_attack_config_repeats_the_batterys_entries():
    """eval/toy_attacks_blackbox measures the neutral-prompt and settings-sweep rows per method: the same entries
    (budgets, targets, images) as the full battery, so its rows compare with the battery's."""
    from pathlib import Path

    import yaml

    root = Path(__file__).parents[1] / "configs/eval"
    full = yaml.safe_load((root / "toy_attacks.yaml").read_text())["attacks"]
    black = yaml.safe_load((root / "toy_attacks_blackbox.yaml").read_text())["attacks"]
    assert black == [e for e in full if e["name"] in ("neutral-prompts", "settings-sweep")] and len(black) == 3


def test_attack_markdown_has_intervals_differences_and_seconds():
    from erase.report.compare import Column, card_evaluation
    from erase.report.runs import attack_markdown

    card = card_evaluation([Column("base", _neutral_records("base", 0)), Column("erased", _neutral_records("e", 12))])
    t = {"attack_wall": 0.0, "total_wall": 13.1}
    md = attack_markdown(card, seconds={"base": {"neutral-prompts": t}, "erased": {"neutral-prompts": t}})
    lines = md.splitlines()
    assert lines[0].startswith("| attack | threat model | base | erased | erased - base")
    row = lines[2]
    assert "0.0% [0-11] n=32" in row and "37.5% [23-55] n=32" in row and "CREATED" in row and "0 / 13" in row


def test_image_space_on_a_text_to_image_family_attacks_its_img2img_path(sd1):
    """The image-space attack edits a photo: on a text-to-image family the engine hands it the img2img path (also
    when the entry names t2i), and refuses it before any work when no photo is given."""
    from erase.evaluation.attack_items import AttackMaterial, AttackSuite
    from erase.models.tiny import tiny_image

    refs = [tiny_image(32)]
    with pytest.raises(AttackError, match="edits photos"):
        AttackSuite([{"name": "image-space"}], AttackMaterial(prompts=[PROMPT], references=refs), sd1)
    for entry in ({"name": "image-space"}, {"name": "image-space", "path": "t2i"}):
        suite = AttackSuite([entry], AttackMaterial(prompts=[PROMPT], references=refs, photos=[tiny_image(32)],
                                                    benign_prompts=[NEUTRAL]), sd1)
        assert suite.path_of(suite.specs[0]) == "img2img" and not suite._skip


def test_each_target_gets_its_own_benign_text_first(sd1):
    """The image-space attack's benign instruction and the sweep's compound clause are the target's own (target i
    gets benign text i, the others after it), not the first one for every target."""
    from erase.evaluation.attack_items import AttackMaterial, AttackSuite
    from erase.models.tiny import tiny_image

    benign = ["make the sky red", "add a tree", "paint the wall"]
    suite = AttackSuite([{"name": "image-space", "n_prompts": 4}],
                        AttackMaterial(prompts=[PROMPT], references=[tiny_image(32)], photos=[tiny_image(32)],
                                       benign_prompts=benign), sd1)
    firsts = [suite.target(suite.specs[0], i).benign_prompts for i in range(4)]
    assert [f[0] for f in firsts] == benign + benign[:1]
    assert all(sorted(f) == sorted(benign) for f in firsts)


def test_report_shows_images_per_attack_with_flagged_ones_blurred(tmp_path):
    import base64
    import io
    import re

    import numpy as np

    from erase.report.compare import Column
    from erase.report.run_report import render_comparison

    board = Image.fromarray((np.indices((32, 32)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    cols = []
    for label, flagged in (("base", 0), ("erased", 32)):
        root = tmp_path / label
        (root / "images").mkdir(parents=True)
        recs = _neutral_records(label, flagged)
        for i, r in enumerate(recs):
            r["image"] = f"images/{i}.png"
            board.save(root / r["image"])  # unblurred on disk: the report must blur flagged tiles itself
        cols.append(Column(label, recs, root))
    page = render_comparison(cols, tmp_path / "report.html", {"model": "m"}).read_text()
    assert 'id="attack-grids"' in page
    grids = {alt: Image.open(io.BytesIO(base64.b64decode(data))).convert("L") for alt, data in
             re.findall(r'<img alt="(neutral-prompts on \w+)" src="data:image/png;base64,([^"]+)"', page)}
    assert set(grids) == {"neutral-prompts on base", "neutral-prompts on erased"}
    assert grids["neutral-prompts on base"].width == 4 + 6 * (64 + 4)  # six tiles of 64 px
    tile = (10, 10, 58, 58)  # inside the first tile, clear of the red frame
    sharp = np.asarray(grids["neutral-prompts on base"].crop(tile), np.float32).std()
    blurred = np.asarray(grids["neutral-prompts on erased"].crop(tile), np.float32).std()
    assert sharp > 100 and blurred < sharp / 4
