"""FLUX.1 and FLUX.1 Kontext: CLIP + T5 through the pipeline's `encode_prompt`, latents packed into tokens of
2x2 patches with 3-axis position ids, guidance distilled into an embedding, timesteps divided by 1000;
Kontext's photo tokens appended to the sequence (id axis 0 = 1). Rectified-flow schedule."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from erase.models.architectures.base import Architecture, Selector, context_stream_selectors
from erase.models.conditioning import Conditioning, ImageCondition
from erase.models.schedule import FlowSchedule


class FluxArchitecture(Architecture):
    name = "flux"
    schedule = FlowSchedule

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        embeds, pooled, text_ids = self.adapter.pipe.encode_prompt(
            list(prompts), None, device=self.adapter.device, max_sequence_length=self.adapter.max_sequence_length
        )
        return Conditioning(embeds, pooled, {"text_ids": text_ids})

    def predict(
        self, net: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, image: ImageCondition | None, guidance: float
    ) -> Tensor:
        b, c, h, w = x_t.shape
        tokens = pack(x_t)
        ids = latent_ids(h // 2, w // 2, x_t.device, x_t.dtype)
        n = tokens.shape[1]
        if image is not None:  # Kontext: photo tokens appended to the sequence, told apart by id[..., 0] = 1
            photo_ids = latent_ids(image.latents.shape[-2] // 2, image.latents.shape[-1] // 2, x_t.device, x_t.dtype)
            photo_ids[..., 0] = 1
            tokens = torch.cat([tokens, pack(image.latents.to(x_t.dtype))], dim=1)
            ids = torch.cat([ids, photo_ids])
        config = getattr(net, "module", net).config  # DDP wraps the transformer
        g = torch.full((b,), guidance, device=x_t.device, dtype=x_t.dtype) if config.guidance_embeds else None
        out = net(
            hidden_states=tokens,
            timestep=t.to(x_t.dtype) / 1000,
            guidance=g,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.embeds,
            txt_ids=cond.extra["text_ids"],
            img_ids=ids,
            return_dict=False,
        )[0]
        return unpack(out[:, :n], c, h, w)

    def selectors(self) -> tuple[Selector, Selector, Selector]:
        return context_stream_selectors()


def pack(x: Tensor) -> Tensor:
    """(B, C, H, W) -> FLUX's (B, H/2 * W/2, 4C) tokens of 2x2 patches."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: Tensor, c: int, h: int, w: int) -> Tensor:
    b = tokens.shape[0]
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def latent_ids(h: int, w: int, device, dtype) -> Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)
