"""Turning an attack's result into images, and the sampling the attacks themselves do: every path goes through the
adapter's deterministic sampler (`DiffusionAdapter.sample` / `sample_trajectory`: DDIM or flow-Euler with
classifier-free guidance), so attack images are sampled as the rest of the evaluation samples.

    generate_with(adapter, result, n, seed)   n PIL images of any result (text, embeddings, weights, latents)
    sample_latents(...)                       the same, as clean latents
    denoise(model, ..., x, start)             clean latents from the state x at grid index `start` (0 = x_T)
    trajectory(model, ...)                    the (t_i, x_{t_i}) states a model visits sampling a prompt (P4D)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from erase.evaluation.attacks.interface import AttackError, AttackResult, photo_condition
from erase.evaluation.attacks.randomness import randn
from erase.methods.base import text_only_image_condition
from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5


def latent_size(adapter: DiffusionAdapter, image: ImageCondition | None) -> int | None:
    """Pixel size the latents must have to match a channel-concatenated photo condition (IP2P, inpainting)."""
    if image is None or adapter.spec.editing not in ("instruct", "inpaint"):
        return None
    return image.latents.shape[-1] * adapter.latent_factor


@torch.no_grad()
def denoise(model: DiffusionAdapter, cond: Conditioning, uncond: Conditioning, num_steps: int, guidance: float,
            x: Tensor, image: ImageCondition | None = None, start: int = 0, denoiser: nn.Module | None = None) -> Tensor:
    """Clean latents from `x`, the state at index `start` of the `num_steps` grid (0: x is x_T), through the
    adapter's sampler (`denoiser`: another module to predict with, e.g. `Original.denoiser()`)."""
    if not 0 <= start < num_steps:
        raise AttackError(f"start_step {start} must lie in [0, {num_steps}) of the {num_steps}-step grid")
    return model.sample(cond, uncond, num_steps, guidance, x_T=x, image=image, denoiser=denoiser, start=start)


@torch.no_grad()
def trajectory(model: DiffusionAdapter, cond: Conditioning, uncond: Conditioning, num_steps: int, guidance: float,
               generator: torch.Generator, image: ImageCondition | None = None,
               denoiser: nn.Module | None = None) -> list[tuple[Tensor, Tensor]]:
    """The (t_i, x_{t_i}) states the model visits while sampling the prompt (before each step), from an x_T drawn
    on the CPU from `generator`."""
    x_T = randn(model.latent_shape(len(cond), latent_size(model, image)), generator,
                torch.empty(0, device=model.device, dtype=model.dtype))
    return [(t, x) for _, t, x in model.sample_trajectory(
        cond, uncond, num_steps, guidance, until=num_steps, denoiser=denoiser, x_T=x_T, image=image)]


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
            shape = model.latent_shape(1, latent_size(model, image))
            x_T = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i)) for i in idx])
            x_T = x_T.to(model.device, model.dtype)
        first = result.start_step if form == "latents" else 0  # noise injection: a state part-way down the grid
        out.append(denoise(model, cond, uncond, num_steps, guidance, x_T, image, first))
    return torch.cat(out)


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
