"""Model families: what each supported kind of diffusion pipeline is, how to recognise it, how to load it.

A family is decided by the weights, not by the class name a folder was saved under: a 4-channel UNet saved as
`StableDiffusionInpaintPipeline` is a text-to-image model (legacy inpainting), a 9-channel one is a real
inpainting model. So recognition reads model_index.json *and* the denoiser's config.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

import diffusers
from diffusers import DiffusionPipeline

FAMILY_NAMES = ("sd1", "sd2", "sdxl", "sd3", "flux", "sd-inpaint", "ip2p", "ip2p-sdxl", "kontext")


@dataclass(frozen=True)
class FamilySpec:
    name: str  # one of FAMILY_NAMES
    pipeline_class: str  # diffusers class used to generate / edit
    denoiser: str  # pipeline attribute of the denoiser: "unet" or "transformer"
    architecture: str  # "unet" | "sd3" (MMDiT) | "flux"
    text_encoders: tuple[str, ...]  # pipeline attribute names of the text encoders
    editing: str | None  # None (text-to-image) | "inpaint" | "instruct" | "kontext"
    img2img_class: str | None  # diffusers class for SDEdit on this family's weights
    inpaint_class: str | None  # inpainting class usable with this family's weights (legacy or real)
    description: str  # one line for error messages / docs
    adapter: str | None = None  # erase.models.architectures class when it differs from `architecture` ("sdxl")


_TE1 = ("text_encoder",)
_TE2 = ("text_encoder", "text_encoder_2")
_TE3 = ("text_encoder", "text_encoder_2", "text_encoder_3")

FAMILIES: dict[str, FamilySpec] = {
    s.name: s
    for s in (
        FamilySpec("sd1", "StableDiffusionPipeline", "unet", "unet", _TE1, None,
                   "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                   "Stable Diffusion 1.x: CLIP ViT-L text encoder, 4-channel UNet, epsilon prediction"),
        FamilySpec("sd2", "StableDiffusionPipeline", "unet", "unet", _TE1, None,
                   "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline",
                   "Stable Diffusion 2.x: OpenCLIP ViT-H text encoder (1024-d), linear projections, v-prediction"),
        FamilySpec("sdxl", "StableDiffusionXLPipeline", "unet", "unet", _TE2, None,
                   "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline",
                   "Stable Diffusion XL: two CLIP text encoders, UNet with text/time conditioning", adapter="sdxl"),
        FamilySpec("sd3", "StableDiffusion3Pipeline", "transformer", "sd3", _TE3, None,
                   "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline",
                   "Stable Diffusion 3.x: MMDiT transformer, two CLIP + one T5 text encoder, flow matching"),
        FamilySpec("flux", "FluxPipeline", "transformer", "flux", _TE2, None,
                   "FluxImg2ImgPipeline", "FluxInpaintPipeline",
                   "FLUX.1: double/single-stream transformer, CLIP + T5 text encoders, flow matching"),
        FamilySpec("sd-inpaint", "StableDiffusionInpaintPipeline", "unet", "unet", _TE1, "inpaint",
                   None, "StableDiffusionInpaintPipeline",
                   "Stable Diffusion inpainting: 9-channel UNet (latents + mask + masked-image latents)"),
        FamilySpec("ip2p", "StableDiffusionInstructPix2PixPipeline", "unet", "unet", _TE1, "instruct",
                   None, None,
                   "InstructPix2Pix: SD1 with an 8-channel UNet (latents + source-image latents), edits by instruction"),
        FamilySpec("ip2p-sdxl", "StableDiffusionXLInstructPix2PixPipeline", "unet", "unet", _TE2, "instruct",
                   None, None,
                   "InstructPix2Pix on SDXL: 8-channel SDXL UNet, edits by instruction", adapter="sdxl"),
        # Kontext weights are a FLUX transformer: FLUX img2img/inpaint classes run on them too.
        FamilySpec("kontext", "FluxKontextPipeline", "transformer", "flux", _TE2, "kontext",
                   "FluxImg2ImgPipeline", "FluxKontextInpaintPipeline",
                   "FLUX.1 Kontext: FLUX transformer conditioned on a context image, edits by instruction"),
    )
}
assert tuple(FAMILIES) == FAMILY_NAMES


class ModelLoadError(ValueError):
    """A model could not be recognised or loaded; the message says what was found and what to do."""


# Class names that identify a group of weights; the denoiser's input channels pick the family inside a group.
_SD_CLASSES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
               "StableDiffusionInpaintPipeline", "StableDiffusionInstructPix2PixPipeline"}
_SDXL_CLASSES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                 "StableDiffusionXLInpaintPipeline", "StableDiffusionXLInstructPix2PixPipeline"}
_FIXED_CLASSES = {
    "StableDiffusion3Pipeline": "sd3", "StableDiffusion3Img2ImgPipeline": "sd3",
    "StableDiffusion3InpaintPipeline": "sd3",
    "FluxPipeline": "flux", "FluxImg2ImgPipeline": "flux", "FluxInpaintPipeline": "flux",
    "FluxKontextPipeline": "kontext", "FluxKontextInpaintPipeline": "kontext",
}
_KNOWN_CLASSES = _SD_CLASSES | _SDXL_CLASSES | set(_FIXED_CLASSES)


def _supported() -> str:
    return "; ".join(f"{s.name} ({s.pipeline_class})" for s in FAMILIES.values())


def get_family(name: str) -> FamilySpec:
    """The FamilySpec called `name`; ModelLoadError listing FAMILY_NAMES if there is none."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelLoadError(f"unknown model family {name!r}; supported: {', '.join(FAMILY_NAMES)}") from None


