"""Families: every tiny family builds, runs, saves, is recognised on reload and reproduces bit for bit;
SDEdit/inpainting classes run on the same weights; loading failures say what was found and what to do."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable

import diffusers
import numpy as np
import pytest
import torch

from erase.models import (
    FAMILIES,
    FAMILY_NAMES,
    ModelLoadError,
    detect_family,
    family_of,
    load_pipeline,
    require_components,
    save_tiny_pipeline,
    tiny_call_inputs,
    tiny_image,
    tiny_mask,
    tiny_pipeline,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family -> folder of its saved tiny pipeline; each family is saved once per module."""
    root = tmp_path_factory.mktemp("tiny")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = save_tiny_pipeline(family, root / family)
        return cache[family]

    return get


def _images(pipe: diffusers.DiffusionPipeline, inputs: dict[str, Any]) -> np.ndarray:
    # Keep only what this class's __call__ takes: img2img/inpaint classes differ from the family's own class.
    params = inspect.signature(type(pipe).__call__).parameters
    pipe.set_progress_bar_config(disable=True)
    return pipe(**{k: v for k, v in inputs.items() if k in params}).images


def _assert_image(out: np.ndarray) -> None:
    assert out.shape == (1, 32, 32, 3)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_build_run_save_reload(family: str, saved: Callable[[str], Path]) -> None:
    pipe = tiny_pipeline(family)
    assert type(pipe).__name__ == FAMILIES[family].pipeline_class
    assert family_of(pipe).name == family
    before = _images(pipe, tiny_call_inputs(family))
    _assert_image(before)

    path = saved(family)
    assert detect_family(path) == family
    loaded, spec = load_pipeline(path)  # no family given: it must be recognised
    assert spec is FAMILIES[family]
    assert type(loaded).__name__ == spec.pipeline_class
    assert not any(m.training for m in loaded.components.values() if isinstance(m, torch.nn.Module))
    np.testing.assert_array_equal(_images(loaded, tiny_call_inputs(family)), before)

    plain = diffusers.DiffusionPipeline.from_pretrained(path)  # the folder is an ordinary diffusers folder
    assert family_of(plain).name == family


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_tiny_configs_are_what_methods_expect(family: str) -> None:
    pipe = tiny_pipeline(family)
    spec = FAMILIES[family]
    assert all(getattr(pipe, te) is not None for te in spec.text_encoders)
    denoiser = getattr(pipe, spec.denoiser)
    if spec.architecture == "unet":  # erasure methods edit the cross-attention (attn2) projections
        assert any(name.endswith("attn2") for name, _ in denoiser.named_modules())
        expected = {"sd-inpaint": 9, "ip2p": 8, "ip2p-sdxl": 8}.get(family, 4)
        assert denoiser.config.in_channels == expected
    if family == "sd2":
        assert denoiser.config.use_linear_projection
        assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_tiny_pipeline_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = (tiny_pipeline("sd1", seed=s).unet.state_dict() for s in (0, 0, 1))
    assert torch.equal(torch.rand(1), expected_next)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if FAMILIES[f].img2img_class])
def test_img2img_class_runs_on_family_weights(family: str, saved: Callable[[str], Path]) -> None:
    pipe, spec = load_pipeline(saved(family))
    sdedit = getattr(diffusers, spec.img2img_class).from_pipe(pipe)
    inputs = {**tiny_call_inputs(family), "image": tiny_image(), "strength": 0.5, "num_inference_steps": 4}
    _assert_image(_images(sdedit, inputs))


@pytest.mark.parametrize("family", [f for f in FAMILY_NAMES if FAMILIES[f].inpaint_class and f != "sd-inpaint"])
def test_inpaint_class_runs_on_family_weights(family: str, saved: Callable[[str], Path]) -> None:
    pipe, spec = load_pipeline(saved(family))
    if spec.architecture == "unet":
        assert pipe.unet.config.in_channels == 4  # legacy inpainting of a text-to-image UNet
    inpaint = getattr(diffusers, spec.inpaint_class).from_pipe(pipe)
    inputs = {**tiny_call_inputs(family), "image": tiny_image(), "mask_image": tiny_mask()}
    _assert_image(_images(inpaint, inputs))


# ---------------------------------------------------------------------------------------------------------
# recognition rules on hand-written folders


