"""Edit refusal: image-conditioned erasure that trains on photographs, so that forbidden *edits* are refused.

Text-to-image erasure trains on trajectories the model samples from noise; an editor starts from a photo, and
that is where text-only methods leak. Here every state x_t comes from real photos: the forward process applied
to the photo and, where known, to its forbidden counterpart (the states a forbidden edit passes through).
For each editing path:

    sdedit   (text-to-image models: img2img and legacy inpainting) x_t from photos at editing strengths
    inpaint  (9-channel inpainting models)   image condition = [mask, masked photo latents]
    instruct (InstructPix2Pix family)        image condition = photo latents
    kontext  (FLUX Kontext)                  image condition = photo tokens

Objective, with d = orig(x_t, c_forbidden, I) - orig(x_t, c_safe, I) the concept's direction at that state:

    conditional branch:  model(x_t, c_forbidden, I)  ->  orig(x_t, c_safe, I) - eta d
    guidance branches:   model(x_t, "", I), model(x_t, "", 0)  ->  orig(same) - eta_null d

Guidance-proof: classifier-free guidance combines these branches, e.g. for InstructPix2Pix
e(0,0) + s_I (e(0,I) - e(0,0)) + s_T (e(T,I) - e(0,I)). Two choices make it unable to push back toward the concept:

    eta_null = 0 (default, "anchored"): the branches without the instruction keep the original prediction, so a
        forbidden edit gives the safe edit - s_T eta d: refusal grows with the guidance scale. Benign edits share
        those branches and are untouched.
    eta_null = eta ("shifted", as ACE (2025) trains the unconditional branch): every branch moves by -eta d, so any
        guidance scale, even 0, moves the result by -eta d. But every benign edit then sees its null branches moved
        and is guided by +s_T eta d toward the concept (toy editor: untouched attributes kept fell from 92% to 77%).

    preservation:   model(x_t, c_benign, I) -> orig(x_t, c_benign, I)          (benign edits of the same photos)
    text-agnostic:  model(x_t^forbidden, c, I) -> a prediction toward the safe photo for c in {"", forbidden, benign}
                    (`safegen_target`; SafeGen, 2024:
                    self-attention trained on images alone, so a wording that avoids the concept is refused too)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from erase.concept import Concept
from erase.methods.base import FineTuneMethod, MethodError, Original, prediction_loss
from erase.methods.registry import register
from erase.methods.robust import ROBUST_OFF, RobustTerms, Site, with_robust
from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition
from erase.photos import PhotoSet, load_photos

PATHS = ("sdedit", "inpaint", "instruct", "kontext")
BRANCHES = ("cond", "image", "uncond")


@register("edit_refusal")
class EditRefusal(FineTuneMethod):
    name = "edit_refusal"

    def __init__(
        self,
        path: str = "auto",
        group: str = "all",
        eta: float = 1.0,
        eta_null: float = 0.0,  # 0: anchored null branches; eta: shifted (module docstring)
        branches: list[str] | None = None,
        strength: tuple[float, float] = (0.3, 1.0),  # sdedit: the editing strengths trained on
        preserve_weight: float = 1.0,
        text_agnostic_weight: float = 0.5,
        batch_size: int = 4,
        photos: dict | None = None,
        loss_weighting: str = "eps",
        robust: dict | None = ROBUST_OFF,  # erase.methods.robust: adversaries, closed doors, relearning resistance
    ):
        if path != "auto" and path not in PATHS:
            raise MethodError(f"edit_refusal path must be auto or one of {PATHS}, got {path!r}")
        if branches is not None and not set(branches) <= set(BRANCHES):
            raise MethodError(f"branches must be among {BRANCHES}, got {branches}")
        self.path, self.group, self.eta = path, group, eta
        self.eta_null = eta_null
        self.branches, self.strength = branches, tuple(strength)
        self.preserve_weight, self.text_agnostic_weight = preserve_weight, text_agnostic_weight
        # No default photo source: the core must not train a real model on the toy world's paper dolls by accident.
        self.batch_size, self.photo_cfg = batch_size, dict(photos) if photos else None
        self.loss_weighting = loss_weighting
        self.robust = RobustTerms(robust)

    def require_photos(self) -> None:
        if self.photo_cfg is None:
            raise MethodError(
                "edit_refusal trains on photos and none are set: give method.params.photos, e.g. "
                "{source: folder, path: DIR, n: 128} (your photos; manifest.csv optional, see erase/photos.py), "
                "{source: dataset, name: ID} or a registered source ({source: toy} in the toy world)")

    @staticmethod
    def path_for(spec) -> str:
        return {None: "sdedit", "inpaint": "inpaint", "instruct": "instruct", "kontext": "kontext"}[spec.editing]

    def unsupported_reason(self, spec):
        if reason := super().unsupported_reason(spec):
            return reason
        if self.path != "auto" and self.path != self.path_for(spec):
            return f"edit_refusal path {self.path!r} does not match family {spec.name!r}, which edits via {self.path_for(spec)!r}"
        return None

    # ------------------------------------------------------------------ setup
    def setup(self, adapter: DiffusionAdapter, concept: Concept, original: Original, seed: int) -> None:
        self.adapter, self.original = adapter, original
        path = self.path_for(adapter.spec)
        self.active_path = path
        edits_text = path in ("instruct", "kontext")
        forbidden = concept.forbidden_edits if edits_text else concept.prompts
        if not forbidden:
            raise MethodError(
                f"edit_refusal on {adapter.family} needs forbidden edit instructions: set concept.forbidden_edits "
                "(or concept.edits_file)"
            )
        safe = concept.safe_edit if edits_text else concept.anchor
        benign = concept.benign_edits if edits_text else concept.preserve
        default_branches = {"instruct": ["cond", "image", "uncond"], "sdedit": ["cond", "uncond"]}.get(path, ["cond", "uncond"])
        self.active_branches = self.branches or default_branches
        self.require_photos()
        photos: PhotoSet = load_photos(self.photo_cfg, adapter.default_size)
        with torch.no_grad():
            self.forbidden = adapter.encode_prompts(forbidden).detach()
            self.safe = adapter.encode_prompts([safe]).detach()
            self.empty = adapter.encode_prompts([""]).detach()
            self.benign = adapter.encode_prompts(benign).detach() if benign else None
            images = photos.photos.to(adapter.device)
            self.x0_photo = torch.cat([adapter.encode_images(images[i : i + 16]) for i in range(0, len(images), 16)])
            self.x0_counter, self.counter_pixels = None, photos.counterparts
            if photos.counterparts is not None:
                cp = photos.counterparts.to(adapter.device)
                self.x0_counter = torch.cat([adapter.encode_images(cp[i : i + 16]) for i in range(0, len(cp), 16)])
            self.image, self.photo_pixels, self.photo_masks = None, images, photos.masks
            if path != "sdedit":
                masks = photos.masks.to(adapter.device)
                self.image = ImageCondition(torch.cat([
                    adapter.image_condition(images[i : i + 16], masks[i : i + 16]).latents for i in range(0, len(images), 16)
                ]))
        self.robust.setup(adapter, original, self.name, [w for w in [safe, *benign] if w], image_path=path != "sdedit")

    # ------------------------------------------------------------------ one step
    def _timesteps(self, b: int, g: torch.Generator) -> Tensor:
        low, high = self.strength if self.active_path == "sdedit" else (0.0, 1.0)
        return self.adapter.sample_timesteps(b, g, low=low, high=high)

    def _branch(self, name: str, text: Conditioning, image: ImageCondition | None, b: int):
        """(conditioning, image condition) of a guidance branch."""
        if name == "cond":
            return text, image
        if name == "image":
            return self.empty.repeat(b), image
        # uncond: no text; InstructPix2Pix also drops the image (zeros), others keep it (inpaint/Kontext CFG).
        null_image = image.null() if (image is not None and self.active_path == "instruct") else image
        return self.empty.repeat(b), null_image

    def loss(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        a, b, g = self.adapter, self.batch_size, generator
        idx = torch.randint(len(self.x0_photo), (b,), generator=g).to(a.device)
        image = None if self.image is None else self.image.select(idx)
        x0 = self.x0_photo[idx]
        if self.x0_counter is not None:  # half the states lie on the forbidden edit's path
            use = (torch.rand(b, generator=g) < 0.5).to(a.device).view(-1, 1, 1, 1)
            x0 = torch.where(use, self.x0_counter[idx], x0)
        noise = torch.randn(x0.shape, generator=g).to(x0)
        t = self._timesteps(b, g)
        x_t = a.add_noise(x0, noise, t)
        which = torch.randint(len(self.forbidden), (b,), generator=g).to(a.device)
        text = self.forbidden.select(which)

        # Every frozen prediction of the step in one batched call, and every trained one in another: the terms share
        # the states, so one large forward costs less than seven small ones (the randomness is drawn as before).
        branches = [(name, *self._branch(name, text, image, b)) for name in self.active_branches]
        preserve = self.benign is not None and self.preserve_weight > 0
        if preserve:
            x_p = a.add_noise(self.x0_photo[idx], noise, t)
            bc = self.benign.select(torch.randint(len(self.benign), (b,), generator=g).to(a.device))
        agnostic = self.x0_counter is not None and self.text_agnostic_weight > 0
        if agnostic:
            # SafeGen-style: states of the forbidden result denoise toward the safe photo whatever the text says.
            # Trained with no text, with the forbidden text and with a benign one alike: moved on the empty prompt
            # alone, guidance (e_c - e_u) would point from the safe photo back toward the concept.
            x_f = a.add_noise(self.x0_counter[idx], noise, t)
            texts = [self.empty.repeat(b), text]
            if self.benign is not None:
                texts.append(self.benign.select(torch.randint(len(self.benign), (b,), generator=g).to(a.device)))

        frozen = [(x_t, text, image), (x_t, self.safe.repeat(b), image)]
        frozen += [(x_t, cond, img) for name, cond, img in branches if name != "cond"]
        if preserve:
            frozen.append((x_p, bc, image))
        with torch.no_grad():
            e = self.original.predict(*_stack(frozen, t)).split(b)
        e_forb, e_safe, d = e[0], e[1], e[0] - e[1]
        targets = [e_safe - self.eta * d if name == "cond" else None for name, _, _ in branches]
        n_null = sum(name != "cond" for name, _, _ in branches)
        nulls = iter(e[2 : 2 + n_null])
        targets = [tgt if tgt is not None else next(nulls) - self.eta_null * d for tgt in targets]

        trained = [(x_t, cond, img) for _, cond, img in branches]
        if preserve:
            trained.append((x_p, bc, image))
        if agnostic:
            trained += [(x_f, c, image) for c in texts]
        preds = list(a.predict(*_stack(trained, t), denoiser=model).split(b))

        logs, terms = {}, []
        for (name, _, _), target in zip(branches, targets):
            branch_loss = prediction_loss(a, preds.pop(0), target, t, self.loss_weighting)
            logs[f"refuse_{name}"] = branch_loss.item()
            terms.append(branch_loss)
        total = torch.stack(terms).mean()
        if preserve:
            kept = prediction_loss(a, preds.pop(0), e[2 + n_null], t, self.loss_weighting)
            total = total + self.preserve_weight * kept
            logs["preserve"] = kept.item()
        if agnostic:
            target = safegen_target(a, noise, t, self.x0_counter[idx], self.x0_photo[idx])
            refused = torch.stack([F.mse_loss(p.float(), target.float()) for p in preds]).mean()
            total = total + self.text_agnostic_weight * refused
            logs["text_agnostic"] = refused.item()
        site = lambda: Site(x_t, t, text, image, e_safe - self.eta * d, e_forb, lambda p, y, tt: prediction_loss(a, p, y, tt, self.loss_weighting),
                            self.photo_pixels[idx], None if self.photo_masks is None else self.photo_masks[idx.cpu()].to(a.device),
                            None if self.benign is None else self.benign.select(torch.randint(len(self.benign), (b,), generator=g).to(a.device)),
                            None if self.counter_pixels is None else self.counter_pixels[idx.cpu()].to(a.device))
        return with_robust(self.robust, total, logs, model, step, g, site)


def _stack(rows: list[tuple[Tensor, Conditioning, ImageCondition | None]], t: Tensor):
    """(x_t, t, conditioning, image condition) of several same-sized batches concatenated into one."""
    images = [img for _, _, img in rows]
    image = None if images[0] is None else ImageCondition(torch.cat([img.latents for img in images]))
    return torch.cat([x for x, _, _ in rows]), t.repeat(len(rows)), Conditioning.cat([c for _, c, _ in rows]), image


def safegen_target(a: DiffusionAdapter, noise: Tensor, t: Tensor, x0_forbidden: Tensor, x0_safe: Tensor) -> Tensor:
    """What the model should predict at the forbidden result's state so it denoises toward the safe image.
    Epsilon models: SafeGen's own form, noise + (x0_forbidden - x0_safe) (bounded at every t, unlike the exact
    inverse, which divides by sqrt(1 - alpha_bar)); v / flow models: the velocity from the same noise to x0_safe."""
    if a.prediction_type == "epsilon":
        return noise + (x0_forbidden - x0_safe)
    return a.target(x0_safe, noise, t)