def _classify(class_name: str, unet: Mapping[str, Any] | None, scheduler: Mapping[str, Any] | None,
              where: str) -> str:
    """The family for a pipeline class name plus (for UNet families) the unet and scheduler configs."""
    if class_name in _FIXED_CLASSES:
        return _FIXED_CLASSES[class_name]
    if class_name not in _SD_CLASSES | _SDXL_CLASSES:
        raise ModelLoadError(
            f"{where}: pipeline class {class_name!r} is not a supported model family. Supported: {_supported()}"
        )
    if unet is None:
        raise ModelLoadError(f"{where}: {class_name} without a unet config; cannot tell which family it is")
    channels = unet.get("in_channels", 4)
    if class_name in _SDXL_CLASSES:
        by_channels = {4: "sdxl", 8: "ip2p-sdxl"}
    else:
        by_channels = {4: "sd1", 8: "ip2p", 9: "sd-inpaint"}
    family = by_channels.get(channels)
    if family is None:
        raise ModelLoadError(
            f"{where}: {class_name} with a {channels}-channel UNet is not a supported model family "
            f"(channels understood for this class: {sorted(by_channels)}). Supported: {_supported()}"
        )
    if family == "sd1" and _is_sd2(unet, scheduler or {}):
        family = "sd2"
    return family


