"""Reconstruction (formerly "photo inversion"): text-free photo inversion (TINA-style; cf. "Memories of Forgotten Concepts", arXiv 2412.00782, and TINA,
arXiv 2603.17828): no prompt ever names the concept.

1. DDIM-invert a reference photo of the concept through the ERASED model with the empty prompt (guidance 1):
   run the deterministic sampler backwards, clean -> t_{N-1} -> ... -> t_0, each step the exact inverse of the
   sampler's step with the prediction taken on the current latent at the next (noisier) timestep:

       x_{t+} = sqrt(a_{t+}) x0_hat + sqrt(1 - a_{t+}) eps(x_t, t+, "")      x0_hat from x_t and that eps

   (v prediction likewise; flow models: x_{s+} = x_s + (s+ - s) v(x_s, s+), the Euler step run backwards).
2. Regenerate from the inverted latent x_T with the empty (or a benign) prompt on the same grid. If the model can
   still represent the concept, the chain lands back on it: text-only erasure does not remove the image manifold.

Editing families: the same through the editing model, conditioned on a photo: the target's photo to edit if given,
else each reference photo itself, with an empty (benign) instruction; `generate_with` edits that photo starting
from the inverted latent. The result (kind "latents") carries x_T, the photos, the prompt and the grid
(num_steps, guidance) that regeneration must use.

Labelled *reconstruction*: a deterministic ODE maps its own inversion back to the photo it was handed, whatever
the weights (the base reads 100% as every method does), so this measures the sampler, not the erasure. The probes
that separate methods are in `inversion_probes` (invert with the base, regenerate with the erased model; noise
injection; the likelihood of inverted latents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition
from erase.evaluation.attacks.interface import Attack, AttackResult, AttackTarget, photo_condition
from erase.evaluation.attacks.optimisation import frozen


@torch.no_grad()
def ddim_invert(adapter: DiffusionAdapter, x0: Tensor, cond: Conditioning, num_steps: int,
                image: ImageCondition | None = None, predict: Callable[..., Tensor] | None = None) -> Tensor:
    """Clean latents -> the x_T the deterministic sampler (`sample_trajectory`, guidance 1) maps back to them.
    `predict(x, t, cond, image)` swaps in another model's prediction (the base model, for the inversion probes)."""
    predict = predict or adapter.predict
    ts = adapter.inference_timesteps(num_steps).to(adapter.device).flip(0)  # t_{N-1} (least noisy) ... t_0
    x, t = x0, None
    for t_next in ts:
        x = invert_step(adapter, x, t, t_next, predict(x, t_next, cond, image))
        t = t_next
    return x


def invert_step(adapter: DiffusionAdapter, x: Tensor, t: Tensor | None, t_next: Tensor, pred: Tensor) -> Tensor:
    """The exact inverse of `adapter.step(x_next, t_next, t, pred)` (t None = the clean end), solved for x_next.

    A DDIM step is linear in its input, x_t = A x_{t_next} + B pred, with (a = alpha-bar, s = sqrt(1 - a); the
    clean end is the scheduler's final alpha-bar) A = sqrt(a_t / a_n), B = s_t - sqrt(a_t) s_n / sqrt(a_n) for epsilon prediction and
    A = sqrt(a_t a_n) + s_t s_n, B = s_t sqrt(a_n) - sqrt(a_t) s_n for v prediction; flow: x_t = x_n + (s_t - s_n) v.
    Inversion evaluates pred on x_t instead of x_{t_next}: the only approximation."""
    if adapter.is_flow:
        s, s_next = (0.0 if t is None else t.float() / 1000), t_next.float() / 1000
        return (x + (s_next - s) * pred).to(x.dtype)
    ac = adapter.alphas_cumprod.to(x.device).double()
    a_t = adapter.final_alpha_cumprod().to(x.device).double() if t is None else ac[t.long()]
    a_n = ac[t_next.long()]
    s_t, s_n = (1 - a_t).sqrt(), (1 - a_n).sqrt()
    if adapter.prediction_type == "v_prediction":
        A, B = (a_t * a_n).sqrt() + s_t * s_n, s_t * a_n.sqrt() - a_t.sqrt() * s_n
    else:
        A, B = (a_t / a_n).sqrt(), s_t - a_t.sqrt() * s_n / a_n.sqrt()
    return ((x.double() - B * pred.double()) / A).to(x.dtype)


@dataclass
class PhotoInversion(Attack):
    name = "reconstruction"
    access = "white-box"
    needs_references = True

    num_steps: int = 50  # inversion and regeneration grid
    prompt: str = ""  # inversion / regeneration prompt (edit instruction for editing families): empty = text-free
    guidance: float = 1.0  # regeneration guidance (with an empty prompt conditional = unconditional)

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator: torch.Generator | None = None) -> AttackResult:
        self.check(adapter)
        images = target.require_images(self.name)
        photo = target.photo if target.photo is not None else images
        mask = target.mask
        with frozen(adapter), torch.no_grad():
            x0 = adapter.encode_images(images.to(adapter.device))
            cond = adapter.encode_prompts([self.prompt]).select([0] * len(x0))
            image = photo_condition(adapter, photo, mask, range(len(x0))) if adapter.edits_images else None
            x_T = ddim_invert(adapter, x0, cond, self.num_steps, image)
        rows = list(range(len(x0)))
        return self.result(
            "latents", prompts=[self.prompt], latents=x_T.cpu(),
            photo=photo[[r % len(photo) for r in rows]] if adapter.edits_images else None,
            mask=None if mask is None else mask[[r % len(mask) for r in rows]],
            num_steps=self.num_steps, guidance=self.guidance,
            variant="reconstruction",
            info={"latent_std": x_T.float().std().item(),
                  "note": "reconstruction of the given photo: the sampler's property, not evidence about the weights",
                  **({"edits": "target photo" if target.photo is not None else "reference image"} if adapter.edits_images else {})},
        )
