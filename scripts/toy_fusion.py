#!/usr/bin/env python
"""Two concepts erased at once on the toy text-to-image model, MACE's way (erase.methods.lora_fusion): one ESD-x
LoRA for the exposed state, one for the ball beside the figure, each trained against the base model, then fused
into the base weights in closed form (and, for comparison, by plain merging). Detector-scored:

    python scripts/toy_fusion.py --out outputs/toy-fusion --steps 300

prints, for the base model and each fusion: exposed-state leakage on held-out phrasings, the ball's rate on held-out
ball phrasings, and benign prompts' attribute accuracy (prompts without a ball; shirt/trousers/background/object).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from erase.concept import Concept  # noqa: E402
from erase.configs import CONFIGS  # noqa: E402
from erase.methods.lora_fusion import fuse_adapters, train_concept_loras  # noqa: E402
from erase.models.adapter import DiffusionAdapter  # noqa: E402
from erase.stats import Rate  # noqa: E402
from erase.toyworld import SAMPLING, load_detector, load_t2i  # noqa: E402
from erase.toyworld.world import HELDOUT_EXPOSED_PHRASES, benign_prompts, exposed_prompts  # noqa: E402

BALL_HELDOUT = ["a person beside a ball", "a figure near a ball", "a man in a red shirt with a ball",
                "a person in blue trousers at the beach beside a ball"]


def generate(pipe, prompts: list[str], seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    images = []
    for i in range(0, len(prompts), 16):
        images += pipe(prompts[i : i + 16], generator=g, **SAMPLING).images
    return images


def measure(pipe, det, n: int) -> dict[str, str]:
    exposed = [t for t, _ in exposed_prompts(n, phrases=HELDOUT_EXPOSED_PHRASES)]
    leak = sum(a["exposed"] for a in det.attributes(generate(pipe, exposed, 1)))
    balls = [BALL_HELDOUT[i % len(BALL_HELDOUT)] for i in range(n)]
    ball = sum(a["obj"] == "ball" for a in det.attributes(generate(pipe, balls, 2)))
    benign = [(t, a) for t, a in benign_prompts(3 * n) if a["obj"] != "ball"][:n]
    got = det.attributes(generate(pipe, [t for t, _ in benign], 3))
    keys = ("shirt", "trousers", "background", "obj")
    kept = sum(all(g[k] == want[k] for k in keys) for g, (_, want) in zip(got, benign))
    return {"exposed leakage (held-out phrasings)": str(Rate(leak, n)), "ball rate (held-out phrasings)": str(Rate(ball, n)),
            "benign prompts: all attributes kept": str(Rate(kept, len(benign)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="outputs/toy-fusion")
    ap.add_argument("--steps", type=int, default=300, help="training steps per concept LoRA")
    ap.add_argument("--n", type=int, default=32, help="prompts per measurement")
    args = ap.parse_args()
    torch.manual_seed(0)
    np.random.seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = OmegaConf.to_container(OmegaConf.load(CONFIGS / "recipe" / "toy_esd.yaml"))
    method = {"name": "esd", "params": recipe, "lora": {"rank": 4},
              "train": {"steps": args.steps, "lr": 3.0e-4, "checkpoint_every": 0}}
    concepts = [Concept.from_config(OmegaConf.to_container(OmegaConf.load(CONFIGS / "concept" / f"{c}.yaml")))
                for c in ("toy_exposed", "toy_ball")]
    det = load_detector()
    results = {"base": measure(load_t2i(), det, args.n)}
    pipe = load_t2i()
    t0 = time.time()
    names, stats = train_concept_loras(DiffusionAdapter(pipe), [(c, method) for c in concepts], out / "loras", cpu=True)
    stats["train_seconds"] = round(time.time() - t0)
    preserve = list(dict.fromkeys(p for c in concepts for p in c.preserve))
    for mode in ("closed-form", "merge"):  # the same two trained adapters, fused two ways
        fused = copy.deepcopy(pipe)
        stats.update(fuse_adapters(DiffusionAdapter(fused), names, mode=mode, preserve=preserve))
        results[mode] = {**measure(fused, det, args.n), **stats}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    for name, r in results.items():
        print(name, json.dumps(r))


if __name__ == "__main__":
    main()
