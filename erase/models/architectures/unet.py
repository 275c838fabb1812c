"""SD1/SD2 UNets (and their InstructPix2Pix / inpainting variants): one CLIP text encoder, the photo
conditioning concatenated to the latents as extra channels, DDPM schedule."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from erase.models.architectures.base import Architecture, Selector
from erase.models.conditioning import Conditioning, ImageCondition


class UNetArchitecture(Architecture):
    name = "unet"

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return Conditioning(self.adapter.encode_clip_tokens(self.adapter.tokenize(prompts)))

    def added_conditions(self, cond: Conditioning) -> dict[str, Tensor] | None:
        """The UNet's `added_cond_kwargs` (none for SD1/2)."""
        return None

    def predict(
        self, net: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, image: ImageCondition | None, guidance: float
    ) -> Tensor:
        x_in = x_t if image is None else torch.cat([x_t, image.latents.to(x_t.dtype)], dim=1)
        added = self.added_conditions(cond)
        return net(x_in, t, encoder_hidden_states=cond.embeds, added_cond_kwargs=added, return_dict=False)[0]

    def selectors(self) -> tuple[Selector, Selector, Selector]:
        """Cross-attention is `attn2` (its to_k/to_v read the text), self-attention `attn1`."""
        kv = lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n
        xattn = lambda n: ".attn2." in n
        self_attn = lambda n: ".attn1." in n
        return kv, xattn, self_attn
