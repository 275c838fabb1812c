"""The one entry point: `erase [overrides]` (Hydra), also under `accelerate launch -m erase.cli`.

Tasks: erase_and_eval (default: evaluate the base model, erase, evaluate again, export with a model card,
print the comparison and write the report), erase, evaluate, leaderboard (compare finished runs).
Every run writes its resolved config beside its outputs (config.yaml), so it can be repeated exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from erase.concept import Concept
from erase.configs import CONFIGS, check_config  # also registers the class defaults and resolvers the YAML uses
from erase.evaluation.config import evaluate_adapter
from erase.methods import method_label
from erase.run import erase, export_erased, load_model

log = logging.getLogger("erase")


def run_task(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)  # a key nothing reads (a typo) is refused, naming the valid keys, before any file is written
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    if cfg.task == "leaderboard":
        return leaderboard(Path(cfg.runs_dir or out.parent), out)
    if cfg.task not in ("erase", "evaluate", "erase_and_eval"):
        raise ValueError(f"unknown task {cfg.task!r}: erase | evaluate | erase_and_eval | leaderboard")

    model = OmegaConf.to_container(cfg.model, resolve=True)
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    concept = Concept.from_config(OmegaConf.to_container(cfg.concept, resolve=True))
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    from accelerate import PartialState

    state = PartialState(cpu=bool(cfg.cpu))  # one process, or this rank of `accelerate launch`
    adapter = load_model(model, cfg.precision, str(state.device))
    summary: dict[str, Any] = {"model": model["name"], "method": method_label(method_cfg), "method_name": method_cfg["name"],
                               "concept": concept.id}

    evaluating = cfg.task in ("evaluate", "erase_and_eval") and eval_cfg.get("suites")
    if evaluating:
        base_dir = Path(eval_cfg.get("base_cache") or out / "eval-base")
        summary["base"] = evaluate_adapter(adapter, eval_cfg, base_dir, f"{model['name']} (base)", concept,
                                           wandb=cfg.wandb, baselines=True)
    if cfg.task == "evaluate":
        return _finish(summary, out)

    original = adapter.frozen_copy() if evaluating and eval_cfg.get("attacks") else None  # P4D needs the model before
    result = erase(adapter, method_cfg, concept, out, seed=cfg.seed, do_export=False, cpu=bool(cfg.cpu), wandb=bool(cfg.wandb))
    summary["erasure"] = {"stats": result.stats, "seconds": round(result.seconds, 1)}
    card: dict[str, Any] = {"base_model": model["path"]}
    if evaluating:
        erased = evaluate_adapter(adapter, eval_cfg, out / "eval-erased", f"{model['name']} - {summary['method']}", concept,
                                  wandb=cfg.wandb, original=original)
        summary["erased"] = erased
        card["evaluation_markdown"] = comparison_markdown(summary)
    if not state.is_main_process:
        return summary  # rank 0 writes the checkpoint, the card and the summary
    if cfg.export:
        paths = export_erased(adapter, result, out / "export", card)
        summary["export"] = {k: str(v) for k, v in vars(paths).items() if v is not None}
    return _finish(summary, out)


def comparison_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per measured quantity: base, erased, change."""
    base, erased = summary.get("base", {}).get("metrics", {}), summary.get("erased", {}).get("metrics", {})
    rows = []
    for key in sorted(set(base) | set(erased)):
        b, e = base.get(key), erased.get(key)
        delta = e - b if isinstance(b, (int, float)) and isinstance(e, (int, float)) else None
        rows.append({"metric": key, "base": _pct(b), "erased": _pct(e), "change": _pct(delta, signed=True)})
    return rows


def comparison_markdown(summary: Mapping[str, Any]) -> str:
    from erase.report import markdown_summary

    return markdown_summary(comparison_rows(summary))


def _pct(x, signed: bool = False) -> str:
    if not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    return f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%"


def _finish(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    rows = comparison_rows(summary)
    if rows:
        width = max(len(r["metric"]) for r in rows)
        print(f"\n{'metric':<{width}}  {'base':>8}  {'erased':>8}  {'change':>8}")
        for r in rows:
            print(f"{r['metric']:<{width}}  {r['base']:>8}  {r['erased']:>8}  {r['change']:>8}")
    if er := summary.get("erasure"):
        stats = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in er["stats"].items())
        print(f"erased {summary['concept']!r} from {summary['model']} with {summary['method']} in {er['seconds']} s ({stats})")
    if ex := summary.get("export"):
        print(f"hardened checkpoint: {ex.get('pipeline')} (card: {ex.get('card')})")
    for name in ("base", "erased"):
        if page := summary.get(name, {}).get("report"):
            print(f"report ({name}): {page}")
    print(f"outputs: {out}")
    return summary


def leaderboard(runs_dir: Path, out: Path) -> dict[str, Any]:
    """Compare every finished run under runs_dir: leakage against utility, one row per run."""
    from erase.report import render_leaderboard

    runs = []
    for f in sorted(runs_dir.rglob("summary.json")):
        s = json.loads(f.read_text())
        if "erased" not in s:
            continue
        m = s["erased"].get("metrics", {})
        runs.append({"name": f"{s['method']} ({f.parent.name})", "leakage": m.get("leakage"), "utility": m.get("utility"),
                     **{k: v for k, v in m.items() if k not in ("leakage", "utility")}})
    if not runs:
        raise FileNotFoundError(f"no finished runs (summary.json with an erased evaluation) under {runs_dir}")
    page = render_leaderboard(runs, out / "leaderboard.html")
    print(f"leaderboard of {len(runs)} runs: {page}")
    return {"runs": runs, "page": str(page)}


@hydra.main(version_base=None, config_path=str(CONFIGS), config_name="config")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # every job of a sweep in its own folder, also when out_dir names the sweep's
        cfg.out_dir = hc.runtime.output_dir
    run_task(cfg)


if __name__ == "__main__":
    main()
