"""Training code for the toy world: detector, VAE, text-to-image pipeline and InstructPix2Pix-style editor.

Everything is trained from scratch on renders of `erase.toyworld.world` on a CPU (two threads), and saved as
plain diffusers folders (safetensors) that `StableDiffusionPipeline` / `StableDiffusionInstructPix2PixPipeline`
`from_pretrained` load without any download. `scripts/build_toy_world.py` is the command-line entry point.

Training data use item seeds inside `world.TRAIN_SEEDS` (one disjoint block per dataset, see `_item_seeds`);
evaluation uses seeds >= `world.HELDOUT_SEED_START`.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel, compute_snr
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast

from erase.toyworld import world
from erase.toyworld.detector import HEADS, ToyDetector, save_detector
from erase.toyworld.tokenizer import BOS, EOS, MAX_LENGTH, PAD, build_tokenizer

# At most two threads (the 2-core build machine); see `ThreadGovernor` for why fewer while others run.
THREADS = int(os.environ.get("TOYWORLD_THREADS", "2"))
IMAGE_SIZE = 32

# ---------------------------------------------------------------------------------------------------------
# Architectures (small enough that both pipelines + detector stay under 30 MB and train in minutes).
# ---------------------------------------------------------------------------------------------------------

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


# Linear betas: on tiny 8x8 latents they train better than SD's scaled_linear.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear")


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE, prediction_type="epsilon", clip_sample=False)


def sample_scheduler() -> DDIMScheduler:
    # Trailing spacing starts sampling at t=999 (pure noise), which matters with few steps.
    return DDIMScheduler(
        **SCHEDULE, prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1, timestep_spacing="trailing",
    )


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------

# Each dataset draws its item seeds from its own block of TRAIN_SEEDS, so datasets don't share scenes by accident.
_STREAMS = {"vae": 0, "detector": 100_000, "t2i": 200_000, "editor": 500_000}


def _item_seeds(stream: str, n: int, seed: int) -> list[int]:
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
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """uint8 images -> unscaled posterior-mode latents [N, 4, 8, 8] (pre-encoded once: the VAE is frozen)."""
    gov, out = ThreadGovernor(window=2), []
    for i in range(0, len(images), batch):
        gov.step()
        out.append(vae.encode(to_float(images[i : i + batch])).latent_dist.mode())
    return torch.cat(out)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """uint8 images -> uint8 VAE reconstructions (what generated images look like at best)."""
    gov, out = ThreadGovernor(window=2), []
    for i in range(0, len(images), batch):
        gov.step()
        z = vae.encode(to_float(images[i : i + batch])).latent_dist.mode()
        out.append(to_uint8(vae.decode(z).sample))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------------------------------------


def _setup(seed: int) -> torch.Generator:
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class ThreadGovernor:
    """Use THREADS threads while the cores are free, one while other processes keep them busy.

    Why: OpenMP threads spin-wait on each other; on an oversubscribed 2-core machine a 2-thread training step
    was measured at 10-25 s instead of 0.2 s, while 1 thread stayed at 0.3-0.4 s. Call `step()` once per
    training step. With one thread, the CPU time other processes use (/proc/stat minus ours) is reliable, so
    it goes up to THREADS when enough cores are free; with THREADS threads it goes back to one when steps get
    much slower than the best seen, or when others clearly use the cores.
    """

    def __init__(self, max_threads: int = THREADS, window: int = 10) -> None:
        self.max, self.window = max_threads, window
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.best: float | None = None  # fastest median step time seen with max threads
        self.times: list[float] = []
        self.last = time.monotonic()
        self.mark = self._sample()
        self._set(1 if self.max > 1 and self.mark is not None else self.max)

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(CPU seconds the whole machine was busy, our own CPU seconds, wall clock)."""
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:8]]
        except (OSError, ValueError):
            return None  # not Linux: keep the fixed thread count
        t = os.times()
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        return busy, t.user + t.system, time.monotonic()

    def _set(self, n: int) -> None:
        self.threads = n
        torch.set_num_threads(n)

    def step(self) -> None:
        now = time.monotonic()
        self.times.append(now - self.last)
        self.last = now
        if self.max <= 1 or self.mark is None or len(self.times) < self.window:
            return
        median = sorted(self.times)[len(self.times) // 2]
        self.times = []
        sample = self._sample()
        if sample is None:
            return
        busy, own, wall = (a - b for a, b in zip(sample, self.mark))
        self.mark = sample
        free = self.cores - max(0.0, busy - own) / max(wall, 1e-3)  # cores other processes left free
        if self.threads == 1:
            if free >= self.max - 0.3:
                self._set(self.max)
        else:
            self.best = median if self.best is None else min(self.best, median)
            if median > 1.5 * self.best or free < self.max - 0.7:
                self._set(1)


def _lr_lambda(steps: int, warmup: int = 100, floor: float = 0.05) -> Callable[[int], float]:
    """Linear warmup then cosine decay to `floor` x lr: short runs end much better with a decayed lr."""
    warmup = max(1, min(warmup, steps // 10))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


class EMA:
    """Exponential moving average of the weights (sampling from the EMA is much cleaner after short training):
    diffusers' EMAModel over the given modules, with the warm-up decay min(decay, (1 + n) / (10 + n)) at update n
    (update_after_step=-1 makes EMAModel count from 1, as the shipped weights were built)."""

    def __init__(self, modules: Sequence[torch.nn.Module], decay: float = 0.999) -> None:
        self.params = [p for m in modules for p in m.parameters()]
        self.model = EMAModel(self.params, decay=decay, min_decay=0.0, update_after_step=-1, use_ema_warmup=False)

    def update(self) -> None:
        self.model.step(self.params)

    def copy_to(self) -> None:
        self.model.copy_to(self.params)


def _batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterable[torch.Tensor]:
    for _ in range(steps):
        yield torch.randint(0, n, (batch_size,), generator=gen)


# ---------------------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------------------


def train_vae(
    out_dir: str | Path, steps: int = 700, seed: int = 0, n_images: int = 12_000, batch_size: int = 48,
    lr: float = 2e-3, kl_weight: float = 1e-6,
) -> AutoencoderKL:
    """AutoencoderKL (4x down) on renders; L1+MSE recon + a tiny KL. Sets scaling_factor = 1/std(latents)."""
    gen = _setup(seed)
    scenes = [world.scene_from_seed(s, p_exposed=0.3) for s in _item_seeds("vae", n_images, seed)]
    images = render_uint8(scenes)
    vae = AutoencoderKL(**VAE_CONFIG).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))
    bar = tqdm(_batches(len(images), batch_size, steps, gen), total=steps, desc="vae", mininterval=5)
    gov = ThreadGovernor()
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
        z = encode_latents(vae, images[:2000])
        vae.register_to_config(scaling_factor=float(1.0 / z.std()))
        err = (to_float(reconstruct(vae, images[:1000])) - to_float(images[:1000])).abs().mean().item()
    print(f"vae: scaling_factor={vae.config.scaling_factor:.4f} recon L1={err:.4f}")
    out_dir = Path(out_dir)
    vae.save_pretrained(out_dir, safe_serialization=True)
    return vae


# ---------------------------------------------------------------------------------------------------------
# Detector
# ---------------------------------------------------------------------------------------------------------

_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise, slight blur, colour jitter and +-1 px shifts, so the detector also reads generated images."""
    b = x.shape[0]

    def u(*shape: int, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen)

    # Shift by up to one pixel (replicate padding, so no border artefacts).
    pad = F.pad(x, (1, 1, 1, 1), mode="replicate")
    ox, oy = torch.randint(0, 3, (2,), generator=gen).tolist()
    x = pad[:, :, oy : oy + x.shape[2], ox : ox + x.shape[3]]
    # Blur a random amount (a mix of the image and its 3x3 gaussian blur).
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), _BLUR.expand(3, 1, 3, 3), groups=3)
    a = u(b, 1, 1, 1) * (u(b, 1, 1, 1) < 0.5)
    x = (1 - a) * x + a * blurred
    # Colour jitter: contrast/brightness and a small per-channel offset.
    x = x * u(b, 1, 1, 1, lo=0.9, hi=1.1) + u(b, 3, 1, 1, lo=-0.06, hi=0.06)
    # Pixel noise of a random strength.
    x = x + torch.randn(x.shape, generator=gen) * u(b, 1, 1, 1, hi=0.08)
    return x.clamp(-1, 1)


def _scene_targets(scenes: Sequence[world.Scene]) -> dict[str, torch.Tensor]:
    """Class indices per head; the shirt target is -100 (ignored) for exposed scenes."""
    t = {
        "exposed": torch.tensor([float(s.exposed) for s in scenes]),
        "shirt": torch.tensor([-100 if s.shirt is None else HEADS["shirt"].index(s.shirt) for s in scenes]),
        "trousers": torch.tensor([HEADS["trousers"].index(s.trousers) for s in scenes]),
        "background": torch.tensor([HEADS["background"].index(s.background) for s in scenes]),
        "obj": torch.tensor([HEADS["obj"].index(s.obj or "none") for s in scenes]),
    }
    return t


def detector_accuracy(model: ToyDetector, images: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracy per head on uint8 images (shirt only where clothed)."""
    model.eval()
    with torch.no_grad():
        logits = [model(to_float(images[i : i + 512])) for i in range(0, len(images), 512)]
        out = {k: torch.cat([l[k] for l in logits]) for k in logits[0]}
    acc = {"exposed": ((out["exposed"] > 0).float() == targets["exposed"]).float().mean().item()}
    for k in HEADS:
        mask = targets[k] >= 0
        acc[k] = (out[k][mask].argmax(-1) == targets[k][mask]).float().mean().item()
    return acc


def train_detector(
    out_path: str | Path, steps: int = 500, seed: int = 0, vae: AutoencoderKL | None = None,
    n_images: int = 16_000, batch_size: int = 128, lr: float = 2e-3,
) -> ToyDetector:
    """ToyDetector on half exposed renders (+ VAE reconstructions when a VAE is given), with augmentation."""
    gen = _setup(seed)
    scenes = [world.scene_from_seed(s, p_exposed=0.5) for s in _item_seeds("detector", n_images, seed)]
    images = render_uint8(scenes)
    targets = _scene_targets(scenes)
    if vae is not None:  # reconstructions of a third of the renders, appended as extra examples
        n_rec = n_images // 3
        images = torch.cat([images, reconstruct(vae, images[:n_rec])])
        targets = {k: torch.cat([v, v[:n_rec]]) for k, v in targets.items()}
    model = ToyDetector().train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))
    bar = tqdm(_batches(len(images), batch_size, steps, gen), total=steps, desc="detector", mininterval=5)
    gov = ThreadGovernor()
    for idx in bar:
        gov.step()
        out = model(augment(to_float(images[idx]), gen))
        loss = F.binary_cross_entropy_with_logits(out["exposed"], targets["exposed"][idx])
        for k in HEADS:
            loss = loss + F.cross_entropy(out[k], targets[k][idx], ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", threads=torch.get_num_threads(), refresh=False)
    model.eval()
    # Report accuracy on fresh held-out renders (and their reconstructions).
    test = [world.scene_from_seed(world.HELDOUT_SEED_START + i, p_exposed=0.5) for i in range(min(1000, n_images))]
    test_images, test_targets = render_uint8(test), _scene_targets(test)
    print("detector accuracy on held-out renders:", _fmt(detector_accuracy(model, test_images, test_targets)))
    if vae is not None:
        rec = reconstruct(vae, test_images)
        print("detector accuracy on VAE reconstructions:", _fmt(detector_accuracy(model, rec, test_targets)))
    save_detector(model, out_path)
    return model


def _fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in d.items())


