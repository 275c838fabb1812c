"""Adversarial erasure (AdvUnlearn, Zhang et al. 2024; Receler, Huang et al. 2024): erase against the attack.

Each step first runs an inner attack that looks for a prompt bringing the concept back, then trains the ESD
objective under that prompt, plus a retain loss on benign prompts (ESD's preserve term, on by default here):

    inner:  c_adv = argmin_c || model(x_t, t, c) - original(x_t, t, c_p) ||^2        (attack_steps of Adam)
    outer:  || model(x_t, t, c_adv) - [e_0 - eta (e_p - e_0)] ||^2 + w_preserve || model(x_t, t, c_r) - original(x_t, t, c_r) ||^2

The attack edits `prefix` token embeddings placed before the concept prompt (AdvUnlearn's prefix attack;
families with one CLIP text encoder) or, for every family, the prompt `embedding` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erase.concept import Concept
from erase.methods.base import MethodError, Original, prediction_loss, text_only_image_condition
from erase.methods.esd import ESD
from erase.methods.registry import register
from erase.methods.robust import Site, with_robust
from erase.models.adapter import Conditioning, DiffusionAdapter

ATTACK_MODES = ("prefix", "embedding")


@register("adversarial")
class AdversarialErasure(ESD):
    name = "adversarial"

    def __init__(
        self,
        attack: str = "auto",  # auto: prefix where the family has one CLIP text encoder, else embedding
        prefix_tokens: int = 1,
        attack_steps: int = 10,
        attack_lr: float = 1e-3,
        preserve_weight: float = 0.3,
        **esd_kwargs,
    ):
        super().__init__(preserve_weight=preserve_weight, **esd_kwargs)
        if attack != "auto" and attack not in ATTACK_MODES:
            raise MethodError(f"attack must be auto or one of {ATTACK_MODES}, got {attack!r}")
        self.attack, self.prefix_tokens = attack, prefix_tokens
        self.attack_steps, self.attack_lr = attack_steps, attack_lr

    def unsupported_reason(self, spec):
        if reason := super().unsupported_reason(spec):
            return reason
        if self.attack == "prefix" and not _single_clip(spec):
            return (
                f"the prefix-token attack needs a single CLIP text encoder; {spec.name} has {spec.text_encoders}: "
                "use method.params.attack=embedding (or auto, which picks it for this family)"
            )
        return None

    def attack_for(self, spec) -> str:
        """The inner attack run on this family: `auto` picks AdvUnlearn's prefix attack where it applies."""
        if self.attack != "auto":
            return self.attack
        return "prefix" if _single_clip(spec) else "embedding"

    def setup(self, adapter: DiffusionAdapter, concept: Concept, original: Original, seed: int) -> None:
        self.attack = self.attack_for(adapter.spec)
        super().setup(adapter, concept, original, seed)
        with torch.no_grad():
            if self.attack == "prefix":
                self.ids = adapter.tokenize(concept.prompts)
                self.token_embeds = adapter.token_embedding()(self.ids).detach()

    # -- the inner attack ------------------------------------------------------------------------
    def _adversarial_condition(self, model, x_t, t, which, image, e_p, g) -> Conditioning:
        if self.attack == "embedding":
            base = self.cond.select(which.to(self.cond.embeds.device))
            delta = torch.zeros_like(base.embeds, requires_grad=True)
            make = lambda: Conditioning(base.embeds + delta, base.pooled, base.extra)
            var = delta
        else:
            emb = self.token_embeds[which.to(self.token_embeds.device)]
            table = self.adapter.token_embedding().weight.detach()
            init = table[torch.randint(table.shape[0], (self.prefix_tokens,), generator=g)].to(emb)
            var = init.clone().requires_grad_(True)
            make = lambda: Conditioning(self.adapter.encode_clip_tokens(inputs_embeds=_insert_prefix(emb, var)))
        opt = torch.optim.Adam([var], lr=self.attack_lr)
        for _ in range(self.attack_steps):
            attack_loss = F.mse_loss(self.adapter.predict(x_t, t, make(), image, denoiser=model).float(), e_p.float())
            opt.zero_grad(set_to_none=True)
            grad = torch.autograd.grad(attack_loss, var)[0]  # only the attack variable: the model's grads stay clean
            var.grad = grad
            opt.step()
        with torch.no_grad():
            return make().detach()

    # -- the outer erasure step ------------------------------------------------------------------
    def loss(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        s = self._draw(step, generator)  # e_0, e_p and the preserve targets come cached with the states
        image = text_only_image_condition(self.adapter, len(s))
        adv = self._adversarial_condition(model, s.x_t, s.t, s.which, image, s.e_p, generator)
        total, logs = self.objective(model, s, adv)
        cond = self.cond.select(s.which.to(self.cond.embeds.device))  # the robust terms (erase.methods.robust), as ESD adds them
        site = lambda: Site(s.x_t, s.t, cond, image, self.target(s), s.e_p,
                            lambda p, y, t: prediction_loss(self.adapter, p, y, t, self.loss_weighting))
        return with_robust(self.robust, total, logs, model, step, generator, site)


def _single_clip(spec) -> bool:
    return spec.architecture == "unet" and len(spec.text_encoders) == 1


def _insert_prefix(token_embeds: Tensor, prefix: Tensor) -> Tensor:
    """[BOS, prefix..., prompt tokens...] truncated back to the context length."""
    b, n, _ = token_embeds.shape
    p = prefix.unsqueeze(0).expand(b, -1, -1)
    return torch.cat([token_embeds[:, :1], p, token_embeds[:, 1:]], dim=1)[:, :n]
