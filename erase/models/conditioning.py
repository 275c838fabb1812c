"""What a denoiser is conditioned on, family-independently: text (`Conditioning`) and a source photo
(`ImageCondition`). The per-family spelling of both lives in `erase.models.architectures` and
`erase.models.editing`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor


@dataclass
class Conditioning:
    """Text conditioning of a batch: what the denoiser cross-attends to, plus family-specific extras."""

    embeds: Tensor  # (B, L, D) token embeddings
    pooled: Tensor | None = None  # (B, D') pooled embedding (SDXL, SD3, FLUX)
    extra: dict[str, Tensor] = field(default_factory=dict)  # SDXL "time_ids" (B, 6); FLUX "text_ids" (L, 3)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def select(self, index: Tensor | slice | Sequence[int]) -> "Conditioning":
        batched = {k: v[index] for k, v in self.extra.items() if k in _BATCHED_EXTRA}
        shared = {k: v for k, v in self.extra.items() if k not in _BATCHED_EXTRA}
        return Conditioning(self.embeds[index], None if self.pooled is None else self.pooled[index], {**shared, **batched})

    def repeat(self, n: int) -> "Conditioning":
        """Each row repeated n times in place (row i -> rows i*n .. i*n+n-1)."""
        return self.select(torch.arange(len(self), device=self.embeds.device).repeat_interleave(n))

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        first = items[0]
        extra = {
            k: torch.cat([c.extra[k] for c in items]) if k in _BATCHED_EXTRA else v for k, v in first.extra.items()
        }
        pooled = None if first.pooled is None else torch.cat([c.pooled for c in items])
        return Conditioning(torch.cat([c.embeds for c in items]), pooled, extra)

    def detach(self) -> "Conditioning":
        return Conditioning(
            self.embeds.detach(),
            None if self.pooled is None else self.pooled.detach(),
            {k: v.detach() for k, v in self.extra.items()},
        )

    def to(self, device=None, dtype=None) -> "Conditioning":
        def move(x: Tensor) -> Tensor:
            return x.to(device=device, dtype=dtype if x.is_floating_point() else None)

        return Conditioning(
            move(self.embeds), None if self.pooled is None else move(self.pooled), {k: move(v) for k, v in self.extra.items()}
        )


_BATCHED_EXTRA = {"time_ids"}  # extras with a batch dimension; the rest (FLUX text_ids) are shared


@dataclass
class ImageCondition:
    """The photo an edit starts from, in the form the family's denoiser takes it."""

    latents: Tensor  # IP2P: unscaled VAE mode (as the pipeline does); inpaint: [mask, masked latents]; Kontext: scaled latents

    def select(self, index) -> "ImageCondition":
        return ImageCondition(self.latents[index])

    def repeat(self, n: int) -> "ImageCondition":
        return ImageCondition(self.latents.repeat_interleave(n, dim=0))

    def null(self) -> "ImageCondition":
        """The image-unconditional branch that classifier-free guidance over the image uses (zeros, as IP2P does)."""
        return ImageCondition(torch.zeros_like(self.latents))
