"""The toy text-to-image model: a small SD-architecture UNet and CLIP text encoder trained jointly from scratch,
saved as a plain `StableDiffusionPipeline` folder (with the VAE and the sampling DDIM scheduler)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from erase.toyworld import world
from erase.toyworld.tokenizer import BOS, EOS, MAX_LENGTH, PAD, build_tokenizer
from erase.toyworld.training.data import IMAGE_SIZE, encode_latents, item_seeds, render_uint8, tokenize
from erase.toyworld.training.diffusion import diffusion_loss, sample_scheduler, train_scheduler
from erase.toyworld.training.loop import DiffusionOptimiser, NoPace, Pace, random_batches, setup_training

# Small enough that both pipelines + detector stay under 30 MB and train in minutes.
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,
    # diffusers' UNet2DConditionModel reads this as the number of heads: one head of full width. The CPU
    # attention kernel runs it ~1.5x faster than 8 narrow heads (scripts/bench_toy_arch.py times the whole step).
    attention_head_dim=1,
    norm_num_groups=16,
)
TEXT_HIDDEN = 64


def text_config(vocab_size: int, tok: PreTrainedTokenizerFast) -> CLIPTextConfig:
    # eos id must not be 2 (CLIP then pools with argmax); max positions >= the tokenizer's max length.
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_HIDDEN,
        hidden_act="quick_gelu",
        bos_token_id=tok.convert_tokens_to_ids(BOS),
        eos_token_id=tok.convert_tokens_to_ids(EOS),
        pad_token_id=tok.convert_tokens_to_ids(PAD),
    )



def _save_t2i(
    out_dir: Path, vae: AutoencoderKL, te: CLIPTextModel, tok: PreTrainedTokenizerFast, unet: UNet2DConditionModel
) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sample_scheduler(),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    for m in (vae, te, unet):
        m.eval()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return pipe


def t2i_dataset(
    n: int, seed: int, tok: PreTrainedTokenizerFast, p_exposed: float = 0.3, captions_per_image: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renders (uint8) and `captions_per_image` tokenized captions each [N, K, L] (fresh phrasing per epoch)."""
    seeds = item_seeds("t2i", n, seed)
    scenes = [world.scene_from_seed(s, p_exposed=p_exposed) for s in seeds]
    texts = [
        world.caption(sc, np.random.default_rng([s, k])) for s, sc in zip(seeds, scenes) for k in range(captions_per_image)
    ]
    ids = tokenize(tok, texts).view(n, captions_per_image, -1)
    return render_uint8(scenes), ids


def train_t2i(
    out_dir: str | Path, vae: AutoencoderKL, steps: int = 3600, seed: int = 0, n_images: int = 20_000,
    batch_size: int = 64, lr: float = 1e-3, p_uncond: float = 0.1, pace: Pace = NoPace,
) -> StableDiffusionPipeline:
    """UNet + CLIP text encoder trained jointly from scratch (eps-prediction, linear DDPM), EMA weights saved."""
    gen = setup_training(seed)
    tok = build_tokenizer()
    t0 = time.time()
    images, ids = t2i_dataset(n_images, seed, tok)
    latents = encode_latents(vae.eval(), images, pace=pace) * vae.config.scaling_factor
    print(f"t2i: {n_images} renders + latents in {time.time() - t0:.0f} s")
    empty = tokenize(tok, [""])[0]
    te = CLIPTextModel(text_config(len(tok), tok)).train()
    unet = UNet2DConditionModel(**UNET_CONFIG).train()
    sched = train_scheduler()
    optimiser = DiffusionOptimiser([unet, te], lr, steps)
    bar = tqdm(random_batches(n_images, batch_size, steps, gen), total=steps, desc="t2i", mininterval=5)
    gov = pace()
    for idx in bar:
        gov.step()
        k = torch.randint(0, ids.shape[1], (len(idx),), generator=gen)
        batch_ids = ids[idx, k]
        drop = torch.rand(len(idx), generator=gen) < p_uncond  # caption dropout: classifier-free guidance
        batch_ids[drop] = empty
        loss = diffusion_loss(unet, sched, latents[idx], te(batch_ids)[0], gen)
        optimiser.step(loss)
        bar.set_postfix(loss=f"{loss.item():.4f}", threads=torch.get_num_threads(), refresh=False)
    optimiser.finish()
    return _save_t2i(Path(out_dir), vae, te, tok, unet)
