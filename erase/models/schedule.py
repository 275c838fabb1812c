"""The forward process and the deterministic sampler step of the two kinds of noise schedule.

`DDPMSchedule` (UNet families): integer DDPM timesteps, with the scheduler's own `alphas_cumprod` (never a copy
of its formula) and its own inference grid (`set_timesteps`: leading/trailing spacing, offsets); epsilon or
v-prediction as the scheduler's config says. `FlowSchedule` (SD3, FLUX): rectified flow, timesteps are
sigma * 1000 (what the schedulers hand the transformer), the model predicts the velocity noise - x0.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from erase.models.families import ModelLoadError


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class DDPMSchedule:
    is_flow = False

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if getattr(scheduler, "alphas_cumprod", None) is None:
            raise ModelLoadError(f"{type(scheduler).__name__} has no alphas_cumprod: a DDPM-family scheduler is needed")
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod).float()

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.get("num_train_timesteps", 1000))

    def _alpha(self, t: Tensor, like: Tensor) -> Tensor:
        return _bcast(self.alphas_cumprod.to(like.device)[t.long()], like)

    def timesteps_from_uniform(self, u: Tensor) -> Tensor:
        """u in [0, 1] (0 = clean) -> integer training timesteps."""
        return (u * (self.num_train_timesteps - 1)).round().long()

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        # Not scheduler.add_noise: Euler schedulers (SDXL's) add noise in sigma space (x0 + sigma * noise).
        a = self._alpha(t, x0)
        return (a.sqrt() * x0 + (1 - a).sqrt() * noise).to(x0.dtype)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        if self.prediction_type == "v_prediction":
            a = self._alpha(t, x0)
            return a.sqrt() * noise - (1 - a).sqrt() * x0
        return noise

    def x0_from_prediction(self, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        a = self._alpha(t, x_t)
        if self.prediction_type == "v_prediction":
            return a.sqrt() * x_t - (1 - a).sqrt() * pred
        return (x_t - (1 - a).sqrt() * pred) / a.sqrt()

    def x0_weight(self, t: Tensor) -> Tensor:
        # = 1 / SNR (epsilon) and 1 / (SNR + 1) (v). diffusers.training_utils.compute_snr gives the same values
        # through sqrt(a)^2 / sqrt(1 - a)^2, which differs from these in the last bits, so it is not used here.
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return (1 - a) if self.prediction_type == "v_prediction" else (1 - a) / a

    def inference_timesteps(self, num_steps: int) -> Tensor:
        # The pipeline's own scheduler decides the grid (leading/trailing spacing, offsets): sample where it samples.
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_steps)
        return scheduler.timesteps.long()

    def final_alpha_cumprod(self) -> Tensor:
        """Where DDIM's last step lands: 1 (clean) with set_alpha_to_one, else alpha-bar at t = 0."""
        return torch.tensor(1.0) if self.scheduler.config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]

    def step(self, x: Tensor, t: Tensor, t_next: Tensor | None, pred: Tensor) -> Tensor:
        """DDIM (eta = 0) from t to t_next (None = to the clean image)."""
        x0 = self.x0_from_prediction(x, t, pred)
        a = self.alphas_cumprod.to(x.device)[t.long()]
        if t_next is None:  # DDIM's last step lands on "final_alpha_cumprod", as the scheduler does
            a_next = self.final_alpha_cumprod().to(x.device)
        else:
            a_next = self.alphas_cumprod.to(x.device)[t_next.long()]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return (a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps).to(x.dtype)


class FlowSchedule:
    is_flow = True
    prediction_type = "flow"

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    @property
    def shift(self) -> float:
        return float(self.scheduler.config.get("shift", 1.0))

    def timesteps_from_uniform(self, u: Tensor) -> Tensor:
        shift = self.shift
        sigma = shift * u / (1 + (shift - 1) * u)
        return sigma * 1000

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        sigma = _bcast(t.float() / 1000, x0)
        return ((1 - sigma) * x0 + sigma * noise).to(x0.dtype)

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        return noise - x0

    def x0_from_prediction(self, x_t: Tensor, t: Tensor, pred: Tensor) -> Tensor:
        return x_t - _bcast(t.float() / 1000, x_t) * pred

    def x0_weight(self, t: Tensor) -> Tensor:
        return (t.float() / 1000) ** 2

    def inference_timesteps(self, num_steps: int) -> Tensor:
        # Not the scheduler's set_timesteps: that grid ends at the shifted sigma_min, and FLUX's dynamic shift
        # needs the image's sequence length; this grid (linspace(1, 1/n), static shift) is what erase samples on.
        sigmas = torch.linspace(1.0, 1.0 / num_steps, num_steps)
        shift = self.shift
        sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
        return sigmas * 1000

    def final_alpha_cumprod(self) -> Tensor:
        return torch.tensor(1.0)  # the flow chain ends at sigma = 0: the clean image

    def step(self, x: Tensor, t: Tensor, t_next: Tensor | None, pred: Tensor) -> Tensor:
        """Flow Euler from t to t_next (None = to sigma 0)."""
        s, s_next = t.float() / 1000, (0.0 if t_next is None else t_next.float() / 1000)
        return (x + (s_next - s) * pred).to(x.dtype)
