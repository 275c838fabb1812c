"""Benchmark: the evaluation harness's images/s against a bare pipeline call on the same images and settings.

The harness (erase.evaluation.harness.evaluate) generates a prompt suite in batches, runs the detector, writes one
JSONL record per image (and the blurred image files), resumably. The bare call is the diffusers pipeline on the
same prompts, per-image seeds, steps, guidance, size and batch size, with nothing else. The ratio is what the
bookkeeping costs; the detector's own time is printed apart.

    python scripts/bench_eval.py                 # toy text-to-image model, 48 held-out prompts, batches of 16
    python scripts/bench_eval.py --n 96 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from erase import toyworld
    from erase.evaluation.harness import evaluate
    from erase.toyworld import evaluation as toy_eval

    pipe = toyworld.load_t2i()
    pipe.set_progress_bar_config(disable=True)
    detector = toyworld.load_detector()
    suite = toy_eval.prompt_suite(n=args.n)  # held-out phrasings
    settings = toy_eval.settings()
    prompts = [p.text for p in suite.prompts]

    def bare() -> tuple[float, list]:
        t0 = time.perf_counter()
        for i in range(0, len(prompts), args.batch_size):
            chunk = prompts[i : i + args.batch_size]
            gens = [torch.Generator().manual_seed(i + j) for j in range(len(chunk))]
            images = pipe(chunk, generator=gens, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                          height=settings.height, width=settings.width).images
        return time.perf_counter() - t0, images

    def harness() -> float:
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            evaluate(pipe, [suite], detector, ["toy"], d, settings=settings, batch_size=args.batch_size, progress=False)
            return time.perf_counter() - t0

    bare()  # warm-up (first-call allocations)
    t_bare, images = bare()
    t0 = time.perf_counter()
    detector.detect(images)
    t_det = (time.perf_counter() - t0) * len(prompts) / len(images)
    t_cold = harness()  # first call: the model fingerprint and pipeline set-up a run pays once
    t_harness = harness()
    n = len(prompts)
    print(f"{n} images, batch {args.batch_size}, {settings.steps} steps, guidance {settings.guidance}, "
          f"{torch.get_num_threads()} threads")
    print(f"  bare pipeline   {n / t_bare:6.2f} images/s ({t_bare:.1f} s)")
    print(f"  detector alone  {t_det:6.2f} s for all images")
    print(f"  harness, first  {n / t_cold:6.2f} images/s ({t_cold:.1f} s, with the once-per-run set-up)")
    print(f"  harness         {n / t_harness:6.2f} images/s ({t_harness:.1f} s: generation, detector, records, images)")
    print(f"  harness / bare  {t_bare / t_harness:6.1%}   (first call {t_bare / t_cold:.1%}; bare + detector alone: "
          f"{t_bare / (t_bare + t_det):.1%})")


if __name__ == "__main__":
    main()
