"""The one small interface every erasure method implements.

Two shapes:
- `ClosedFormMethod.apply(adapter, concept)` edits weights in place (UCE).
- `FineTuneMethod` gives the shared training loop (`erase.training.train`) a loss: `setup()` once, then
  `loss(model, step, generator)` per micro-batch. The loop owns the optimiser, accelerate, LoRA, checkpoints.

A method states which architectures it applies to; `check(spec)` refuses the rest at config time, with why.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import ClassVar, Iterable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from erase.concept import Concept
from erase.models.adapter import Conditioning, DiffusionAdapter, ImageCondition
from erase.models.families import FamilySpec


class MethodError(ValueError):
    """A method cannot run as configured (wrong family, missing component, bad option)."""


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; training stopped before the bad step touched any weights or checkpoints."""


class Method(ABC):
    name: ClassVar[str]
    # Which denoiser architectures the method applies to, and why not elsewhere.
    architectures: ClassVar[tuple[str, ...]] = ("unet", "sd3", "flux")
    not_applicable_because: ClassVar[str] = ""
    # Editing kinds the method requires (None = any family, text-to-image included).
    editing: ClassVar[tuple[str | None, ...] | None] = None

    def unsupported_reason(self, spec: FamilySpec) -> str | None:
        if spec.architecture not in self.architectures:
            why = self.not_applicable_because or f"it needs one of the architectures {self.architectures}"
            return f"method {self.name!r} does not apply to family {spec.name!r} ({spec.architecture}): {why}"
        if self.editing is not None and spec.editing not in self.editing:
            return (
                f"method {self.name!r} trains an editing path {self.editing} but family {spec.name!r} "
                f"edits through {spec.editing or 'img2img only'}"
            )
        return None

    def check(self, spec: FamilySpec) -> None:
        if reason := self.unsupported_reason(spec):
            raise MethodError(reason)


class ClosedFormMethod(Method):
    @abstractmethod
    def apply(self, adapter: DiffusionAdapter, concept: Concept) -> dict[str, float]:
        """Edit the adapter's weights in place; return a few statistics for the log."""


class Original:
    """The model before erasure, for targets, trajectories and attacks: one wrapper for training and evaluation.

    No second copy of the network is kept. With LoRA the base weights are untouched, so the original is the same
    network with adapters switched off. For full fine-tuning only the parameters that train are kept, as they were
    (`saved`, in their own dtype and device), and a frozen call swaps them in for that call
    (`torch.func.functional_call`): a denoiser whose cross-attention trains costs the cross-attention once more,
    not the whole network. Construct it after the trained parameters are chosen (`requires_grad`).

    `frozen` is what an earlier stage left: a mapping name -> tensor of the denoiser's parameters before the first
    stage (see `parameters_before`; the parameters this stage trains that it lacks are still at their base values
    and are saved now), or a separate frozen denoiser module.
    """

    def __init__(self, adapter: DiffusionAdapter, lora: bool, frozen: nn.Module | Mapping[str, Tensor] | None = None):
        self.adapter, self.lora = adapter, lora
        self.module: nn.Module | None = frozen if isinstance(frozen, nn.Module) else None
        self.saved: dict[str, Tensor] = {}
        if self.module is None:
            earlier = dict(frozen or {})
            live = dict(adapter.denoiser.named_parameters())
            now = {} if lora else {n: p.detach().clone() for n, p in live.items() if p.requires_grad and n not in earlier}
            by_base_name = {n.replace(".base_layer", ""): n for n in live}  # peft renames the layers it wraps
            moved = {by_base_name[n]: v.to(live[by_base_name[n]].device, live[by_base_name[n]].dtype)
                     for n, v in earlier.items() if n in by_base_name}
            self.saved = {**moved, **now}

    @property
    def frozen(self) -> nn.Module:
        """A module usable as `denoiser=` that computes the original model (alias of `denoiser()`)."""
        return self.denoiser()

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor, cond: Conditioning, image: ImageCondition | None = None) -> Tensor:
        return self.adapter.predict(x_t, t, cond, image, denoiser=self.denoiser())

    def denoiser(self) -> nn.Module:
        """A module usable as `denoiser=` for prediction and sampling, whatever the current weights are."""
        if self.module is not None:
            return self.module
        return _Swapped(self.adapter.denoiser, self.saved, adapters_off=self.lora)

    def adapters_off(self):
        """Kept for callers that wrap sampling in it; `denoiser()` already switches LoRA adapters off."""
        return nullcontext()


