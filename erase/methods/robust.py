"""Robustness terms: refusal trained against the attacks of the harness (issue 12), for any fine-tuning method.

Each term is one small piece, configured under the method's `robust` parameter (every weight 0 by default, so a
recipe that does not ask for them trains exactly as before), and computed at the states the method already drew:

    x_t, t       the states of the step (ESD: frozen concept trajectories; edit refusal: noised photos/results)
    E            the concept's conditioning (prompt or forbidden instruction embedding), I the image condition
    r            the method's refusal target at (x_t, E, I); e* = original(x_t, E, I), the concept's prediction

1. Embedding adversary (AdvUnlearn, Zhang et al. 2024; Receler, Huang et al. 2024; here on the whole embedding
   as erase.evaluation.attacks.embedding_space attacks it). Every `every` steps, `steps` PGD steps in the relative
   L2 ball ||d|| <= eps ||E|| look for the embedding that undoes the refusal, i.e. minimise the attack's objective
   (the frozen model's concept prediction stands in for the concept's images: at states of the concept the two
   objectives share their minimiser):

       d* = argmin_{||d|| <= eps ||E||}  || model(x_t, E + d, I) - e* ||^2
       L_emb = || model(x_t, E + d*, I) - r ||^2

2. Image adversary (editors; AdvI2I, Zeng et al. 2025, the "steer" objective of attacks/image_space.py). PGD in
   the L-inf ball ||p|| <= eps (pixels in [0, 1]) on the source photo x, under a benign instruction B (the threat:
   a benign edit of a doctored photo yields the forbidden result):

       p* = argmin_{||p||_inf <= eps}  || model(x_t, B, I(x + p)) - e* ||^2
       L_img = || model(x_t, E, I(x + p*)) - r ||^2 + sum_{c in {B, ""}} || model(x_t, c, I(x + p*)) - original(x_t, c, I(x)) ||^2

   The second part makes benign edits ignore the perturbation, in both branches the sampler's guidance mixes (the
   instruction and the empty text; the frozen editor is itself fooled by it, so its prediction at the *clean*
   photo is the target). `start: counterpart` starts PGD at the photo's exposed counterpart x~ (p0 = x~ - x,
   clipped to the ball): the point an encoder attack aims at (attacks/image_space.py's "latent" objective). With
   eps 1 and steps 0 the adversarial photo *is* the exposed counterpart, the end of every such attack at any
   budget: benign edits of an exposed photo then follow the clothed photo's, so the editor no longer carries an
   exposed source through a benign edit.

3. Closed doors. Erasure moves nearby text with the concept; guidance away from a negative prompt "shirt" then
   points at whatever the model now puts where shirts were (issue 11's neutral-prompt finding). At the concept's
   states, every word of the subject's vocabulary V (the clothing words a user puts in a negative prompt, the
   anchor, benign prompts, and "" for the unconditional branch) keeps the frozen prediction:

       L_doors = E_{v in V} || model(x_t, v, I) - original(x_t, v, I) ||^2

4. Relearning resistance (first-order meta-unlearning: Meta-Unlearning, Gao et al. 2024, arXiv 2410.12777;
   ResAlign, 2025, arXiv 2507.16302). Simulate the attacker's fine-tuning on the concept for k steps from the
   trained weights theta, with a functional copy (torch.func.functional_call), and penalise the leakage there:

       theta_k = theta - alpha sum_j sign grad L_relearn(theta_j)   L_relearn(theta) = || model_theta(x_t, E, I) - e* ||^2
       L_relearn_resist = || model_{theta_k}(x_t, E, I) - r ||^2

   The simulated steps move the weights of `group`: by default "all", what the harness's relearning attack
   fine-tunes (attacks/relearning.py, DiffusionAdapter.module_group), or "trained" (the method's own trained
   parameters only). Frozen weights of the group become constants shifted by their sign steps; the outer gradient
   reaches only the trained ones. Under LoRA a layer's base weight stands for the fused weight the attacker
   fine-tunes (the gradient is the same), so the adapter's own lora_A/lora_B are not stepped unless "trained".
   Sign steps because the attacker's optimiser is Adam (its first step is exactly lr sign(g) on every weight,
   whatever the gradient's scale). alpha must keep the inner objective falling: on every weight of the toy models
   1e-5 does, 1e-4 overshoots (as the attacker's own first AdamW step at 1e-4 does), so k sign steps reach less
   than the attacker's 100 steps (docs/robustness.md). First order (FOMAML): the inner steps are constants, so
   d theta_k / d theta = I and the outer gradient is the leakage gradient at theta_k: the weights move toward a
   point from which relearning does not lead back. L_relearn is the method's prediction loss toward the frozen
   model's concept prediction at the step's states (the attacker's denoising loss on reference images has the
   same minimiser at states of the concept; the Site carries no reference images or noise).

Everything random comes from the step's generator and only when a term is on (the adversaries start at zero),
so a resumed run repeats an uninterrupted one and a recipe with the terms off draws exactly what it drew before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from erase.methods.base import MethodError, Original, _Swapped
from erase.models.adapter import MODULE_GROUPS, Conditioning, DiffusionAdapter, ImageCondition


@dataclass
class EmbeddingAdversary:
    weight: float = 0.0
    every: int = 4  # steps between adversary steps (the term is applied on steps divisible by it)
    steps: int = 3  # PGD iterations
    eps: float = 0.3  # radius relative to ||E|| (embedding_space's max_norm; its default is unbounded)
    step_scale: float = 2.5  # PGD step = step_scale * radius / steps (Madry et al.'s rule)


@dataclass
class ImageAdversary:
    weight: float = 0.0
    every: int = 4
    steps: int = 3
    eps: float = 16 / 255  # L-inf radius in [0, 1] pixels (the harness attacks at 8/255 to 64/255)
    step_scale: float = 2.5
    start: str = "zero"  # "zero" (Madry et al.) or "counterpart" (the exposed counterpart, clipped to the ball)


@dataclass
class ClosedDoors:
    weight: float = 0.0
    words: list[str] = field(default_factory=list)  # clothing words a user would put in a negative prompt
    prompts: list[str] = field(default_factory=list)  # neutral prompts; empty: the concept's anchor and benign prompts
    per_state: int = 1  # vocabulary entries anchored per state


@dataclass
class RelearnResistance:
    weight: float = 0.0
    every: int = 4
    inner_steps: int = 2  # simulated fine-tuning steps
    # per-weight move of each sign step. With group "all" it must stay small: on the toy models a sign step moves
    # every weight at once, and 1e-5 lowers the inner objective most (3e-5 already overshoots on the toy t2i model,
    # 1e-4 on the toy editor; docs/robustness.md). With "trained" (cross-attention) 1e-4 to 3e-4 did.
    inner_lr: float = 1e-5
    # What the simulated attacker fine-tunes: a DiffusionAdapter.module_group ("all": every denoiser weight, as the
    # harness's relearning attack does) or "trained" (the method's trained parameters only).
    group: str = "all"


RELEARN_GROUPS = ("trained", *MODULE_GROUPS)
IMAGE_STARTS = ("zero", "counterpart")


TERMS = {"embedding": EmbeddingAdversary, "image": ImageAdversary, "doors": ClosedDoors, "relearn": RelearnResistance}


@dataclass
class RobustConfig:
    embedding: EmbeddingAdversary = field(default_factory=EmbeddingAdversary)
    image: ImageAdversary = field(default_factory=ImageAdversary)
    doors: ClosedDoors = field(default_factory=ClosedDoors)
    relearn: RelearnResistance = field(default_factory=RelearnResistance)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "RobustConfig":
        """From the YAML mapping `robust: {embedding: {weight: ...}, ...}`; unknown keys and bad values are errors."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(TERMS))
        if unknown:
            raise MethodError(f"unknown robust term(s) {unknown}; valid: {sorted(TERMS)} (method.params.robust.<term>)")
        parts = {}
        for name, kind in TERMS.items():
            given = dict(params.get(name) or {})
            valid = {f.name for f in dataclasses.fields(kind)}
            if bad := sorted(set(given) - valid):
                raise MethodError(f"unknown key(s) {bad} in method.params.robust.{name}; valid: {sorted(valid)}")
            part = kind(**given)
            for key in ("every", "steps", "inner_steps", "per_state"):
                least = 0 if (key == "steps" and getattr(part, "start", "zero") == "counterpart") else 1
                if hasattr(part, key) and int(getattr(part, key)) < least:
                    raise MethodError(f"method.params.robust.{name}.{key} must be an integer >= {least}, not {getattr(part, key)}"
                                      + (" (0 PGD steps only with start: counterpart)" if key == "steps" else ""))
            if name == "image" and part.start not in IMAGE_STARTS:
                raise MethodError(f"method.params.robust.image.start must be one of {list(IMAGE_STARTS)}, not {part.start!r}")
            if part.weight < 0:
                raise MethodError(f"method.params.robust.{name}.weight must be >= 0 (0 turns it off), not {part.weight}")
            if hasattr(part, "eps") and not 0 < part.eps <= (1 if name == "image" else 10):
                raise MethodError(f"method.params.robust.{name}.eps must be a positive radius"
                                  f"{' in (0, 1] pixel units' if name == 'image' else ''}, not {part.eps}")
            if name == "relearn" and part.group not in RELEARN_GROUPS:
                raise MethodError(f"method.params.robust.relearn.group must be one of {list(RELEARN_GROUPS)} "
                                  f"(\"all\" = what the relearning attack fine-tunes), not {part.group!r}")
            parts[name] = part
        return cls(**parts)

    def as_params(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in TERMS}