def _fake_folder(root: Path, class_name: str, unet: dict | None = None, scheduler: dict | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for sub, name, cfg in (("unet", "config.json", unet), ("scheduler", "scheduler_config.json", scheduler)):
        if cfg is not None:
            (root / sub).mkdir()
            (root / sub / name).write_text(json.dumps(cfg))
    return root


@pytest.mark.parametrize(
    "class_name, unet, scheduler, family",
    [
        ("StableDiffusionPipeline", {"in_channels": 4, "cross_attention_dim": 768}, None, "sd1"),
        ("StableDiffusionImg2ImgPipeline", {"in_channels": 4, "cross_attention_dim": 1024}, None, "sd2"),
        ("StableDiffusionPipeline", {"in_channels": 4, "cross_attention_dim": 768},
         {"prediction_type": "v_prediction"}, "sd2"),
        ("StableDiffusionInpaintPipeline", {"in_channels": 4, "cross_attention_dim": 768}, None, "sd1"),
        ("StableDiffusionInpaintPipeline", {"in_channels": 9, "cross_attention_dim": 1024}, None, "sd-inpaint"),
        ("StableDiffusionXLImg2ImgPipeline", {"in_channels": 4}, None, "sdxl"),
        ("StableDiffusion3Img2ImgPipeline", None, None, "sd3"),
        ("FluxImg2ImgPipeline", None, None, "flux"),
    ],
)
def test_detect_rules(tmp_path: Path, class_name: str, unet: dict | None, scheduler: dict | None, family: str) -> None:
    assert detect_family(_fake_folder(tmp_path / "m", class_name, unet, scheduler)) == family


# ---------------------------------------------------------------------------------------------------------
# clear errors


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match="no model at") as err:
        load_pipeline(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(ModelLoadError, match="no model at"):
        load_pipeline("./not/a/model")  # path-like strings never go to the hub


def test_folder_without_model_index_and_single_file(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(tmp_path)
    msg = str(err.value)
    assert "model_index.json" in msg and str(tmp_path) in msg and ".safetensors" in msg
    with pytest.raises(ModelLoadError, match="single checkpoint file"):
        load_pipeline(ckpt)


def test_unsupported_pipeline_class(tmp_path: Path) -> None:
    folder = _fake_folder(tmp_path / "depth", "StableDiffusionDepth2ImgPipeline", {"in_channels": 5})
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(folder)
    msg = str(err.value)
    assert "StableDiffusionDepth2ImgPipeline" in msg and str(folder) in msg
    assert all(name in msg for name in FAMILY_NAMES)


def test_unsupported_channels(tmp_path: Path) -> None:
    folder = _fake_folder(tmp_path / "xl-inpaint", "StableDiffusionXLInpaintPipeline", {"in_channels": 9})
    with pytest.raises(ModelLoadError, match="9-channel"):
        detect_family(folder)


def test_family_mismatch(saved: Callable[[str], Path]) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(saved("ip2p"), family="sd1")
    assert "'sd1'" in str(err.value) and "'ip2p'" in str(err.value)


def test_unknown_family(saved: Callable[[str], Path]) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_pipeline(saved("sd1"), family="sd4")
    assert "sd4" in str(err.value) and all(name in str(err.value) for name in FAMILY_NAMES)


def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never touch the network from tests
    with pytest.raises(ModelLoadError) as err:
        load_pipeline("erase-tests/no-such-model")
    msg = str(err.value)
    assert "erase-tests/no-such-model" in msg and "Download it first" in msg and "local" in msg


def test_require_components() -> None:
    pipe = tiny_pipeline("sd1")
    spec = family_of(pipe)
    require_components(pipe, spec, "vae", "unet", "text_encoder")
    with pytest.raises(ModelLoadError) as err:
        require_components(pipe, spec, "vae", "text_encoder_2")
    msg = str(err.value)
    assert "text_encoder_2" in msg and "'vae'" not in msg.split("lacks")[1].split(";")[0]
    assert "unet" in msg  # what the pipeline has


def test_family_of_unknown_object() -> None:
    with pytest.raises(ModelLoadError, match="not a supported model family"):
        family_of(object())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# the adapter's per-architecture parts

_EXPECTED_ARCH = {"sdxl": "sdxl", "ip2p-sdxl": "sdxl", "sd3": "sd3", "flux": "flux", "kontext": "flux"}


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_adapter_picks_one_architecture_class_per_family(family: str) -> None:
    from erase.models.adapter import DiffusionAdapter
    from erase.models.architectures import ARCHITECTURES

    adapter = DiffusionAdapter(tiny_pipeline(family))
    name = _EXPECTED_ARCH.get(family, "unet")
    assert type(adapter.arch) is ARCHITECTURES[name]
    assert adapter.is_flow == (name in ("sd3", "flux"))
    assert adapter.photo.kind == FAMILIES[family].editing
    assert adapter.photo.required == (FAMILIES[family].editing in ("instruct", "inpaint"))
    cond = adapter.encode_prompts(["a red square", "a blue circle"])
    assert ("time_ids" in cond.extra) == (name == "sdxl") and ("text_ids" in cond.extra) == (name == "flux")
    assert (cond.pooled is None) == (name == "unet")


def test_adapter_refuses_a_spec_without_an_architecture_class() -> None:
    import dataclasses

    from erase.models.adapter import DiffusionAdapter

    pipe = tiny_pipeline("sd1")
    with pytest.raises(ModelLoadError, match="'bogus'.*known: unet, sdxl, sd3, flux"):
        DiffusionAdapter(pipe, dataclasses.replace(FAMILIES["sd1"], adapter="bogus"))
    with pytest.raises(ModelLoadError, match="unknown editing kind 'paint'"):
        DiffusionAdapter(pipe, dataclasses.replace(FAMILIES["sd1"], editing="paint"))


@pytest.mark.parametrize("family", ["sd1", "flux"])  # one DDIM, one flow-Euler grid
def test_a_chain_started_part_way_equals_the_rest_of_the_full_chain(family: str) -> None:
    from erase.models.adapter import DiffusionAdapter

    adapter = DiffusionAdapter(tiny_pipeline(family))
    cond, uncond = adapter.encode_prompts(["a red square"]), adapter.encode_prompts([""])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        states = list(adapter.sample_trajectory(cond, uncond, 6, 3.0, generator=g))
        x_at_3 = states[3][2]
        resumed = adapter.sample(cond, uncond, 6, 3.0, x_T=x_at_3, start=3)
        from_3_as_if_x_T = adapter.sample(cond, uncond, 6, 3.0, x_T=x_at_3)
    assert torch.equal(resumed, states[-1][2])
    assert not torch.allclose(from_3_as_if_x_T, states[-1][2])  # `start` matters: the grid position is not x_T's
