"""Cost per training step of each robustness term (erase.methods.robust): the time of one step (loss + backward)
with the term on, divided by the time with every term off, on a tiny model of each method's family.

    OMP_NUM_THREADS=1 python scripts/bench_robust.py [--steps 6] [--families sd1,ip2p]

Terms are on at every step here (`every: 1`); with `every: k` a term costs 1/k of its ratio minus one on average.
Tiny random models: the ratios measure how many extra forward/backward passes a term adds, not the toy's seconds.
"""

from __future__ import annotations

import argparse
import time

import torch

from erase.concept import Concept
from erase.methods.base import Original
from erase.methods.edit_refusal import EditRefusal
from erase.methods.esd import ESD
from erase.models.adapter import DiffusionAdapter
from erase.models.tiny import tiny_pipeline

CONCEPT = Concept(id="toy", prompts=["a shirtless person"], anchor="a person", preserve=["a person in a red shirt"],
                  forbidden_edits=["take off the shirt"], benign_edits=["make the shirt blue"])
TERMS = {
    "embedding": {"weight": 1.0, "every": 1, "steps": 3},
    "image": {"weight": 1.0, "every": 1, "steps": 3},
    "doors": {"weight": 1.0, "words": ["shirt", "top"]},
    "relearn": {"weight": 1.0, "every": 1, "inner_steps": 2},
}


def step_seconds(family: str, robust: dict, steps: int) -> float:
    a = DiffusionAdapter(tiny_pipeline(family))
    a.default_size = 32
    editor = family in ("ip2p", "sd-inpaint", "kontext")
    m = EditRefusal(photos={"source": "toy", "n": 8}, batch_size=4, robust=robust) if editor else \
        ESD(num_steps=4, trajectories=4, batch_size=4, robust=robust)
    m.setup(a, CONCEPT, Original(a, lora=False), 0)
    times = []
    for step in range(steps + 1):  # the first step fills ESD's pool: not counted
        start = time.perf_counter()
        loss, _ = m.loss(a.denoiser, step, torch.Generator().manual_seed(step))
        loss.backward()
        a.denoiser.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]  # median


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--families", default="sd1,ip2p")
    args = ap.parse_args()
    torch.manual_seed(0)
    for family in args.families.split(","):
        off = step_seconds(family, {}, args.steps)
        print(f"{family}: step with every term off {off * 1000:.0f} ms (median of {args.steps})")
        for name, params in TERMS.items():
            if name == "image" and family not in ("ip2p", "sd-inpaint", "kontext"):
                continue
            on = step_seconds(family, {name: params}, args.steps)
            print(f"  {name:<10} x{on / off:.2f}")


if __name__ == "__main__":
    main()
