"""One small uniform view of every diffusion family, the only thing erasure methods talk to.

Methods need five things from a model: encode text, encode photos, run the forward process x0 -> x_t,
ask the denoiser for its prediction (noise, v or flow velocity, optionally conditioned on a photo), and name
module groups to train. Each family spells these differently (SDXL's time ids, FLUX's packed tokens, Kontext's
photo tokens, InstructPix2Pix's channel concat); `DiffusionAdapter` hides the spelling and nothing else.

Timesteps `t` are in the denoiser's own units: integer DDPM steps for UNet families, sigma * 1000 for flow
models (what their schedulers hand the transformer, before FLUX divides by 1000).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

from erase.models.sizes import native_size
from erase.models.families import FamilySpec, ModelLoadError, family_of

MODULE_GROUPS = ("xattn-kv", "xattn", "self-attn", "non-xattn", "all")


@dataclass
class Conditioning:
    """Text conditioning of a batch: what the denoiser cross-attends to, plus family-specific extras."""

    embeds: Tensor  # (B, L, D) token embeddings
    pooled: Tensor | None = None  # (B, D') pooled embedding (SDXL, SD3, FLUX)
    extra: dict[str, Tensor] = field(default_factory=dict)  # SDXL "time_ids" (B, 6); FLUX "text_ids" (L, 3)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def select(self, index: Tensor | slice | Sequence[int]) -> "Conditioning":
        batched = {k: v[index] for k, v in self.extra.items() if k in _BATCHED_EXTRA}
        shared = {k: v for k, v in self.extra.items() if k not in _BATCHED_EXTRA}
        return Conditioning(self.embeds[index], None if self.pooled is None else self.pooled[index], {**shared, **batched})

    def repeat(self, n: int) -> "Conditioning":
        """Each row repeated n times in place (row i -> rows i*n .. i*n+n-1)."""
        return self.select(torch.arange(len(self), device=self.embeds.device).repeat_interleave(n))

    @staticmethod
    def cat(items: Sequence["Conditioning"]) -> "Conditioning":
        first = items[0]
        extra = {
            k: torch.cat([c.extra[k] for c in items]) if k in _BATCHED_EXTRA else v for k, v in first.extra.items()
        }
        pooled = None if first.pooled is None else torch.cat([c.pooled for c in items])
        return Conditioning(torch.cat([c.embeds for c in items]), pooled, extra)

    def detach(self) -> "Conditioning":
        return Conditioning(
            self.embeds.detach(),
            None if self.pooled is None else self.pooled.detach(),
            {k: v.detach() for k, v in self.extra.items()},
        )

    def to(self, device=None, dtype=None) -> "Conditioning":
        def move(x: Tensor) -> Tensor:
            return x.to(device=device, dtype=dtype if x.is_floating_point() else None)

        return Conditioning(
            move(self.embeds), None if self.pooled is None else move(self.pooled), {k: move(v) for k, v in self.extra.items()}
        )


_BATCHED_EXTRA = {"time_ids"}  # extras with a batch dimension; the rest (FLUX text_ids) are shared


@dataclass
class ImageCondition:
    """The photo an edit starts from, in the form the family's denoiser takes it."""

    latents: Tensor  # IP2P: unscaled VAE mode (as the pipeline does); inpaint: [mask, masked latents]; Kontext: scaled latents

    def select(self, index) -> "ImageCondition":
        return ImageCondition(self.latents[index])

    def repeat(self, n: int) -> "ImageCondition":
        return ImageCondition(self.latents.repeat_interleave(n, dim=0))

    def null(self) -> "ImageCondition":
        """The image-unconditional branch that classifier-free guidance over the image uses (zeros, as IP2P does)."""
        return ImageCondition(torch.zeros_like(self.latents))