class _Swapped(nn.Module):
    """The live denoiser with the saved original parameters swapped in (and LoRA adapters off) for each call.
    Holds no parameters of its own, so it is never trained or moved by accident."""

    def __init__(self, net: nn.Module, saved: Mapping[str, Tensor], adapters_off: bool):
        super().__init__()
        object.__setattr__(self, "_net", net)  # not a submodule: its parameters stay the live model's
        self._saved, self._off = dict(saved), adapters_off

    @property
    def config(self):
        return self._net.config

    def forward(self, *args, **kwargs):
        net = self._net
        if self._off:
            net.disable_adapters()
        try:
            if not self._saved:
                return net(*args, **kwargs)
            return functional_call(net, self._saved, args, kwargs, strict=False, tie_weights=True)
        finally:
            if self._off:
                net.enable_adapters()


def parameters_changed_by(adapter: DiffusionAdapter, methods: Iterable[Method]) -> set[str]:
    """Names of the denoiser parameters the methods can change: each fine-tuning method trains inside its module
    group (a LoRA fused on export changes the weights of its group's layers); a method without a group (closed
    form) counts as changing all of them."""
    return set().union(*(adapter.module_group(getattr(m, "group", "all")) for m in methods))


def parameters_before(adapter: DiffusionAdapter, names: Iterable[str]) -> dict[str, Tensor]:
    """Copies of the named denoiser parameters: the original weights a staged run's later stages compare with."""
    names = set(names)
    return {n: p.detach().clone() for n, p in adapter.denoiser.named_parameters() if n in names}


class FineTuneMethod(Method):
    # Module group trained in full fine-tuning, or wrapped with LoRA (see DiffusionAdapter.module_group).
    group: str = "xattn"
    # Set by the training loop before setup(): micro-batches per optimiser step and this process's rank, for
    # methods that consume precomputed states in a fixed order (ESD's pool) rather than from the step's generator.
    micro_batches: int = 1
    rank: int = 0

    @abstractmethod
    def setup(self, adapter: DiffusionAdapter, concept: Concept, original: Original, seed: int) -> None:
        """Encode prompts, build caches; called once before training (and again on resume)."""

    @abstractmethod
    def loss(self, model: nn.Module, step: int, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The loss of one micro-batch at `step`, predicting with `model` (the trained, maybe DDP-wrapped, denoiser).
        Everything random must come from `generator` (or generators derived from the seed and step) so that a
        resumed run repeats an uninterrupted one exactly."""


def text_only_image_condition(adapter: DiffusionAdapter, n: int) -> ImageCondition | None:
    """What an editing model sees when a text-to-image objective runs on it with no photo: the image-unconditional
    branch (zero image latents for InstructPix2Pix; a fully masked blank for inpainting)."""
    kind = adapter.spec.editing
    if kind == "instruct":
        c = adapter.vae.config.latent_channels
        shape = adapter.latent_shape(n)
        return ImageCondition(torch.zeros(n, c, *shape[2:], device=adapter.device, dtype=adapter.dtype))
    if kind == "inpaint":
        size = adapter.default_size
        images = torch.zeros(n, 3, size, size, device=adapter.device)
        masks = torch.ones(n, 1, size, size, device=adapter.device)
        return adapter.image_condition(images, masks)
    return None


LOSS_WEIGHTINGS = ("eps", "x0")


def prediction_loss(adapter: DiffusionAdapter, pred: Tensor, target: Tensor, t: Tensor, weighting: str = "eps") -> Tensor:
    """MSE between predictions. "eps": plain, in the model's own parameterisation (the reference codes);
    "x0": each sample weighted by how much its error moves the predicted clean image (`x0_weight`)."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    if weighting == "eps":
        return per_sample.mean()
    if weighting == "x0":
        return (adapter.x0_weight(t).to(per_sample) * per_sample).mean()
    raise MethodError(f"loss weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")


def derived_generator(seed: int, *keys: object) -> torch.Generator:
    """A generator that depends only on (seed, keys): the same draws after a resume, on every rank."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
