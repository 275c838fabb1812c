"""The attack interface: what an erased model still leaks when someone tries to get the concept back.

An attack takes the erased model (a `DiffusionAdapter`) and an `AttackTarget` (the concept's prompts, optional
reference images showing it, the pre-erasure model where the threat model allows it, the photo to edit for editing
families) and returns an `AttackResult`: whatever generation needs to reproduce the attack.

    kind         what the result carries                      who produces it
    "text"       prompt text (typed by a user)                 UnlearnDiffAtk, P4D (projected), Ring-A-Bell
    "embeddings" prompt embeddings (pipeline `prompt_embeds`)  concept inversion (and the soft forms of the above)
    "weights"    a fine-tuned adapter + the weight delta       relearning
    "latents"    initial latents x_T (+ the photo to edit)     photo inversion (TINA-style)

`generate_with(adapter, result, n, seed)` turns any result into PIL images through `adapter.sample_trajectory`
(deterministic DDIM / flow-Euler with classifier-free guidance), so any detector can score attack outputs.

Threat models (`Attack.access`): "black-box" needs only the public text encoder; "white-box" reads gradients or
weights of the erased model; "white-box+original" also needs the model before erasure (P4D).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from erase.serial import to_jsonable as _jsonable
from erase.methods.base import Original, text_only_image_condition
from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition

ACCESS_LEVELS = ("white-box", "black-box", "white-box+original")
RESULT_KINDS = ("text", "embeddings", "weights", "latents", "statistics")
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5


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


def seeded(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    """Noise drawn on the CPU from `generator` (same draws on any device), moved next to `like`."""
    return torch.randn(tuple(shape), generator=generator).to(like.device, like.dtype)


def randint(high: int, n: int, generator: torch.Generator) -> list[int]:
    return torch.randint(high, (n,), generator=generator).tolist()


@contextmanager
def frozen(*models: DiffusionAdapter | nn.Module | None) -> Iterator[None]:
    """Every module of the given adapters/modules in eval mode with requires_grad off; restored afterwards.
    Attacks optimise inputs, never the weights: this keeps gradients (and their memory) off the model."""
    modules: list[nn.Module] = []
    for m in models:
        if isinstance(m, DiffusionAdapter):
            modules += list(m.modules().values())
        elif isinstance(m, nn.Module):
            modules.append(m)
    flags = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    for p, _ in flags:
        p.requires_grad_(False)
    for m, _ in modes:
        m.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.train(mode)


def denoising_loss(adapter: DiffusionAdapter, x0: Tensor, noise: Tensor, t: Tensor, cond: Conditioning,
                   image: ImageCondition | None = None, denoiser: nn.Module | None = None, criterion: str = "l2") -> Tensor:
    """|| model(x_t, t, c) - target(x0, noise, t) ||: the diffusion training loss (l2 = MSE, l1 = MAE)."""
    t = t.expand(len(x0)) if t.dim() == 0 else t
    x_t = adapter.add_noise(x0, noise, t)
    pred = adapter.predict(x_t, t, cond, image, denoiser=denoiser).float()
    tgt = adapter.target(x0, noise, t).float()
    return F.l1_loss(pred, tgt) if criterion == "l1" else F.mse_loss(pred, tgt)


# ---------------------------------------------------------------------------------------------------------- tokens
@dataclass
class SlotPrompt:
    """A tokenised prompt with learnable slots: [bos] + (fixed tokens | slots)* + [eos] + padding.

    The slot positions get their embeddings from the attack; every other position is the usual token embedding.
    """

    ids: Tensor  # (1, L) token ids; slots hold their initial/projected token ids
    slots: Tensor  # (k,) positions of the learnable tokens
    end: int  # index of the eos token (the body is ids[1:end])

    def embeds(self, adapter: DiffusionAdapter, slot_embeds: Tensor) -> Tensor:
        """Token embeddings (B, L, D) with the slots replaced by `slot_embeds` ((k, D) or (B, k, D))."""
        emb = adapter.token_embedding()
        base = emb(self.ids.to(adapter.device)).detach()
        slot_embeds = slot_embeds if slot_embeds.dim() == 3 else slot_embeds[None]
        base = base.expand(len(slot_embeds), -1, -1).clone()
        base[:, self.slots.to(adapter.device)] = slot_embeds.to(base.dtype)
        return base

    def encode(self, adapter: DiffusionAdapter, slot_embeds: Tensor) -> Conditioning:
        """Text conditioning from the prompt with these slot embeddings (differentiable in them)."""
        return Conditioning(adapter.encode_clip_tokens(inputs_embeds=self.embeds(adapter, slot_embeds)))

    def with_ids(self, slot_ids: Sequence[int] | Tensor) -> Tensor:
        ids = self.ids.clone()
        ids[0, self.slots] = torch.as_tensor(list(map(int, slot_ids)), dtype=ids.dtype)
        return ids

    def text(self, tokenizer, slot_ids: Sequence[int] | Tensor) -> str:
        """The prompt as text with the slots set to `slot_ids` (what a user would type)."""
        body = self.with_ids(slot_ids)[0, 1 : self.end].tolist()
        return tokenizer.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def slot_prompt(tokenizer, parts: Sequence[str | int | list[int]], placeholder: int | None = None) -> SlotPrompt:
    """Build a SlotPrompt from parts: text (str), token ids (list[int]) or a number of learnable slots (int)."""
    placeholder = allowed_token_ids(tokenizer)[0] if placeholder is None else placeholder
    body: list[int] = []
    slots: list[int] = []
    for part in parts:
        if isinstance(part, int):
            slots += range(1 + len(body), 1 + len(body) + part)
            body += [placeholder] * part
        elif isinstance(part, str):
            body += tokenizer(part, add_special_tokens=False).input_ids if part.strip() else []
        else:
            body += list(part)
    n = tokenizer.model_max_length
    if slots and max(slots) > n - 2:
        raise AttackError(f"the prompt is too long for {len(slots)} learnable tokens within {n} tokens")
    body = body[: n - 2]
    ids = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids += [pad] * (n - len(ids))
    return SlotPrompt(torch.tensor([ids]), torch.tensor(slots, dtype=torch.long), end=1 + len(body))


def allowed_token_ids(tokenizer) -> list[int]:
    """Vocabulary ids an attack may place in a prompt: everything but the special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [i for i in range(len(tokenizer)) if i not in special]