def _is_sd2(unet: Mapping[str, Any], scheduler: Mapping[str, Any]) -> bool:
    # SD2 = OpenCLIP-H (1024-d cross-attention), linear proj_in/out, and (768 px models) v-prediction.
    cross = unet.get("cross_attention_dim")
    cross_dims = cross if isinstance(cross, (list, tuple)) else [cross]
    return (
        1024 in cross_dims
        or unet.get("use_linear_projection") is True
        or scheduler.get("prediction_type") == "v_prediction"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from err


_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth")
_SINGLE_FILE_HINT = (
    "a single .safetensors/.ckpt checkpoint is not a pipeline folder: convert it once with "
    "diffusers' <PipelineClass>.from_single_file(file).save_pretrained(folder) and pass the folder"
)


def _pipeline_folder(path: str | os.PathLike) -> Path:
    """`path` as an existing diffusers pipeline folder, or a ModelLoadError saying what is there instead."""
    folder = Path(path).expanduser()
    if not folder.exists():
        hint = (f" An erase export is one folder now: pass {folder.parent}, which holds model_index.json."
                if (folder.parent / "model_index.json").is_file() else "")
        raise ModelLoadError(f"no model at {folder}: the path does not exist. Pass a diffusers pipeline folder "
                             f"(containing model_index.json) or a hub id such as 'org/name'.{hint}")
    if folder.is_file():
        kind = "a single checkpoint file" if folder.suffix in _CHECKPOINT_SUFFIXES else "a file"
        raise ModelLoadError(f"{folder} is {kind}, not a diffusers pipeline folder; {_SINGLE_FILE_HINT}")
    if not (folder / "model_index.json").is_file():
        found = sorted(p.name for p in folder.iterdir())[:10]
        raise ModelLoadError(f"no model_index.json in {folder} (found: {found or 'nothing'}); a diffusers "
                             f"pipeline folder as written by save_pretrained is needed; {_SINGLE_FILE_HINT}")
    return folder


def detect_family(path: str | os.PathLike) -> str:
    """The family of the diffusers pipeline folder at `path`, from model_index.json and the denoiser config."""
    folder = _pipeline_folder(path)
    index = _read_json(folder / "model_index.json") or {}
    class_name = index.get("_class_name")
    if not isinstance(class_name, str):
        raise ModelLoadError(f"{folder}/model_index.json has no _class_name. Supported: {_supported()}")
    unet = _read_json(folder / "unet" / "config.json")
    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    return _classify(class_name, unet, scheduler, where=str(folder))


def family_of(pipe: DiffusionPipeline) -> FamilySpec:
    """The FamilySpec of an already-built pipeline (class name + denoiser config, same rules as detect_family)."""
    # Walk the MRO so that subclasses of a known pipeline are recognised too.
    class_name = next((c.__name__ for c in type(pipe).__mro__ if c.__name__ in _KNOWN_CLASSES), type(pipe).__name__)
    unet = getattr(pipe, "unet", None)
    scheduler = getattr(pipe, "scheduler", None)
    return FAMILIES[_classify(
        class_name,
        dict(unet.config) if unet is not None else None,
        dict(scheduler.config) if scheduler is not None else None,
        where=f"pipeline object {type(pipe).__name__}",
    )]


def _accepted_kwargs(cls: type, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of `kwargs` that `cls.__init__` takes (SDXL-IP2P has no safety checker or image encoder...)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in kwargs.items() if k in params}


_HUB_ID = re.compile(r"[\w][\w.-]*(/[\w][\w.-]*)?")  # "name" or "org/name"


def _looks_like_path(path_or_id: str | os.PathLike) -> bool:
    """True for anything that cannot be a hub id: it is then a local path, and a missing one is an error (never
    a download). On POSIX os.sep == "/" is also the hub's org separator, so exactly "org/name" is a hub id, unless
    "org" is a local folder (`export/pipeline` typed in a run folder is a mistyped path, not a hub repo)."""
    if isinstance(path_or_id, os.PathLike):
        return True
    s = str(path_or_id)
    if (s.startswith((".", "/", "~")) or (os.altsep is not None and os.altsep in s) or "\\" in s
            or s.endswith(_CHECKPOINT_SUFFIXES) or not _HUB_ID.fullmatch(s)):
        return True
    return "/" in s and Path(s.split("/", 1)[0]).is_dir()


def _corrupt_weights(folder: Path) -> list[Path]:
    """The safetensors files under `folder` whose header cannot be read (truncated or overwritten files)."""
    from safetensors import safe_open

    bad = []
    for f in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    st.get_slice(key)
        except Exception:  # noqa: BLE001 - any failure to read the file is what we report
            bad.append(f)
    return bad


def _fetch(repo_id: str, variant: str | None, trust_remote_code: bool) -> Path:
    """Download (or find in the cache, offline) the hub pipeline `repo_id`; ModelLoadError on any failure."""
    try:
        return Path(DiffusionPipeline.download(repo_id, variant=variant, use_safetensors=True,
                                               trust_remote_code=trust_remote_code))
    except Exception as err:  # offline, not found, gated, no safetensors...: all mean "cannot get it"
        from huggingface_hub import constants  # read now: tests and users may switch offline mode at runtime

        offline = bool(constants.HF_HUB_OFFLINE)
        raise ModelLoadError(
            f"{repo_id!r} is not a local folder and could not be fetched from the hub"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {type(err).__name__}: {err}. "
            f"Download it first (e.g. `hf download {repo_id}` with network access) or pass a local pipeline folder"
        ) from err


_CPU_ALIGNMENT = 64  # bytes; what torch's CPU allocator guarantees


def _settle(pipe: DiffusionPipeline) -> None:
    """eval() every module, and copy CPU tensors that safetensors left unaligned into fresh memory.

    Why: dropout in train() mode would make calls nondeterministic; and BLAS picks other kernels for
    unaligned (memory-mapped) weights, so without the copy a reloaded model differs from the one that was
    saved by ~1 ulp (seen on the FLUX transformer), which breaks save -> load reproducibility.
    """
    for module in pipe.components.values():
        if not isinstance(module, torch.nn.Module):
            continue
        module.eval()
        for tensor in (*module.parameters(), *module.buffers()):
            if tensor.device.type == "cpu" and tensor.data_ptr() % _CPU_ALIGNMENT:
                tensor.data = tensor.data.clone()


def load_pipeline(
    path_or_id: str | os.PathLike,
    family: str | None = None,
    *,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    variant: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[DiffusionPipeline, FamilySpec]:
    """Load a diffusers pipeline folder or hub id with its family's pipeline class, in eval mode.

    `family` is checked against the detected one (never silently trusted). Every failure is a ModelLoadError.
    """
    if family is not None:
        get_family(family)
    if Path(path_or_id).expanduser().exists() or _looks_like_path(path_or_id):
        folder = _pipeline_folder(path_or_id)
    else:
        folder = _fetch(str(path_or_id), variant, trust_remote_code)
    spec = FAMILIES[detect_family(folder)]
    if family is not None and family != spec.name:
        raise ModelLoadError(f"{path_or_id} was asked to load as family {family!r}, but it is a {spec.name!r} "
                             f"model ({spec.description}); pass family={spec.name!r} or leave family unset")
    cls = getattr(diffusers, spec.pipeline_class)
    extras = _accepted_kwargs(cls, {"safety_checker": None, "requires_safety_checker": False})
    try:
        pipe = cls.from_pretrained(folder, torch_dtype=torch_dtype, variant=variant, use_safetensors=True,
                                   trust_remote_code=trust_remote_code, **extras)
    except Exception as err:  # missing component folders, .bin-only weights, shape mismatches...
        if bad := _corrupt_weights(folder):
            raise ModelLoadError(
                f"could not load {folder}: {', '.join(str(b) for b in bad)} "
                f"{'is' if len(bad) == 1 else 'are'} corrupt or truncated ({type(err).__name__}: {err}). If erase "
                f"exported this folder, export it again (rerun the same erase command); otherwise delete the folder "
                f"and download or copy it again") from err
        raise ModelLoadError(f"could not load {folder} as {spec.name} ({spec.pipeline_class}): "
                             f"{type(err).__name__}: {err}") from err
    if device is not None:
        pipe.to(device)
    _settle(pipe)
    return pipe, spec


def require_components(pipe: DiffusionPipeline, spec: FamilySpec, *names: str) -> None:
    """ModelLoadError unless `pipe` has every component in `names` (not None)."""
    missing = [n for n in names if getattr(pipe, n, None) is None]
    if missing:
        present = sorted(k for k, v in pipe.components.items() if v is not None)
        raise ModelLoadError(f"{spec.name} pipeline {type(pipe).__name__} lacks component(s) {missing}; "
                             f"it has {present}")
