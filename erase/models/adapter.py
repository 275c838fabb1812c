"""One small uniform view of every diffusion family, the only thing erasure methods talk to.

Methods need five things from a model: encode text, encode photos, run the forward process x0 -> x_t,
ask the denoiser for its prediction (noise, v or flow velocity, optionally conditioned on a photo), and name
module groups to train. Each family spells these differently (SDXL's time ids, FLUX's packed tokens, Kontext's
photo tokens, InstructPix2Pix's channel concat); `DiffusionAdapter` hides the spelling and nothing else.
The spelling lives in one class per architecture (`erase.models.architectures`: unet, sdxl, sd3, flux), one per
photo-conditioning kind (`erase.models.editing`) and one per noise schedule (`erase.models.schedule`: DDPM, flow);
the adapter picks them from the family spec and forwards to them.

Timesteps `t` are in the denoiser's own units: integer DDPM steps for UNet families, sigma * 1000 for flow
models (what their schedulers hand the transformer, before FLUX divides by 1000).
"""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from erase.models.architectures import Architecture, architecture_class
from erase.models.conditioning import Conditioning, ImageCondition
from erase.models.editing import PHOTO_CONDITIONS, PhotoCondition
from erase.models.families import FamilySpec, ModelLoadError, family_of
from erase.models.schedule import DDPMSchedule, FlowSchedule
from erase.models.sizes import native_size

MODULE_GROUPS = ("xattn-kv", "xattn", "self-attn", "non-xattn", "all")

__all__ = ["Conditioning", "DiffusionAdapter", "ImageCondition", "MODULE_GROUPS"]


