"""Benchmark: ESD's default (pooled frozen states and predictions) against the reference's loop, at equal leakage.

From one run on one model it prints
  - steps/s of the reference-style loop (`trajectory_mode=naive`: a fresh frozen trajectory to a random step for
    every sample, then the frozen predictions there, as rohitgandikota/erasing esd_sd.py) and of erase's default
    (`reuse`: states and frozen predictions pooled, drawn without replacement),
  - the training wall time each needs to bring held-out leakage to the target (toy model: the share of images of
    held-out exposed phrasings the toy detector reads as exposed, n prompts, with its 95% interval),
  - the default's steady-state step against the sum of the passes it contains (trained forward+backward over the
    erase/preserve/anchor rows, optimiser step, the pool's sampling amortised over the steps that spend it).

    python scripts/bench_esd.py                           # toy model, the toy_esd recipe, target 5% leakage
    python scripts/bench_esd.py --model tiny:sd1 --max-steps 40   # no detector: rates and pass times only

Both loops run the same objective, hyperparameters, batch and seed; only where x_t and the frozen predictions
come from differs. Evaluation time is excluded from the training wall times.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from erase.concept import Concept
from erase.methods.base import Original
from erase.methods.esd import ESD
from erase.models.adapter import Conditioning
from erase.run import load_model
from erase.stats import Rate

RECIPE = dict(variant="esd-x", eta=5.0, eta_convention="original", loss_weighting="x0", uncond_weight=1.0,
              preserve_weight=1.0, num_steps=10, start_guidance=4.0, batch_size=8, trajectories=64)


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


class Leakage:
    """Held-out exposed prompts sampled with the toy world's settings and read by the toy detector."""

    def __init__(self, n: int):
        from erase import toyworld
        from erase.toyworld import world

        self.det = toyworld.load_detector()
        self.prompts = [p for p, _ in world.exposed_prompts(n, phrases=world.HELDOUT_EXPOSED_PHRASES)]
        self.steps, self.guidance = toyworld.SAMPLING["num_inference_steps"], toyworld.SAMPLING["guidance_scale"]

    @torch.no_grad()
    def __call__(self, a) -> Rate:
        from PIL import Image

        n = len(self.prompts)
        x = a.sample(a.encode_prompts(self.prompts), a.encode_prompts([""]).repeat(n), self.steps, self.guidance,
                     generator=torch.Generator().manual_seed(1234))
        pixels = (a.decode_latents(x).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")
        found = self.det.attributes([Image.fromarray(p) for p in pixels])
        return Rate(sum(bool(f["exposed"]) for f in found), n)


def run(mode: str, model: dict, concept: Concept, args, leakage: Leakage | None, max_steps: int | None = None) -> dict:
    """Train with `mode` until leakage <= target (or max steps); training seconds exclude evaluation."""
    a = load_model(model)
    m = ESD(trajectory_mode=mode, **{**RECIPE, "batch_size": args.batch_size})
    params = a.set_trainable(m.group)
    m.setup(a, concept, Original(a, lora=False), seed=0)
    opt = torch.optim.AdamW(params, lr=args.lr)
    trained, history, reached, times = 0.0, [], None, []
    for step in range(max_steps or args.max_steps):
        t0 = time.perf_counter()
        loss, _ = m.loss(a.denoiser, step, torch.Generator().manual_seed(step))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        trained += times[-1]
        if leakage is not None and (step + 1) % args.eval_every == 0:
            rate = leakage(a)
            history.append((step + 1, trained, rate))
            print(f"  {mode:5s} step {step + 1:4d}  {trained:7.1f} s  leakage {rate}", flush=True)
            if rate.k / rate.n <= args.target:
                reached = (step + 1, trained, rate)
                break
    steady = sorted(times)[len(times) // 2]  # the median step: no pool is sampled in it
    return {"steps": step + 1, "seconds": trained, "rate": (step + 1) / trained, "steady": steady, "reached": reached,
            "history": history}


def passes(model: dict, concept: Concept, args) -> dict[str, float]:
    """Time of each pass a steady-state default step contains."""
    a = load_model(model)
    m = ESD(**{**RECIPE, "batch_size": args.batch_size})
    params = a.set_trainable(m.group)
    m.setup(a, concept, Original(a, lora=False), seed=0)
    opt = torch.optim.AdamW(params, lr=args.lr)
    s = m._draw(0, torch.Generator().manual_seed(0))
    rows = 1 + len(m.regulariser_rows(s))
    x, t = torch.cat([s.x_t] * rows), torch.cat([s.t] * rows)
    cond = Conditioning.cat([m.cond.select(s.which)] * rows)

    def fwd_bwd():
        a.predict(x, t, cond).float().pow(2).mean().backward()

    out = {"trained forward+backward": timed(fwd_bwd, 10), "optimiser step": timed(lambda: (opt.step(), opt.zero_grad()), 10)}
    pool = timed(lambda: m._sample(m.trajectories, torch.Generator().manual_seed(0)), 1)
    out["pool sampling (amortised)"] = pool / max(1, m.trajectories * m.num_steps // m.batch_size)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="toy:t2i (default when built), tiny:<family> or a pipeline path")
    ap.add_argument("--target", type=float, default=0.05, help="held-out leakage to reach")
    ap.add_argument("--n", type=int, default=48, help="held-out prompts per leakage measurement")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--max-steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = args.model
    if path is None:
        from erase import toyworld

        path = "toy:t2i" if toyworld.t2i_path().exists() else "tiny:sd1"
    model = {"path": path, "size": 32}
    concept = Concept(id="bench", prompts=["a shirtless person"], preserve=[
        "a person in a red shirt", "a person in a blue shirt and black trousers", "a figure wearing a green shirt in the park"])
    leakage = Leakage(args.n) if path.startswith("toy") else None
    if leakage is not None:
        print(f"base model: held-out leakage {leakage(load_model(model))}", flush=True)
    results = {"reuse": run("reuse", model, concept, args, leakage)}
    # the reference-style loop gets the default's step count and half as much again to reach the same leakage
    cap = int(1.5 * results["reuse"]["steps"]) if results["reuse"]["reached"] else None
    results["naive"] = run("naive", model, concept, args, leakage, max_steps=cap)
    parts = passes(model, concept, args)

    print(f"\nmodel {path}, {torch.get_num_threads()} threads, batch {args.batch_size}, recipe {RECIPE}")
    for name, sec in parts.items():
        print(f"  {name:32s} {sec * 1e3:8.2f} ms")
    contained = sum(parts.values())
    steady = results["reuse"]["steady"] + parts["pool sampling (amortised)"]
    print(f"  {'sum of contained passes':32s} {contained * 1e3:8.2f} ms")
    print(f"  {'measured default step':32s} {steady * 1e3:8.2f} ms (median step + amortised pool) -> step / passes = "
          f"{steady / contained:.2f}")
    r, n = results["reuse"], results["naive"]
    print(f"  steps/s over the whole run (pools included): default {r['rate']:.2f}, reference-style {n['rate']:.2f} "
          f"-> {r['rate'] / n['rate']:.1f}x per step")
    if leakage is not None:
        for mode, res in results.items():
            got = res["reached"]
            print(f"  {mode:5s}: " + (f"leakage {got[2]} after {got[0]} steps, {got[1]:.1f} s of training" if got
                                      else f"did not reach {args.target:.0%} in {res['steps']} steps ({res['seconds']:.1f} s)"))
        if r["reached"] and n["reached"]:
            print(f"  wall time to {args.target:.0%} held-out leakage: default {r['reached'][1]:.1f} s, reference-style "
                  f"{n['reached'][1]:.1f} s -> {n['reached'][1] / r['reached'][1]:.1f}x")


if __name__ == "__main__":
    main()