class DiffusionAdapter:
    """Wraps a loaded diffusers pipeline of any supported family."""

    def __init__(self, pipe, spec: FamilySpec | None = None):
        self.pipe = pipe
        self.spec = spec or family_of(pipe)
        self.denoiser: nn.Module = getattr(pipe, self.spec.denoiser)
        self.vae = getattr(pipe, "vae", None)
        self.scheduler = pipe.scheduler
        self.is_flow = self.spec.architecture in ("sd3", "flux")
        self.prediction_type = "flow" if self.is_flow else self.scheduler.config.get("prediction_type", "epsilon")
        if not self.is_flow:  # the scheduler's own noise schedule, not a copy of its formula
            if getattr(self.scheduler, "alphas_cumprod", None) is None:
                raise ModelLoadError(f"{type(self.scheduler).__name__} has no alphas_cumprod: a DDPM-family scheduler is needed")
            self.alphas_cumprod = torch.as_tensor(self.scheduler.alphas_cumprod).float()
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
        prompts = list(prompts)
        arch, device = self.spec.architecture, self.device
        if arch == "unet" and "text_encoder_2" not in self.spec.text_encoders:
            return Conditioning(self.encode_clip_tokens(self.tokenize(prompts)))
        if arch == "unet":  # SDXL and its IP2P variant
            out = self.pipe.encode_prompt(prompts, device=device, do_classifier_free_guidance=False)
            embeds, pooled = out[0], out[2]
            return Conditioning(embeds, pooled, {"time_ids": self._sdxl_time_ids(len(prompts), pooled)})
        if arch == "sd3":
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompts, None, None, device=device, do_classifier_free_guidance=False, max_sequence_length=self.max_sequence_length
            )
            return Conditioning(embeds, pooled)
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompts, None, device=device, max_sequence_length=self.max_sequence_length)
        return Conditioning(embeds, pooled, {"text_ids": text_ids})

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

    def _sdxl_time_ids(self, n: int, pooled: Tensor) -> Tensor:
        size = self.default_size
        ids = torch.tensor([size, size, 0, 0, size, size], dtype=pooled.dtype, device=pooled.device)
        return ids.repeat(n, 1)

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
        kind = self.spec.editing
        if kind == "instruct":
            z = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist.mode()
            return ImageCondition(z.to(self.dtype))  # IP2P feeds unscaled latents, as its pipeline does
        if kind == "inpaint":
            if masks is None:
                raise ValueError("inpainting needs a mask (1 = region to repaint)")
            masks = masks.to(self.device, images.dtype)
            masked = self.encode_images(images.to(self.device) * (masks < 0.5))
            small = nn.functional.interpolate(masks, size=masked.shape[-2:])
            return ImageCondition(torch.cat([small.to(self.dtype), masked], dim=1))
        if kind == "kontext":
            return ImageCondition(self.encode_images(images))
        raise ValueError(f"{self.family} does not take an image condition (it edits photos through img2img/SDEdit only)")

    # ------------------------------------------------------------------ forward process
    def sample_timesteps(self, n: int, generator: torch.Generator | None = None, low: float = 0.0, high: float = 1.0) -> Tensor:
        """Training timesteps, uniform over [low, high] of the schedule (0 = clean)."""
        u = low + (high - low) * torch.rand(n, generator=generator)
        if self.is_flow:
            shift = float(self.scheduler.config.get("shift", 1.0))
            sigma = shift * u / (1 + (shift - 1) * u)
            return (sigma * 1000).to(self.device)
        return (u * (self.num_train_timesteps - 1)).round().long().to(self.device)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.is_flow:
            sigma = _bcast(t.float() / 1000, x0)
            return ((1 - sigma) * x0 + sigma * noise).to(x0.dtype)
        a = _bcast(self.alphas_cumprod.to(x0.device)[t.long()], x0)
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(x0.dtype)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the denoiser is trained to predict, in its own parameterisation."""
        if self.is_flow:
            return noise - x0
        if self.prediction_type == "v_prediction":
            a = _bcast(self.alphas_cumprod.to(x0.device)[t.long()], x0)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        return noise

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
        if image is None and self.spec.editing in ("instruct", "inpaint"):
            raise ValueError(f"{self.family} needs an image condition for every prediction")
        arch = self.spec.architecture
        if arch == "unet":
            x_in = x_t if image is None else torch.cat([x_t, image.latents.to(x_t.dtype)], dim=1)
            added = None
            if cond.pooled is not None:
                added = {"text_embeds": cond.pooled, "time_ids": cond.extra["time_ids"]}
            return net(x_in, t, encoder_hidden_states=cond.embeds, added_cond_kwargs=added, return_dict=False)[0]
        if arch == "sd3":
            return net(
                hidden_states=x_t, timestep=t, encoder_hidden_states=cond.embeds, pooled_projections=cond.pooled, return_dict=False
            )[0]
        return self._predict_flux(net, x_t, t, cond, image, guidance)

    def _predict_flux(self, net, x_t, t, cond, image, guidance) -> Tensor:
        b, c, h, w = x_t.shape
        tokens = _pack(x_t)
        ids = _latent_ids(h // 2, w // 2, x_t.device, x_t.dtype)
        n = tokens.shape[1]
        if image is not None:  # Kontext: photo tokens appended to the sequence, told apart by id[..., 0] = 1
            photo_ids = _latent_ids(image.latents.shape[-2] // 2, image.latents.shape[-1] // 2, x_t.device, x_t.dtype)
            photo_ids[..., 0] = 1
            tokens = torch.cat([tokens, _pack(image.latents.to(x_t.dtype))], dim=1)
            ids = torch.cat([ids, photo_ids])
        config = getattr(net, "module", net).config  # DDP wraps the transformer
        g = torch.full((b,), guidance, device=x_t.device, dtype=x_t.dtype) if config.guidance_embeds else None
        out = net(
            hidden_states=tokens,
            timestep=t.to(x_t.dtype) / 1000,
            guidance=g,
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.embeds,
            txt_ids=cond.extra["text_ids"],
            img_ids=ids,
            return_dict=False,
        )[0]
        return _unpack(out[:, :n], c, h, w)

    def x0_from_prediction(self, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        if self.is_flow:
            return x_t - _bcast(t.float() / 1000, x_t) * pred
        a = _bcast(self.alphas_cumprod.to(x_t.device)[t.long()], x_t)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * pred
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()

    def x0_weight(self, t: Tensor) -> Tensor:
        """Per-sample factor that turns a squared error of the prediction into the squared error it causes in the
        predicted clean image. Erasure targets differ from the model by small amounts in noise space exactly at the
        high-noise steps that decide an image's content; weighting by this puts the loss where the content is."""
        if self.is_flow:
            return (t.float() / 1000) ** 2
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return (1 - a) if self.prediction_type == "v_prediction" else (1 - a) / a

    # ------------------------------------------------------------------ sampling with any denoiser
    def latent_shape(self, n: int, size: int | None = None) -> tuple[int, int, int, int]:
        size = size or self.default_size
        c = self.vae.config.latent_channels
        return (n, c, size // self.latent_factor, size // self.latent_factor)

    def inference_timesteps(self, num_steps: int) -> Tensor:
        """The descending timestep grid a sampler with `num_steps` steps visits, in denoiser units."""
        if self.is_flow:
            sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps)
            shift = float(self.scheduler.config.get("shift", 1.0))
            sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
            return sigmas * 1000
        # The pipeline's own scheduler decides the grid (leading/trailing spacing, offsets): sample where it samples.
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_steps)
        return scheduler.timesteps.long()

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
    ) -> Iterator[tuple[int, Tensor, Tensor]]:
        """Deterministic (DDIM / flow-Euler) sampling with classifier-free guidance, yielding (i, t_i, x_{t_i})
        before each step i < `until`: the partially denoised latents ESD trains on. With `until=None` the chain
        runs to the end and a last item (num_steps, None, x_0) carries the clean latents."""
        to_end = until is None
        until = num_steps if to_end else until
        x = x_T if x_T is not None else torch.randn(self.latent_shape(len(cond)), generator=generator).to(self.device, self.dtype)
        ts = self.inference_timesteps(num_steps).to(self.device)
        both = Conditioning.cat([uncond, cond])
        image2 = None if image is None else ImageCondition(torch.cat([image.latents, image.latents]))
        for i in range(until):
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
        return torch.tensor(1.0) if self.scheduler.config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]

    def step(self, x: Tensor, t: Tensor, t_next: Tensor | None, pred: Tensor) -> Tensor:
        """One deterministic sampler step from t to t_next (None = to the clean image)."""
        if self.is_flow:
            s, s_next = t.float() / 1000, (0.0 if t_next is None else t_next.float() / 1000)
            return (x + (s_next - s) * pred).to(x.dtype)
        x0 = self.x0_from_prediction(x, t, pred)
        a = self.alphas_cumprod.to(x.device)[t.long()]
        if t_next is None:  # DDIM's last step lands on "final_alpha_cumprod", as the scheduler does
            a_next = self.final_alpha_cumprod().to(x.device)
        else:
            a_next = self.alphas_cumprod.to(x.device)[t_next.long()]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(x.dtype)

    # ------------------------------------------------------------------ module groups
    def module_group(self, group: str) -> list[str]:
        """Parameter names of the denoiser in a named group.

        UNets: cross-attention is `attn2` (its to_k/to_v read the text), self-attention `attn1`.
        MMDiT/FLUX: text enters through the context stream: `add_k_proj/add_v_proj` play the role of the
        cross-attention keys/values, `add_q_proj/to_add_out/ff_context/norm1_context` the rest of it.
        """
        if group not in MODULE_GROUPS:
            raise ValueError(f"unknown module group {group!r}; choose one of {MODULE_GROUPS}")
        names = [n for n, _ in self.denoiser.named_parameters()]
        if self.spec.architecture == "unet":
            kv = lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n
            xattn = lambda n: ".attn2." in n
            self_attn = lambda n: ".attn1." in n
        else:
            kv = lambda n: ".add_k_proj." in n or ".add_v_proj." in n
            xattn = lambda n: any(k in n for k in (".add_q_proj.", ".add_k_proj.", ".add_v_proj.", ".to_add_out.", ".norm_added_"))
            self_attn = lambda n: ".attn." in n and not xattn(n)
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
def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _causal_mask(n: int, dtype, device) -> Tensor:
    mask = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)
    return mask[None, None]


def _pack(x: Tensor) -> Tensor:
    """(B, C, H, W) -> FLUX's (B, H/2 * W/2, 4C) tokens of 2x2 patches."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def _unpack(tokens: Tensor, c: int, h: int, w: int) -> Tensor:
    b = tokens.shape[0]
    return tokens.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _latent_ids(h: int, w: int, device, dtype) -> Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)
