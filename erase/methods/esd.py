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

Cost: the reference samples a fresh trajectory for every step (tens of frozen denoiser calls to get one x_t,
then two more for e_0 and e_p). Trajectories of the *frozen* model never go stale, and neither do the frozen
model's predictions at their states, so here a pool of `trajectories` chains x `num_steps` states is sampled at
once, with the frozen predictions every term needs (e_0 and e_p are the two halves of the guided sampler's own
forward; the preserve and erase_from predictions one more batched call per sampler step), and training draws
the states without replacement until the pool is spent. A steady-state step is then one trained
forward/backward over the erase, preserve and unconditional rows together. The pool depends only on (seed,
rank, pool number) and the draw order on the step, so a resumed run repeats an uninterrupted one.
`trajectory_mode="naive"` reproduces the reference cost.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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
from erase.methods.robust import ROBUST_OFF, RobustTerms, Site, with_robust
from erase.models.adapter import Conditioning, DiffusionAdapter

VARIANT_GROUPS = {"esd-x": "xattn", "esd-x-strict": "xattn-kv", "esd-u": "non-xattn", "esd-all": "all"}
ETA_CONVENTIONS = ("original", "v2")


@dataclass
class StateBatch:
    """States x_t of frozen-model trajectories with the frozen model's predictions there.

    Row i: x_t[i] at timestep t[i], sampled under concept prompt `which[i]`; e_0 / e_p the frozen predictions
    for "" and that prompt; e_from for concept.erase_from (None when unset); keep the frozen prediction for benign
    prompt `preserve_which[i]` (None without the preserve term).
    """

    x_t: Tensor
    t: Tensor
    which: Tensor
    e_0: Tensor
    e_p: Tensor
    e_from: Tensor | None = None
    preserve_which: Tensor | None = None
    keep: Tensor | None = None

    def __len__(self) -> int:
        return self.x_t.shape[0]

    def select(self, index: Tensor) -> "StateBatch":
        pick = lambda v: None if v is None else v[index.to(v.device)]
        return StateBatch(*(pick(getattr(self, f.name)) for f in fields(self)))

    @staticmethod
    def cat(items: list["StateBatch"]) -> "StateBatch":
        join = lambda vs: None if vs[0] is None else torch.cat(vs)
        return StateBatch(*(join([getattr(b, f.name) for b in items]) for f in fields(StateBatch)))


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
        refresh_every: int | None = None,  # steps per pool at most; None: a new pool once every state was drawn
        loss_weighting: str = "eps",
        preserve_weight: float = 0.0,
        uncond_weight: float = 0.0,
        preserve_prompts: list[str] | None = None,
        robust: dict | None = ROBUST_OFF,  # erase.methods.robust: adversaries, closed doors, relearning resistance
    ):
        if variant not in VARIANT_GROUPS:
            raise MethodError(f"unknown ESD variant {variant!r}; choose one of {sorted(VARIANT_GROUPS)}")
        if eta_convention not in ETA_CONVENTIONS:
            raise MethodError(f"eta_convention must be one of {ETA_CONVENTIONS}, got {eta_convention!r}")
        if trajectory_mode not in ("reuse", "naive"):
            raise MethodError(f"trajectory_mode must be 'reuse' or 'naive', got {trajectory_mode!r}")
        if refresh_every is not None and refresh_every < 1:
            raise MethodError(f"refresh_every must be a positive number of steps or null, got {refresh_every!r}")
        self.variant, self.group = variant, VARIANT_GROUPS[variant]
        self.eta, self.eta_convention = eta, eta_convention
        self.num_steps, self.start_guidance = num_steps, start_guidance
        self.batch_size, self.trajectory_mode = batch_size, trajectory_mode
        self.trajectories, self.refresh_every = trajectories, refresh_every
        self.loss_weighting = loss_weighting
        self.preserve_weight, self.uncond_weight = preserve_weight, uncond_weight
        self.preserve_prompts = preserve_prompts
        self.robust = RobustTerms(robust)
        self._pool: StateBatch | None = None
        self._pool_id = -1
        self._order: Tensor | None = None
        self._micro = (-1, 0)  # (step, micro-batch) of the last draw

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
        self._pool, self._pool_id, self._order, self._micro = None, -1, None, (-1, 0)
        self.robust.setup(adapter, original, self.name, [concept.anchor, *preserve] if concept.anchor else list(preserve), image_path=False)

    # -- x_t and the frozen predictions there ----------------------------------------------------
    @torch.no_grad()
    def _sample(self, n: int, g: torch.Generator, until: int | None = None) -> StateBatch:
        """n frozen-model chains of `until` sampler steps (all of them by default), every state with its frozen
        predictions: rows ordered chain-major (row = chain * steps + step)."""
        a, o = self.adapter, self.original
        until = until or self.num_steps
        which = torch.randint(len(self.cond), (n,), generator=g)
        x = torch.randn(a.latent_shape(n), generator=g).to(a.device, a.dtype)
        keep_which = torch.randint(len(self.preserve), (n, until), generator=g) if self.preserve is not None else None
        cond = self.cond.select(which.to(self.cond.embeds.device))
        both = Conditioning.cat([self.uncond.repeat(n), cond])
        image, image2 = text_only_image_condition(a, n), text_only_image_condition(a, 2 * n)
        ts = a.inference_timesteps(self.num_steps).to(a.device)
        steps: list[StateBatch] = []
        for i in range(until):
            t = ts[i]
            e_0, e_p = o.predict(torch.cat([x, x]), t, both, image2).chunk(2)  # the sampler's own CFG forward
            state = StateBatch(x, t.expand(n), which, e_0, e_p)
            if self.erase_from is not None:
                state.e_from = o.predict(x, t, self.erase_from.repeat(n), image)
            if keep_which is not None:
                state.preserve_which = keep_which[:, i]
                state.keep = o.predict(x, t, self.preserve.select(state.preserve_which.to(self.preserve.embeds.device)), image)
            steps.append(state)
            pred = e_0 + self.start_guidance * (e_p - e_0)
            x = a.step(x, t, ts[i + 1] if i + 1 < self.num_steps else None, pred)
        chain_major = torch.arange(n * until).view(until, n).T.reshape(-1)
        return StateBatch.cat(steps).select(chain_major)

    def _draw(self, step: int, g: torch.Generator) -> StateBatch:
        """The batch of states for this micro-batch of `step`."""
        last_step, micro = self._micro
        micro = micro + 1 if last_step == step else 0
        self._micro = (step, micro)
        if self.trajectory_mode == "naive":  # the reference: one fresh chain per sample, stopped at a random step
            rows = []
            for _ in range(self.batch_size):
                i = int(torch.randint(self.num_steps, (1,), generator=g))
                rows.append(self._sample(1, g, until=i + 1).select(torch.tensor([i])))
            return StateBatch.cat(rows)
        # Draw d takes rows [k*B, (k+1)*B) of pool p's fixed random order: every state used once per pool.
        b, size = self.batch_size, self.trajectories * self.num_steps
        per_pool = max(1, size // b)
        if self.refresh_every is not None:
            per_pool = min(per_pool, self.refresh_every * self.micro_batches)
        d = step * self.micro_batches + micro
        pool_id, k = divmod(d, per_pool)
        if pool_id != self._pool_id:
            pg = derived_generator(self.seed, "esd-pool", self.rank, pool_id)
            self._pool = self._sample(self.trajectories, pg)
            repeats = -(-per_pool * b // size)  # a pool smaller than a batch is drawn through more than once
            self._order = torch.cat([torch.randperm(size, generator=pg) for _ in range(repeats)])
            self._pool_id = pool_id
        return self._pool.select(self._order[k * b : (k + 1) * b])

    # -- the objective ---------------------------------------------------------------------------
    def target(self, s: StateBatch) -> Tensor:
        return esd_target(s.e_0, s.e_p, self.eta, self.eta_convention, s.e_from)

    def loss(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        s = self._draw(step, generator)
        cond = self.cond.select(s.which.to(self.cond.embeds.device))
        total, logs = self.objective(model, s, cond)
        site = lambda: Site(s.x_t, s.t, cond, text_only_image_condition(self.adapter, len(s)), self.target(s), s.e_p,
                            lambda p, y, t: prediction_loss(self.adapter, p, y, t, self.loss_weighting))
        return with_robust(self.robust, total, logs, model, step, generator, site)

    def objective(self, model: nn.Module, s: StateBatch, cond: Conditioning) -> tuple[Tensor, dict[str, float]]:
        """The erase term under `cond` plus the regularisers, in one trained forward over all their rows."""
        rows = [("erase", 1.0, cond, self.target(s)), *self.regulariser_rows(s)]
        n = len(s)
        preds = self.adapter.predict(
            torch.cat([s.x_t] * len(rows)), torch.cat([s.t] * len(rows)), Conditioning.cat([c for _, _, c, _ in rows]),
            text_only_image_condition(self.adapter, n * len(rows)), denoiser=model,
        ).split(n)
        total, logs = None, {}
        for (name, weight, _, goal), pred in zip(rows, preds):
            term = prediction_loss(self.adapter, pred, goal, s.t, self.loss_weighting)
            total = weight * term if total is None else total + weight * term
            logs[f"{name}_loss"] = term.item()
        return total, logs

    def regulariser_rows(self, s: StateBatch) -> list[tuple[str, float, Conditioning, Tensor]]:
        """(name, weight, conditioning, frozen prediction to regress onto) of the preserve and unconditional-anchor
        terms (module docstring); none when both weights are 0."""
        rows = []
        if self.preserve is not None:
            rows.append(("preserve", self.preserve_weight, self.preserve.select(s.preserve_which.to(self.preserve.embeds.device)), s.keep))
        if self.uncond_weight > 0:
            rows.append(("uncond", self.uncond_weight, self.uncond.repeat(len(s)), s.e_0))
        return rows


def esd_target(e_0: Tensor, e_p: Tensor, eta: float, convention: str = "original", e_from: Tensor | None = None) -> Tensor:
    """The ESD regression target (see the module docstring for the two conventions)."""
    if convention == "original":
        base = e_0 if e_from is None else e_from
        return base - eta * (e_p - e_0)
    base = e_p if e_from is None else e_from
    return base - eta * (e_p - e_0)