def nearest_tokens(embeds: Tensor, table: Tensor, allowed: Sequence[int]) -> Tensor:
    """Ids of the vocabulary embeddings nearest in cosine to each row of `embeds` (..., D) (PEZ projection)."""
    allowed_t = torch.as_tensor(list(allowed), device=table.device)
    vocab = F.normalize(table[allowed_t].float(), dim=-1)
    sims = F.normalize(embeds.detach().float().reshape(-1, embeds.shape[-1]), dim=-1).to(vocab.device) @ vocab.T
    return allowed_t[sims.argmax(-1)].reshape(embeds.shape[:-1]).cpu()


def random_tokens(tokenizer, n: int, generator: torch.Generator) -> list[int]:
    allowed = allowed_token_ids(tokenizer)
    return [allowed[i] for i in randint(len(allowed), n, generator)]


# ---------------------------------------------------------------------------------------------------------- original
class OriginalView:
    """The pre-erasure model as an attack sees it: text encoding and (no-grad) predictions/trajectories."""

    def __init__(self, adapter: DiffusionAdapter, original: Any, attack: str):
        self.adapter, self.denoiser, self._context = adapter, None, None
        if original is None:
            raise AttackError(f"{attack} needs the original (pre-erasure) model: AttackTarget(original=...)")
        if isinstance(original, DiffusionAdapter):
            self.adapter = original
        elif isinstance(original, Original):  # the training loop's own wrapper: saved tensors swapped in, LoRA off
            self.adapter, self.denoiser = original.adapter, original.denoiser()
        elif isinstance(original, nn.Module):
            self.denoiser = original
        else:
            raise AttackError(f"{attack}: original must be a DiffusionAdapter, a denoiser module or an Original, "
                              f"not {type(original).__name__}")

    def _off(self):
        stack = ExitStack()
        if self._context is not None:
            stack.enter_context(self._context())
        return stack

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> Conditioning:
        return self.adapter.encode_prompts(list(prompts))

    @torch.no_grad()
    def predict(self, x: Tensor, t: Tensor, cond: Conditioning, image: ImageCondition | None = None) -> Tensor:
        with self._off():
            return self.adapter.predict(x, t, cond, image, denoiser=self.denoiser)

    @torch.no_grad()
    def trajectory(self, cond: Conditioning, uncond: Conditioning, num_steps: int, guidance: float,
                   generator: torch.Generator, image: ImageCondition | None = None) -> list[tuple[Tensor, Tensor]]:
        """The (t_i, x_{t_i}) states the original visits while sampling the prompt (before each step)."""
        x_T = randn(self.adapter.latent_shape(len(cond), _size(self.adapter, image)), generator,
                    torch.empty(0, device=self.adapter.device, dtype=self.adapter.dtype))
        with self._off():
            return [(t, x) for _, t, x in self.adapter.sample_trajectory(
                cond, uncond, num_steps, guidance, until=num_steps, denoiser=self.denoiser, x_T=x_T, image=image)]