class DiffusionAdapter:
    """Wraps a loaded diffusers pipeline of any supported family."""

    def __init__(self, pipe, spec: FamilySpec | None = None):
        self.pipe = pipe
        self.spec = spec or family_of(pipe)
        self.denoiser: nn.Module = getattr(pipe, self.spec.denoiser)
        self.vae = getattr(pipe, "vae", None)
        self.scheduler = pipe.scheduler
        self.arch: Architecture = architecture_class(self.spec)(self)
        if self.spec.editing not in PHOTO_CONDITIONS:
            raise ModelLoadError(f"family {self.family!r}: unknown editing kind {self.spec.editing!r}; "
                                 f"known: {[k for k in PHOTO_CONDITIONS if k]}")
        self.photo: PhotoCondition = PHOTO_CONDITIONS[self.spec.editing](self)
        # the scheduler's own noise schedule (alphas_cumprod), not a copy of its formula
        self.schedule: DDPMSchedule | FlowSchedule = self.arch.schedule(self.scheduler)
        self.is_flow = self.schedule.is_flow
        self.prediction_type = self.schedule.prediction_type
        if not self.is_flow:
            self.alphas_cumprod = self.schedule.alphas_cumprod
        self.default_size = self._native_size()

    # ------------------------------------------------------------------ basics
    @property
    def family(self) -> str:
        return self.spec.name

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.get("num_train_timesteps", 1000))

    @property
    def edits_images(self) -> bool:
        return self.spec.editing is not None

    def frozen_copy(self) -> nn.Module:
        """A frozen copy of the denoiser: the 'original model' that erasure objectives compare against."""
        return copy.deepcopy(self.denoiser).requires_grad_(False).eval()

    # ------------------------------------------------------------------ text
    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        return self.arch.encode_prompts(list(prompts))

    max_sequence_length = 77  # T5 context for SD3/FLUX; real models use 256/512, short is enough for concepts

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        tok = self.pipe.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    def encode_clip_tokens(self, input_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        """SD1/2-style text encoding from token ids or from token embeddings (attacks optimise the latter)."""
        te = self.pipe.text_encoder
        if inputs_embeds is None:
            return te(input_ids.to(self.device))[0]
        # CLIPTextModel takes no inputs_embeds: run its embeddings (adds positions), causal encoder and final
        # norm by hand. transformers 5 flattened `text_model` into the model itself; 4.x still nests it.
        tm = getattr(te, "text_model", te)
        hidden = tm.embeddings(inputs_embeds=inputs_embeds)
        causal = _causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
        try:
            out = tm.encoder(inputs_embeds=hidden, attention_mask=causal, is_causal=True)
        except TypeError:  # transformers 4.x
            out = tm.encoder(inputs_embeds=hidden, attention_mask=None, causal_attention_mask=causal)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        return tm.final_layer_norm(hidden)

    def token_embedding(self) -> nn.Embedding:
        return self.pipe.text_encoder.get_input_embeddings()

    # ------------------------------------------------------------------ images
    @property
    def latent_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def _native_size(self) -> int:
        """Pixel size the pipeline generates by default (settable: tiny test models run at 32 px)."""
        return native_size(self.pipe)

    def encode_images(self, images: Tensor) -> Tensor:
        """Photos in [-1, 1], (B, 3, H, W) -> latents in the denoiser's space (VAE mean, shifted and scaled)."""
        z = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mode()
        shift = self.vae.config.get("shift_factor", None) or 0.0
        return ((z - shift) * self.vae.config.scaling_factor).to(self.dtype)

    def decode_latents(self, latents: Tensor) -> Tensor:
        """Latents -> images in [0, 1]."""
        shift = self.vae.config.get("shift_factor", None) or 0.0
        z = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift
        return (self.vae.decode(z).sample.float() / 2 + 0.5).clamp(0, 1)

    def image_condition(self, images: Tensor, masks: Tensor | None = None) -> ImageCondition:
        """The conditioning an editing family takes from a photo (images in [-1, 1]; masks in {0,1}, 1 = repaint)."""
        return self.photo(images, masks)

    # ------------------------------------------------------------------ forward process
    def sample_timesteps(self, n: int, generator: torch.Generator | None = None, low: float = 0.0, high: float = 1.0) -> Tensor:
        """Training timesteps, uniform over [low, high] of the schedule (0 = clean)."""
        u = low + (high - low) * torch.rand(n, generator=generator)
        return self.schedule.timesteps_from_uniform(u).to(self.device)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return self.schedule.add_noise(x0, noise, t)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser is trained to predict, in its own parameterisation."""
        return self.schedule.target(x0, noise, t)

    # ------------------------------------------------------------------ the denoiser
    def predict(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        image: ImageCondition | None = None,
        denoiser: nn.Module | None = None,
        guidance: float = 3.5,
    ) -> Tensor:
        """The denoiser's output for latents (B, C, h, w); `denoiser` swaps in e.g. the frozen copy."""
        net = denoiser if denoiser is not None else self.denoiser
        b = x_t.shape[0]
        t = t.expand(b) if t.dim() == 0 or t.shape[0] == 1 else t
        if image is None and self.photo.required:
            raise ValueError(f"{self.family} needs an image condition for every prediction")
        return self.arch.predict(net, x_t, t, cond, image, guidance)

    def x0_from_prediction(self, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        return self.schedule.x0_from_prediction(x_t, t, pred)

    def x0_weight(self, t: Tensor) -> Tensor:
        """Per-sample factor that turns a squared error of the prediction into the squared error it causes in the
        predicted clean image. Erasure targets differ from the model by small amounts in noise space exactly at the
        high-noise steps that decide an image's content; weighting by this puts the loss where the content is."""
        return self.schedule.x0_weight(t)

    # ------------------------------------------------------------------ sampling with any denoiser
    def latent_shape(self, n: int, size: int | None = None) -> tuple[int, int, int, int]:
        size = size or self.default_size
        c = self.vae.config.latent_channels
        return (n, c, size // self.latent_factor, size // self.latent_factor)

    def inference_timesteps(self, num_steps: int) -> Tensor:
        """The descending timestep grid a sampler with `num_steps` steps visits, in denoiser units."""
        return self.schedule.inference_timesteps(num_steps)

    @torch.no_grad()
    def sample_trajectory(
        self,
        cond: Conditioning,
        uncond: Conditioning,
        num_steps: int,
        guidance: float,
        generator: torch.Generator | None = None,
        until: int | None = None,
        denoiser: nn.Module | None = None,
        x_T: Tensor | None = None,
        image: ImageCondition | None = None,
        start: int = 0,
    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Deterministic (DDIM / flow-Euler) sampling with classifier-free guidance, yielding (i, t_i, x_{t_i})
        before each step i < `until`: the partially denoised latents ESD trains on. With `until=None` the chain
        runs to the end and a last item (num_steps, None, x_0) carries the clean latents. `start` > 0 begins the
        chain part-way down the grid, `x_T` then being the state at index `start` (noise injection)."""
        to_end = until is None
        until = num_steps if to_end else until
        x = x_T if x_T is not None else torch.randn(self.latent_shape(len(cond)), generator=generator).to(self.device, self.dtype)
        ts = self.inference_timesteps(num_steps).to(self.device)
        both = Conditioning.cat([uncond, cond])
        image2 = None if image is None else ImageCondition(torch.cat([image.latents, image.latents]))
        for i in range(start, until):
            t = ts[i]
            yield i, t, x
            e_u, e_c = self.predict(torch.cat([x, x]), t, both, image2, denoiser=denoiser).chunk(2)
            pred = e_u + guidance * (e_c - e_u)
            t_next = ts[i + 1] if i + 1 < num_steps else None
            x = self.step(x, t, t_next, pred)
        if to_end:
            yield num_steps, None, x

    @torch.no_grad()
    def sample(self, cond: Conditioning, uncond: Conditioning, num_steps: int, guidance: float, **kwargs) -> Tensor:
        """Clean latents from a full deterministic sampling run (kwargs as for `sample_trajectory`)."""
        for _, _, x in self.sample_trajectory(cond, uncond, num_steps, guidance, **kwargs):
            pass
        return x

    def final_alpha_cumprod(self) -> Tensor:
        """Where DDIM's last step lands: 1 (clean) with set_alpha_to_one, else alpha-bar at t = 0."""
        return self.schedule.final_alpha_cumprod()

    def step(self, x: Tensor, t: Tensor, t_next: Tensor | None, pred: Tensor) -> Tensor:
        """One deterministic sampler step from t to t_next (None = to the clean image)."""
        return self.schedule.step(x, t, t_next, pred)

    # ------------------------------------------------------------------ module groups
    def module_group(self, group: str) -> list[str]:
        """Parameter names of the denoiser in a named group.

        Which names read the text is the architecture's (`Architecture.selectors`): UNets' `attn2`, the
        transformers' context stream (`add_k_proj/add_v_proj` ...).
        """
        if group not in MODULE_GROUPS:
            raise ValueError(f"unknown module group {group!r}; choose one of {MODULE_GROUPS}")
        names = [n for n, _ in self.denoiser.named_parameters()]
        kv, xattn, self_attn = self.arch.selectors()
        pick = {"xattn-kv": kv, "xattn": xattn, "self-attn": self_attn, "non-xattn": lambda n: not xattn(n), "all": lambda n: True}
        chosen = [n for n in names if pick[group](n)]
        if not chosen:
            raise ModelLoadError(f"{self.family} denoiser has no parameters in group {group!r}")
        return chosen

    def linear_modules(self, group: str) -> dict[str, nn.Linear]:
        """The nn.Linear modules whose weights fall in a group (LoRA targets, closed-form edits)."""
        params = set(self.module_group(group))
        modules = dict(self.denoiser.named_modules())
        found = {}
        for name, m in modules.items():
            if not isinstance(m, nn.Linear) or f"{name}.weight" not in params or ".lora_" in name:
                continue
            # a layer already wrapped by peft is named by its wrapper (what LoRA targets and fusion address)
            owner = name.removesuffix(".base_layer")
            found[owner] = modules[owner] if owner != name else m
        return found

    def set_trainable(self, group: str) -> list[nn.Parameter]:
        """Freeze everything, then unfreeze the group's parameters in the denoiser; returns them."""
        self.pipe_modules_requires_grad(False)
        chosen = set(self.module_group(group))
        params = []
        for name, p in self.denoiser.named_parameters():
            if name in chosen:
                p.requires_grad_(True)
                params.append(p)
        return params

    def pipe_modules_requires_grad(self, flag: bool) -> None:
        for module in self.modules().values():
            module.requires_grad_(flag)

    def modules(self) -> dict[str, nn.Module]:
        return {name: m for name, m in self.pipe.components.items() if isinstance(m, nn.Module)}


# ---------------------------------------------------------------------- helpers
def _causal_mask(n: int, dtype, device) -> Tensor:
    mask = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]
