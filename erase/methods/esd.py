"""Erased Stable Diffusion (Gandikota et al., ICCV 2023).

The trained model, conditioned on the concept c_p, is regressed onto a prediction that points away from it:

    original convention (train-esd.py, the paper):   target = e_0 - eta * (e_p - e_0)
    reference v2 (esd_sd.py):                        target = e_from - eta * (e_p - e_0),  e_from = e_p by default

where e_0 = original(x_t, t, "") and e_p = original(x_t, t, c_p), and x_t lies on a trajectory of the
*frozen* model sampled with c_p. Without `erase_from`, v2 with eta equals the original convention with
eta - 1 (v2's eta = 2 is the paper's eta = 1), hence the two named conventions.

Variants name the trained module group: esd-x (cross-attention), esd-x-strict (cross-attention key/value),
esd-u (everything but cross-attention), esd-all.

Two optional regularisers (off by default, as in the paper), both regressions onto the frozen model at the
same x_t:

    preserve_weight:  || model(x_t, c_b) - original(x_t, c_b) ||^2 for benign prompts c_b (concept.preserve)
    uncond_weight:    || model(x_t, "") - original(x_t, "") ||^2

The second matters for every variant that trains weights the empty prompt also passes through: sampling uses
classifier-free guidance, e_u + g (e_c - e_u), so if training moves e_u along with e_c (ESD-u and ESD-all move
both almost equally) the guided difference, and with it the concept, survives. Anchoring e_u makes the whole
change to e_c count, multiplied by g (the same reasoning as ACE's guidance-aware erasure).

Cost: the reference samples a fresh trajectory for every step (tens of denoiser calls to get one x_t).
Because the trajectories come from the frozen model they never go stale, so here a batch of them is sampled
at once and reused for `refresh_every` steps; `trajectory_mode="naive"` reproduces the reference cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from erase.concept import Concept
from erase.methods.base import (
    FineTuneMethod,
    MethodError,
    Original,
    derived_generator,
    prediction_loss,
    text_only_image_condition,
)
from erase.methods.registry import register
from erase.models.adapter import Conditioning, DiffusionAdapter

VARIANT_GROUPS = {"esd-x": "xattn", "esd-x-strict": "xattn-kv", "esd-u": "non-xattn", "esd-all": "all"}
ETA_CONVENTIONS = ("original", "v2")


@dataclass
class TrajectoryCache:
    """x_t along frozen-model trajectories: latents (N, S, C, h, w) for N chains at S steps, and the timesteps."""

    latents: Tensor
    timesteps: Tensor
    prompt_index: Tensor  # which concept prompt each chain was sampled with


@register("esd", label=lambda p: p["variant"])  # runs named esd-x, esd-u, ...
class ESD(FineTuneMethod):
    name = "esd"

    def __init__(
        self,
        variant: str = "esd-x",
        eta: float = 1.0,
        eta_convention: str = "original",
        num_steps: int = 50,
        start_guidance: float = 3.0,
        batch_size: int = 1,
        trajectory_mode: str = "reuse",  # "reuse" | "naive"
        trajectories: int = 16,
        refresh_every: int = 16,
        loss_weighting: str = "eps",
        preserve_weight: float = 0.0,
        uncond_weight: float = 0.0,
        preserve_prompts: list[str] | None = None,
    ):
        if variant not in VARIANT_GROUPS:
            raise MethodError(f"unknown ESD variant {variant!r}; choose one of {sorted(VARIANT_GROUPS)}")
        if eta_convention not in ETA_CONVENTIONS:
            raise MethodError(f"eta_convention must be one of {ETA_CONVENTIONS}, got {eta_convention!r}")
        if trajectory_mode not in ("reuse", "naive"):
            raise MethodError(f"trajectory_mode must be 'reuse' or 'naive', got {trajectory_mode!r}")
        self.variant, self.group = variant, VARIANT_GROUPS[variant]
        self.eta, self.eta_convention = eta, eta_convention
        self.num_steps, self.start_guidance = num_steps, start_guidance
        self.batch_size, self.trajectory_mode = batch_size, trajectory_mode
        self.trajectories, self.refresh_every = trajectories, refresh_every
        self.loss_weighting = loss_weighting
        self.preserve_weight, self.uncond_weight = preserve_weight, uncond_weight
        self.preserve_prompts = preserve_prompts
        self._cache: TrajectoryCache | None = None
        self._cache_id = -1

    def setup(self, adapter: DiffusionAdapter, concept: Concept, original: Original, seed: int) -> None:
        self.adapter, self.original, self.seed = adapter, original, seed
        with torch.no_grad():
            self.cond = adapter.encode_prompts(concept.prompts).detach()
            self.uncond = adapter.encode_prompts([""]).detach()
            self.erase_from = adapter.encode_prompts([concept.erase_from]).detach() if concept.erase_from else None
        preserve = self.preserve_prompts or concept.preserve
        if self.preserve_weight > 0 and not preserve:
            raise MethodError(f"{self.name}: preserve_weight > 0 needs benign prompts: set concept.preserve or method preserve_prompts")
        with torch.no_grad():
            self.preserve = adapter.encode_prompts(preserve).detach() if self.preserve_weight > 0 else None
        self._cache, self._cache_id = None, -1

    # -- x_t from the frozen model ---------------------------------------------------------------
    def _sample(self, n: int, g: torch.Generator, until: int | None = None) -> TrajectoryCache:
        a = self.adapter
        which = torch.randint(len(self.cond), (n,), generator=g)
        cond = self.cond.select(which.to(self.cond.embeds.device))
        uncond = self.uncond.repeat(n)
        x_T = torch.randn(a.latent_shape(n), generator=g).to(a.device, a.dtype)
        image = text_only_image_condition(a, n)
        states, times = [], []
        with self.original.adapters_off():
            for _, t, x in a.sample_trajectory(
                cond, uncond, self.num_steps, self.start_guidance, until=until or self.num_steps,
                denoiser=self.original.denoiser(), x_T=x_T, image=image,
            ):
                states.append(x)
                times.append(t)
        return TrajectoryCache(torch.stack(states, 1), torch.stack(times), which)

    def _draw(self, step: int, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """A batch of (x_t, t, prompt index)."""
        if self.trajectory_mode == "naive":  # the reference: one fresh chain per sample, stopped at a random step
            xs, ts, ps = [], [], []
            for _ in range(self.batch_size):
                i = int(torch.randint(self.num_steps, (1,), generator=g))
                c = self._sample(1, g, until=i + 1)
                xs.append(c.latents[:, -1])
                ts.append(c.timesteps[-1:])
                ps.append(c.prompt_index)
            return torch.cat(xs), torch.cat(ts), torch.cat(ps)
        cache_id = step // self.refresh_every
        if cache_id != self._cache_id:
            self._cache = self._sample(self.trajectories, derived_generator(self.seed, "esd-trajectories", cache_id))
            self._cache_id = cache_id
        c = self._cache
        chain = torch.randint(c.latents.shape[0], (self.batch_size,), generator=g)
        at = torch.randint(c.latents.shape[1], (self.batch_size,), generator=g)
        return c.latents[chain, at], c.timesteps[at], c.prompt_index[chain]

    # -- the objective ---------------------------------------------------------------------------
    def targets(self, x_t: Tensor, t: Tensor, cond: Conditioning, image) -> Tensor:
        n = x_t.shape[0]
        e_0 = self.original.predict(x_t, t, self.uncond.repeat(n), image)
        e_p = self.original.predict(x_t, t, cond, image)
        return esd_target(e_0, e_p, self.eta, self.eta_convention,
                          self.original.predict(x_t, t, self.erase_from.repeat(n), image) if self.erase_from else None)

    def loss(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        x_t, t, which = self._draw(step, generator)
        cond = self.cond.select(which.to(self.cond.embeds.device))
        image = text_only_image_condition(self.adapter, x_t.shape[0])
        target = self.targets(x_t, t, cond, image)
        pred = self.adapter.predict(x_t, t, cond, image, denoiser=model)
        erase = prediction_loss(self.adapter, pred, target, t, self.loss_weighting)
        reg, logs = self.regularisers(model, x_t, t, image, generator)
        return erase + reg, {"erase_loss": erase.item(), **logs}

    def regularisers(self, model: nn.Module, x_t: Tensor, t: Tensor, image, g: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The preserve and unconditional-anchor terms (module docstring); zero when both weights are 0."""
        n, total, logs = x_t.shape[0], x_t.new_zeros(()).float(), {}
        terms = []
        if self.preserve is not None:
            which = torch.randint(len(self.preserve), (n,), generator=g)
            terms.append(("preserve", self.preserve_weight, self.preserve.select(which.to(self.preserve.embeds.device))))
        if self.uncond_weight > 0:
            terms.append(("uncond", self.uncond_weight, self.uncond.repeat(n)))
        for name, weight, cond in terms:
            keep = self.original.predict(x_t, t, cond, image)
            term = prediction_loss(self.adapter, self.adapter.predict(x_t, t, cond, image, denoiser=model), keep, t, self.loss_weighting)
            total = total + weight * term
            logs[f"{name}_loss"] = term.item()
        return total, logs


def esd_target(e_0: Tensor, e_p: Tensor, eta: float, convention: str = "original", e_from: Tensor | None = None) -> Tensor:
    """The ESD regression target (see the module docstring for the two conventions)."""
    if convention == "original":
        base = e_0 if e_from is None else e_from
        return base - eta * (e_p - e_0)
    base = e_p if e_from is None else e_from
    return base - eta * (e_p - e_0)