# The constructor default of a method's `robust` parameter: every term present and off (shown in saved configs).
ROBUST_OFF: dict[str, dict[str, Any]] = RobustConfig().as_params()


@dataclass
class Site:
    """The states of one step, as the method drew them (module docstring's notation)."""

    x_t: Tensor
    t: Tensor
    cond: Conditioning  # E, one row per state
    image: ImageCondition | None  # I, one row per state (None: text-to-image)
    refusal: Tensor  # r
    concept: Tensor  # e*
    loss: Callable[[Tensor, Tensor, Tensor], Tensor]  # the method's prediction loss (pred, goal, t), its weighting
    photos: Tensor | None = None  # the source photos in [-1, 1], one per state (image adversary)
    masks: Tensor | None = None
    benign: Conditioning | None = None  # benign instructions, one per state (image adversary)
    counterparts: Tensor | None = None  # the photos' exposed counterparts in [-1, 1] (image adversary's start)


class RobustTerms:
    """The configured terms of one method; `loss(model, step, g, site)` adds what is on at this step."""

    def __init__(self, params: Mapping[str, Any] | None):
        self.cfg = RobustConfig.from_params(params)
        self.vocabulary: Conditioning | None = None

    @property
    def active(self) -> bool:
        return any(getattr(self.cfg, name).weight > 0 for name in TERMS)

    def setup(self, adapter: DiffusionAdapter, original: Original, method: str, default_prompts: list[str],
              image_path: bool) -> None:
        """Encode the vocabulary; refuse a term the method/family cannot take, before any training."""
        self.adapter, self.original = adapter, original
        if self.cfg.image.weight > 0 and not image_path:
            raise MethodError(
                f"{method}: robust.image perturbs the photo an editor takes as its condition; family "
                f"{adapter.family!r} has no such photo path here (use edit_refusal on an instruct/inpaint/kontext "
                f"family, or set robust.image.weight=0)")
        if self.cfg.image.weight > 0:
            with torch.no_grad():
                self.empty = adapter.encode_prompts([""]).detach()
        doors = self.cfg.doors
        if doors.weight > 0:
            vocab = list(dict.fromkeys([*doors.words, *(doors.prompts or default_prompts), ""]))
            with torch.no_grad():
                self.vocabulary = adapter.encode_prompts(vocab).detach()
            self.vocabulary_text = vocab

    def loss(self, model: nn.Module, step: int, g: torch.Generator, site: Site) -> tuple[Tensor | None, dict[str, float]]:
        c, total, logs = self.cfg, None, {}

        def add(name: str, weight: float, term: Tensor) -> None:
            nonlocal total
            logs[f"robust_{name}"] = term.item()
            total = weight * term if total is None else total + weight * term

        if c.embedding.weight > 0 and step % c.embedding.every == 0:
            adv = embedding_pgd(self.adapter, model, site, c.embedding)
            add("embedding", c.embedding.weight, site.loss(self._predict(model, site.x_t, site.t, adv, site.image), site.refusal, site.t))
        if c.image.weight > 0 and step % c.image.every == 0:
            add("image", c.image.weight, self._image_term(model, site, g))
        if c.doors.weight > 0:
            add("doors", c.doors.weight, self._doors_term(model, site, g))
        if c.relearn.weight > 0 and step % c.relearn.every == 0:
            add("relearn", c.relearn.weight, relearn_leakage(self.adapter, model, site, c.relearn))
        return total, logs

    def _predict(self, model, x_t, t, cond, image) -> Tensor:
        return self.adapter.predict(x_t, t, cond, image, denoiser=model)

    def _doors_term(self, model, site: Site, g: torch.Generator) -> Tensor:
        k, n = self.cfg.doors.per_state, len(site.x_t)
        pick = torch.randint(len(self.vocabulary), (n * k,), generator=g).to(self.vocabulary.embeds.device)
        words = self.vocabulary.select(pick)
        x_t, t = site.x_t.repeat_interleave(k, 0), site.t.repeat_interleave(k, 0)
        image = None if site.image is None else site.image.repeat(k)
        keep = self.original.predict(x_t, t, words, image)
        return site.loss(self._predict(model, x_t, t, words, image), keep, t)

    def _image_term(self, model, site: Site, g: torch.Generator) -> Tensor:
        if site.photos is None:
            raise MethodError("robust.image needs the step's source photos (Site.photos); this method gives none")
        cfg = self.cfg.image
        benign = site.benign if site.benign is not None else site.cond
        x = site.photos.float()
        start = None
        if cfg.start == "counterpart":
            if site.counterparts is None:
                raise MethodError("robust.image.start 'counterpart' needs photos with exposed counterparts (a photo "
                                  "source that gives them, such as the toy world's {source: toy}; a folder of "
                                  "photos has none): use start 'zero'")
            start = site.counterparts.float() - x
        image_of = lambda p: self.adapter.image_condition((x + p).clamp(-1, 1), site.masks)
        p = image_pgd(lambda q: site.loss(self._predict(model, site.x_t, site.t, benign, image_of(q)), site.concept, site.t),
                      x, cfg, start)
        adv_image = image_of(p)
        term = site.loss(self._predict(model, site.x_t, site.t, site.cond, adv_image), site.refusal, site.t)
        if site.benign is not None:  # benign edits and the image-only branch follow the clean photo's
            texts = Conditioning.cat([site.benign, self.empty.repeat(len(site.x_t))])
            x_t, t = torch.cat([site.x_t, site.x_t]), torch.cat([site.t, site.t])
            twice = lambda image: ImageCondition(torch.cat([image.latents, image.latents]))
            keep = self.original.predict(x_t, t, texts, twice(site.image))
            term = term + site.loss(self._predict(model, x_t, t, texts, twice(adv_image)), keep, t)
        return term


