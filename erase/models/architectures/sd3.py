"""SD3 MMDiT: two CLIP + one T5 text encoders through the pipeline's `encode_prompt`, joint attention over
text and image tokens (the transformer patchifies the latents itself), rectified-flow schedule."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from erase.models.architectures.base import Architecture, Selector, context_stream_selectors
from erase.models.conditioning import Conditioning, ImageCondition
from erase.models.schedule import FlowSchedule


class SD3Architecture(Architecture):
    name = "sd3"
    schedule = FlowSchedule

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        embeds, _, pooled, _ = self.adapter.pipe.encode_prompt(
            list(prompts), None, None, device=self.adapter.device, do_classifier_free_guidance=False,
            max_sequence_length=self.adapter.max_sequence_length,
        )
        return Conditioning(embeds, pooled)

    def predict(
        self, net: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, image: ImageCondition | None, guidance: float
    ) -> Tensor:
        return net(
            hidden_states=x_t, timestep=t, encoder_hidden_states=cond.embeds, pooled_projections=cond.pooled, return_dict=False
        )[0]

    def selectors(self) -> tuple[Selector, Selector, Selector]:
        return context_stream_selectors()
