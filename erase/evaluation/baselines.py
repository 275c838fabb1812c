"""Inference-time baselines as "generation variants", so they land in the same tables as erased weights.

A variant turns (pipeline, path, prompts, seeds) into images. `ModelAsIs` is the model itself (an unerased
base model is evaluated by passing it in); the others are what a deployer can do without touching weights:
a negative prompt, Safe Latent Diffusion (diffusers' `StableDiffusionPipelineSafe`, SD1/SD2 text-to-image
only) and the diffusers safety checker (families whose pipelines carry one). Where a variant does not apply to
a family or a path, `unavailable` says so in one sentence and the harness reports it instead of a number.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

import diffusers

from erase.evaluation.generate import GenSettings, call_pipeline, generate, resolution
from erase.models.families import FamilySpec


class BaselineNotApplicable(ValueError):
    """A baseline cannot run on this family / path; the message says why."""


PerImage = list[dict[str, Any]]  # per-image extras a variant records (e.g. the safety checker's verdict)


class Variant:
    """The model as given: generation through the family's own pipelines."""

    name = "model"

    def unavailable(self, spec: FamilySpec, path: str | None = None) -> str | None:
        """Why this variant cannot run on `spec` (for `path`), or None if it can."""
        return None

    def setup(self, pipe: Any, spec: FamilySpec, model_path: str | None = None) -> str | None:
        """Build what the variant needs once per model; a reason string if it cannot run at all."""
        return self.unavailable(spec)

    def settings(self, settings: GenSettings, spec: FamilySpec) -> GenSettings:
        return settings

    def describe(self) -> dict[str, Any]:
        """What is recorded with each result about the variant."""
        return {"name": self.name}

    def generate(self, pipe: Any, spec: FamilySpec, path: str, prompts: Sequence[str], seeds: Sequence[int],
                 settings: GenSettings, **kw: Any) -> tuple[list[Image.Image], PerImage]:
        images = generate(pipe, spec, path, prompts, seeds, self.settings(settings, spec), **kw)
        return images, [{} for _ in images]


ModelAsIs = Variant


@dataclass
class NegativePrompt(Variant):
    """The same model with a negative prompt (the user's text; on FLUX families it needs true CFG > 1)."""

    text: str
    true_cfg: float = 4.0  # FLUX/Kontext only: distilled guidance ignores negative prompts without it
    name: str = "negative-prompt"

    def settings(self, settings: GenSettings, spec: FamilySpec) -> GenSettings:
        changes: dict[str, Any] = {"negative_prompt": self.text}
        if spec.architecture == "flux" and settings.true_cfg <= 1.0:
            changes["true_cfg"] = self.true_cfg
        return settings.replace(**changes)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "negative_prompt": self.text, "true_cfg_flux": self.true_cfg}


SLD_FAMILIES = ("sd1", "sd2")
SLD_PRESETS = ("WEAK", "MEDIUM", "STRONG", "MAX")


def sld_config(preset: str) -> dict[str, float]:
    """diffusers' SafetyConfig preset (WEAK / MEDIUM / STRONG / MAX) as call kwargs."""
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig

    key = preset.upper()
    if key not in SLD_PRESETS:
        raise ValueError(f"unknown SLD preset {preset!r}; choose one of {SLD_PRESETS}")
    return dict(getattr(SafetyConfig, key))


