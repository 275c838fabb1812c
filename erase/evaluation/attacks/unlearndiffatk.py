"""UnlearnDiffAtk (Zhang et al., ECCV 2024; OPTML-Group/Diffusion-MU-Attack, attacker `text_grad`).

The erased model is its own classifier: a prompt under which it denoises an image of the concept well is a prompt
that makes it generate the concept. With k adversarial tokens p prepended to the concept prompt c:

    min_p  E_eps || eps_theta(x_t(x0, eps), t, [p ; c]) - eps ||^2        x0 = a reference image of the concept

visiting the reference's timestep grid in order (n = 50 timesteps t_j = T/2n + j T/n, `iterations` = 40 Adam steps
at each, lr 0.01, weight decay 0.1, fresh noise every step) and stopping early when `target.success` says the
current prompt already works (the reference checks a detector after each timestep).

Relaxation of the discrete tokens:
- "embedding" (default): p are k continuous token embeddings (initialised at random vocabulary tokens), projected
  at the end to the nearest vocabulary tokens by cosine for the text form.
- "simplex": the reference's: p_i is a distribution over the vocabulary, a one-hot is sampled from it in the
  forward pass (straight-through, hardtanh'd gradient), the distribution is projected back onto the simplex after
  each step, and the text form takes the argmax.

The result is the projected prompt text (kind "text"); the continuous prompt is kept as its "embeddings" form.
`initial_loss`/`final_loss` are the objective on a fixed set of (timestep, noise) pairs, before and after
(`resample_noise=False` optimises on fixed noises too: deterministic, lower variance for small budgets).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from erase.models.adapter import Conditioning, DiffusionAdapter
from erase.evaluation.attacks.interface import Attack, AttackError, AttackResult, AttackTarget
from erase.evaluation.attacks.optimisation import denoising_loss, frozen
from erase.evaluation.attacks.randomness import randn, seeded
from erase.evaluation.attacks.tokens import allowed_token_ids, nearest_tokens, random_tokens, slot_prompt


@dataclass
class UnlearnDiffAtk(Attack):
    name = "unlearndiffatk"
    access = "white-box"
    needs_references = True
    needs_clip_tokens = True

    k: int = 5  # adversarial prefix tokens
    iterations: int = 40  # Adam steps per timestep of the grid
    num_timesteps: int = 50  # the grid (reference: 50 evenly spaced over the 1000 training steps)
    lr: float = 0.01
    weight_decay: float = 0.1
    criterion: str = "l2"  # "l2" | "l1"
    relaxation: str = "embedding"  # "embedding" | "simplex" (the reference's)
    eval_timesteps: int = 8  # size of the fixed set the objective is reported on
    resample_noise: bool = True  # fresh noise every step (reference); False: one fixed noise per timestep

    def __post_init__(self) -> None:
        if self.relaxation not in ("embedding", "simplex"):
            raise AttackError(f"relaxation must be 'embedding' or 'simplex', not {self.relaxation!r}")
        if self.criterion not in ("l1", "l2"):
            raise AttackError(f"criterion must be 'l1' or 'l2', not {self.criterion!r}")

    def timesteps(self, adapter: DiffusionAdapter) -> list[int]:
        T, n = adapter.num_train_timesteps, self.num_timesteps
        return list(range(T // n // 2, T, max(1, T // n)))[:n]

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator: torch.Generator | None = None) -> AttackResult:
        self.check(adapter)
        g = seeded(generator)
        x0 = target.reference_latents(adapter, self.name)
        image = target.image_condition(adapter, len(x0))
        with frozen(adapter):  # one attack per concept prompt, as the reference
            outs = [self._attack_prompt(adapter, target, prompt, x0, image, g) for prompt in target.prompts]
        mean = lambda key: sum(o[key] for o in outs) / len(outs)
        return self.result(
            "text", prompts=[o["text"] for o in outs], conditioning=Conditioning.cat([o["soft"] for o in outs]),
            photo=target.photo, mask=target.mask, initial_loss=mean("initial"), final_loss=mean("final"),
            history=[h for o in outs for h in o["history"]],
            info={"projected_loss": mean("projected"), "per_prompt_final_loss": [o["final"] for o in outs]},
        )

    def _attack_prompt(self, adapter, target, prompt, x0, image, g) -> dict:
        tok = adapter.pipe.tokenizer
        table = adapter.token_embedding().weight.detach()
        allowed = allowed_token_ids(tok)
        sp = slot_prompt(tok, [self.k, prompt])
        ts = self.timesteps(adapter)
        noises = {t: randn(x0.shape[1:], g, x0) for t in ts}  # the fixed set (and the noise when not resampling)
        every = max(1, len(ts) // self.eval_timesteps)
        fixed = [(t, noises[t]) for t in ts[::every][: self.eval_timesteps]]

        def objective(slot_embeds: Tensor) -> float:
            with torch.no_grad():
                cond = sp.encode(adapter, slot_embeds).select([0] * len(x0))
                return sum(self._loss(adapter, x0, n, t, cond, image).item() for t, n in fixed) / len(fixed)

        if self.relaxation == "embedding":
            param = table[random_tokens(tok, self.k, g)].float().clone().requires_grad_(True)
            soft = lambda: param
        else:
            vocab = table[allowed].float()
            param = torch.full((self.k, len(allowed)), 1.0 / len(allowed), device=table.device, requires_grad=True)
            soft = lambda: param @ vocab  # the expected embedding (reporting only)
        opt = torch.optim.Adam([param], lr=self.lr, weight_decay=self.weight_decay)
        initial = objective(soft().detach())
        history: list[float] = []
        for t in ts:
            for _ in range(self.iterations):
                emb = param if self.relaxation == "embedding" else _SampleOneHot.apply(param, g) @ vocab
                cond = sp.encode(adapter, emb).select([0] * len(x0))
                noise = randn(x0.shape[1:], g, x0) if self.resample_noise else noises[t]
                loss = self._loss(adapter, x0, noise, t, cond, image)
                opt.zero_grad()
                loss.backward()
                opt.step()
                if self.relaxation == "simplex":
                    with torch.no_grad():
                        param.copy_(project_simplex(param))
                history.append(loss.item())
            if target.success is not None and target.success(self._partial(adapter, sp, tok, param, allowed, target)):
                break
        ids = self._project(param, table, allowed)
        return {
            "text": sp.text(tok, ids),
            "soft": sp.encode(adapter, soft().detach()).detach(),
            "history": history,
            "initial": initial,
            "final": objective(soft().detach()),
            "projected": objective(table[ids].float()),
        }

    def _loss(self, adapter, x0, noise, t, cond, image) -> Tensor:
        noise = noise[None].expand_as(x0)  # one noise for every reference image, as the reference repeats it
        t = torch.tensor(int(t), device=adapter.device)
        return denoising_loss(adapter, x0, noise, t, cond, image, criterion=self.criterion)

    def _project(self, param: Tensor, table: Tensor, allowed: list[int]) -> list[int]:
        if self.relaxation == "embedding":
            return nearest_tokens(param, table, allowed).tolist()
        return [allowed[i] for i in param.argmax(-1).tolist()]

    def _partial(self, adapter, sp, tok, param, allowed, target) -> AttackResult:
        ids = self._project(param, adapter.token_embedding().weight.detach(), allowed)
        return self.result("text", prompts=[sp.text(tok, ids)], photo=target.photo, mask=target.mask)


class _SampleOneHot(torch.autograd.Function):
    """Forward: a one-hot sampled from each row's distribution; backward: the gradient, hardtanh'd (reference STE)."""

    @staticmethod
    def forward(ctx, probs: Tensor, generator: torch.Generator) -> Tensor:
        p = probs.detach().float().clamp(min=0).cpu()
        idx = torch.multinomial(p / p.sum(-1, keepdim=True), 1, generator=generator)[:, 0]
        return F.one_hot(idx, probs.shape[-1]).to(probs.device, probs.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return F.hardtanh(grad), None


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row onto the probability simplex {p >= 0, sum p = 1}
    (what the reference's bisection on clip(v - mu, 0, 1) computes)."""
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = ((u - css / k) > 0).sum(-1, keepdim=True).clamp(min=1)
    theta = css.gather(-1, rho - 1) / rho
    return (v - theta).clamp(min=0)
