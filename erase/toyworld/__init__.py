"""The toy world: a harmless, embedded analogue of the real erasure target, measurable in minutes on a CPU.

A paper-doll figure with a shirt, trousers, a background and maybe an object; the forbidden state is the figure
with a bare torso. Shipped with it: a tiny text-to-image pipeline, an InstructPix2Pix-style editor and a
detector, all trained from scratch by `python scripts/build_toy_world.py` (weights under `weights/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from erase.toyworld.world import (
    BACKGROUND_NAMES,
    BENIGN_EDIT_KINDS,
    EDIT_KINDS,
    EXPOSED_PHRASES,
    FORBIDDEN_EDIT_KINDS,
    HELDOUT_BENIGN_INSTRUCTIONS,
    HELDOUT_EXPOSED_PHRASES,
    HELDOUT_FORBIDDEN_INSTRUCTIONS,
    HELDOUT_SEED_START,
    OBJECT_NAMES,
    SHIRT_NAMES,
    SKIN_NAMES,
    TRAIN_BENIGN_INSTRUCTIONS,
    TRAIN_EXPOSED_PHRASE,
    TRAIN_FORBIDDEN_INSTRUCTIONS,
    TRAIN_SEEDS,
    TROUSER_NAMES,
    Edit,
    Scene,
    apply_edit,
    benign_prompts,
    caption,
    edit_phrasings,
    edit_prompts,
    edit_triplet,
    exposed_prompts,
    mentions_exposed,
    photos,
    random_scene,
    render,
    scene_from_seed,
)

# How the rest of the project samples the toy models (DDIM scheduler shipped in the pipeline folders).
SAMPLING: dict[str, Any] = dict(num_inference_steps=20, guidance_scale=7.5, height=32, width=32)
EDIT_SAMPLING: dict[str, Any] = dict(num_inference_steps=20, guidance_scale=5.0, image_guidance_scale=1.5)
SDEDIT_STRENGTH = 0.7  # img2img strength used for the SDEdit leakage measurement

_BUILD_HINT = "run `python scripts/build_toy_world.py` to build the toy world weights"


def weights_dir() -> Path:
    """Where the shipped toy-world weights live (inside the package)."""
    return Path(__file__).resolve().parent / "weights"


def t2i_path(root: str | Path | None = None) -> Path:
    return Path(root or weights_dir()) / "t2i"


def editor_path(root: str | Path | None = None) -> Path:
    return Path(root or weights_dir()) / "editor"


def detector_path(root: str | Path | None = None) -> Path:
    return Path(root or weights_dir()) / "detector.safetensors"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"toy world weights not found at {path}: {_BUILD_HINT}")
    return path


def _eval_all(pipe: Any) -> Any:
    """Modules from configs or checkpoints must be in eval mode for deterministic sampling."""
    for module in pipe.components.values():
        if hasattr(module, "eval"):
            module.eval()
    return pipe


def load_t2i(root: str | Path | None = None, **kwargs: Any) -> Any:
    """The toy text-to-image model as a plain diffusers StableDiffusionPipeline (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    path = _require(t2i_path(root))
    pipe = StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return _eval_all(pipe)


def load_editor(root: str | Path | None = None, **kwargs: Any) -> Any:
    """The toy editing model as a plain diffusers StableDiffusionInstructPix2PixPipeline (no safety checker)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    path = _require(editor_path(root))
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        path, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return _eval_all(pipe)


def load_detector(root: str | Path | None = None) -> "ToyWorldDetector":
    """The toy-world detector (protocol `erase.detect.base.Detector`, plus `.attributes()`)."""
    from erase.toyworld.detector import ToyWorldDetector

    return ToyWorldDetector(_require(detector_path(root)))


from erase.toyworld.detector import ToyWorldDetector  # noqa: E402  (after the path helpers it imports)


def _register() -> None:
    """The toy world's pieces in erase.registry, by name; entries are imported only when a config uses them."""
    from erase import registry

    pieces = "erase.toyworld.evaluation"
    registry.register("model", "toy:t2i", "erase.toyworld:t2i_path")
    registry.register("model", "toy:editor", "erase.toyworld:editor_path")
    registry.register("detector", "toy", "erase.toyworld:load_detector")
    registry.register("sampling", "toy", f"{pieces}:SAMPLING")
    registry.register("sampling", "toy-edit", f"{pieces}:EDIT_SAMPLING")
    registry.register("suite", "toy", f"{pieces}:build_suite")
    registry.register("photos", "toy", f"{pieces}:toy_photos")
    registry.register("attack_material", "toy", f"{pieces}:attack_material")
    registry.register("base_eval", "toy", "erase.toyworld.base_evals:shipped_base_eval")  # shipped base evaluations


_register()

__all__ = [
    "BACKGROUND_NAMES", "BENIGN_EDIT_KINDS", "EDIT_KINDS", "EDIT_SAMPLING", "EXPOSED_PHRASES",
    "FORBIDDEN_EDIT_KINDS", "HELDOUT_BENIGN_INSTRUCTIONS", "HELDOUT_EXPOSED_PHRASES",
    "HELDOUT_FORBIDDEN_INSTRUCTIONS", "HELDOUT_SEED_START", "OBJECT_NAMES", "SAMPLING", "SDEDIT_STRENGTH",
    "SHIRT_NAMES", "SKIN_NAMES", "TRAIN_BENIGN_INSTRUCTIONS", "TRAIN_EXPOSED_PHRASE",
    "TRAIN_FORBIDDEN_INSTRUCTIONS", "TRAIN_SEEDS", "TROUSER_NAMES", "Edit", "Scene", "ToyWorldDetector",
    "apply_edit", "benign_prompts", "caption", "detector_path", "edit_phrasings", "edit_prompts",
    "edit_triplet", "editor_path", "exposed_prompts", "load_detector", "load_editor", "load_t2i",
    "mentions_exposed", "photos", "random_scene", "render", "scene_from_seed", "t2i_path", "weights_dir",
]
