"""SDXL UNets (and SDXL InstructPix2Pix): two CLIP text encoders through the pipeline's own `encode_prompt`,
the pooled embedding and the micro-conditioning time ids as the UNet's added conditions."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from erase.models.architectures.unet import UNetArchitecture
from erase.models.conditioning import Conditioning


class SDXLArchitecture(UNetArchitecture):
    name = "sdxl"

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        out = self.adapter.pipe.encode_prompt(list(prompts), device=self.adapter.device, do_classifier_free_guidance=False)
        embeds, pooled = out[0], out[2]
        return Conditioning(embeds, pooled, {"time_ids": self.time_ids(len(prompts), pooled)})

    def time_ids(self, n: int, pooled: Tensor) -> Tensor:
        """(original size, crop top-left, target size) = the native square, uncropped, for every row."""
        size = self.adapter.default_size
        ids = torch.tensor([size, size, 0, 0, size, size], dtype=pooled.dtype, device=pooled.device)
        return ids.repeat(n, 1)

    def added_conditions(self, cond: Conditioning) -> dict[str, Tensor] | None:
        return {"text_embeds": cond.pooled, "time_ids": cond.extra["time_ids"]}
