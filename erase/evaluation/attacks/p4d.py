"""P4D: Prompting4Debugging (Chin et al., ICML 2024; joycenerd/P4D).

Find a prompt under which the erased model behaves like the ORIGINAL model under the concept prompt c. Along
the original's sampling trajectory {x_{t_i}} for c (DDIM, 25 steps, guidance 7.5 as in the P4D configs):

    min_P  || eps_erased(x_{t_i}, t_i, P) - eps_original(x_{t_i}, t_i, c) ||^2

P is a soft prompt of `prompt_len` = 16 token embeddings (P4D-N), or with `insert_every` = k one learnable token
after every k tokens of c (P4D-K). Optimisation follows the reference's PEZ scheme: each step projects the soft
embeddings to their nearest vocabulary tokens (cosine), computes the loss and its gradient AT the projected
embeddings, and applies that gradient to the continuous ones (AdamW, lr 0.1, weight decay 0.1, 3000 steps). Every
`eval_every` steps the projected prompt is scored and the best one kept (the reference scores by CLIP similarity of
generated images; here by the objective on a fixed set of trajectory states, no extra model needed).

The result is the best projected prompt as text (kind "text"); the final continuous prompt is its "embeddings"
form. `initial_loss`/`final_loss`: objective of the initial and of the returned projected prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition
from erase.evaluation.attacks.generation import trajectory
from erase.evaluation.attacks.interface import Attack, AttackResult, AttackTarget
from erase.evaluation.attacks.optimisation import frozen
from erase.evaluation.attacks.randomness import randint, seeded
from erase.evaluation.attacks.tokens import allowed_token_ids, nearest_tokens, random_tokens, slot_prompt
from erase.methods.base import Original


@dataclass
class P4D(Attack):
    name = "p4d"
    access = "white-box+original"
    needs_clip_tokens = True

    prompt_len: int = 16  # P4D-N soft prompt length
    insert_every: int | None = None  # P4D-K: a learnable token after every k prompt tokens (reference k = 3)
    iterations: int = 3000
    lr: float = 0.1
    weight_decay: float = 0.1
    batch_size: int = 1  # trajectory states per step
    num_steps: int = 25  # the original's sampling trajectory
    guidance: float = 7.5
    eval_every: int = 50
    eval_points: int = 8  # trajectory states in the fixed evaluation set

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator: torch.Generator | None = None) -> AttackResult:
        self.check(adapter)
        g = seeded(generator)
        original = target.require_original(adapter, self.name)
        with frozen(adapter, original.adapter, original.denoiser()):  # one attack per concept prompt
            outs = [self._attack_prompt(adapter, original, target, prompt, g) for prompt in target.prompts]
        mean = lambda key: sum(o[key] for o in outs) / len(outs)
        return self.result(
            "text", prompts=[o["text"] for o in outs], conditioning=Conditioning.cat([o["soft"] for o in outs]),
            photo=target.photo, mask=target.mask, initial_loss=mean("initial"), final_loss=mean("final"),
            history=[h for o in outs for h in o["history"]],
            info={"variant": "P4D-N" if self.insert_every is None else f"P4D-K (k={self.insert_every})",
                  "per_prompt_final_loss": [o["final"] for o in outs]},
        )

    def _slots(self, tok, prompt: str):
        if self.insert_every is None:
            return slot_prompt(tok, [self.prompt_len])
        ids = tok(prompt, add_special_tokens=False).input_ids
        k = self.insert_every
        parts: list = []
        for i in range(0, len(ids), k):
            parts += [ids[i : i + k], 1]
        return slot_prompt(tok, parts)

    def _attack_prompt(self, adapter, original: Original, target: AttackTarget, prompt: str, g) -> dict:
        tok = adapter.pipe.tokenizer
        table = adapter.token_embedding().weight.detach()
        allowed = allowed_token_ids(tok)
        sp = self._slots(tok, prompt)

        # the original's trajectory for the concept prompt, and its (conditional) predictions along it
        image1 = target.image_condition(original.adapter, 1)
        with torch.no_grad():
            cond_o, uncond_o = original.adapter.encode_prompts([prompt]), original.adapter.encode_prompts([""])
        states = trajectory(original.adapter, cond_o, uncond_o, self.num_steps, self.guidance, g, image1,
                            denoiser=original.denoiser())
        targets = [original.predict(x, t, cond_o, image1) for t, x in states]

        def batch(index: list[int]):
            x = torch.cat([states[i][1] for i in index])
            t = torch.stack([states[i][0] for i in index]).to(adapter.device)
            image = None if image1 is None else ImageCondition(image1.latents.expand(len(index), -1, -1, -1))
            return x, t, torch.cat([targets[i] for i in index]).float(), image

        def loss_at(slot_embeds, index):
            x, t, tgt, image = batch(index)
            cond = sp.encode(adapter, slot_embeds).select([0] * len(index))
            return F.mse_loss(adapter.predict(x, t, cond, image).float(), tgt)

        every = max(1, len(states) // self.eval_points)
        fixed = list(range(0, len(states), every))[: self.eval_points]

        def objective(ids) -> float:
            with torch.no_grad():
                return loss_at(table[ids].float(), fixed).item()

        init_ids = random_tokens(tok, len(sp.slots), g)
        param = table[init_ids].float().clone().requires_grad_(True)
        opt = torch.optim.AdamW([param], lr=self.lr, weight_decay=self.weight_decay)
        best_ids, best = init_ids, objective(init_ids)
        initial, history = best, []
        for step in range(self.iterations):
            ids = nearest_tokens(param, table, allowed).tolist()
            projected = table[ids].float().requires_grad_(True)
            loss = loss_at(projected, randint(len(states), self.batch_size, g))
            (param.grad,) = torch.autograd.grad(loss, [projected])  # PEZ: gradient at the projection
            opt.step()
            opt.zero_grad()
            history.append(loss.item())
            if step % self.eval_every == 0 or step == self.iterations - 1:
                score = objective(ids)
                if score < best:
                    best, best_ids = score, ids
                    if target.success is not None and target.success(
                        self.result("text", prompts=[sp.text(tok, best_ids)], photo=target.photo, mask=target.mask)
                    ):
                        break
        return {
            "text": sp.text(tok, best_ids),
            "soft": sp.encode(adapter, param.detach()).detach(),
            "history": history,
            "initial": initial,
            "final": best,
        }
