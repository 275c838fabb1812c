"""Relearning: how few fine-tuning steps bring the concept back (concept resurgence, arXiv 2410.08074;
meta-unlearning, arXiv 2410.12777).

Fine-tune the erased model briefly on reference images of the concept with the plain diffusion loss

    min_theta  E_{x0, c, t, eps} || eps_theta(x_t, t, c) - eps ||^2        c = a concept prompt

through the shared training loop (`erase.training.train`: AdamW, grad clipping, accelerate), on a copy of the
model unless `in_place`. The result (kind "weights") is the relearned adapter, to be sampled with the concept
prompts, plus the weight delta. Resurgence is measured twice: the denoising loss on a fixed set of
(image, prompt, t, eps) before and after (`initial_loss` -> `final_loss`), and by detectors on `generate_with`.
For editing families the photo to edit (or, without one, the image-unconditional branch) conditions the loss.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from erase.concept import Concept
from erase.methods.base import FineTuneMethod, Original, text_only_image_condition
from erase.models.adapter import DiffusionAdapter
from erase.training import TrainConfig, train
from erase.evaluation.attacks.interface import Attack, AttackResult, AttackTarget, photo_condition
from erase.evaluation.attacks.optimisation import denoising_loss
from erase.evaluation.attacks.randomness import randint, randn


class _Denoising(FineTuneMethod):
    """Plain denoising on (reference image, concept prompt) pairs: the relearning objective as a training method."""

    name = "relearning"

    def __init__(self, target: AttackTarget, group: str, batch_size: int):
        self.target, self.group, self.batch_size = target, group, batch_size

    def setup(self, adapter: DiffusionAdapter, concept: Concept, original: Original, seed: int) -> None:
        self.adapter = adapter
        with torch.no_grad():
            self.x0 = self.target.reference_latents(adapter, "relearning")
            self.cond = adapter.encode_prompts(self.target.prompts)
            self.image = None
            if adapter.edits_images:  # photo i % P edits into reference image i
                self.image = (photo_condition(adapter, self.target.photo, self.target.mask, range(len(self.x0)))
                              if self.target.photo is not None else text_only_image_condition(adapter, len(self.x0)))

    def batch(self, images: list[int], prompts: list[int], t: Tensor, noise: Tensor, model: nn.Module | None = None) -> Tensor:
        image = None if self.image is None else self.image.select(images)
        return denoising_loss(self.adapter, self.x0[images], noise, t, self.cond.select(prompts), image, denoiser=model)

    def loss(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        b = self.batch_size
        images, prompts = randint(len(self.x0), b, generator), randint(len(self.cond), b, generator)
        t = self.adapter.sample_timesteps(b, generator)
        return self.batch(images, prompts, t, randn((b, *self.x0.shape[1:]), generator, self.x0), model), {}


@dataclass
class Relearning(Attack):
    name = "relearning"
    access = "white-box"
    needs_references = True

    steps: int = 100
    lr: float = 1e-5
    group: str = "all"  # module group fine-tuned (see DiffusionAdapter.module_group)
    batch_size: int = 1
    max_grad_norm: float | None = 1.0
    in_place: bool = False  # fine-tune the given adapter itself instead of a copy
    eval_points: int = 8

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator: torch.Generator | None = None) -> AttackResult:
        self.check(adapter)
        target.require_images(self.name)
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        seed = int(torch.randint(0, 2**31 - 1, (), generator=g))
        model = adapter if self.in_place else DiffusionAdapter(copy.deepcopy(adapter.pipe), adapter.spec)
        names = set(model.module_group(self.group))
        before = {n: p.detach().to("cpu", copy=True) for n, p in model.denoiser.named_parameters() if n in names}

        method = _Denoising(target, self.group, self.batch_size)
        method.group = self.group
        method.setup(model, None, None, seed)
        n = self.eval_points
        fixed = (randint(len(method.x0), n, g), randint(len(method.cond), n, g), model.sample_timesteps(n, g),
                 randn((n, *method.x0.shape[1:]), g, method.x0))
        with torch.no_grad():
            initial = method.batch(*fixed).item()

        cfg = TrainConfig(steps=self.steps, lr=self.lr, seed=seed, max_grad_norm=self.max_grad_norm,
                          cpu=model.device.type == "cpu", log_every=max(1, self.steps))
        concept = Concept(id="relearning", prompts=list(target.prompts))
        with tempfile.TemporaryDirectory(prefix="relearn-") as out:
            res = train(method, model, concept, cfg, out)
        with torch.no_grad():
            final = method.batch(*fixed).item()
        delta = {n: p.detach().cpu() - before[n] for n, p in model.denoiser.named_parameters() if n in before}
        delta = {n: d for n, d in delta.items() if d.abs().max() > 0}
        return self.result(
            "weights", prompts=list(target.prompts), adapter=model, weights_delta=delta, photo=target.photo,
            mask=target.mask, initial_loss=initial, final_loss=final, history=[h["loss"] for h in res.history],
            info={"trained_steps": res.steps, "seconds": res.seconds},
        )
