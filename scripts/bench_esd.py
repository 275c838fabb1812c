"""Benchmark: what an ESD step costs, against the passes it contains and against the reference's naive loop.

From one run it prints
  - the time of each pass (frozen forward, trained forward+backward, optimiser step, trajectory sampling),
  - the measured step time against the sum of the passes the step contains (overhead of the loop),
  - steps/s of `trajectory_mode=reuse` against `naive` (a fresh frozen trajectory every step, as the reference).

    python scripts/bench_esd.py                 # the toy model if built, else a tiny sd1
    python scripts/bench_esd.py --model tiny:sd1 --steps 40
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from erase.concept import Concept
from erase.methods.base import Original
from erase.methods.esd import ESD
from erase.run import load_model
from erase.training import TrainConfig, train


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="toy:t2i, tiny:<family> or a pipeline path")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--num-steps", type=int, default=20, help="DDIM steps of each frozen trajectory")
    ap.add_argument("--refresh-every", type=int, default=16)
    ap.add_argument("--trajectories", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    path = args.model
    if path is None:
        from erase import toyworld

        path = "toy:t2i" if toyworld.t2i_path().exists() else "tiny:sd1"
    model = {"path": path, "size": 32}
    concept = Concept(id="bench", prompts=["a shirtless person"])
    esd = dict(variant="esd-u", num_steps=args.num_steps, batch_size=1)

    # -- the passes one step contains -----------------------------------------------------------
    a = load_model(model)
    x = torch.randn(a.latent_shape(1))
    t = torch.tensor([500])
    with torch.no_grad():
        cond = a.encode_prompts(concept.prompts)
    frozen = a.frozen_copy()
    params = a.set_trainable("non-xattn")
    opt = torch.optim.AdamW(params, lr=1e-5)
    with torch.no_grad():
        fwd = timed(lambda: a.predict(x, t, cond, denoiser=frozen), 20)
        cfg_fwd = timed(lambda: a.predict(torch.cat([x, x]), t, type(cond).cat([cond, cond]), denoiser=frozen), 20)

    def fwd_bwd():
        a.predict(x, t, cond).float().pow(2).mean().backward()

    fb = timed(fwd_bwd, 20)
    step = timed(lambda: (opt.step(), opt.zero_grad()), 20)
    probe = ESD(trajectories=args.trajectories, **esd)
    probe.setup(a, concept, Original(a, lora=False), seed=0)
    refresh = timed(lambda: probe._sample(args.trajectories, torch.Generator().manual_seed(0)), 2)
    traj_per_step = refresh / args.refresh_every
    contained = 2 * fwd + fb + step + traj_per_step

    # -- the real loop, both ways ---------------------------------------------------------------
    rates = {}
    for mode in ("reuse", "naive"):
        a = load_model(model)
        m = ESD(trajectory_mode=mode, trajectories=args.trajectories, refresh_every=args.refresh_every, **esd)
        with tempfile.TemporaryDirectory() as d:
            r = train(m, a, concept, TrainConfig(steps=args.steps, lr=1e-5, cpu=True, max_grad_norm=None), d)
        rates[mode] = r.steps / r.seconds

    print(f"model {path}, {args.steps} steps, trajectories of {args.num_steps} DDIM steps")
    print(f"  frozen forward (batch 1)          {fwd * 1e3:8.2f} ms")
    print(f"  frozen CFG forward (batch 2)      {cfg_fwd * 1e3:8.2f} ms")
    print(f"  trained forward+backward          {fb * 1e3:8.2f} ms")
    print(f"  optimiser step                    {step * 1e3:8.2f} ms")
    print(f"  trajectory sampling per step      {traj_per_step * 1e3:8.2f} ms (amortised over {args.refresh_every} steps)")
    print(f"  sum of contained passes           {contained * 1e3:8.2f} ms")
    print(f"  measured step (reuse)             {1e3 / rates['reuse']:8.2f} ms  -> step / passes = {1 / rates['reuse'] / contained:.2f}")
    print(f"  steps/s reuse {rates['reuse']:.2f} vs naive {rates['naive']:.2f}  -> speed-up {rates['reuse'] / rates['naive']:.1f}x")


if __name__ == "__main__":
    main()
