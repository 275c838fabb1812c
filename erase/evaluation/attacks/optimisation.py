"""What the white-box attacks that optimise an input (a prompt, an embedding, a photo, a latent) share: the model
held frozen while they do, and the diffusion training loss most of them minimise."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor, nn

from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition


@contextmanager
def frozen(*models: DiffusionAdapter | nn.Module | None) -> Iterator[None]:
    """Every module of the given adapters/modules in eval mode with requires_grad off; restored afterwards.
    Attacks optimise inputs, never the weights: this keeps gradients (and their memory) off the model."""
    modules: list[nn.Module] = []
    for m in models:
        if isinstance(m, DiffusionAdapter):
            modules += list(m.modules().values())
        elif isinstance(m, nn.Module):
            modules.append(m)
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    for p, _ in flags:
        p.requires_grad_(False)
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)


def denoising_loss(adapter: DiffusionAdapter, x0: Tensor, noise: Tensor, t: Tensor, cond: Conditioning,
                   image: ImageCondition | None = None, denoiser: nn.Module | None = None, criterion: str = "l2") -> Tensor:
    """|| model(x_t, t, c) - target(x0, noise, t) ||: the diffusion training loss (l2 = MSE, l1 = MAE)."""
    t = t.expand(len(x0)) if t.dim() == 0 else t
    x_t = adapter.add_noise(x0, noise, t)
    pred = adapter.predict(x_t, t, cond, image, denoiser=denoiser).float()
    tgt = adapter.target(x0, noise, t).float()
    return F.l1_loss(pred, tgt) if criterion == "l1" else F.mse_loss(pred, tgt)
