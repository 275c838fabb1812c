"""Generation through the real diffusers pipelines, one function per path, deterministic per image.

Leakage must be measured on what users actually run, so images come from the stock pipeline classes, not from
the adapter's sampler: text-to-image (the family's class), SDEdit (`<Img2Img>.from_pipe`), inpainting (the
family's inpaint class: legacy 4-channel blending on text-to-image weights, or the 9-channel inpainting UNet),
instruction editing (InstructPix2Pix) and FLUX Kontext.

Every image has its own CPU generator seeded with its own seed: the image of (prompt, seed) is the same in any
batch, on any device, and when a resumed run regenerates part of a batch.
"""

from __future__ import annotations

import inspect
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import torch
from PIL import Image

import diffusers
from diffusers import DiffusionPipeline

from erase.models.families import FamilySpec
from erase.models.sizes import native_size
from erase.serial import is_jsonable

PATHS: tuple[str, ...] = ("t2i", "img2img", "inpaint", "instruct", "kontext")


@dataclass(frozen=True)
class GenSettings:
    """How images are sampled; recorded with every result."""

    steps: int = 50
    guidance: float = 7.5
    height: int | None = None  # None: the model's native size
    width: int | None = None
    negative_prompt: str | None = None
    strength: float = 0.7  # SDEdit strength (img2img); inpainting defaults to 1.0 (`inpaint_strength`)
    inpaint_strength: float = 1.0
    image_guidance: float = 1.5  # InstructPix2Pix image guidance
    true_cfg: float = 1.0  # FLUX: > 1 runs real classifier-free guidance, which a negative prompt needs
    extra: Mapping[str, Any] = field(default_factory=dict)  # further call kwargs, kept where the pipeline takes them

    def replace(self, **changes: Any) -> "GenSettings":
        return replace(self, **changes)

    def as_record(self) -> dict[str, Any]:
        out = asdict(self)
        out["extra"] = {k: v for k, v in sorted(dict(self.extra).items()) if is_jsonable(v)}
        return out


SETTING_ALIASES = {"num_steps": "steps", "num_inference_steps": "steps", "guidance_scale": "guidance",
                   "image_guidance_scale": "image_guidance"}


def with_overrides(settings: GenSettings, overrides: Mapping[str, Any] | None) -> GenSettings:
    """`settings` with the GenSettings fields `overrides` names (an attack's settings, a suite's sampling).
    Aliases (num_steps, guidance_scale...) are accepted; an unknown name is an error naming the valid ones.
    A scheduler name goes into `extra["scheduler"]`, which `call_pipeline` applies for that call."""
    if not overrides:
        return settings
    fields_ = set(GenSettings.__dataclass_fields__)
    changes: dict[str, Any] = {}
    extra = dict(settings.extra)
    for key, value in overrides.items():
        name = SETTING_ALIASES.get(key, key)
        if name == "scheduler":
            extra["scheduler"] = value
        elif name in fields_:
            changes[name] = value
        else:
            raise ValueError(f"unknown generation setting {key!r}; settings are {sorted(fields_ | {'scheduler'})}")
    return replace(settings, **changes, extra=extra)


def settings_from(value: Any) -> GenSettings | None:
    """GenSettings from a config value: None, a registered preset name (erase.registry `sampling`, e.g. "toy"),
    a mapping of fields, or a mapping with `preset:` plus fields that override it."""
    if value is None:
        return None
    if isinstance(value, GenSettings):
        return value
    if isinstance(value, str):
        value = {"preset": value}
    value = dict(value)
    preset = value.pop("preset", None)
    base = GenSettings()
    if preset is not None:
        from erase import registry

        entry = registry.get("sampling", str(preset))
        base = entry if isinstance(entry, GenSettings) else with_overrides(GenSettings(), entry)
    return with_overrides(base, value)


def supported_paths(spec: FamilySpec) -> tuple[str, ...]:
    """The generation paths a family's weights can run."""
    if spec.editing == "inpaint":
        return ("inpaint",)
    if spec.editing == "instruct":
        return ("instruct",)
    # Kontext also generates from text alone (no context image): a leakage route of its own.
    paths = ["kontext", "t2i"] if spec.editing == "kontext" else ["t2i"]
    if spec.img2img_class:
        paths.append("img2img")
    if spec.inpaint_class:
        paths.append("inpaint")
    return tuple(paths)


def _class_for(spec: FamilySpec, path: str) -> str:
    if path not in supported_paths(spec):
        raise ValueError(f"family {spec.name!r} cannot run the {path!r} path; it supports {supported_paths(spec)}")
    return {"img2img": spec.img2img_class, "inpaint": spec.inpaint_class}.get(path) or spec.pipeline_class


# Derived pipelines share the base pipeline's modules (from_pipe copies nothing), so caching them is safe even
# when weights are edited in place; the cache dies with the base pipeline.
_DERIVED: "weakref.WeakKeyDictionary[Any, dict[str, DiffusionPipeline]]" = weakref.WeakKeyDictionary()


def pipeline_for(pipe: DiffusionPipeline, spec: FamilySpec, path: str) -> DiffusionPipeline:
    """The pipeline object that runs `path` on `pipe`'s weights (`pipe` itself when it already is one)."""
    cls = getattr(diffusers, _class_for(spec, path))
    if type(pipe) is cls:
        return pipe
    cache = _DERIVED.setdefault(pipe, {})
    if cls.__name__ not in cache:
        derived = cls.from_pipe(pipe)
        derived.set_progress_bar_config(disable=True)
        cache[cls.__name__] = derived
    return cache[cls.__name__]


