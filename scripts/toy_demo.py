"""The README's main job: erase the exposed concept from both toy models, evaluate before and after, compare.

    python scripts/toy_demo.py                  # text-to-image model and editing model, ~6 minutes on 2 CPU cores
    python scripts/toy_demo.py --quick          # smaller evaluation, for a first look
    python scripts/toy_demo.py --attacks        # plus every attack against base and erased models

Runs the `experiment/toy_t2i` and `experiment/toy_editor_robust` configs (the editor recipe with the robustness
terms that measured best, docs/robustness.md) through the same entry point as `erase`, then prints one table and
writes a leaderboard page. Everything lands in outputs/toy-demo/.

With several experiments and cores, the experiments after the first run at the same time in child processes, one
thread each, their logs in OUT/<experiment>.log: the toy models' small batches gain only ~1.3x from a second thread,
so two one-thread runs side by side finish sooner than two two-thread runs in turn. The children start before this
process imports torch and the models (the editor, the longest run, gains those seconds).

The base models' evaluations come from `eval.base_cache` (outputs/base-evals): the toy world ships them
(erase/toyworld/base_evals.py), so a fresh clone does not recompute them; the table says where they came from.
Every rate in comparison.md carries n and its 95% Wilson interval.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# torch, hydra and erase are imported after the child processes start (main): they take seconds to import.


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/toy-demo")
    ap.add_argument("--quick", action="store_true", help="fewer evaluation items")
    ap.add_argument("--experiments", nargs="+", default=["toy_t2i", "toy_editor_robust"])
    ap.add_argument("--attacks", action="store_true", help="also run every attack (eval=toy_attacks)")
    ap.add_argument("--jobs", type=int, default=min(2, len(os.sched_getaffinity(0))),
                    help="experiments run at once (one thread each when more than one)")
    ap.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # child processes of --jobs
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    args = ap.parse_args()
    out = Path(args.out)
    t0 = time.time()
    summaries: dict[str, dict] = {}
    children: dict[str, subprocess.Popen] = {}
    if args.jobs > 1 and len(args.experiments) > 1:
        out.mkdir(parents=True, exist_ok=True)
        os.environ["OMP_NUM_THREADS"] = "1"  # this process too (read when torch is imported, just below)
        for exp in args.experiments[1 : args.jobs]:
            cmd = [sys.executable, __file__, "--out", str(out), "--experiments", exp, "--jobs", "1", "--no-report",
                   *(["--quick"] if args.quick else []), *(["--attacks"] if args.attacks else []), *args.overrides]
            with open(out / f"{exp}.log", "w") as log:  # the child keeps its own copy of the handle
                children[exp] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                 env={**os.environ, "OMP_NUM_THREADS": "1"})
            print(f"{exp}: running alongside in process {children[exp].pid}, log {out / f'{exp}.log'}", flush=True)
    import torch

    if children:
        torch.set_num_threads(1)
    from erase.cli import leaderboard

    try:
        for exp in [e for e in args.experiments if e not in children]:
            summaries[exp] = run_experiment(exp, out, args)
    except BaseException:
        for child in children.values():
            child.kill()  # no orphaned runs when this one fails or is interrupted
        raise
    for exp, child in children.items():
        print(f"waiting for {exp} (log {out / f'{exp}.log'})", flush=True)
        if child.wait() != 0:
            raise SystemExit(f"{exp} failed (exit {child.returncode}): see {out / f'{exp}.log'}")
        summaries[exp] = json.loads((out / exp / "summary.json").read_text())
    if args.no_report:
        return
    summaries = {exp: summaries[exp] for exp in args.experiments}
    rows = [{"run": exp, "model": summary["model"], "row": label, "base": b, "erased": e}
            for exp, summary in summaries.items() for label, (b, e) in rate_rows(summary).items()]
    board = leaderboard(out, out)
    (out / "demo.json").write_text(json.dumps(rows, indent=2))  # every rate as {rate, k, n, ci95}
    tables = side_by_side(summaries)
    (out / "comparison.md").write_text(tables)
    print("\n" + tables)
    print(f"\nall runs: {len(args.experiments)} in {(time.time() - t0) / 60:.1f} min; leaderboard: {board['page']}")


def run_experiment(exp: str, out: Path, args: argparse.Namespace) -> dict:
    from hydra import compose, initialize_config_dir

    from erase.cli import CONFIGS, run_task

    overrides = [f"+experiment={exp}", f"out_dir={out / exp}", *(["eval=toy_attacks"] if args.attacks else []),
                 *args.overrides]
    if args.quick:
        overrides += ["eval.suites.prompts.n=16", "eval.suites.edits.n_photos=6", "eval.suites.utility.n_prompts=12",
                      "eval.suites.benign-edits.n_edits_per_kind=2"]
    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=overrides)
    print(f"\n=== {exp}: {cfg.model.name}, method {cfg.method.name} ===", flush=True)
    return run_task(cfg)


def rate_rows(summary: dict) -> dict[str, tuple[dict | None, dict | None]]:
    """{row label: (base record, erased record)} from the run's comparison (records {rate, k, n, ci95}):
    leakage per suite (and editing route), utility per suite and metric, attacks."""
    comp = summary.get("comparison") or {}
    rows: dict[str, tuple[dict | None, dict | None]] = {}
    for r in comp.get("leakage", []):
        route = f" [{r['route']}]" if r.get("route") not in (None, "all") else ""
        rows[f"leakage: {r['suite']}{route} ({r['protocol']})"] = (r["values"].get("base"), r["values"].get("erased"))
    for r in comp.get("utility", []):
        rows[f"utility: {r['suite']} {r['metric']}"] = (r["values"].get("base"), r["values"].get("erased"))
    for r in comp.get("attacks", []):
        proto = f" ({r['protocol']})" if r.get("protocol") else ""
        rows[f"attack: {r['attack']}{proto}"] = (r["values"].get("base"), r["values"].get("erased"))
    return rows


def side_by_side(summaries: dict[str, dict]) -> str:
    """One markdown table per base model: a row per measured rate, the base model's column, then one column per
    run; every rate as "k/n = rate [95% Wilson interval]" (erase.stats.Rate)."""
    from erase.cli import describe_base_source

    by_model: dict[str, list[str]] = {}
    for exp, s in summaries.items():
        by_model.setdefault(s["model"], []).append(exp)
    out = []
    for model, exps in by_model.items():
        rows = {e: rate_rows(summaries[e]) for e in exps}
        labels = list(dict.fromkeys(label for e in exps for label in rows[e]))
        out.append(f"{model}\n\n| rate (95% Wilson interval, n) | base | " + " | ".join(exps) + " |\n|---|---|"
                   + "---|" * len(exps))
        for label in labels:
            base = next((rows[e][label][0] for e in exps if label in rows[e] and rows[e][label][0]), None)
            cells = [_rate(base)] + [_rate(rows[e][label][1]) if label in rows[e] else "-" for e in exps]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        secs = [f"{summaries[e].get('erasure', {}).get('seconds', '-')}" for e in exps]
        out.append("| erasure time (s) | - | " + " | ".join(secs) + " |\n")
        sources = {describe_base_source(summaries[e].get("base", {}).get("source")) for e in exps}
        out.append("Base column: " + "; ".join(sorted(sources)) + ".\n")
    return "\n".join(out)


def _rate(record: dict | None) -> str:
    """'3.1% [0.6, 15.7] (n=32)' for a rate record; a number without a count is printed as a number."""
    from erase.stats import Rate

    if not isinstance(record, dict):
        return "-"
    if "k" in record and "n" in record:
        return str(Rate(int(record["k"]), int(record["n"])))
    value = record.get("rate", record.get("value"))
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


if __name__ == "__main__":
    main()
