"""Cost per training step of each robustness term (erase.methods.robust): the CPU time of one step (loss +
backward) with the term on, divided by the time with every term off, on a tiny model of each method's family with
the recipes' trained group (cross-attention) frozen as training freezes it; the variants' steps are interleaved.

    OMP_NUM_THREADS=1 python scripts/bench_robust.py [--steps 6] [--families sd1,ip2p]

Terms are on at every step here (`every: 1`); with `every: k` a term costs 1/k of its ratio minus one on average.
Tiny random models: the ratios measure how many extra forward/backward passes a term adds, not the toy's seconds.
`relearn` is the default group "all" (the simulated attacker steps every denoiser weight, as the relearning attack
does); `relearn-trained` steps the method's trained parameters only (ESD: cross-attention; edit refusal: its group).
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
    # the main job's editor recipe: the photo's exposed counterpart, no PGD
    "image-counterpart": {"weight": 1.0, "every": 1, "steps": 0, "eps": 1.0, "start": "counterpart"},
    "doors": {"weight": 1.0, "words": ["shirt", "top"]},
    "relearn": {"weight": 1.0, "every": 1, "inner_steps": 2},  # group "all" (the default): every weight stepped
    "relearn-trained": {"weight": 1.0, "every": 1, "inner_steps": 2, "group": "trained"},  # the trained ones only
}


def stepper(family: str, robust: dict):
    """One training step (loss + backward) of a method with these terms, as a callable of the step number."""
    a = DiffusionAdapter(tiny_pipeline(family))
    a.default_size = 32
    editor = family in ("ip2p", "sd-inpaint", "kontext")
    # the toy recipes' trained groups (ESD-x and experiment/toy_editor: cross-attention), frozen as training does
    m = EditRefusal(photos={"source": "toy", "n": 8}, batch_size=4, group="xattn", robust=robust) if editor else \
        ESD(num_steps=4, trajectories=4, batch_size=4, robust=robust)
    a.set_trainable(m.group)
    m.setup(a, CONCEPT, Original(a, lora=False), 0)

    def run(step: int) -> float:
        start = time.process_time()  # CPU time of this (one-thread) process: less sensitive to the other jobs' load
        loss, _ = m.loss(a.denoiser, step, torch.Generator().manual_seed(step))
        loss.backward()
        a.denoiser.zero_grad(set_to_none=True)
        return time.process_time() - start

    run(0)  # the first step fills ESD's pool: not counted
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--families", default="sd1,ip2p")
    args = ap.parse_args()
    torch.manual_seed(0)
    median = lambda xs: sorted(xs)[len(xs) // 2]
    for family in args.families.split(","):
        terms = {n: p for n, p in TERMS.items() if not n.startswith("image") or family in ("ip2p", "sd-inpaint", "kontext")}
        runs = {"off": stepper(family, {}), **{n: stepper(family, {n.split("-")[0]: p}) for n, p in terms.items()}}
        times = {n: [] for n in runs}
        for step in range(1, args.steps + 1):  # interleaved: a change in load hits every variant alike
            for n, run in runs.items():
                times[n].append(run(step))
        off = median(times["off"])
        print(f"{family}: step with every term off {off * 1000:.0f} ms CPU (median of {args.steps}, interleaved)")
        for n in terms:
            print(f"  {n:<16} x{median(times[n]) / off:.2f}")

if __name__ == "__main__":
    main()
