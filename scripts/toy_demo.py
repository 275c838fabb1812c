"""The README's main job: erase the exposed concept from both toy models, evaluate before and after, compare.

    python scripts/toy_demo.py                  # text-to-image model and editing model, ~10 minutes on 2 CPU cores
    python scripts/toy_demo.py --quick          # smaller evaluation, for a first look
    python scripts/toy_demo.py --attacks        # plus every attack against base and erased models

Runs the `experiment/toy_t2i` and `experiment/toy_editor` configs through the same entry point as `erase`,
then prints one table and writes a leaderboard page. Everything lands in outputs/toy-demo/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from erase.cli import CONFIGS, comparison_rows, leaderboard, run_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/toy-demo")
    ap.add_argument("--quick", action="store_true", help="fewer evaluation items")
    ap.add_argument("--experiments", nargs="+", default=["toy_t2i", "toy_editor"])
    ap.add_argument("--attacks", action="store_true", help="also run every attack (eval=toy_attacks)")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    rows, summaries = [], {}
    for exp in args.experiments:
        overrides = [f"+experiment={exp}", f"out_dir={out / exp}", *(["eval=toy_attacks"] if args.attacks else []),
                     *args.overrides]
        if args.quick:
            overrides += ["eval.suites.prompts.n=16", "eval.suites.edits.n_photos=6", "eval.suites.utility.n_prompts=12", "eval.suites.benign-edits.n_edits_per_kind=2"]
        with initialize_config_dir(str(CONFIGS), version_base=None):
            cfg = compose("config", overrides=overrides)
        print(f"\n=== {exp}: {cfg.model.name}, method {cfg.method.name} ===", flush=True)
        summary = run_task(cfg)
        summaries[exp] = summary
        rows += [{"run": exp, **r} for r in comparison_rows(summary)]
    board = leaderboard(out, out)
    (out / "demo.json").write_text(json.dumps(rows, indent=2))
    tables = side_by_side(summaries)
    (out / "comparison.md").write_text(tables)
    print("\n" + tables)
    print(f"\nall runs: {len(args.experiments)} in {(time.time() - t0) / 60:.1f} min; leaderboard: {board['page']}")


def side_by_side(summaries: dict[str, dict]) -> str:
    """One markdown table per base model: a row per metric, the base model's column, then one column per run."""
    by_model: dict[str, list[str]] = {}
    for exp, s in summaries.items():
        by_model.setdefault(s["model"], []).append(exp)
    out = []
    for model, exps in by_model.items():
        base = summaries[exps[0]].get("base", {}).get("metrics", {})
        erased = {e: summaries[e].get("erased", {}).get("metrics", {}) for e in exps}
        keys = sorted(set(base).union(*erased.values()))
        out.append(f"{model}\n\n| metric | base | " + " | ".join(exps) + " |\n|---|---|" + "---|" * len(exps))
        for k in keys:
            cells = [_pct(base.get(k))] + [_pct(erased[e].get(k)) for e in exps]
            out.append(f"| {k} | " + " | ".join(cells) + " |")
        secs = [f"{summaries[e].get('erasure', {}).get('seconds', '-')}" for e in exps]
        out.append("| erasure time (s) | - | " + " | ".join(secs) + " |\n")
    return "\n".join(out)


def _pct(x) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "-"


if __name__ == "__main__":
    main()