def embedding_pgd(adapter: DiffusionAdapter, model: nn.Module, site: Site, cfg: EmbeddingAdversary) -> Conditioning:
    """The perturbed conditioning E + d* of the embedding adversary (L2 PGD, normalised gradient steps per row)."""
    base = site.cond.detach()
    parts = [base.embeds.float()] + ([base.pooled.float()] if base.pooled is not None else [])
    radius = torch.cat([p.flatten(1) for p in parts], 1).norm(dim=1) * cfg.eps  # per row
    deltas = [torch.zeros_like(p) for p in parts]
    step = cfg.step_scale * radius / cfg.steps

    def make(ds: list[Tensor]) -> Conditioning:
        embeds = (parts[0] + ds[0]).to(base.embeds.dtype)
        pooled = None if base.pooled is None else (parts[1] + ds[1]).to(base.pooled.dtype)
        return Conditioning(embeds, pooled, base.extra)

    for _ in range(cfg.steps):
        ds = [d.requires_grad_(True) for d in deltas]
        attack = site.loss(adapter.predict(site.x_t, site.t, make(ds), site.image, denoiser=model), site.concept, site.t)
        grads = torch.autograd.grad(attack, ds)  # the delta only: the model's gradients stay clean
        with torch.no_grad():
            gnorm = torch.cat([gr.flatten(1) for gr in grads], 1).norm(dim=1).clamp_min(1e-12)
            ds = [d - _rows(step / gnorm, d) * gr for d, gr in zip(ds, grads)]  # descend the attack's objective
            dnorm = torch.cat([d.flatten(1) for d in ds], 1).norm(dim=1)
            shrink = (radius / dnorm.clamp_min(1e-12)).clamp(max=1.0)  # project onto the ball
            deltas = [d * _rows(shrink, d) for d in ds]
    return make(deltas).detach()


