#!/usr/bin/env python
"""Build the toy world's weights from scratch: VAE, detector, text-to-image pipeline, editor.

    python scripts/build_toy_world.py                      # everything, into erase/toyworld/weights (~29 min, 2 cores)
    python scripts/build_toy_world.py --only t2i editor    # some parts (the others must already be in --out)
    python scripts/build_toy_world.py --out /tmp/tw --steps-scale 0.001   # smoke build in seconds
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built from configs: never touch the hub

from erase.toyworld import weights_dir  # noqa: E402
from erase.toyworld.build import PARTS, build  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(weights_dir()), help="output folder (default: the package weights dir)")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every step count (tiny for tests)")
    ap.add_argument("--only", nargs="+", choices=PARTS, help="build only these parts")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    build(args.out, steps_scale=args.steps_scale, only=args.only, seed=args.seed)
    print(f"[build] all done in {time.time() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
