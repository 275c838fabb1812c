"""The toy world's training data: disjoint item-seed streams per dataset, renders, tokens, VAE latents.

Training data use item seeds inside `world.TRAIN_SEEDS` (one disjoint block per dataset, see `item_seeds`);
evaluation uses seeds >= `world.HELDOUT_SEED_START`.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import PreTrainedTokenizerFast

from erase.toyworld import world
from erase.toyworld.tokenizer import MAX_LENGTH
from erase.toyworld.training.loop import NoPace, Pace

IMAGE_SIZE = 32

# Each dataset draws its item seeds from its own block of TRAIN_SEEDS, so datasets don't share scenes by accident.
_STREAMS = {"vae": 0, "detector": 100_000, "t2i": 200_000, "editor": 500_000}


def item_seeds(stream: str, n: int, seed: int) -> list[int]:
    base = _STREAMS[stream] + 1_000 * seed
    seeds = [(base + i) % world.TRAIN_SEEDS.stop for i in range(n)]
    return seeds


def render_uint8(scenes: Iterable[world.Scene], size: int = IMAGE_SIZE) -> torch.Tensor:
    """Scenes -> uint8 tensor [N, 3, size, size] (uint8 keeps tens of thousands of images cheap)."""
    arrs = [np.asarray(world.render(s, size), dtype=np.uint8) for s in scenes]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def tokenize(tok: PreTrainedTokenizerFast, texts: Sequence[str]) -> torch.Tensor:
    return tok(list(texts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch: int = 512, pace: Pace = NoPace) -> torch.Tensor:
    """uint8 images -> unscaled posterior-mode latents [N, 4, 8, 8] (pre-encoded once: the VAE is frozen)."""
    gov, out = pace(window=2), []
    for i in range(0, len(images), batch):
        gov.step()
        out.append(vae.encode(to_float(images[i : i + batch])).latent_dist.mode())
    return torch.cat(out)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch: int = 512, pace: Pace = NoPace) -> torch.Tensor:
    """uint8 images -> uint8 VAE reconstructions (what generated images look like at best)."""
    gov, out = pace(window=2), []
    for i in range(0, len(images), batch):
        gov.step()
        z = vae.encode(to_float(images[i : i + batch])).latent_dist.mode()
        out.append(to_uint8(vae.decode(z).sample))
    return torch.cat(out)

