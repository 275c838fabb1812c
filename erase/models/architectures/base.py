"""What one denoiser architecture spells its own way: text encoding, the denoiser call, its noise schedule and
which parameters read the text. `DiffusionAdapter` holds one `Architecture` and hides the spelling."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn

from erase.models.conditioning import Conditioning, ImageCondition
from erase.models.schedule import DDPMSchedule, FlowSchedule

Selector = Callable[[str], bool]  # parameter name -> in the group


class Architecture:
    """Base of the per-architecture parts of `DiffusionAdapter` (one subclass per file in this package).

    `adapter` gives the pipeline, device, dtype and the family spec; `schedule` is the noise-schedule class the
    architecture is trained with (DDPM for UNets, rectified flow for the transformers).
    """

    name: str = ""
    schedule: type[DDPMSchedule] | type[FlowSchedule] = DDPMSchedule

    def __init__(self, adapter) -> None:
        self.adapter = adapter

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        raise NotImplementedError

    def predict(
        self, net: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, image: ImageCondition | None, guidance: float
    ) -> Tensor:
        """The denoiser `net`'s output for latents (B, C, h, w) at timesteps t (B,) in denoiser units."""
        raise NotImplementedError

    def selectors(self) -> tuple[Selector, Selector, Selector]:
        """(cross-attention keys/values, all of cross-attention, self-attention), by parameter name."""
        raise NotImplementedError


def context_stream_selectors() -> tuple[Selector, Selector, Selector]:
    """MMDiT/FLUX: text enters through the context stream: `add_k_proj/add_v_proj` play the role of the
    cross-attention keys/values, `add_q_proj/to_add_out/norm_added_*` the rest of it."""
    kv = lambda n: ".add_k_proj." in n or ".add_v_proj." in n
    xattn = lambda n: any(k in n for k in (".add_q_proj.", ".add_k_proj.", ".add_v_proj.", ".to_add_out.", ".norm_added_"))
    self_attn = lambda n: ".attn." in n and not xattn(n)
    return kv, xattn, self_attn
