"""Inversion probes that separate erasure methods (Memories of Forgotten Concepts, arXiv 2412.00782; When Are
Concepts Erased?, arXiv 2505.17013). Reconstruction alone proves nothing (a deterministic ODE maps its own
inversion back to the photo, whatever the weights); these probes always compare with the base model.

- "base-inversion" (white-box+original): DDIM-invert the exposed reference with the BASE model (empty prompt;
  editors: conditioned on the clothed photo with an empty instruction), then regenerate from those seeds with
  the ERASED model on the same grid. The base reconstructs by construction; the erased model lands back on the
  concept only if the concept still lies where the base's seeds lead.
- "noise-injection" (white-box): re-noise the exposed reference to several strengths s (the state at grid index
  (1 - s) * num_steps, `draws` noises per reference) and denoise with the attacked model under the empty prompt
  (editors: the clothed photo, empty instruction). One result per strength (variant "strength=0.5"). An erasure
  that only redirects the prompt keeps the exposed state's basin; one that lowered its likelihood pulls it away.
- "inversion-likelihood" (white-box; base optional): invert the references with the attacked model (and with
  the base when given) and measure the seeds under N(0, I): mean negative log-likelihood per dimension, the
  norm ratio ||x_T|| / sqrt(d) (1 for a typical Gaussian seed) and the reconstruction error of regenerating
  from the seed. High-likelihood, faithful seeds mean the model can still produce the image from noise it
  would draw. Kind "statistics": numbers in `statistics`, no images (`*_base` and `delta_*` = erased - base).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from erase.evaluation.attacks.generation import denoise
from erase.evaluation.attacks.interface import Attack, AttackError, AttackResult, AttackTarget, photo_condition
from erase.evaluation.attacks.optimisation import frozen
from erase.evaluation.attacks.randomness import randn, seeded
from erase.evaluation.attacks.photo_inversion import ddim_invert
from erase.models.adapter import DiffusionAdapter, ImageCondition


def _inputs(adapter: DiffusionAdapter, target: AttackTarget, name: str, prompt: str):
    """Reference latents, the (empty) prompt's conditioning per row, and the editors' photo condition."""
    images = target.require_images(name)
    if adapter.spec.editing == "inpaint" and target.mask is None:
        raise AttackError(f"{name} on an inpainting family needs masks: AttackTarget(mask=...)")
    x0 = adapter.encode_images(images.to(adapter.device))
    cond = adapter.encode_prompts([prompt]).select([0] * len(x0))
    image = None
    if adapter.edits_images:
        photo = target.photo if target.photo is not None else images
        image = photo_condition(adapter, photo, target.mask, range(len(x0)))
    return images, x0, cond, image


def _rows(x: Tensor | None, n: int) -> Tensor | None:
    return None if x is None else x[[i % len(x) for i in range(n)]]


def gaussian_stats(x: Tensor) -> dict[str, float]:
    """Mean NLL per dimension under N(0, I) and the norm ratio ||x|| / sqrt(d), averaged over the batch."""
    flat = x.float().flatten(1)
    d = flat.shape[1]
    nll = 0.5 * (flat.pow(2) + math.log(2 * math.pi)).mean(1)
    return {"nll_per_dim": nll.mean().item(), "norm_ratio": (flat.norm(dim=1) / math.sqrt(d)).mean().item()}


@dataclass
class BaseInversion(Attack):
    name = "base-inversion"
    access = "white-box+original"
    needs_references = True  # reference images of the concept (forbidden results for editors)

    num_steps: int = 50
    prompt: str = ""  # inversion and regeneration prompt / instruction: empty = text-free
    guidance: float = 1.0

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator=None) -> AttackResult:
        self.check(adapter)
        base = target.require_original(adapter, self.name)
        images = target.require_images(self.name)
        with frozen(adapter, base.adapter, base.denoiser()), torch.no_grad():
            _, x0, cond, image = _inputs(base.adapter, target, self.name, self.prompt)
            x_T = ddim_invert(base.adapter, x0, cond, self.num_steps, image, predict=base.predict)
        photo = target.photo if target.photo is not None else images
        return self.result(
            "latents", prompts=[self.prompt], latents=x_T.cpu(), num_steps=self.num_steps, guidance=self.guidance,
            photo=_rows(photo, len(x_T)) if adapter.edits_images else None, mask=_rows(target.mask, len(x_T)),
            variant="invert with base, regenerate with attacked",
            statistics=gaussian_stats(x_T), budget={"num_steps": self.num_steps},
        )


@dataclass
class NoiseInjection(Attack):
    name = "noise-injection"
    access = "white-box"
    needs_references = True  # reference images of the concept (forbidden results for editors)

    strengths: tuple[float, ...] = (0.25, 0.5, 0.75)  # share of the schedule re-noised (1 = pure noise)
    num_steps: int = 50
    draws: int = 4  # noises per reference image (images cycle over references x draws)
    prompt: str = ""
    guidance: float = 1.0

    def __post_init__(self) -> None:
        if not self.strengths or any(not 0 < s <= 1 for s in self.strengths):
            raise AttackError(f"strengths must lie in (0, 1], not {list(self.strengths)}")
        if self.draws < 1 or self.num_steps < 1:
            raise AttackError("draws and num_steps must be positive")

    def start_step(self, strength: float) -> int:
        return min(self.num_steps - 1, max(0, round((1 - strength) * self.num_steps)))

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator=None) -> list[AttackResult]:
        self.check(adapter)
        g = seeded(generator)
        images = target.require_images(self.name)
        with torch.no_grad():
            _, x0, _, _ = _inputs(adapter, target, self.name, self.prompt)
        x0 = x0.repeat_interleave(self.draws, 0)
        ts = adapter.inference_timesteps(self.num_steps).to(adapter.device)
        photo = target.photo if target.photo is not None else images
        rows = [i // self.draws for i in range(len(x0))]
        out = []
        for s in self.strengths:
            start = self.start_step(s)
            t = ts[start].expand(len(x0))
            x_t = adapter.add_noise(x0, randn(x0.shape, g, x0), t)
            out.append(self.result(
                "latents", prompts=[self.prompt], latents=x_t.cpu(), start_step=start, num_steps=self.num_steps,
                guidance=self.guidance, variant=f"strength={s:g}",
                photo=photo[[r % len(photo) for r in rows]] if adapter.edits_images else None,
                mask=None if target.mask is None else target.mask[[r % len(target.mask) for r in rows]],
                budget={"strength": s, "start_step": start, "num_steps": self.num_steps},
            ))
        return out


@dataclass
class InversionLikelihood(Attack):
    name = "inversion-likelihood"
    access = "white-box"
    needs_references = True  # reference images of the concept (forbidden results for editors)

    num_steps: int = 50
    prompt: str = ""

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator=None) -> AttackResult:
        self.check(adapter)
        with frozen(adapter), torch.no_grad():
            _, x0, cond, image = _inputs(adapter, target, self.name, self.prompt)
            stats = self._probe(adapter, x0, cond, image, adapter.predict)
            if target.original is not None:
                base = target.require_original(adapter, self.name)
                with frozen(base.adapter, base.denoiser()):
                    _, bx0, bcond, bimage = _inputs(base.adapter, target, self.name, self.prompt)
                    b = self._probe(base.adapter, bx0, bcond, bimage, base.predict, base.denoiser())
                stats.update({f"{k}_base": v for k, v in b.items()})
                stats.update({f"delta_{k}": stats[k] - b[k] for k in b})
        return self.result("statistics", statistics=stats, variant="inverted-latent likelihood",
                           budget={"num_steps": self.num_steps}, info={"references": len(x0)})

    def _probe(self, adapter, x0, cond, image: ImageCondition | None, predict, denoiser=None) -> dict[str, float]:
        x_T = ddim_invert(adapter, x0, cond, self.num_steps, image, predict=predict)
        stats = gaussian_stats(x_T)
        # reconstruction through the same model (guidance 1: the conditional branch only)
        back = denoise(adapter, cond, cond, self.num_steps, 1.0, x_T, image, denoiser=denoiser)
        stats["reconstruction_error"] = ((back - x0).float().norm() / x0.float().norm()).item()
        return stats
