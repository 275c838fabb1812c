"""Concept ablation, model-based variant (Kumari et al., ICCV 2023).

The concept's prediction is pulled to the anchor's on images of the anchor:

    loss = || model(x_t, t, c_concept) - sg[model(x_t, t, c_anchor)] ||^2,   x_t = forward process of an anchor image

The target comes from the model being trained, under no_grad, as in the reference code; the anchor images are
sampled once from the original model with the anchor prompt (the reference generates ~1000 of them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from erase.concept import Concept
from erase.methods.base import FineTuneMethod, MethodError, Original, derived_generator, prediction_loss, text_only_image_condition
from erase.methods.registry import register
from erase.models.adapter import DiffusionAdapter


@register("ablation")
class ConceptAblation(FineTuneMethod):
    name = "ablation"

    def __init__(
        self,
        group: str = "xattn-kv",
        anchor_images: int = 64,
        num_steps: int = 25,
        guidance: float = 3.0,
        batch_size: int = 4,
        loss_weighting: str = "eps",  # "x0": see methods.base.prediction_loss
    ):
        self.group, self.anchor_images, self.num_steps = group, anchor_images, num_steps
        self.guidance, self.batch_size, self.loss_weighting = guidance, batch_size, loss_weighting

    def setup(self, adapter: DiffusionAdapter, concept: Concept, original: Original, seed: int) -> None:
        if not concept.anchor:
            raise MethodError(f"concept ablation needs an anchor prompt: set concept.anchor for {concept.id!r}")
        self.adapter = adapter
        with torch.no_grad():
            self.cond = adapter.encode_prompts(concept.prompts).detach()
            self.anchor = adapter.encode_prompts([concept.anchor]).detach()
            self.x0 = self._anchor_images(original, derived_generator(seed, "ablation-anchors"))

    @torch.no_grad()
    def _anchor_images(self, original: Original, g: torch.Generator) -> Tensor:
        a, n = self.adapter, self.anchor_images
        with original.adapters_off():
            return a.sample(
                self.anchor.repeat(n), a.encode_prompts([""]).repeat(n), self.num_steps, self.guidance,
                generator=g, denoiser=original.denoiser(), image=text_only_image_condition(a, n),
            )

    def loss(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        a, b = self.adapter, self.batch_size
        idx = torch.randint(self.x0.shape[0], (b,), generator=generator)
        which = torch.randint(len(self.cond), (b,), generator=generator)
        x0 = self.x0[idx]
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t = a.sample_timesteps(b, generator)
        x_t = a.add_noise(x0, noise, t)
        image = text_only_image_condition(a, b)
        with torch.no_grad():
            target = a.predict(x_t, t, self.anchor.repeat(b), image, denoiser=model)
        pred = a.predict(x_t, t, self.cond.select(which.to(self.cond.embeds.device)), image, denoiser=model)
        return prediction_loss(a, pred, target, t, self.loss_weighting), {}