# ---------------------------------------------------------------------------------------------------------
# Text-to-image
# ---------------------------------------------------------------------------------------------------------


# Min-SNR-gamma loss weighting (Hang et al. 2023): timesteps stop competing for the gradient and training
# converges in far fewer steps, which the 30-minute CPU build needs.
MIN_SNR_GAMMA = 5.0


def _diffusion_loss(
    unet: UNet2DConditionModel, sched: DDPMScheduler, latents: torch.Tensor, cond: torch.Tensor,
    gen: torch.Generator, extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Epsilon-prediction MSE at uniform timesteps, weighted min(SNR, gamma) / SNR; `extra` channels (the IP2P
    image) are concatenated."""
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    noisy = sched.add_noise(latents, noise, t)
    if extra is not None:
        noisy = torch.cat([noisy, extra], dim=1)
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    snr = compute_snr(sched, t)
    weight = snr.clamp(max=MIN_SNR_GAMMA) / snr
    return (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()


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
    seeds = _item_seeds("t2i", n, seed)
    scenes = [world.scene_from_seed(s, p_exposed=p_exposed) for s in seeds]
    texts = [
        world.caption(sc, np.random.default_rng([s, k])) for s, sc in zip(seeds, scenes) for k in range(captions_per_image)
    ]
    ids = tokenize(tok, texts).view(n, captions_per_image, -1)
    return render_uint8(scenes), ids


def train_t2i(
    out_dir: str | Path, vae: AutoencoderKL, steps: int = 3600, seed: int = 0, n_images: int = 20_000,
    batch_size: int = 64, lr: float = 1e-3, p_uncond: float = 0.1,
) -> StableDiffusionPipeline:
    """UNet + CLIP text encoder trained jointly from scratch (eps-prediction, linear DDPM), EMA weights saved."""
    gen = _setup(seed)
    tok = build_tokenizer()
    t0 = time.time()
    images, ids = t2i_dataset(n_images, seed, tok)
    latents = encode_latents(vae.eval(), images) * vae.config.scaling_factor
    print(f"t2i: {n_images} renders + latents in {time.time() - t0:.0f} s")
    empty = tokenize(tok, [""])[0]
    te = CLIPTextModel(text_config(len(tok), tok)).train()
    unet = UNet2DConditionModel(**UNET_CONFIG).train()
    sched = train_scheduler()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))
    ema = EMA([unet, te])
    bar = tqdm(_batches(n_images, batch_size, steps, gen), total=steps, desc="t2i", mininterval=5)
    gov = ThreadGovernor()
    for idx in bar:
        gov.step()
        k = torch.randint(0, ids.shape[1], (len(idx),), generator=gen)
        batch_ids = ids[idx, k]
        drop = torch.rand(len(idx), generator=gen) < p_uncond  # caption dropout: classifier-free guidance
        batch_ids[drop] = empty
        loss = _diffusion_loss(unet, sched, latents[idx], te(batch_ids)[0], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema.update()
        bar.set_postfix(loss=f"{loss.item():.4f}", threads=torch.get_num_threads(), refresh=False)
    ema.copy_to()
    return _save_t2i(Path(out_dir), vae, te, tok, unet)


# ---------------------------------------------------------------------------------------------------------
# Editor (InstructPix2Pix architecture)
# ---------------------------------------------------------------------------------------------------------


def ip2p_unet_from(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """8-input-channel UNet initialised from a 4-channel one; the extra (image) channels start at zero (IP2P)."""
    cfg = dict(unet.config)
    cfg["in_channels"] = 8
    new = UNet2DConditionModel.from_config(cfg)
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    new.load_state_dict(state)
    return new


# Share of each edit kind in the editor's training set: the whole-image (background) and the forbidden
# (skin tone must be copied from face and arms) edits are the hard ones, so they get more.
EDIT_MIX = {"recolour_shirt": 0.2, "change_background": 0.25, "remove_object": 0.15, "add_object": 0.15,
            "remove_shirt": 0.25}


def editor_dataset(
    n: int, seed: int, tok: PreTrainedTokenizerFast, mix: dict[str, float] = EDIT_MIX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Photo renders, result renders (uint8) and tokenized instructions for `n` triplets (kinds per `mix`)."""
    kinds = [k for k, share in mix.items() for _ in range(round(share * 20))]  # a cycle of 20 triplets
    photos, results, texts = [], [], []
    for i, s in enumerate(_item_seeds("editor", n, seed)):
        photo, text, result = world.edit_triplet(np.random.default_rng(s), kinds[i % len(kinds)])
        photos.append(photo)
        results.append(result)
        texts.append(text)
    return render_uint8(photos), render_uint8(results), tokenize(tok, texts)


def train_editor(
    out_dir: str | Path, t2i_dir: str | Path, steps: int = 3200, seed: int = 0, n_triplets: int = 14_000,
    batch_size: int = 64, lr: float = 1e-3, p_drop: float = 0.05,
) -> StableDiffusionInstructPix2PixPipeline:
    """IP2P editor from the t2i weights: 8-channel UNet (zero-init image channels), same VAE, text encoder
    fine-tuned too; conditioning dropout 5% text / 5% image / 5% both so both guidance scales work."""
    gen = _setup(seed)
    t2i = StableDiffusionPipeline.from_pretrained(t2i_dir, safety_checker=None, requires_safety_checker=False)
    vae, te, tok = t2i.vae.eval(), t2i.text_encoder.train(), t2i.tokenizer
    unet = ip2p_unet_from(t2i.unet).train()
    t0 = time.time()
    photo_px, result_px, ids = editor_dataset(n_triplets, seed, tok)
    # IP2P conditions on the *unscaled* posterior mode of the photo (that is what the pipeline feeds).
    photo_lat = encode_latents(vae, photo_px)
    result_lat = encode_latents(vae, result_px) * vae.config.scaling_factor
    print(f"editor: {n_triplets} triplets + latents in {time.time() - t0:.0f} s")
    empty = tokenize(tok, [""])[0]
    sched = train_scheduler()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(steps))
    ema = EMA([unet, te])
    bar = tqdm(_batches(n_triplets, batch_size, steps, gen), total=steps, desc="editor", mininterval=5)
    gov = ThreadGovernor()
    for idx in bar:
        gov.step()
        batch_ids, cond_img = ids[idx].clone(), photo_lat[idx].clone()
        r = torch.rand(len(idx), generator=gen)
        drop_text = r < 2 * p_drop  # [0, p): text only, [p, 2p): both
        drop_img = (r >= p_drop) & (r < 3 * p_drop)  # [p, 2p): both, [2p, 3p): image only
        batch_ids[drop_text] = empty
        cond_img[drop_img] = 0.0
        loss = _diffusion_loss(unet, sched, result_lat[idx], te(batch_ids)[0], gen, extra=cond_img)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema.update()
        bar.set_postfix(loss=f"{loss.item():.4f}", threads=torch.get_num_threads(), refresh=False)
    ema.copy_to()
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(), scheduler=sample_scheduler(),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(Path(out_dir), safe_serialization=True)
    return pipe


