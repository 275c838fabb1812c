#!/usr/bin/env python
"""Build the toy world's weights from scratch: VAE, detector, text-to-image pipeline, editor.

    python scripts/build_toy_world.py                      # everything, into erase/toyworld/weights (~29 min, 2 cores)
    python scripts/build_toy_world.py --only t2i editor    # some parts (the others must already be in --out)
    python scripts/build_toy_world.py --out /tmp/tw --steps-scale 0.001   # smoke build in seconds
    python scripts/build_toy_world.py --only editor --out /tmp/ed --t2i erase/toyworld/weights/t2i
                                                           # an editor alone, from existing t2i weights

Each part's training is in erase/toyworld/training/ (one file per part); this script decides the order, the step
budgets, the threads (`ThreadGovernor`) and which part trains in a second process (`_Background`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs: never touch the hub

import torch  # noqa: E402

from erase.toyworld import weights_dir  # noqa: E402
from erase.toyworld.training import load_vae, train_detector, train_editor, train_t2i, train_vae  # noqa: E402
from erase.toyworld.training.editor import P_EXPOSED_SOURCE  # noqa: E402
from erase.toyworld.training.loop import THREADS  # noqa: E402


class ThreadGovernor:
    """Use THREADS threads while the cores are free, one while other processes keep them busy.

    Why: OpenMP threads spin-wait on each other; on an oversubscribed 2-core machine a 2-thread training step
    was measured at 10-25 s instead of 0.2 s, while 1 thread stayed at 0.3-0.4 s. Call `step()` once per
    training step. With one thread, the CPU time other processes use (/proc/stat minus ours) is reliable, so
    it goes up to THREADS when enough cores are free; with THREADS threads it goes back to one when steps get
    much slower than the best seen, or when others clearly use the cores.
    """

    def __init__(self, max_threads: int = THREADS, window: int = 10) -> None:
        self.max, self.window = max_threads, window
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.best: float | None = None  # fastest median step time seen with max threads
        self.times: list[float] = []
        self.last = time.monotonic()
        self.mark = self._sample()
        self._set(1 if self.max > 1 and self.mark is not None else self.max)

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(CPU seconds the whole machine was busy, our own CPU seconds, wall clock)."""
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:8]]
        except (OSError, ValueError):
            return None  # not Linux: keep the fixed thread count
        t = os.times()
        busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        return busy, t.user + t.system, time.monotonic()

    def _set(self, n: int) -> None:
        self.threads = n
        torch.set_num_threads(n)

    def step(self) -> None:
        now = time.monotonic()
        self.times.append(now - self.last)
        self.last = now
        if self.max <= 1 or self.mark is None or len(self.times) < self.window:
            return
        median = sorted(self.times)[len(self.times) // 2]
        self.times = []
        sample = self._sample()
        if sample is None:
            return
        busy, own, wall = (a - b for a, b in zip(sample, self.mark))
        self.mark = sample
        free = self.cores - max(0.0, busy - own) / max(wall, 1e-3)  # cores other processes left free
        if self.threads == 1:
            if free >= self.max - 0.3:
                self._set(self.max)
        else:
            self.best = median if self.best is None else min(self.best, median)
            if median > 1.5 * self.best or free < self.max - 0.7:
                self._set(1)


STEPS = {"vae": 700, "detector": 500, "t2i": 3600, "editor": 3200}
PARTS = ("vae", "detector", "t2i", "editor")  # build order: the detector mixes in VAE reconstructions


def _scaled(part: str, scale: float) -> int:
    return max(1, round(STEPS[part] * scale))


def _data_scale(scale: float) -> float:
    """Tiny step scales (tests) also shrink the datasets, so a smoke build takes seconds."""
    return min(1.0, max(scale, 0.01))


def _build_part(part: str, out: Path, steps_scale: float, seed: int, t2i: Path | None = None,
                p_exposed_source: float = P_EXPOSED_SOURCE) -> None:
    ds = _data_scale(steps_scale)
    if part == "vae":
        train_vae(out / "vae", steps=_scaled("vae", steps_scale), seed=seed, n_images=max(256, int(12_000 * ds)),
                  pace=ThreadGovernor)
    elif part == "detector":
        vae = load_vae(out) if ((out / "vae").exists() or (out / "t2i").exists()) else None
        train_detector(out / "detector.safetensors", steps=_scaled("detector", steps_scale), seed=seed,
                       vae=vae, n_images=max(256, int(16_000 * ds)), pace=ThreadGovernor)
    elif part == "t2i":
        train_t2i(out / "t2i", load_vae(out), steps=_scaled("t2i", steps_scale), seed=seed,
                  n_images=max(256, int(20_000 * ds)), pace=ThreadGovernor)
    elif part == "editor":
        train_editor(out / "editor", t2i or out / "t2i", steps=_scaled("editor", steps_scale), seed=seed,
                     n_triplets=max(256, int(14_000 * ds)), pace=ThreadGovernor, p_exposed_source=p_exposed_source)


def _build_part_logged(part: str, out: Path, steps_scale: float, seed: int, log: Path) -> None:
    """`_build_part` in a child process, its output (progress bars included) to `log`."""
    import sys

    with open(log, "w", buffering=1) as f:
        sys.stdout = sys.stderr = f
        _build_part(part, out, steps_scale, seed)


class _Background:
    """One part trained in a second process while the parent trains another.

    Why: on 2 cores one process with two threads runs a step only ~1.5x faster than with one (small ops), so two
    one-thread processes get more done; each `ThreadGovernor` holds one thread while the other runs.
    """

    def __init__(self, part: str, out: Path, steps_scale: float, seed: int) -> None:
        import multiprocessing

        self.part, self.log, self.t0 = part, out / f"build-{part}.log", time.time()
        self.proc = multiprocessing.get_context("spawn").Process(
            target=_build_part_logged, args=(part, out, steps_scale, seed, self.log), daemon=True
        )
        self.proc.start()
        print(f"[build] {part} training in a second process (log: {self.log})", flush=True)

    def join(self) -> None:
        self.proc.join()
        text = self.log.read_text() if self.log.exists() else ""
        if self.proc.exitcode != 0:
            raise RuntimeError(f"building the {self.part} failed (exit code {self.proc.exitcode}); see {self.log}")
        # Its summary lines, without the progress bars.
        for line in text.replace("\r", "\n").splitlines():
            if line.strip() and "%|" not in line and not line.startswith("["):
                print(line)
        self.log.unlink()
        print(f"[build] {self.part} done in {time.time() - self.t0:.0f} s (second process)", flush=True)

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


def build(out: str | Path, steps_scale: float = 1.0, only: Sequence[str] | None = None, seed: int = 0,
          t2i: str | Path | None = None, p_exposed_source: float = P_EXPOSED_SOURCE) -> None:
    """Build the requested parts into `out` (weights layout of `erase.toyworld.weights_dir()`).

    `t2i`: the text-to-image folder the editor starts from (default `out`/t2i); `p_exposed_source`: the editor's
    share of exposed photos among background/object edits (`erase.toyworld.training.editor.P_EXPOSED_SOURCE`).

    The detector needs only the VAE, so when the text-to-image model is built too it trains beside it in a second
    process (both one thread; the text-to-image training takes the second thread back when the detector is done).
    """
    out = Path(out)
    parts = [p for p in PARTS if only is None or p in only]
    if t2i is not None:
        t2i = Path(t2i)
        if "t2i" in parts:
            raise ValueError("--t2i names the text-to-image weights the editor starts from; it cannot be combined "
                             "with building the t2i part (drop --t2i, or build with --only editor)")
        if not (t2i / "model_index.json").is_file():
            raise FileNotFoundError(f"--t2i {t2i}: no diffusers pipeline there (model_index.json missing); "
                                    "point it at a text-to-image folder such as erase/toyworld/weights/t2i")
    if "editor" in parts and "t2i" not in parts and not ((t2i or out / "t2i") / "model_index.json").is_file():
        raise FileNotFoundError(f"the editor starts from text-to-image weights, but {out / 't2i'} has none; "
                                "build t2i too or pass --t2i DIR")
    out.mkdir(parents=True, exist_ok=True)
    background: _Background | None = None
    try:
        for part in parts:
            if part == "detector" and "t2i" in parts:
                background = _Background(part, out, steps_scale, seed)
                continue
            t0 = time.time()
            _build_part(part, out, steps_scale, seed, t2i=t2i, p_exposed_source=p_exposed_source)
            print(f"[build] {part} done in {time.time() - t0:.0f} s", flush=True)
            if part == "t2i":
                if background is not None:  # it reads the standalone VAE, deleted next
                    background.join()
                    background = None
                # The t2i folder now carries the VAE; the standalone copy would only add to the shipped size.
                shutil.rmtree(out / "vae", ignore_errors=True)
    finally:
        if background is not None:
            background.kill()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(weights_dir()), help="output folder (default: the package weights dir)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every step count (tiny for tests)")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="build only these parts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--t2i", help="text-to-image folder the editor starts from (default: OUT/t2i)")
    ap.add_argument("--p-exposed-source", type=float, default=P_EXPOSED_SOURCE,
                    help="editor: share of already-exposed photos among background/object edits "
                         f"(default {P_EXPOSED_SOURCE}; 0 = the earlier clothed-only editor)")
    args = ap.parse_args(argv)
    t0 = time.time()
    build(args.out, steps_scale=args.steps_scale, only=args.only, seed=args.seed, t2i=args.t2i,
          p_exposed_source=args.p_exposed_source)
    print(f"[build] all done in {time.time() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
