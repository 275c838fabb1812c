"""The attack interface: what an attack is handed (`AttackTarget`), what it returns (`AttackResult`) and the
`Attack` base class every attack subclasses.

An attack takes the erased model (a `DiffusionAdapter`) and an `AttackTarget` (the concept's prompts, optional
reference images showing it, the pre-erasure model where the threat model allows it, the photo to edit for editing
families) and returns an `AttackResult`: whatever generation needs to reproduce the attack.

    kind         what the result carries                      who produces it
    "text"       prompt text (typed by a user)                 UnlearnDiffAtk, P4D (projected), Ring-A-Bell
    "embeddings" prompt embeddings (pipeline `prompt_embeds`)  concept inversion (and the soft forms of the above)
    "weights"    a fine-tuned adapter + the weight delta       relearning
    "latents"    initial latents x_T (+ the photo to edit)     photo inversion (TINA-style), inversion probes
    "statistics" numbers only, no images                       inversion-likelihood probe

`erase.evaluation.attacks.generation.generate_with(adapter, result, n, seed)` turns any result into images.

Threat models (`Attack.access`): "black-box" needs only the public text encoder; "white-box" reads gradients or
weights of the erased model; "white-box+original" also needs the model before erasure (P4D, base inversion), which
`AttackTarget.require_original` hands over as the training loop's `erase.methods.base.Original`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from erase.serial import to_jsonable as _jsonable
from erase.methods.base import Original, text_only_image_condition
from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition

ACCESS_LEVELS = ("white-box", "black-box", "white-box+original")
RESULT_KINDS = ("text", "embeddings", "weights", "latents", "statistics")


class AttackError(ValueError):
    """An attack cannot run as asked (wrong family, missing reference images or original model, bad option)."""


# ---------------------------------------------------------------------------------------------------------- target
@dataclass
class AttackTarget:
    """What the attacker aims at and what the threat model hands them.

    prompts: phrasings of the concept (the prompts attacked; UnlearnDiffAtk/P4D/Ring-A-Bell attack each one).
    images: reference images showing the concept, (B, 3, H, W) in [-1, 1] (PIL images are converted).
    original: the model before erasure: a DiffusionAdapter, a frozen denoiser (`adapter.frozen_copy()`), or an
        `erase.methods.base.Original` (LoRA erasure: the same network with adapters off).
    neutral_prompts: the same phrasings without the concept, paired by index with `prompts` (Ring-A-Bell).
    photo / mask: editing families: the photo to edit in [-1, 1] (and the inpainting mask, 1 = repaint).
    success: optional early stop, called with the current result during long searches (UnlearnDiffAtk after
        each timestep block, P4D at each evaluation), as the reference codes stop at the first detector hit.
    benign_prompts: benign prompts / edit instructions (the image-space attack's benign instruction; compound
        instructions of the settings sweep).
    neutral: prompts / instructions that never name the concept (the neutral-prompts attack).
    anchor: the concept's anchor (what it erases toward, e.g. "a person in a shirt"); negative_words: words naming
        what the concept removes (the clothing) for negative prompts.
    scorer: a differentiable detector, images (B, 3, H, W) in [-1, 1] -> (B,) logits that the concept is shown
        (the image-space attack's "detector" objective; the toy world's detector module).
    """

    prompts: Sequence[str]
    images: Tensor | Sequence[Image.Image] | None = None
    original: DiffusionAdapter | nn.Module | Original | None = None
    neutral_prompts: Sequence[str] = ()
    photo: Tensor | Image.Image | Sequence[Image.Image] | None = None
    mask: Tensor | Image.Image | Sequence[Image.Image] | None = None
    success: Callable[["AttackResult"], bool] | None = None
    benign_prompts: Sequence[str] = ()
    neutral: Sequence[str] = ()
    anchor: str = ""
    negative_words: Sequence[str] = ()
    scorer: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        self.prompts = [self.prompts] if isinstance(self.prompts, str) else list(self.prompts)
        for name in ("neutral_prompts", "benign_prompts", "neutral", "negative_words"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value))
        if not self.prompts:
            raise AttackError("AttackTarget needs at least one concept prompt")
        self.images = None if self.images is None else as_image_tensor(self.images, "images")
        self.photo = None if self.photo is None else as_image_tensor(self.photo, "photo")
        if self.mask is not None:
            self.mask = as_image_tensor(self.mask, "mask", channels=1, signed=False)

    def require_images(self, attack: str) -> Tensor:
        if self.images is None or len(self.images) == 0:
            raise AttackError(f"{attack} needs reference images of the concept: AttackTarget(images=...) in [-1, 1]")
        return self.images

    def require_original(self, adapter: DiffusionAdapter, attack: str) -> Original:
        """The pre-erasure model as the training loop's `Original` (one wrapper for training and attacks), whatever
        form it was handed in: an Original as it is, a separately loaded DiffusionAdapter, or a frozen denoiser
        module (`adapter.frozen_copy()`) that predicts through the attacked adapter. Attacks predict with
        `original.predict` and sample with `original.adapter` and `denoiser=original.denoiser()`."""
        original = self.original
        if original is None:
            raise AttackError(f"{attack} needs the original (pre-erasure) model: AttackTarget(original=...)")
        if isinstance(original, Original):
            return original
        if isinstance(original, DiffusionAdapter):
            return Original(original, lora=False, frozen=original.denoiser)
        if isinstance(original, nn.Module):
            return Original(adapter, lora=False, frozen=original)
        raise AttackError(f"{attack}: original must be a DiffusionAdapter, a denoiser module or an Original, "
                          f"not {type(original).__name__}")

    @torch.no_grad()
    def reference_latents(self, adapter: DiffusionAdapter, attack: str) -> Tensor:
        return adapter.encode_images(self.require_images(attack).to(adapter.device))

    def image_condition(self, adapter: DiffusionAdapter, n: int) -> ImageCondition | None:
        """The photo condition an editing family predicts with (n rows): the target's photo, or, without one, the
        image-unconditional branch. None for text-to-image families."""
        if not adapter.edits_images:
            return None
        if self.photo is None:
            return text_only_image_condition(adapter, n)
        return photo_condition(adapter, self.photo, self.mask, list(range(n)))


def as_image_tensor(x: Any, what: str, channels: int = 3, signed: bool = True) -> Tensor:
    """(B, C, H, W) float tensor from a tensor or PIL image(s); PIL is mapped to [-1, 1] (masks to [0, 1])."""
    if isinstance(x, Image.Image):
        x = [x]
    if isinstance(x, (list, tuple)):
        mode = "RGB" if channels == 3 else "L"
        arrays = [np.asarray(im.convert(mode), dtype=np.float32) / 255.0 for im in x]
        t = torch.from_numpy(np.stack(arrays))
        t = t.permute(0, 3, 1, 2) if channels == 3 else t[:, None]
        x = t * 2 - 1 if signed else t
    if not isinstance(x, Tensor):
        raise AttackError(f"{what}: expected a tensor or PIL images, got {type(x).__name__}")
    x = x[None] if x.dim() == 3 else x
    if x.dim() != 4 or x.shape[1] != channels:
        raise AttackError(f"{what}: expected shape (B, {channels}, H, W), got {tuple(x.shape)}")
    lo = -1.0 if signed else 0.0
    if x.numel() and (x.min() < lo - 1e-3 or x.max() > 1 + 1e-3):
        raise AttackError(f"{what}: values must lie in [{lo:g}, 1] (got {x.min().item():.3g}..{x.max().item():.3g})")
    return x.float()


def photo_condition(adapter: DiffusionAdapter, photo: Tensor, mask: Tensor | None, rows: Sequence[int]) -> ImageCondition:
    """The image condition for `rows`, cycling through the photos (and masks)."""
    index = [r % len(photo) for r in rows]
    m = None if mask is None else mask[[r % len(mask) for r in rows]].to(adapter.device)
    with torch.no_grad():
        return adapter.image_condition(photo[index].to(adapter.device), m)


# ---------------------------------------------------------------------------------------------------------- result
SETTING_KEYS = ("steps", "guidance", "image_guidance", "scheduler", "strength", "inpaint_strength", "negative_prompt")
GENERATION_PATHS = ("t2i", "img2img", "inpaint", "instruct", "kontext")


@dataclass
class AttackResult:
    """What generation needs to reproduce an attack, plus what the report shows about it.

    Fields the evaluation engine consumes (every one optional but `attack`/`access`/`kind`):
      kind: "text" | "embeddings" | "weights" | "latents" generate images; "statistics" generates none (a probe
        whose numbers are in `statistics`, e.g. the inverted-latent likelihood of base vs erased).
      variant: label of this setting / budget within one attack ("guidance=12", "eps=8/255, benign"); one attack
        may return several results (a list): the engine reports each variant and the worst.
      prompts: the text to generate from (prompt or edit instruction), one per row; images cycle over rows.
      conditioning: prompt embeddings (rows), fed as prompt_embeds ("embeddings" form).
      adapter / weights_delta: the relearned model to generate with ("weights").
      latents (+ start_step): initial latents per row; `start_step` > 0 means the latents are the state at index
        start_step of the num_steps grid (noise injection: re-noised reference) and sampling runs from there.
        Latent results are sampled with `sample_latents` / `generate_with` (the adapter's deterministic sampler:
        the stock pipelines cannot start mid-chain or on an inverted x_T).
      photo / mask: the photo(s) to edit in [-1, 1] (image-space attack: the perturbed photos, to be delivered
        as 8-bit images; the attack already rounded them), cycled with the rows; for "t2i"-family probes on the
        img2img path the photo is the init image.
      path: the generation path the result needs ("t2i", "img2img", "inpaint", "instruct", "kontext"); None = the
        family's usual path for the suite.
      settings: generation-setting overrides, GenSettings field names: steps, guidance, image_guidance, strength,
        inpaint_strength, negative_prompt, plus "scheduler" (a name in erase.evaluation.generate.SCHEDULERS,
        applied per call). Applied on top of the suite's settings (`generate.with_overrides`).
      repeat: apply the edit this many times, each output the next input (repeated edits); 1 = once.
      compare_with_base: the engine runs the same result on the base model too and reports erased minus base
        (neutral prompts: an erased model more exposed than its base is leakage the erasure created).
      budget: the budget actually used (eps, steps, iterations ...) and `budget["scale"]`, the ratio to the
        attack's reference default where the config scaled it; recorded with the rate.
      statistics: numbers the attack measured itself (probes), recorded as they are (not rates).
      negative_prompt / num_steps / guidance: older spellings of settings (photo inversion's grid); settings win.
    """

    attack: str
    access: str
    kind: str  # one of RESULT_KINDS: the form `generate_with` uses by default
    prompts: list[str] | None = None  # text form (for "latents": the regeneration prompt, usually "")
    conditioning: Conditioning | None = None  # embedding form (rows), fed as prompt_embeds
    adapter: DiffusionAdapter | None = None  # relearned model ("weights")
    weights_delta: dict[str, Tensor] | None = None  # fine-tuned parameter minus erased parameter
    latents: Tensor | None = None  # initial latents x_T, one per row ("latents")
    photo: Tensor | None = None  # editing families: photos to edit in [-1, 1], cycled with the rows
    mask: Tensor | None = None
    negative_prompt: str = ""  # the unconditional branch of classifier-free guidance
    num_steps: int | None = None  # sampling settings the attack needs (photo inversion: its inversion grid)
    guidance: float | None = None
    initial_loss: float | None = None  # the attack's objective before / after (white-box optimisation attacks)
    final_loss: float | None = None
    history: list[float] = field(default_factory=list)  # objective per optimisation step
    info: dict[str, Any] = field(default_factory=dict)  # small JSON-able facts for the report
    tensors: dict[str, Tensor] = field(default_factory=dict)  # e.g. the learned embedding
    variant: str = ""
    path: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    repeat: int = 1
    start_step: int = 0
    compare_with_base: bool = False
    budget: dict[str, Any] = field(default_factory=dict)
    statistics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in RESULT_KINDS:
            raise AttackError(f"unknown result kind {self.kind!r}; one of {RESULT_KINDS}")
        unknown = sorted(set(self.settings) - set(SETTING_KEYS))
        if unknown:
            raise AttackError(f"unknown generation setting(s) {unknown}; settings take {SETTING_KEYS}")
        if self.path is not None and self.path not in GENERATION_PATHS:
            raise AttackError(f"unknown generation path {self.path!r}; one of {GENERATION_PATHS}")
        if self.repeat < 1:
            raise AttackError(f"repeat must be at least 1 (edits applied in a row), not {self.repeat}")

    @property
    def rows(self) -> int:
        """How many distinct attack inputs the result holds (images cycle through them)."""
        if self.kind == "latents" and self.latents is not None:
            return len(self.latents)
        if self.kind == "embeddings" and self.conditioning is not None:
            return len(self.conditioning)
        return len(self.prompts or [""])

    def forms(self) -> tuple[str, ...]:
        """Forms `generate_with` can sample this result in."""
        out = []
        if self.prompts is not None and self.kind != "latents":
            out.append("text")
        if self.conditioning is not None:
            out.append("embeddings")
        if self.adapter is not None:
            out.append("weights")
        if self.latents is not None:
            out.append("latents")
        return tuple(out)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"attack": self.attack, "access": self.access, "kind": self.kind, "rows": self.rows,
                             "forms": list(self.forms())}
        if self.prompts is not None:
            d["prompts"] = list(self.prompts)
        for k in ("negative_prompt", "num_steps", "guidance", "initial_loss", "final_loss"):
            v = getattr(self, k)
            if v is not None and v != "":
                d[k] = v
        if self.history:
            d["steps"] = len(self.history)
        for k in ("variant", "path", "settings", "budget", "statistics"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.repeat != 1:
            d["repeat"] = self.repeat
        if self.start_step:
            d["start_step"] = self.start_step
        if self.compare_with_base:
            d["compare_with_base"] = True
        if self.weights_delta is not None:
            d["delta_norm"] = float(math.sqrt(sum(float(v.float().pow(2).sum()) for v in self.weights_delta.values())))
            d["delta_params"] = len(self.weights_delta)
        d.update(_jsonable(self.info))
        return d


# ---------------------------------------------------------------------------------------------------------- attack
class Attack(ABC):
    """One attack; subclasses are dataclasses whose fields are the attack's hyperparameters."""

    name: ClassVar[str]
    access: ClassVar[str]
    needs_clip_tokens: ClassVar[bool] = False  # optimises CLIP token embeddings (SD1/SD2-style text encoder)
    # What the engine must supply, checked before any work: reference images (AttackTarget.images) and a photo
    # to edit even on a text-to-image family (AttackTarget.photo; the img2img path there).
    needs_references: ClassVar[bool] = False
    needs_photo: ClassVar[bool] = False

    @abstractmethod
    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator: torch.Generator | None = None) -> AttackResult:
        """Attack the (erased) adapter; all randomness comes from `generator`."""

    def unsupported_reason(self, adapter: DiffusionAdapter) -> str | None:
        if self.needs_clip_tokens and not single_clip(adapter):
            return (f"attack {self.name!r} optimises CLIP token embeddings of an SD1/SD2-style text encoder; "
                    f"family {adapter.family!r} encodes text with {adapter.spec.text_encoders}")
        return None

    def check(self, adapter: DiffusionAdapter) -> None:
        if reason := self.unsupported_reason(adapter):
            raise AttackError(reason)

    def config(self) -> dict[str, Any]:
        return _jsonable(asdict(self)) if is_dataclass(self) else {}

    def result(self, kind: str, **kw: Any) -> AttackResult:
        info = {"config": self.config(), **kw.pop("info", {})}
        return AttackResult(attack=self.name, access=self.access, kind=kind, info=info, **kw)

    @classmethod
    def options(cls) -> list[str]:
        return [f.name for f in fields(cls)] if is_dataclass(cls) else []


def single_clip(adapter: DiffusionAdapter) -> bool:
    return adapter.spec.architecture == "unet" and tuple(adapter.spec.text_encoders) == ("text_encoder",)
