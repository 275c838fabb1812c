"""The toy world's VAE: an AutoencoderKL (4x down, 32 px -> 8x8x4 latents) trained on renders."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from erase.toyworld import world
from erase.toyworld.training.data import IMAGE_SIZE, encode_latents, item_seeds, reconstruct, render_uint8, to_float
from erase.toyworld.training.loop import NoPace, Pace, lr_lambda, random_batches, setup_training

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,  # 3 blocks = 2 downsamples: 32 px -> 8x8x4 latents
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 32, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
)


def train_vae(
    out_dir: str | Path, steps: int = 700, seed: int = 0, n_images: int = 12_000, batch_size: int = 48,
    lr: float = 2e-3, kl_weight: float = 1e-6, pace: Pace = NoPace,
) -> AutoencoderKL:
    """AutoencoderKL (4x down) on renders; L1+MSE recon + a tiny KL. Sets scaling_factor = 1/std(latents)."""
    gen = setup_training(seed)
    scenes = [world.scene_from_seed(s, p_exposed=0.3) for s in item_seeds("vae", n_images, seed)]
    images = render_uint8(scenes)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(steps))
    bar = tqdm(random_batches(len(images), batch_size, steps, gen), total=steps, desc="vae", mininterval=5)
    gov = pace()
    for idx in bar:
        gov.step()
        x = to_float(images[idx])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", threads=torch.get_num_threads(), refresh=False)
    vae.eval()
    with torch.no_grad():
        z = encode_latents(vae, images[:2000], pace=pace)
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        err = (to_float(reconstruct(vae, images[:1000], pace=pace)) - to_float(images[:1000])).abs().mean().item()
    print(f"vae: scaling_factor={vae.config.scaling_factor:.4f} recon L1={err:.4f}")
    out_dir = Path(out_dir)
    vae.save_pretrained(out_dir, safe_serialization=True)
    return vae


def load_vae(out: Path) -> AutoencoderKL:
    """The VAE of a build: the standalone folder if present, else the one inside the t2i pipeline."""
    for path in (out / "vae", out / "t2i" / "vae"):
        if (path / "config.json").exists():
            return AutoencoderKL.from_pretrained(path).eval()
    raise FileNotFoundError(f"no VAE under {out}: build it first (--only vae)")