def resolution(pipe: DiffusionPipeline, settings: GenSettings) -> tuple[int, int]:
    """(height, width) the settings ask for, the model's native size where unset."""
    size = native_size(pipe)
    return settings.height or size, settings.width or size


def fit(image: Image.Image, size: tuple[int, int], mask: bool = False) -> Image.Image:
    """Scale to cover (height, width) and centre-crop: photos of any shape become the generation size."""
    h, w = size
    if image.size == (w, h):
        return image
    scale = max(w / image.width, h / image.height)
    rw, rh = max(w, round(image.width * scale)), max(h, round(image.height * scale))
    resample = Image.Resampling.NEAREST if mask else Image.Resampling.LANCZOS
    image = image.resize((rw, rh), resample)
    left, top = (rw - w) // 2, (rh - h) // 2
    return image.crop((left, top, left + w, top + h))


# Schedulers a user can pick (the settings sweep): short names, or any diffusers scheduler class name.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}


@contextmanager
def scheduled(pipe: Any, name: str | None) -> Iterator[None]:
    """Run with the scheduler `name` built from the pipeline's own scheduler config; the original is put back."""
    if not name:
        yield
        return
    cls_name, kw = SCHEDULERS.get(str(name).lower(), (str(name), {}))
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not hasattr(cls, "from_config"):
        raise ValueError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)} or a diffusers class name")
    before = pipe.scheduler
    pipe.scheduler = cls.from_config(before.config, **kw)
    try:
        yield
    finally:
        pipe.scheduler = before


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image (CPU so that the noise is the same on every device)."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def _accepted(fn: Any) -> set[str]:
    return {n for n, p in inspect.signature(fn).parameters.items() if p.kind is not p.VAR_KEYWORD}


def call_pipeline(
    pipe: Any,
    path: str,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: GenSettings,
    images: Sequence[Image.Image] | None = None,
    masks: Sequence[Image.Image] | None = None,
    size: tuple[int, int] | None = None,
    strength: float | None = None,
    guidance: float | None = None,
) -> list[Image.Image]:
    """One call of an already-built pipeline object for `path`: one image per (prompt, seed) pair.

    `strength` / `guidance` override the settings for this call (per-item values such as I2P's guidance).
    Keyword arguments the pipeline does not take are dropped (IP2P has no strength, SD img2img no height).
    """
    n = len(prompts)
    if len(seeds) != n:
        raise ValueError(f"{len(seeds)} seeds for {n} prompts")
    needs_image = path != "t2i"
    if needs_image and (images is None or len(images) != n):
        raise ValueError(f"the {path!r} path needs one source image per prompt")
    if path == "inpaint" and (masks is None or len(masks) != n):
        raise ValueError("the 'inpaint' path needs one mask per prompt")
    h, w = size or resolution(pipe, settings)
    kwargs: dict[str, Any] = dict(
        prompt=list(prompts),
        num_inference_steps=settings.steps,
        guidance_scale=settings.guidance if guidance is None else guidance,
        height=h,
        width=w,
        generator=generators(seeds),
        output_type="pil",
    )
    if settings.negative_prompt is not None:
        kwargs["negative_prompt"] = [settings.negative_prompt] * n
    if settings.true_cfg != 1.0:
        kwargs["true_cfg_scale"] = settings.true_cfg
    if needs_image:
        kwargs["image"] = [fit(im.convert("RGB"), (h, w)) for im in images]  # type: ignore[union-attr]
    if path == "img2img":
        kwargs["strength"] = settings.strength if strength is None else strength
    elif path == "inpaint":
        kwargs["mask_image"] = [fit(m.convert("L"), (h, w), mask=True) for m in masks]  # type: ignore[union-attr]
        kwargs["strength"] = settings.inpaint_strength if strength is None else strength
    elif path == "instruct":
        kwargs["image_guidance_scale"] = settings.image_guidance
    # Kontext pipelines (any path) otherwise resize to ~1 MP, whatever size was asked for; others drop these.
    kwargs.update(max_area=h * w, _auto_resize=False)
    extra = dict(settings.extra)
    scheduler = extra.pop("scheduler", None)
    kwargs.update(extra)
    accepted = _accepted(type(pipe).__call__)
    with scheduled(pipe, scheduler):
        out = pipe(**{k: v for k, v in kwargs.items() if k in accepted})
    result = list(out.images)
    if len(result) != n:
        raise RuntimeError(f"{type(pipe).__name__} returned {len(result)} images for {n} prompts")
    return result


def generate(
    pipe: DiffusionPipeline,
    spec: FamilySpec,
    path: str,
    prompts: Sequence[str],
    seeds: Sequence[int],
    settings: GenSettings,
    images: Sequence[Image.Image] | None = None,
    masks: Sequence[Image.Image] | None = None,
    batch_size: int | None = None,
    strength: float | None = None,
    guidance: float | None = None,
) -> list[Image.Image]:
    """Images for (prompt, seed) pairs through `path` on `pipe`'s weights, `batch_size` at a time."""
    runner = pipeline_for(pipe, spec, path)
    size = resolution(pipe, settings)
    n = len(prompts)
    step = batch_size or n or 1
    out: list[Image.Image] = []
    for i in range(0, n, step):
        sl = slice(i, i + step)
        out += call_pipeline(
            runner, path, prompts[sl], seeds[sl], settings,
            images=None if images is None else images[sl], masks=None if masks is None else masks[sl],
            size=size, strength=strength, guidance=guidance,
        )
    return out
