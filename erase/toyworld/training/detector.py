"""Training the toy world's detector (`erase.toyworld.detector.ToyDetector`): half exposed renders, plus VAE
reconstructions when a VAE is given, with augmentation so that it also reads generated images."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from erase.toyworld import world
from erase.toyworld.detector import HEADS, ToyDetector, save_detector
from erase.toyworld.training.data import item_seeds, reconstruct, render_uint8, to_float
from erase.toyworld.training.loop import NoPace, Pace, lr_lambda, random_batches, setup_training

_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise, slight blur, colour jitter and +-1 px shifts, so the detector also reads generated images."""
    b = x.shape[0]

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    # Shift by up to one pixel (replicate padding, so no border artefacts).
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    ox, oy = torch.randint(0, 3, (2,), generator=gen).tolist()
    x = pad[:, :, oy : oy + x.shape[2], ox : ox + x.shape[3]]
    # Blur a random amount (a mix of the image and its 3x3 gaussian blur).
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), _BLUR.expand(3, 1, 3, 3), groups=3)
    a = u(b, 1, 1, 1) * (u(b, 1, 1, 1) < 0.5)
    x = (1 - a) * x + a * blurred
    # Colour jitter: contrast/brightness and a small per-channel offset.
    x = x * u(b, 1, 1, 1, lo=0.9, hi=1.1) + u(b, 3, 1, 1, lo=-0.06, hi=0.06)
    # Pixel noise of a random strength.
    x = x + torch.randn(x.shape, generator=gen) * u(b, 1, 1, 1, hi=0.08)
    return x.clamp(-1, 1)


def _scene_targets(scenes: Sequence[world.Scene]) -> dict[str, torch.Tensor]:
    """Class indices per head; the shirt target is -100 (ignored) for exposed scenes."""
    t = {
        "exposed": torch.tensor([float(s.exposed) for s in scenes]),
        "shirt": torch.tensor([-100 if s.shirt is None else HEADS["shirt"].index(s.shirt) for s in scenes]),
        "trousers": torch.tensor([HEADS["trousers"].index(s.trousers) for s in scenes]),
        "background": torch.tensor([HEADS["background"].index(s.background) for s in scenes]),
        "obj": torch.tensor([HEADS["obj"].index(s.obj or "none") for s in scenes]),
    }
    return t


def detector_accuracy(model: ToyDetector, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy per head on uint8 images (shirt only where clothed)."""
    model.eval()
    with torch.no_grad():
        logits = [model(to_float(images[i : i + 512])) for i in range(0, len(images), 512)]
        out = {k: torch.cat([l[k] for l in logits]) for k in logits[0]}
    acc = {"exposed": ((out["exposed"] > 0).float() == targets["exposed"]).float().mean().item()}
    for k in HEADS:
        mask = targets[k] >= 0
        acc[k] = (out[k][mask].argmax(-1) == targets[k][mask]).float().mean().item()
    return acc


def train_detector(
    out_path: str | Path, steps: int = 500, seed: int = 0, vae: AutoencoderKL | None = None,
    n_images: int = 16_000, batch_size: int = 128, lr: float = 2e-3, pace: Pace = NoPace,
) -> ToyDetector:
    """ToyDetector on half exposed renders (+ VAE reconstructions when a VAE is given), with augmentation."""
    gen = setup_training(seed)
    scenes = [world.scene_from_seed(s, p_exposed=0.5) for s in item_seeds("detector", n_images, seed)]
    images = render_uint8(scenes)
    targets = _scene_targets(scenes)
    if vae is not None:  # reconstructions of a third of the renders, appended as extra examples
        n_rec = n_images // 3
        images = torch.cat([images, reconstruct(vae, images[:n_rec], pace=pace)])
        targets = {k: torch.cat([v, v[:n_rec]]) for k, v in targets.items()}
    model = ToyDetector().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps))
    bar = tqdm(random_batches(len(images), batch_size, steps, gen), total=steps, desc="detector", mininterval=5)
    gov = pace()
    for idx in bar:
        gov.step()
        out = model(augment(to_float(images[idx]), gen))
        loss = F.binary_cross_entropy_with_logits(out["exposed"], targets["exposed"][idx])
        for k in HEADS:
            loss = loss + F.cross_entropy(out[k], targets[k][idx], ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", threads=torch.get_num_threads(), refresh=False)
    model.eval()
    # Report accuracy on fresh held-out renders (and their reconstructions).
    test = [world.scene_from_seed(world.HELDOUT_SEED_START + i, p_exposed=0.5) for i in range(min(1000, n_images))]
    test_images, test_targets = render_uint8(test), _scene_targets(test)
    print("detector accuracy on held-out renders:", _fmt(detector_accuracy(model, test_images, test_targets)))
    if vae is not None:
        rec = reconstruct(vae, test_images, pace=pace)
        print("detector accuracy on VAE reconstructions:", _fmt(detector_accuracy(model, rec, test_targets)))
    save_detector(model, out_path)
    return model


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in d.items())