# ---------------------------------------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------------------------------------

STEPS = {"vae": 700, "detector": 500, "t2i": 3600, "editor": 3200}
PARTS = ("vae", "detector", "t2i", "editor")  # build order: the detector mixes in VAE reconstructions


def _scaled(part: str, scale: float) -> int:
    return max(1, round(STEPS[part] * scale))


def _data_scale(scale: float) -> float:
    """Tiny step scales (tests) also shrink the datasets, so a smoke build takes seconds."""
    return min(1.0, max(scale, 0.01))


def load_vae(out: Path) -> AutoencoderKL:
    """The VAE of a build: the standalone folder if present, else the one inside the t2i pipeline."""
    for path in (out / "vae", out / "t2i" / "vae"):
        if (path / "config.json").exists():
            return AutoencoderKL.from_pretrained(path).eval()
    raise FileNotFoundError(f"no VAE under {out}: build it first (--only vae)")


def _build_part(part: str, out: Path, steps_scale: float, seed: int) -> None:
    ds = _data_scale(steps_scale)
    if part == "vae":
        train_vae(out / "vae", steps=_scaled("vae", steps_scale), seed=seed, n_images=max(256, int(12_000 * ds)))
    elif part == "detector":
        vae = load_vae(out) if ((out / "vae").exists() or (out / "t2i").exists()) else None
        train_detector(out / "detector.safetensors", steps=_scaled("detector", steps_scale), seed=seed,
                       vae=vae, n_images=max(256, int(16_000 * ds)))
    elif part == "t2i":
        train_t2i(out / "t2i", load_vae(out), steps=_scaled("t2i", steps_scale), seed=seed,
                  n_images=max(256, int(20_000 * ds)))
    elif part == "editor":
        train_editor(out / "editor", out / "t2i", steps=_scaled("editor", steps_scale), seed=seed,
                     n_triplets=max(256, int(14_000 * ds)))