def sld_pipeline(pipe: Any, spec: FamilySpec, concept: str | None = None) -> Any:
    """A `StableDiffusionPipelineSafe` sharing `pipe`'s SD1/SD2 modules; BaselineNotApplicable elsewhere."""
    reason = _sld_reason(spec)
    if reason:
        raise BaselineNotApplicable(reason)
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    safe = StableDiffusionPipelineSafe(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    if concept is not None:  # else diffusers' built-in concept text
        safe.safety_concept = concept
    safe.set_progress_bar_config(disable=True)
    return safe


def _sld_reason(spec: FamilySpec, path: str | None = None) -> str | None:
    if spec.name not in SLD_FAMILIES:
        return (f"Safe Latent Diffusion does not apply to family {spec.name!r}: diffusers implements it only for "
                f"Stable Diffusion 1.x/2.x text-to-image (StableDiffusionPipelineSafe); {spec.name} is "
                f"{spec.description}")
    if path is not None and path != "t2i":
        return (f"Safe Latent Diffusion does not apply to the {path!r} path: StableDiffusionPipelineSafe is "
                f"text-to-image only")
    return None


@dataclass
class SafeLatentDiffusion(Variant):
    """Safe Latent Diffusion (Schramm et al. 2023) with a diffusers SafetyConfig preset."""

    preset: str = "MEDIUM"
    concept: str | None = None  # the concept to steer away from; None: diffusers' default text
    name: str = ""
    # The safe pipeline shares the model's modules; one per model object, dropped with it.
    _pipes: "weakref.WeakKeyDictionary[Any, Any]" = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    def __post_init__(self) -> None:
        self.config = sld_config(self.preset)  # fail early on a bad preset
        self.name = self.name or f"sld-{self.preset.lower()}"

    def unavailable(self, spec: FamilySpec, path: str | None = None) -> str | None:
        return _sld_reason(spec, path)

    def setup(self, pipe: Any, spec: FamilySpec, model_path: str | None = None) -> str | None:
        reason = self.unavailable(spec)
        if reason is None and pipe not in self._pipes:
            self._pipes[pipe] = sld_pipeline(pipe, spec, self.concept)
        return reason

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "preset": self.preset.upper(), **self.config,
                "concept": "diffusers default" if self.concept is None else self.concept}

    def generate(self, pipe: Any, spec: FamilySpec, path: str, prompts: Sequence[str], seeds: Sequence[int],
                 settings: GenSettings, **kw: Any) -> tuple[list[Image.Image], PerImage]:
        reason = self.unavailable(spec, path)
        if reason:
            raise BaselineNotApplicable(reason)
        self.setup(pipe, spec)
        size = resolution(pipe, settings)
        s = settings.replace(extra={**settings.extra, **self.config})
        images = call_pipeline(self._pipes[pipe], path, prompts, seeds, s, size=size,
                               guidance=kw.get("guidance"))
        return images, [{} for _ in images]


def _has_checker_slot(spec: FamilySpec) -> bool:
    cls = getattr(diffusers, spec.pipeline_class)
    return "safety_checker" in inspect.signature(cls.__init__).parameters


@dataclass
class SafetyChecker(Variant):
    """The diffusers safety checker applied to every output: flagged images come back black, as users get them.

    Weights come from `checker`/`feature_extractor` objects, else the pipeline's own, else the
    `safety_checker/` and `feature_extractor/` folders of `path` (or of the model folder). Nothing is downloaded.
    """

    checker: Any = None
    feature_extractor: Any = None
    path: str | None = None
    name: str = "safety-checker"

    def unavailable(self, spec: FamilySpec, path: str | None = None) -> str | None:
        if not _has_checker_slot(spec):
            return (f"the diffusers safety checker does not apply to family {spec.name!r}: its pipeline class "
                    f"{spec.pipeline_class} ships no safety checker")
        return None

    def setup(self, pipe: Any, spec: FamilySpec, model_path: str | None = None) -> str | None:
        reason = self.unavailable(spec)
        if reason or self.checker is not None:
            return reason
        if getattr(pipe, "safety_checker", None) is not None and getattr(pipe, "feature_extractor", None) is not None:
            self.checker, self.feature_extractor = pipe.safety_checker, pipe.feature_extractor
            return None
        for root in (self.path, model_path):
            if root and (Path(root) / "safety_checker").is_dir() and (Path(root) / "feature_extractor").is_dir():
                from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
                from transformers import CLIPImageProcessor

                self.checker = StableDiffusionSafetyChecker.from_pretrained(Path(root) / "safety_checker").eval()
                self.feature_extractor = CLIPImageProcessor.from_pretrained(Path(root) / "feature_extractor")
                return None
        return ("the diffusers safety checker has no weights here: pass SafetyChecker(path=<a Stable Diffusion "
                "folder with safety_checker/ and feature_extractor/>) or a model folder that has them "
                "(nothing is downloaded)")

    def generate(self, pipe: Any, spec: FamilySpec, path: str, prompts: Sequence[str], seeds: Sequence[int],
                 settings: GenSettings, **kw: Any) -> tuple[list[Image.Image], PerImage]:
        reason = self.setup(pipe, spec)
        if reason:
            raise BaselineNotApplicable(reason)
        images = generate(pipe, spec, path, prompts, seeds, settings, **kw)
        checked, flags = self.check(images)
        return checked, [{"safety_checker_flagged": f} for f in flags]

    def check(self, images: Sequence[Image.Image]) -> tuple[list[Image.Image], list[bool]]:
        """Run the checker: images (flagged ones black) and the per-image verdicts."""
        import torch

        param = next(self.checker.parameters())
        clip_input = self.feature_extractor(list(images), return_tensors="pt").pixel_values
        arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])
        with torch.no_grad():
            out, flags = self.checker(images=arrays, clip_input=clip_input.to(param.device, param.dtype))
        out = np.asarray(out)
        pil = [Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8)) for a in out]
        return pil, [bool(f) for f in flags]

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.path or "pipeline's own"}
