"""Embedding-space attack: the whole prompt (or edit instruction) embedding optimised, no projection to tokens.

With open weights anyone can feed `prompt_embeds` straight to the denoiser, so the white-box upper bound of every
text attack (UnlearnDiffAtk, P4D, Ring-A-Bell and concept inversion search subsets of this space) is:

    min_E  E_{x0, t, eps} || eps_erased(x_t(x0, eps), t, E ; photo) - eps ||^2      E initialised at E(prompt)

over the full (L, D) conditioning (and the pooled embedding where the family has one), Adam, lr `lr`, `steps`
steps, with x0 = reference images of the concept (text-to-image) or the forbidden results paired with their
photos (editors: the forbidden instruction's embedding, the photo as the condition; inpainting with its mask).
`max_norm`, if set, keeps E within that relative L2 distance of the starting embedding (a budget; None = free,
the upper bound). Works for every family whose text is a Conditioning (SD1/2, SDXL, SD3, FLUX, editors).

The result is one embedding per concept prompt (kind "embeddings", fed as prompt_embeds; pooled too).
`initial_loss`/`final_loss`: the objective on a fixed set of (image, t, eps) draws before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from erase.evaluation.attacks.interface import Attack, AttackError, AttackResult, AttackTarget
from erase.evaluation.attacks.optimisation import denoising_loss, frozen
from erase.evaluation.attacks.randomness import randint, randn, seeded
from erase.models.adapter import Conditioning, DiffusionAdapter


@dataclass
class EmbeddingSpace(Attack):
    name = "embedding-space"
    access = "white-box"
    needs_references = True  # reference images of the concept (forbidden results for editors)

    steps: int = 1000  # Adam steps per prompt (reference budget: the soft-prompt attacks' order of magnitude)
    lr: float = 1e-2
    batch_size: int = 4  # (image, t, eps) draws per step
    max_norm: float | None = None  # relative L2 budget ||E - E0|| / ||E0||; None = unconstrained (upper bound)
    eval_points: int = 8
    resample_noise: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise AttackError(f"steps must be a positive number of optimisation steps, not {self.steps}")
        if self.lr <= 0:
            raise AttackError(f"lr must be positive, not {self.lr}")
        if self.max_norm is not None and self.max_norm <= 0:
            raise AttackError(f"max_norm must be a positive relative budget (or null for none), not {self.max_norm}")

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator: torch.Generator | None = None) -> AttackResult:
        self.check(adapter)
        x0 = target.reference_latents(adapter, self.name)  # before any work: a clear error without references
        if adapter.spec.editing == "inpaint" and target.mask is None:
            raise AttackError(f"{self.name} on an inpainting family needs masks: AttackTarget(mask=...)")
        g = seeded(generator)
        image = target.image_condition(adapter, len(x0))
        conds, first, last, history = [], [], [], []
        with frozen(adapter):
            for prompt in target.prompts:
                c, i0, i1, h = self._attack_prompt(adapter, prompt, x0, image, g)
                conds.append(c), first.append(i0), last.append(i1), history.extend(h)
        return self.result(
            "embeddings", prompts=list(target.prompts), conditioning=Conditioning.cat(conds), photo=target.photo,
            mask=target.mask, initial_loss=sum(first) / len(first), final_loss=sum(last) / len(last),
            history=history, budget={"steps": self.steps, "max_norm": self.max_norm},
            info={"per_prompt_final_loss": last},
        )

    def _attack_prompt(self, adapter, prompt: str, x0: Tensor, image, g) -> tuple[Conditioning, float, float, list[float]]:
        with torch.no_grad():
            start = adapter.encode_prompts([prompt]).detach()
        embeds = start.embeds.float().clone().requires_grad_(True)
        pooled = None if start.pooled is None else start.pooled.float().clone().requires_grad_(True)
        params = [p for p in (embeds, pooled) if p is not None]
        ref_norm = torch.cat([p.detach().flatten() for p in params]).norm()

        def conditioning(rows: int) -> Conditioning:
            c = Conditioning(embeds.to(start.embeds.dtype), None if pooled is None else pooled.to(start.embeds.dtype),
                             start.extra)
            return c.select([0] * rows)

        def loss_at(draw) -> Tensor:
            idx, t, noise = draw
            img = None if image is None else image.select(idx)
            return denoising_loss(adapter, x0[idx], noise, t, conditioning(len(idx)), img)

        def draw(n: int):
            return randint(len(x0), n, g), adapter.sample_timesteps(n, g), randn((n, *x0.shape[1:]), g, x0)

        fixed = draw(self.eval_points)
        with torch.no_grad():
            initial = loss_at(fixed).item()
        opt = torch.optim.Adam(params, lr=self.lr)
        history = []
        for _ in range(self.steps):
            loss = loss_at(draw(self.batch_size) if self.resample_noise else fixed)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if self.max_norm is not None:
                self._project(params, [start.embeds.float(), None if pooled is None else start.pooled.float()], ref_norm)
            history.append(loss.item())
        with torch.no_grad():
            final = loss_at(fixed).item()
        return conditioning(1).detach(), initial, final, history

    @torch.no_grad()
    def _project(self, params: list[Tensor], starts: list[Tensor | None], ref_norm: Tensor) -> None:
        """Pull the embedding back onto the ball ||E - E0|| <= max_norm * ||E0||."""
        diff = torch.cat([(p - s).flatten() for p, s in zip(params, starts) if s is not None])
        limit = self.max_norm * ref_norm
        if diff.norm() > limit:
            scale = limit / diff.norm()
            for p, s in zip(params, starts):
                if s is not None:
                    p.copy_(s + (p - s) * scale)
