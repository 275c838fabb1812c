"""How each editing family takes its source photo (`FamilySpec.editing`): one class per kind.

InstructPix2Pix concatenates the photo's unscaled VAE latents to the noisy latents; inpainting models the
mask and the masked photo's latents; FLUX Kontext appends the photo's latents as extra tokens (the concatenation
itself is the architecture's part of `predict`: erase.models.architectures).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from erase.models.conditioning import ImageCondition


class PhotoCondition:
    """A family's photo conditioning; `required`: every prediction needs one (the denoiser has image channels)."""

    kind: str | None = None
    required = False

    def __init__(self, adapter) -> None:
        self.adapter = adapter

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> ImageCondition:
        raise ValueError(
            f"{self.adapter.family} does not take an image condition (it edits photos through img2img/SDEdit only)"
        )


class InstructCondition(PhotoCondition):
    kind, required = "instruct", True

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> ImageCondition:
        ad = self.adapter
        z = ad.vae.encode(images.to(ad.device, ad.vae.dtype)).latent_dist.mode()
        return ImageCondition(z.to(ad.dtype))  # IP2P feeds unscaled latents, as its pipeline does


class InpaintCondition(PhotoCondition):
    kind, required = "inpaint", True

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> ImageCondition:
        if masks is None:
            raise ValueError("inpainting needs a mask (1 = region to repaint)")
        ad = self.adapter
        masks = masks.to(ad.device, images.dtype)
        masked = ad.encode_images(images.to(ad.device) * (masks < 0.5))
        small = nn.functional.interpolate(masks, size=masked.shape[-2:])
        return ImageCondition(torch.cat([small.to(ad.dtype), masked], dim=1))


class KontextCondition(PhotoCondition):
    kind = "kontext"  # optional: without a photo Kontext generates from text alone

    def __call__(self, images: Tensor, masks: Tensor | None = None) -> ImageCondition:
        return ImageCondition(self.adapter.encode_images(images))


PHOTO_CONDITIONS: dict[str | None, type[PhotoCondition]] = {
    c.kind: c for c in (PhotoCondition, InstructCondition, InpaintCondition, KontextCondition)
}
