"""Where an attack's randomness comes from: one CPU `torch.Generator` per run, so an attack draws the same numbers
on any device and a seeded run repeats exactly."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def seeded(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def randn(shape: Sequence[int], generator: torch.Generator, like: Tensor) -> Tensor:
    """Noise drawn on the CPU from `generator` (same draws on any device), moved next to `like`."""
    return torch.randn(tuple(shape), generator=generator).to(like.device, like.dtype)


def randint(high: int, n: int, generator: torch.Generator) -> list[int]:
    return torch.randint(high, (n,), generator=generator).tolist()
