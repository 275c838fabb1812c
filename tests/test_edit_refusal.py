"""Edit refusal on the tiny editing families, its guidance-proof property, and the photo sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from erase.concept import Concept
from erase.methods.base import MethodError
from erase.methods.edit_refusal import EditRefusal
from erase.models.adapter import DiffusionAdapter
from erase.models.families import get_family
from erase.models.tiny import tiny_pipeline
from erase.photos import folder_photos
from erase.toyworld.evaluation import toy_photos
from erase.training import LoraSpec, TrainConfig, train

CONCEPT = Concept(
    id="toy", prompts=["a shirtless person"], anchor="a person", preserve=["a person in a red shirt"],
    forbidden_edits=["take off the shirt"], benign_edits=["make the shirt blue"],
)


def _adapter(family):
    a = DiffusionAdapter(tiny_pipeline(family))
    a.default_size = 32
    return a


@pytest.mark.parametrize("family,path", [("ip2p", "instruct"), ("sd-inpaint", "inpaint"), ("kontext", "kontext"), ("sd1", "sdedit")])
@pytest.mark.parametrize("lora", [False, True])
def test_each_editing_path_trains(family, path, lora, tmp_path):
    a = _adapter(family)
    m = EditRefusal(photos={"source": "toy", "n": 4}, batch_size=2)
    before = {n: p.clone() for n, p in a.denoiser.named_parameters()}
    r = train(m, a, CONCEPT, TrainConfig(steps=2, lr=1e-3, cpu=True, lora=LoraSpec(rank=2) if lora else None), tmp_path)
    assert m.active_path == path
    assert {f"refuse_{b}" for b in m.active_branches} <= set(r.history[-1])
    assert "preserve" in r.history[-1] and "text_agnostic" in r.history[-1]
    if not lora:
        assert any(not torch.equal(p, before[n]) for n, p in a.denoiser.named_parameters())


@pytest.mark.parametrize("eta_null", [0.0, 1.0])
def test_guidance_proof_targets(eta_null, tmp_path):
    """Shifted (eta_null = eta): every branch's target differs from the original by the same -eta*d, so any guidance
    combination is the safe edit's moved by -eta*d. Anchored (eta_null = 0): the null branches keep the original
    and the guided target is the safe edit's moved by -s_T*eta*d, more refusal with more text guidance."""
    a = _adapter("ip2p")
    m = EditRefusal(photos={"source": "toy", "n": 2}, batch_size=2, eta=1.0, eta_null=eta_null, preserve_weight=0,
                    text_agnostic_weight=0)
    from erase.methods.base import Original

    m.setup(a, CONCEPT, Original(a, lora=False), seed=0)
    captured = []
    import erase.methods.edit_refusal as er

    real = er.prediction_loss

    def spy(adapter, pred, target, t, weighting="eps"):
        captured.append(target.detach())
        return real(adapter, pred, target, t, weighting)

    er.prediction_loss = spy
    try:
        m.loss(a.denoiser, 0, torch.Generator().manual_seed(0))
    finally:
        er.prediction_loss = real
    cond_t, image_t, uncond_t = captured
    # rebuild the original branch predictions with the same draws
    g = torch.Generator().manual_seed(0)
    b = 2
    idx = torch.randint(len(m.x0_photo), (b,), generator=g)
    use = (torch.rand(b, generator=g) < 0.5).view(-1, 1, 1, 1)
    x0 = torch.where(use, m.x0_counter[idx], m.x0_photo[idx])
    noise = torch.randn(x0.shape, generator=g)
    t = m._timesteps(b, g)
    x_t = a.add_noise(x0, noise, t)
    text = m.forbidden.select(torch.randint(len(m.forbidden), (b,), generator=g))
    image = m.image.select(idx)
    with torch.no_grad():
        e_f = a.predict(x_t, t, text, image)
        e_s = a.predict(x_t, t, m.safe.repeat(b), image)
        e_i = a.predict(x_t, t, m.empty.repeat(b), image)
        e_u = a.predict(x_t, t, m.empty.repeat(b), image.null())
    d = e_f - e_s
    for s_i, s_t in [(1.5, 7.5), (1.0, 1.0), (3.0, 0.5)]:
        guided_target = uncond_t + s_i * (image_t - uncond_t) + s_t * (cond_t - image_t)
        guided_safe = e_u + s_i * (e_i - e_u) + s_t * (e_s - e_i)
        moved = d if eta_null else s_t * d
        assert torch.allclose(guided_target, guided_safe - moved, atol=1e-5)
    if not eta_null:
        assert torch.allclose(image_t, e_i, atol=1e-6) and torch.allclose(uncond_t, e_u, atol=1e-6)


