"""Attack success against budget for one optimising attack, erased model against its base, 95% intervals as bars.

    python scripts/attack_budget_curve.py --erased <run>/toy_t2i/export/pipeline --out /work/runs/attack/curve

runs the attack (default: the embedding-space attack, budget = its Adam `steps`) at each budget on the erased
model and on the base (`--base`, default the toy text-to-image model), through the evaluation engine with the
toy attack configuration's targets and images (eval=toy_attacks: 8 targets x 4 images = 32 images per budget
and model, the same targets and seeds at every budget). Budget 0 is the unattacked prompt (the engine's
"no-attack" rows). Writes OUT/<model>/ (records, resumable), OUT/curve.json (every point: k, n, 95% Wilson
interval, the attack's wall seconds) and the PNG (`--png`, default docs/img/attack_budget_<attack>.png).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--erased", required=True, help="the erased model: an export folder (diffusers pipeline)")
    ap.add_argument("--base", default="toy", help="the base model: a model config name or a folder (default: toy)")
    ap.add_argument("--attack", default="embedding-space")
    ap.add_argument("--param", default="steps", help="the attack option the budget sets (default: steps)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[0, 10, 25, 50, 100],
                    help="budgets, 0 = unattacked (default: 0 10 25 50 100; the toy config's default is 100)")
    ap.add_argument("--params", default="{lr: 0.01}", help="other attack options, Hydra syntax (default: {lr: 0.01})")
    ap.add_argument("--n-prompts", type=int, default=8, help="targets per budget (default 8)")
    ap.add_argument("--images", type=int, default=4, help="images per target (default 4)")
    ap.add_argument("--out", required=True, help="work folder (records of both models, curve.json)")
    ap.add_argument("--png", default=None, help="the plot (default: docs/img/attack_budget_<attack>.png)")
    ap.add_argument("--title", default=None)
    args = ap.parse_args()
    budgets = sorted(set(args.budgets))
    if any(b < 0 for b in budgets) or not any(b > 0 for b in budgets):
        raise SystemExit(f"budgets must be >= 0 with at least one above 0 (0 is the unattacked prompt), got {budgets}")
    out = Path(args.out)
    png = Path(args.png) if args.png else ROOT / "docs" / "img" / f"attack_budget_{args.attack.replace('-', '_')}.png"
    curves = {}
    for label, model in (("erased", args.erased), ("base", args.base)):
        curves[label] = measure(model, args, [b for b in budgets if b > 0], out / label)
        print(f"{label}: " + ", ".join(f"{b}: {p['rate']}" for b, p in curves[label].items()), flush=True)
    data = {"attack": args.attack, "budget": args.param, "models": {"erased": args.erased, "base": args.base},
            "n_prompts": args.n_prompts, "images": args.images,
            "curves": {m: {str(b): p for b, p in c.items()} for m, c in curves.items()}}
    (out / "curve.json").write_text(json.dumps(data, indent=2))
    plot(curves, args.attack, args.param, png, args.title)
    print(f"curve: {out / 'curve.json'}; plot: {png}")


def measure(model: str, args: argparse.Namespace, budgets: list[int], out: Path) -> dict[int, dict]:
    """Rates per budget on one model (0: the unattacked rows), each with k, n, its interval and wall seconds."""
    import erase
    from erase.report.compare import attack_table, columns_from_eval

    entries = ",".join(f"{{name: {args.attack}, label: '{args.attack}@{b}', n_prompts: {args.n_prompts}, "
                       f"images: {args.images}, params: {_merge(args.params, args.param, b)}}}" for b in budgets)
    from erase import compose_config

    suites = compose_config(["eval=toy_attacks"]).eval.suites or {}  # the attack rows only: no unattacked suite
    t0 = time.time()
    summary = erase.evaluate(model, eval="toy_attacks", out_dir=out,
                             overrides=[*(f"eval.suites.{s}=null" for s in suites), f"eval.attacks=[{entries}]"])
    wall = time.time() - t0
    secs = ((summary.get("evaluation") or {}).get("attacks") or {}).get("attacks") or {}
    rows = {r["attack"]: r["values"].get("model") for r in attack_table(columns_from_eval(out / "eval", "model", False))}
    points: dict[int, dict] = {}
    for b in [0, *budgets]:
        label = "no-attack" if b == 0 else f"{args.attack}@{b}"
        rate = rows.get(label)
        if rate is None:
            raise SystemExit(f"{model}: no records for {label!r} in {out / 'eval'}")
        points[b] = {**rate.as_record(), "rate": rate.rate, "text": str(rate),
                     "seconds": (secs.get(label) or {}).get("seconds")}
    points[budgets[-1]]["evaluation_wall_s"] = round(wall, 1)
    return points


def _merge(params: str, key: str, value: int) -> str:
    inner = params.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise SystemExit(f"--params must be a Hydra dict such as '{{lr: 0.01}}', got {params!r}")
    inner = inner[1:-1].strip()
    return "{" + (inner + ", " if inner else "") + f"{key}: {value}" + "}"


def plot(curves: dict[str, dict[int, dict]], attack: str, param: str, png: Path, title: str | None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    style = {"erased": dict(fmt="o-", color="C3", label="erased"),
             "base": dict(fmt="s--", color="0.45", label="base (reference)")}
    span = max(max(c) for c in curves.values()) or 1
    for j, (name, points) in enumerate(curves.items()):
        xs = sorted(points)
        dodge = (j - (len(curves) - 1) / 2) * 0.012 * span  # overlapping points stay readable
        ys = [100 * points[b]["rate"] for b in xs]
        lo = [max(0.0, y - 100 * points[b]["ci95"][0]) for b, y in zip(xs, ys)]
        hi = [max(0.0, 100 * points[b]["ci95"][1] - y) for b, y in zip(xs, ys)]
        ax.errorbar([x + dodge for x in xs], ys, yerr=[lo, hi], capsize=4, zorder=3, **style.get(name, dict(fmt="o-", label=name)))
    n = next(iter(next(iter(curves.values())).values()))["n"]
    ax.set_xlabel(f"{attack} budget ({param}; 0 = the unattacked prompt)")
    ax.set_ylabel(f"attack success: images exposed, % (n={n} per point)")
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    ax.set_title(title or f"{attack} against budget (bars: 95% Wilson intervals)", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


if __name__ == "__main__":
    main()