def _size(adapter: DiffusionAdapter, image: ImageCondition | None) -> int | None:
    """Pixel size the latents must have to match a channel-concatenated photo condition (IP2P, inpainting)."""
    if image is None or adapter.spec.editing not in ("instruct", "inpaint"):
        return None
    return image.latents.shape[-1] * adapter.latent_factor


# ---------------------------------------------------------------------------------------------------------- generation
@torch.no_grad()
def sample_latents(
    adapter: DiffusionAdapter,
    result: AttackResult,
    n: int,
    seed: int = 0,
    *,
    num_steps: int | None = None,
    guidance: float | None = None,
    form: str | None = None,
    batch_size: int = 4,
) -> Tensor:
    """Clean latents of n attack images. Image i uses row i % rows of the result (prompt, embedding, latent,
    photo) and, where the start is random, its own CPU generator seeded with seed + i.

    num_steps/guidance: explicit values win, then the result's own (photo inversion must regenerate on the grid
    it inverted on), then 50 steps / guidance 7.5. form: "text" | "embeddings" | "weights" | "latents"
    (default: result.kind), e.g. form="embeddings" samples the soft prompt of UnlearnDiffAtk/P4D."""
    form = form or result.kind
    if form not in result.forms() and not (form == "text" and result.kind == "latents"):
        raise AttackError(f"{result.attack} result has no {form!r} form; it has {result.forms()}")
    model = result.adapter if result.adapter is not None else adapter
    num_steps = num_steps or result.num_steps or DEFAULT_STEPS
    guidance = guidance if guidance is not None else (result.guidance if result.guidance is not None else DEFAULT_GUIDANCE)
    if form == "embeddings":
        cond_all = result.conditioning.to(model.device, model.dtype)
    else:
        cond_all = model.encode_prompts(result.prompts or [""])
    uncond1 = model.encode_prompts([result.negative_prompt])
    out = []
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        cond = cond_all.select([i % len(cond_all) for i in idx])
        uncond = uncond1.select([0] * len(idx))
        image = None
        if model.edits_images:
            image = (photo_condition(model, result.photo, result.mask, idx) if result.photo is not None
                     else text_only_image_condition(model, len(idx)))
        if form == "latents":
            x_T = result.latents[[i % len(result.latents) for i in idx]].to(model.device, model.dtype)
        else:
            shape = model.latent_shape(1, _size(model, image))
            x_T = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in idx])
            x_T = x_T.to(model.device, model.dtype)
        start = result.start_step if form == "latents" else 0
        out.append(_sample(model, cond, uncond, num_steps, guidance, x_T, image, start))
    return torch.cat(out)


def _sample(model: DiffusionAdapter, cond: Conditioning, uncond: Conditioning, num_steps: int, guidance: float,
            x: Tensor, image: ImageCondition | None, start: int = 0) -> Tensor:
    """The deterministic sampler (as `sample_trajectory`) from grid index `start` (x is the state there) to the
    clean latents."""
    if not 0 <= start < num_steps:
        raise AttackError(f"start_step {start} must lie in [0, {num_steps}) of the {num_steps}-step grid")
    ts = model.inference_timesteps(num_steps).to(model.device)
    both = Conditioning.cat([uncond, cond])
    image2 = None if image is None else ImageCondition(torch.cat([image.latents, image.latents]))
    for i in range(start, num_steps):
        e_u, e_c = model.predict(torch.cat([x, x]), ts[i], both, image2).chunk(2)
        x = model.step(x, ts[i], ts[i + 1] if i + 1 < num_steps else None, e_u + guidance * (e_c - e_u))
    return x


def latents_to_pil(adapter: DiffusionAdapter, latents: Tensor) -> list[Image.Image]:
    with torch.no_grad():
        images = adapter.decode_latents(latents)
    arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a, "RGB") for a in arrays]


def generate_with(
    adapter: DiffusionAdapter,
    result: AttackResult,
    n: int,
    seed: int = 0,
    **kwargs: Any,
) -> list[Image.Image]:
    """n PIL images of the attack (see `sample_latents` for the options), decoded by the model's VAE.
    For editing families the result's photo (or, without one, the image-unconditional branch) conditions every image."""
    model = result.adapter if result.adapter is not None else adapter
    latents = sample_latents(adapter, result, n, seed, **kwargs)
    return latents_to_pil(model, latents)
