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
    assert set(ATTACKS) == {"unlearndiffatk", "p4d", "ringabell", "concept-inversion", "photo-inversion", "relearning"}
    assert {cls.access for cls in ATTACKS.values()} == {"white-box", "black-box", "white-box+original"}
    assert get_attack("Ring_A_Bell", eta=2.0).eta == 2.0
    assert get_attack("tina").name == "photo-inversion"
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
    r = get_attack("photo-inversion", num_steps=3).run(adapter, t, gen(0))
    assert r.kind == "latents" and r.rows == 2 and r.prompts == [""] and r.guidance == 1.0
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
        r = get_attack("photo-inversion", num_steps=steps).run(adapter, t, gen(0))
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
