"""Shipped base evaluations of the toy models: finished, deterministic work a fresh clone need not redo.

The main job (`scripts/toy_demo.py`) evaluates each toy model before erasing it. The toy weights are shipped and the
toy evaluation is deterministic, so that base evaluation is the same on every clone: its records (one JSON line
per image, detections and scores included) and its 32 px images (flagged ones blurred, as the harness saved them)
ship here, one folder per `eval.base_cache` key (`erase.cli.base_eval_dir`: weights fingerprint + settings hash).

The CLI asks the registry (`base_eval` kind) for a seed when a cache entry is empty and copies it in; the summary
and the report say "shipped" and name this folder. A seed is only offered when

- its key matches (other weights of the denoiser or text encoders, other evaluation settings, another concept give
  another key: nothing is found), and
- every weight file of the toy world (both pipelines, every component, and the detector) still has the sha256 the
  seed was built from (`seed.json` "inputs"): a rebuilt VAE, scheduler or detector makes the seed stale, and the
  evaluation is computed.

Code changes that alter generation without touching weights or settings are caught by
`tests/test_base_cache.py::test_shipped_base_items_recompute_to_the_shipped_records`, which regenerates a few
shipped items and compares them with the records. Rebuild after changing the toy world or its evaluation:

    python -m erase.toyworld.base_evals            # recomputes both base evaluations (~3 min each, one thread)
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("erase.toyworld")

SEED_ROOT = Path(__file__).resolve().parent / "base_evals"
# the main job's experiments, whose base evaluations ship (toy_editor_robust evaluates as toy_editor: same key)
EXPERIMENTS = ("toy_t2i", "toy_editor")
MANIFEST = "seed.json"
RECORDS = "parts/rank-0-of-1.jsonl"  # what the harness resumes from (one process)


def weight_hashes() -> dict[str, str]:
    """sha256 of every file of the shipped toy-world weights (pipelines and detector), by path under weights/."""
    from erase.card import sha256_file
    from erase.toyworld import weights_dir

    root = weights_dir()
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}


def shipped_base_eval(key: str) -> Path | None:
    """The shipped folder of finished base-evaluation work for `key` (an `eval.base_cache` key), or None when
    there is none or it is stale (a toy weight file changed since it was built; logged)."""
    folder = SEED_ROOT / key
    manifest = folder / MANIFEST
    if not manifest.is_file() or not (folder / RECORDS).is_file():
        return None
    about = json.loads(manifest.read_text())
    now = weight_hashes()
    changed = sorted(k for k in set(about.get("inputs", {})) | set(now) if about.get("inputs", {}).get(k) != now.get(k))
    if changed:
        log.warning("shipped base evaluation %s is stale (toy weights changed since it was built: %s); "
                    "computing it (rebuild: python -m erase.toyworld.base_evals)", key, ", ".join(changed[:4]))
        return None
    return folder


def _compose(exp: str, cache: Path):
    from hydra import compose, initialize_config_dir

    from erase.cli import CONFIGS

    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("config", overrides=[f"+experiment={exp}", f"eval.base_cache={cache}", "out_dir=unused"])


def build(experiments: tuple[str, ...] = EXPERIMENTS, work: Path | None = None) -> list[dict[str, Any]]:
    """Compute the base evaluations of `experiments` exactly as the CLI does and ship their records and images."""
    import torch
    from omegaconf import OmegaConf

    from erase.cli import base_eval_dir
    from erase.concept import Concept
    from erase.evaluation.config import evaluate_adapter
    from erase.evaluation.records import read_records
    from erase.run import load_model

    work = Path(work or tempfile.mkdtemp(prefix="erase-base-evals-"))
    built = []
    for exp in experiments:
        cfg = _compose(exp, work / "cache")
        model = OmegaConf.to_container(cfg.model, resolve=True)
        eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
        concept = Concept.from_config(OmegaConf.to_container(cfg.concept, resolve=True))
        adapter = load_model(model, cfg.precision, "cpu")
        folder = base_eval_dir(eval_cfg, adapter, concept, model, work / "out")
        t0 = time.time()
        result = evaluate_adapter(adapter, eval_cfg, folder, f"{model['name']} (base)", concept, baselines=True)
        seconds = time.time() - t0
        dest = SEED_ROOT / folder.name
        if dest.exists():
            shutil.rmtree(dest)
        (dest / "parts").mkdir(parents=True)
        shutil.copy2(folder / RECORDS, dest / RECORDS)
        if (folder / "images").is_dir():
            shutil.copytree(folder / "images", dest / "images")
        records = read_records(folder / RECORDS)
        about = {
            "experiment": exp, "model": model["name"], "path": str(model["path"]), "key": folder.name,
            "model_id": records[0]["settings"]["model"]["id"],  # the builder's pipeline path, rewritten on use
            "records": len(records), "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
            "built": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python -m erase.toyworld.base_evals",
            "versions": {"torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
            "inputs": weight_hashes(),
            "metrics": result["metrics"],
        }
        (dest / MANIFEST).write_text(json.dumps(about, indent=2, sort_keys=True) + "\n")
        log.warning("%s: %d records in %.0f s -> %s", exp, len(records), seconds, dest)
        built.append(about)
    keep = {b["key"] for b in built}
    if set(experiments) == set(EXPERIMENTS):  # a full rebuild drops seeds of keys no experiment has any more
        for old in SEED_ROOT.iterdir() if SEED_ROOT.is_dir() else ():
            if old.is_dir() and old.name not in keep:
                shutil.rmtree(old)
    return built


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", nargs="+", default=list(EXPERIMENTS))
    ap.add_argument("--work", default=None, help="scratch folder (default: a new temporary one)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for about in build(tuple(args.experiments), Path(args.work) if args.work else None):
        print(f"{about['experiment']}: {about['records']} records, {about['seconds']} s -> {SEED_ROOT / about['key']}")


if __name__ == "__main__":
    main()
