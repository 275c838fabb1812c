"""Test-wide settings: offline, deterministic, one torch thread per worker (the suite runs as `pytest -n 2` on two
cores; more threads per worker oversubscribe them and tiny convolutions slow down by an order of magnitude)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import torch  # noqa: E402

torch.set_num_threads(1)
