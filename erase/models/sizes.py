"""The pixel size a pipeline generates by default: one definition for the adapter and the evaluation."""

from __future__ import annotations

from typing import Any


def native_size(pipe: Any) -> int:
    """UNet pipelines: the UNet's sample size times the VAE factor; transformer pipelines: `default_sample_size`
    (128 latents, as diffusers' FLUX/SD3 pipelines default to) times the VAE factor."""
    factor = int(getattr(pipe, "vae_scale_factor", 0) or 2 ** (len(pipe.vae.config.block_out_channels) - 1))
    unet = getattr(pipe, "unet", None)
    if unet is not None:
        return int(unet.config.sample_size) * factor
    return int(getattr(pipe, "default_sample_size", None) or 128) * factor
