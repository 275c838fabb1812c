"""What every toy-world training loop shares: seeding and threads, the lr schedule, EMA, batches, pacing."""

from __future__ import annotations

import math
import os
from typing import Callable, Iterable, Protocol, Sequence

import torch
from diffusers.training_utils import EMAModel

# At most two threads (the 2-core build machine); scripts/build_toy_world.py paces them (its ThreadGovernor:
# fewer while other processes keep the cores busy).
THREADS = int(os.environ.get("TOYWORLD_THREADS", "2"))


class Pacer(Protocol):
    def step(self) -> None:
        """Called once per training step (or encoded batch)."""


class NoPace:
    """The default pacing: none; the thread count `setup_training` chose stays. `Pace(window=n)` is how loops make one."""

    def __init__(self, window: int = 10) -> None:
        pass

    def step(self) -> None:
        pass


Pace = Callable[..., Pacer]  # a Pacer factory, called as pace() by training loops and pace(window=2) by encoders


def setup_training(seed: int) -> torch.Generator:
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def lr_lambda(steps: int, warmup: int = 100, floor: float = 0.05) -> Callable[[int], float]:
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


class DiffusionOptimiser:
    """The t2i model's and editor's optimisation: AdamW, warmup + cosine lr, gradient clipping at 1, EMA weights."""

    def __init__(self, modules: Sequence[torch.nn.Module], lr: float, steps: int) -> None:
        self.params = [p for m in modules for p in m.parameters()]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01)
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(steps))
        self.ema = EMA(modules)

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.lr_sched.step()
        self.ema.update()

    def finish(self) -> None:
        """Leave the EMA weights in the modules (what is saved)."""
        self.ema.copy_to()


def random_batches(n: int, batch_size: int, steps: int, gen: torch.Generator) -> Iterable[torch.Tensor]:
    for _ in range(steps):
        yield torch.randint(0, n, (batch_size,), generator=gen)