def _build_part_logged(part: str, out: Path, steps_scale: float, seed: int, log: Path) -> None:
    """`_build_part` in a child process, its output (progress bars included) to `log`."""
    import sys

    with open(log, "w", buffering=1) as f:
        sys.stdout = sys.stderr = f
        _build_part(part, out, steps_scale, seed)


class _Background:
    """One part trained in a second process while the parent trains another.

    Why: on 2 cores one process with two threads runs a step only ~1.5x faster than with one (small ops), so two
    one-thread processes get more done; each `ThreadGovernor` holds one thread while the other runs.
    """

    def __init__(self, part: str, out: Path, steps_scale: float, seed: int) -> None:
        import multiprocessing

        self.part, self.log, self.t0 = part, out / f"build-{part}.log", time.time()
        self.proc = multiprocessing.get_context("spawn").Process(
            target=_build_part_logged, args=(part, out, steps_scale, seed, self.log), daemon=True
        )
        self.proc.start()
        print(f"[build] {part} training in a second process (log: {self.log})", flush=True)

    def join(self) -> None:
        self.proc.join()
        text = self.log.read_text() if self.log.exists() else ""
        if self.proc.exitcode != 0:
            raise RuntimeError(f"building the {self.part} failed (exit code {self.proc.exitcode}); see {self.log}")
        # Its summary lines, without the progress bars.
        for line in text.replace("\r", "\n").splitlines():
            if line.strip() and "%|" not in line and not line.startswith("["):
                print(line)
        self.log.unlink()
        print(f"[build] {self.part} done in {time.time() - self.t0:.0f} s (second process)", flush=True)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def build(out: str | Path, steps_scale: float = 1.0, only: Sequence[str] | None = None, seed: int = 0) -> None:
    """Build the requested parts into `out` (weights layout of `erase.toyworld.weights_dir()`).

    The detector needs only the VAE, so when the text-to-image model is built too it trains beside it in a second
    process (both one thread; the text-to-image training takes the second thread back when the detector is done).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts = [p for p in PARTS if only is None or p in only]
    background: _Background | None = None
    try:
        for part in parts:
            if part == "detector" and "t2i" in parts:
                background = _Background(part, out, steps_scale, seed)
                continue
            t0 = time.time()
            _build_part(part, out, steps_scale, seed)
            print(f"[build] {part} done in {time.time() - t0:.0f} s", flush=True)
            if part == "t2i":
                if background is not None:  # it reads the standalone VAE, deleted next
                    background.join()
                    background = None
                # The t2i folder now carries the VAE; the standalone copy would only add to the shipped size.
                shutil.rmtree(out / "vae", ignore_errors=True)
    finally:
        if background is not None:
            background.kill()
