#!/usr/bin/env python
"""What a toy-world training step costs, shipped architecture against the earlier one, in one run.

    python scripts/bench_toy_arch.py          # ~1 min on 2 cores

Times UNet forward + backward + AdamW (batch 64, the t2i build's shapes) and VAE steps (batch 48) for the configs
in erase.toyworld.training and for the earlier, larger ones (UNet (48, 96) with 8 heads, VAE (32, 64, 64)), and
prints the ratios. Medians of a few steps after warm-up; run it on an idle machine.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from erase.toyworld.training.loop import THREADS
from erase.toyworld.training.t2i import UNET_CONFIG
from erase.toyworld.training.vae import VAE_CONFIG
from erase.toyworld.tokenizer import MAX_LENGTH

EARLIER_UNET = {**UNET_CONFIG, "block_out_channels": (48, 96), "attention_head_dim": 8}
EARLIER_VAE = {**VAE_CONFIG, "block_out_channels": (32, 64, 64)}


def median_step(step, n: int = 12, warmup: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    rest = sorted(times[warmup:])
    return rest[len(rest) // 2]


def unet_step_time(config: dict, batch: int = 64) -> float:
    unet = UNet2DConditionModel(**config)
    opt = torch.optim.AdamW(unet.parameters(), 1e-3)
    x = torch.randn(batch, 4, config["sample_size"], config["sample_size"])
    cond = torch.randn(batch, MAX_LENGTH, config["cross_attention_dim"])
    t = torch.randint(0, 1000, (batch,))

    def step() -> None:
        loss = F.mse_loss(unet(x, t, encoder_hidden_states=cond).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_step(step)


def vae_step_time(config: dict, batch: int = 48) -> float:
    vae = AutoencoderKL(**config)
    opt = torch.optim.AdamW(vae.parameters(), 1e-3)
    x = torch.randn(batch, 3, config["sample_size"], config["sample_size"])

    def step() -> None:
        loss = F.mse_loss(vae.decode(vae.encode(x).latent_dist.sample()).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_step(step, n=8, warmup=2)


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    for name, time_of, shipped, earlier in (("UNet", unet_step_time, UNET_CONFIG, EARLIER_UNET),
                                            ("VAE", vae_step_time, VAE_CONFIG, EARLIER_VAE)):
        new, old = time_of(shipped), time_of(earlier)
        print(f"{name}: shipped {new:.3f} s/step, earlier {old:.3f} s/step -> {old / new:.2f}x cheaper "
              f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
