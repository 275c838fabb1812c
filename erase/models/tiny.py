"""Tiny randomly initialised pipelines of every family, built from configs in code (no downloads).

They exist so that every code path (loading, erasing, editing, saving) can be tested on CPU in milliseconds,
the way diffusers tests itself. Sizes follow shared/reference/tiny-families.md: every config below is the
smallest one known to run on this stack; the comments say which numbers must agree with which.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

import diffusers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from erase.models.families import FAMILIES, FAMILY_NAMES, _accepted_kwargs

TINY_SIZE = 32  # pixels; SD pipelines need a multiple of 8 even with the 2x VAE below
TINY_PROMPT = "a red square"

# ---------------------------------------------------------------------------------------------------------
# tokenizers, built in memory


def _clip_tokenizer() -> CLIPTokenizer:
    # Byte-level BPE without merges: every byte is a token, so any prompt tokenizes (514 ids, no unk).
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())  # sorted: set order would make ids differ between runs
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(alphabet)})
    vocab.update({c + "</w>": i + 2 + len(alphabet) for i, c in enumerate(alphabet)})
    # model_max_length must be set: the default (1e30) overflows inside the pipelines.
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer() -> T5Tokenizer:
    # Unigram over printable characters (with and without the word-start mark): 4 + 2 * 94 = 192 ids.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for ch in string.ascii_letters + string.digits + string.punctuation:
        pieces += [("▁" + ch, -3.0), (ch, -4.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)  # extra_ids=0: no ids past the vocab


# ---------------------------------------------------------------------------------------------------------
# modules


def _clip_config(hidden_act: str = "quick_gelu", hidden_size: int = 32) -> CLIPTextConfig:
    # bos/eos/pad must be ids of the tiny vocab; eos != 2 keeps the "eos token" pooling (2 switches to argmax).
    return CLIPTextConfig(
        vocab_size=514,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        hidden_act=hidden_act,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _t5(d_model: int) -> T5EncoderModel:
    return T5EncoderModel(
        T5Config(
            vocab_size=192,
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def _vae(latent_channels: int = 4, shift: float | None = None, scaling: float = 0.18215) -> AutoencoderKL:
    # 2 blocks -> 2x downsampling (32 px -> 16x16 latents); norm_num_groups must divide the tiny widths.
    flow = latent_channels == 16  # SD3/FLUX VAEs have no quant convs and a shift factor
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(4, 8),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=2,
        sample_size=TINY_SIZE,
        scaling_factor=scaling,
        shift_factor=shift,
        use_quant_conv=not flow,
        use_post_quant_conv=not flow,
    )


def _sd_unet(in_channels: int, *, sd2: bool = False) -> UNet2DConditionModel:
    # Cross-attention blocks on purpose: erasure methods edit attn2 (to_k/to_v), so they must exist.
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # = CLIP hidden size
        norm_num_groups=2,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,  # SD2 uses linear proj_in/proj_out, SD1 1x1 convs
    )


def _sdxl_unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=64,  # = te1 hidden 32 + te2 hidden 32 (concatenated)
        norm_num_groups=2,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # = 6 time ids * 8 + te2 projection_dim 32
    )


def _sd_scheduler(v_prediction: bool = False) -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if v_prediction else "epsilon",
    )


def _flow_scheduler(dynamic: bool) -> FlowMatchEulerDiscreteScheduler:
    if dynamic:  # FLUX: shift depends on the image sequence length
        return FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
        )
    return FlowMatchEulerDiscreteScheduler(shift=3.0)


# ---------------------------------------------------------------------------------------------------------
# components per family


def _sd_components(family: str) -> dict[str, Any]:
    sd2 = family == "sd2"
    in_channels = {"sd-inpaint": 9, "ip2p": 8}.get(family, 4)  # + masked-image latents + mask / + image latents
    return dict(
        unet=_sd_unet(in_channels, sd2=sd2),
        vae=_vae(),
        text_encoder=CLIPTextModel(_clip_config("gelu" if sd2 else "quick_gelu")),
        tokenizer=_clip_tokenizer(),
        scheduler=_sd_scheduler(v_prediction=sd2),
    )


def _sdxl_components(family: str) -> dict[str, Any]:
    return dict(
        unet=_sdxl_unet(8 if family == "ip2p-sdxl" else 4),
        vae=_vae(scaling=0.13025),
        text_encoder=CLIPTextModel(_clip_config()),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config("gelu")),
        tokenizer_2=_clip_tokenizer(),
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
        ),
    )


def _sd3_components(family: str) -> dict[str, Any]:
    return dict(
        transformer=SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=1,
            attention_head_dim=8,
            num_attention_heads=4,
            caption_projection_dim=32,
            joint_attention_dim=64,  # = T5 d_model; CLIP hidden 32 + 32 must not exceed it
            pooled_projection_dim=64,  # = te1 projection 32 + te2 projection 32
            pos_embed_max_size=16,  # >= latent size / patch size
        ),
        vae=_vae(16, shift=0.0609, scaling=1.5305),
        text_encoder=CLIPTextModelWithProjection(_clip_config()),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config()),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5(64),
        tokenizer_3=_t5_tokenizer(),
        scheduler=_flow_scheduler(dynamic=False),
    )


def _flux_components(family: str) -> dict[str, Any]:
    return dict(
        transformer=FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # = 4 (2x2 packing) * 16 latent channels
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # = T5 d_model
            pooled_projection_dim=32,  # = CLIP hidden size (pooled output)
            guidance_embeds=True,
            axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
        ),
        vae=_vae(16, shift=0.1159, scaling=0.3611),
        text_encoder=CLIPTextModel(_clip_config()),
        tokenizer=_clip_tokenizer(),
        text_encoder_2=_t5(32),
        tokenizer_2=_t5_tokenizer(),
        scheduler=_flow_scheduler(dynamic=True),
    )


_BUILDERS: dict[str, Callable[[str], dict[str, Any]]] = {
    "sd1": _sd_components,
    "sd2": _sd_components,
    "sd-inpaint": _sd_components,
    "ip2p": _sd_components,
    "sdxl": _sdxl_components,
    "ip2p-sdxl": _sdxl_components,
    "sd3": _sd3_components,
    "flux": _flux_components,
    "kontext": _flux_components,
}

# Optional components the SD-style constructors want spelled out (filtered by each class's signature).
_NO_EXTRAS = dict(safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; tiny pipelines exist for: {', '.join(FAMILY_NAMES)}")


def tiny_pipeline(family: str, seed: int = 0) -> DiffusionPipeline:
    """A tiny randomly initialised pipeline of `family` (the family's own pipeline class), in eval mode.

    Deterministic given `seed`; the global torch RNG is left untouched.
    """
    _check_family(family)
    cls = getattr(diffusers, FAMILIES[family].pipeline_class)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = _BUILDERS[family](family)
    pipe = cls(**components, **_accepted_kwargs(cls, _NO_EXTRAS))  # same filter as loading uses
    # Modules built from configs start in train() mode: T5 dropout would make every call random.
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(family: str, path: str | Path, seed: int = 0) -> Path:
    """Build `tiny_pipeline(family, seed)` and save it as a diffusers folder (safetensors) at `path`."""
    path = Path(path)
    tiny_pipeline(family, seed).save_pretrained(path, safe_serialization=True)
    return path


# ---------------------------------------------------------------------------------------------------------
# call inputs

_COMMON: dict[str, Any] = dict(num_inference_steps=2, height=TINY_SIZE, width=TINY_SIZE, output_type="np")
_SEQ = dict(max_sequence_length=32)  # T5 pads to 512 by default: 16x more text tokens than needed

TINY_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "sd1": dict(_COMMON),
    "sd2": dict(_COMMON),
    "sd-inpaint": dict(_COMMON),
    "ip2p": {k: v for k, v in _COMMON.items() if k not in ("height", "width")},  # the size follows the image
    "sdxl": dict(_COMMON),
    "ip2p-sdxl": dict(_COMMON),
    "sd3": {**_COMMON, **_SEQ},
    "flux": {**_COMMON, **_SEQ},
    # Without max_area/_auto_resize Kontext resizes the input to ~1 MP (minutes on CPU instead of ms).
    "kontext": {**_COMMON, **_SEQ, "max_area": TINY_SIZE * TINY_SIZE, "_auto_resize": False},
}


def tiny_image(size: int = TINY_SIZE) -> Image.Image:
    """A deterministic RGB test image: a red square on a blue-to-green gradient."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    rgb = np.stack([np.zeros((size, size)), np.tile(ramp, (size, 1)), np.tile(ramp[::-1, None], (1, size))], -1)
    q = size // 4
    rgb[q : 3 * q, q : 3 * q] = (255, 0, 0)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def tiny_mask(size: int = TINY_SIZE) -> Image.Image:
    """An "L" mask, white (= repaint) over the centre square of `tiny_image`."""
    mask = np.zeros((size, size), np.uint8)
    q = size // 4
    mask[q : 3 * q, q : 3 * q] = 255
    return Image.fromarray(mask, "L")


def tiny_call_inputs(family: str, seed: int = 0) -> dict[str, Any]:
    """Everything a cheap 2-step call of the family's pipeline needs: prompt, image/mask where the family
    edits, TINY_CALL_KWARGS, and a fresh CPU generator seeded with `seed` (so repeated calls match)."""
    _check_family(family)
    editing = FAMILIES[family].editing
    inputs: dict[str, Any] = {"prompt": TINY_PROMPT, **TINY_CALL_KWARGS[family]}
    if editing is not None:  # inpaint, instruct and kontext all take a source image
        inputs["image"] = tiny_image()
    if editing == "inpaint":
        inputs["mask_image"] = tiny_mask()
    inputs["generator"] = torch.Generator("cpu").manual_seed(seed)
    return inputs