def test_path_mismatch_and_missing_instructions():
    with pytest.raises(MethodError, match="does not match family"):
        EditRefusal(path="instruct").check(get_family("sd1"))
    a = _adapter("ip2p")
    from erase.methods.base import Original

    with pytest.raises(MethodError, match="forbidden edit instructions"):
        EditRefusal(photos={"source": "toy", "n": 2}).setup(a, Concept(id="x", prompts=["a"]), Original(a, False), 0)
    with pytest.raises(MethodError, match="method.params.photos"):  # no silent fallback to the toy world's photos
        EditRefusal().setup(a, Concept(id="x", prompts=["a"], forbidden_edits=["b"]), Original(a, False), 0)


def test_toy_photos_have_masks_and_counterparts():
    ps = toy_photos(3, size=32)
    assert ps.photos.shape == (3, 3, 32, 32) and ps.counterparts.shape == (3, 3, 32, 32)
    region = ps.masks.bool().expand(-1, 3, -1, -1)
    diff = (ps.photos - ps.counterparts).abs()
    assert diff[region].mean() > 10 * diff[~region].mean()  # the forbidden edit changes the masked region


def test_folder_photos_skip_bad_files_with_a_count(tmp_path):
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "good.png")
    Image.fromarray(rgb).save(tmp_path / "second.jpg")
    Image.fromarray(rgb[:8, :8]).save(tmp_path / "tiny.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    Image.fromarray(rgb).save(tmp_path / "benign_only.png")
    ps = folder_photos(tmp_path, size=32, min_size=16)  # no manifest: every image file of the folder
    assert len(ps) == 3
    assert ps.skipped == {"unreadable": 1, "too_small": 1, "non_rgb": 1}
    with pytest.raises(ValueError, match="no usable photos"):
        folder_photos(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path, size=4096)


def test_text_agnostic_term_trains_every_text_alike():
    """The SafeGen term pulls the exposed result's states toward the safe photo under no text, the forbidden text
    and a benign text: trained on the empty prompt alone, guidance would point back toward the concept."""
    from erase.methods.base import Original

    a = _adapter("sd1")
    m = EditRefusal(photos={"source": "toy", "n": 2}, batch_size=2, branches=["cond"], preserve_weight=0,
                    text_agnostic_weight=1.0)
    m.setup(a, CONCEPT, Original(a, lora=False), seed=0)
    texts = []
    real = a.predict

    def spy(x_t, t, cond, image=None, denoiser=None):
        if denoiser is a.denoiser:  # the trained model's call (one batch of all terms, 2 rows each)
            texts.extend(chunk[0].clone() for chunk in cond.embeds.split(2))
        return real(x_t, t, cond, image, denoiser=denoiser)

    a.predict = spy
    m.loss(a.denoiser, 0, torch.Generator().manual_seed(0))
    refuse, *agnostic = texts
    assert len(agnostic) == 3
    assert torch.equal(agnostic[0], m.empty.embeds[0]) and torch.equal(agnostic[2], m.benign.embeds[0])
    assert torch.equal(agnostic[1], refuse)