def image_pgd(attack_loss: Callable[[Tensor], Tensor], photos: Tensor, cfg: ImageAdversary,
              start: Tensor | None = None) -> Tensor:
    """The photo perturbation p* of the image adversary: L-inf PGD with sign steps from `start` (zero by default),
    kept inside the ball and [-1, 1]."""
    e = 2 * cfg.eps  # photos live in [-1, 1]: a [0, 1] budget is twice as wide there
    alpha = cfg.step_scale * e / max(cfg.steps, 1)
    project = lambda d: ((photos + d.clamp(-e, e)).clamp(-1, 1) - photos).detach()  # into the ball and [-1, 1]
    p = torch.zeros_like(photos) if start is None else project(start)
    for _ in range(cfg.steps):
        p.requires_grad_(True)
        (grad,) = torch.autograd.grad(attack_loss(p), [p])
        with torch.no_grad():
            p = project(p - alpha * grad.sign())
    return p


def relearn_weights(adapter: DiffusionAdapter, model: nn.Module, site: Site, cfg: RelearnResistance) -> dict[str, Tensor]:
    """theta_k: the weights after `inner_steps` simulated sign steps toward the concept, by the model's parameter
    names (those of `cfg.group`; every other parameter stays the live one). Trained entries keep their graph to the
    live parameter (d theta_k / d theta = I); frozen ones are detached constants.

    Cost with group "all": one more copy of every denoiser weight and its gradient at each inner step (2x the
    weights' memory beside the model), and the inner backward computes every weight's gradient, not only the
    trained ones' (scripts/bench_robust.py: docs/robustness.md, "Cost per step")."""
    params = dict(model.named_parameters())
    trained = {n for n, p in params.items() if p.requires_grad}
    if not trained:
        raise MethodError("robust.relearn needs trained parameters (none of the model's require grad)")
    if cfg.group == "trained":
        moved = [n for n in params if n in trained]
    else:
        group = set(adapter.module_group(cfg.group))
        # the model may be a wrapper of adapter.denoiser (DDP: "module." names); under LoRA the base weight is the
        # fused weight the attacker moves, so the adapter's own factors are left alone
        moved = [n for n in params if (n in group or n.removeprefix("module.") in group) and ".lora_" not in n]
        if not moved:
            raise MethodError(f"robust.relearn.group {cfg.group!r} names none of the model's parameters")
    # frozen weights get detached copies that require grad, so autograd.grad can differentiate the inner loss
    # w.r.t. them; the trained ones are the live parameters (their steps are constants added to them)
    fast = {n: params[n] if n in trained else params[n].detach().requires_grad_(True) for n in moved}
    for j in range(cfg.inner_steps):
        copy = _Swapped(model, fast, adapters_off=False)
        relearn = site.loss(adapter.predict(site.x_t, site.t, site.cond, site.image, denoiser=copy), site.concept, site.t)
        grads = torch.autograd.grad(relearn, list(fast.values()), allow_unused=True)
        # Adam's steps move each weight by about lr along the gradient's sign, whatever its scale (the harness's
        # attacker uses AdamW), so the simulated steps are sign steps. First order: the steps are constants, so
        # theta_k = theta - alpha * sum(sign g) keeps d theta_k / d theta = I.
        last = j == cfg.inner_steps - 1
        nxt = {}
        for (n, w), gr in zip(fast.items(), grads):
            w = w if gr is None else w - cfg.inner_lr * gr.detach().sign()
            if n not in trained:  # a constant: needs grad only for the next inner step's autograd.grad
                w = w.detach().requires_grad_(not last)
            nxt[n] = w
        fast = nxt
        del grads
    return {n: w if n in trained else w.detach() for n, w in fast.items()}


def relearn_leakage(adapter: DiffusionAdapter, model: nn.Module, site: Site, cfg: RelearnResistance) -> Tensor:
    """|| model_{theta_k}(x_t, E, I) - r ||^2 after k first-order simulated fine-tuning steps toward the concept."""
    copy = _Swapped(model, relearn_weights(adapter, model, site, cfg), adapters_off=False)
    return site.loss(adapter.predict(site.x_t, site.t, site.cond, site.image, denoiser=copy), site.refusal, site.t)


def _rows(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1))).to(like)


def with_robust(terms: RobustTerms, total: Tensor, logs: dict[str, float], model: nn.Module, step: int,
                g: torch.Generator, site: Callable[[], Site]) -> tuple[Tensor, dict[str, float]]:
    """The method's (loss, logs) with the robust terms of this step added; `site` is built only when a term is on."""
    if not terms.active:
        return total, logs
    extra, more = terms.loss(model, step, g, site())
    return (total if extra is None else total + extra), {**logs, **more}
