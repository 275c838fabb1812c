"""The one entry point: `erase [overrides]` (Hydra), also under `accelerate launch -m erase.cli`.

Tasks: erase_and_eval (default: evaluate the base model, erase, evaluate again, export with a model card,
print the comparison and write the report), erase, evaluate, leaderboard (compare finished runs).
Every run writes its resolved config beside its outputs (config.yaml), so it can be repeated exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping

import hydra
from omegaconf import DictConfig, OmegaConf

from erase.concept import Concept
from erase.configs import CONFIGS, check_config  # also registers the class defaults and resolvers the YAML uses
from erase.evaluation.config import evaluate_adapter
from erase.methods import method_label
from erase.outdir import is_main_rank, locked_out_dir, prepare_out_dir
from erase.run import check_method_config, concept_hash, erase, export_erased, family_from_config, load_model

log = logging.getLogger("erase")


def run_task(cfg: DictConfig) -> dict[str, Any]:
    check_config(cfg)  # a key nothing reads (a typo) is refused, naming the valid keys, before any file is written
    out = prepare_out_dir(cfg.out_dir)
    # One run per out_dir (rank 0 of a launch holds it for all ranks): a second run is refused, naming the holder.
    with locked_out_dir(out) if is_main_rank() else nullcontext(out):
        try:
            return _run_task(cfg, out)
        finally:
            from erase import tracking

            tracking.finish()  # the run's wandb files are complete even when the run failed


def _run_task(cfg: DictConfig, out: Path) -> dict[str, Any]:
    OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    if cfg.task == "leaderboard":
        return leaderboard(Path(cfg.runs_dir or out.parent), out)
    if cfg.task not in ("erase", "evaluate", "erase_and_eval"):
        raise ValueError(f"unknown task {cfg.task!r}: erase | evaluate | erase_and_eval | leaderboard")

    model = OmegaConf.to_container(cfg.model, resolve=True)
    method_cfg = OmegaConf.to_container(cfg.method, resolve=True)
    concept = Concept.from_config(OmegaConf.to_container(cfg.concept, resolve=True))
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    if cfg.task != "evaluate":  # refuse a method that cannot run on this family before the model is built
        check_method_config(method_cfg, family_from_config(model))
    from accelerate import PartialState

    state = PartialState(cpu=bool(cfg.cpu))  # one process, or this rank of `accelerate launch`
    from erase.launch import check_launch

    check_launch(state.num_processes)  # `accelerate launch --cpu --num_processes 2` starts one: refuse it
    if cfg.wandb and state.is_main_process:  # one run for everything below (erase.tracking); offline by default
        from erase import tracking
        from erase.card import concept_provenance

        tracking.start(out, config={"model": model, "method": method_cfg, "eval": eval_cfg.get("name"), "seed": cfg.seed,
                                    "concept": concept_provenance(OmegaConf.to_container(cfg.concept, resolve=True))},
                       name=out.name)
    adapter = load_model(model, cfg.precision, str(state.device))
    summary: dict[str, Any] = {"model": model["name"], "method": method_label(method_cfg), "method_name": method_cfg["name"],
                               "concept": concept.id}

    if cfg.task == "evaluate":  # the model as given (an export, any folder): its own results, under out_dir
        del summary["method"], summary["method_name"]  # nothing is erased: the model is measured as given
        summary["model_path"] = str(model["path"])
        summary["evaluation"] = evaluate_adapter(adapter, eval_cfg, out / "eval", str(model["path"]), concept,
                                                 wandb=cfg.wandb, baselines=True)
        if state.is_main_process:  # the same page as erase_and_eval's: the model (and any baselines), with intervals
            from erase.report.compare import columns_from_eval
            from erase.report.runs import photo_lookup, write_run_report

            page, summary["comparison"] = write_run_report(
                out, columns_from_eval(out / "eval", "model"), {"model": str(model["path"]), "family": adapter.family},
                f"Evaluation of {model['path']}", photo_lookup(eval_cfg, adapter))
            summary["report"] = str(page)
        return _finish(summary, out)
    evaluating = cfg.task == "erase_and_eval" and eval_cfg.get("suites")
    base_dir = base_eval_dir(eval_cfg, adapter, concept, model, out) if evaluating else None
    if evaluating:  # a shared base cache is written by one run at a time; the next one waits, then reuses it
        with locked_out_dir(base_dir, wait=True) if is_main_rank() and eval_cfg.get("base_cache") else nullcontext():
            source = base_eval_source(base_dir, adapter, state.num_processes) if eval_cfg.get("base_cache") else None
            summary["base"] = evaluate_adapter(adapter, eval_cfg, base_dir, f"{model['name']} (base)", concept,
                                               wandb=cfg.wandb, baselines=True)
            summary["base"]["source"] = source or {"source": "computed", "folder": str(base_dir)}

    result = erase(adapter, method_cfg, concept, out, seed=cfg.seed, do_export=False, cpu=bool(cfg.cpu), wandb=bool(cfg.wandb))
    summary["erasure"] = {"stats": result.stats, "seconds": round(result.seconds, 1)}
    if result.unfinished:  # stopped on purpose (stop_after): no evaluation or export of half-trained weights
        summary["unfinished"] = result.unfinished
        return _finish(summary, out)
    card = _card_info(cfg, model, adapter)
    if evaluating:
        original = _original(adapter, result) if eval_cfg.get("attacks") else None  # P4D needs the model before
        erased = evaluate_adapter(adapter, eval_cfg, out / "eval-erased", f"{model['name']} - {summary['method']}", concept,
                                  wandb=cfg.wandb, original=original)
        summary["erased"] = erased
    if not state.is_main_process:
        return summary  # rank 0 writes the checkpoint, the card and the summary
    if evaluating:  # one page: base (and baselines) and erased side by side; its numbers go into the card
        from erase.report.runs import edit_panels, photo_lookup, run_columns, write_run_report

        meta = {"model": model["name"], "path": str(model["path"]), "family": adapter.family,
                "method": summary["method"], "concept": concept.id, "seed": cfg.seed,
                "erasure": f"{summary['erasure']['seconds']} s", "base evaluation": describe_base_source(summary["base"]["source"])}
        page, summary["comparison"] = write_run_report(
            out, run_columns(base_dir, out / "eval-erased"), meta,
            f"{model['name']}: {summary['method']} erasing {concept.id}", photo_lookup(eval_cfg, adapter))
        summary["report"] = str(page)
        card["evaluation"] = summary["comparison"]
        if cfg.wandb:
            from erase import tracking

            columns = run_columns(base_dir, out / "eval-erased")
            tracking.log_evaluation(summary["comparison"], edit_panels(columns, photo_lookup(eval_cfg, adapter)))
    if cfg.export:
        paths = export_erased(adapter, result, out / "export", card)
        summary["export"] = {k: str(v) for k, v in vars(paths).items() if v is not None}
    return _finish(summary, out)


def base_eval_dir(eval_cfg: Mapping[str, Any], adapter, concept: Concept, model: Mapping[str, Any], out: Path) -> Path:
    """Where the base model's evaluation lives: out_dir/eval-base, or with `eval.base_cache` a folder under it keyed
    by the model's weights (fingerprint) and the evaluation settings, so any run of the same model and settings
    reuses it and nothing else (another model, an export, other settings) ever lands in it."""
    root = eval_cfg.get("base_cache")
    if not root:
        return out / "eval-base"
    from erase.evaluation.harness import model_fingerprint

    settings = {k: v for k, v in eval_cfg.items() if k not in ("base_cache", "name")}
    blob = json.dumps({"eval": settings, "sampling": _resolved_sampling(eval_cfg), "concept": concept_hash(concept)},
                      sort_keys=True, default=str)
    key = f"{model_fingerprint(adapter.pipe, adapter.spec)}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"
    folder = Path(str(root)).expanduser() / key
    folder.mkdir(parents=True, exist_ok=True)
    about = folder / "cache_key.json"  # for people browsing the cache: which model and settings this is
    if not about.exists():
        about.write_text(json.dumps({"model": model.get("name"), "path": str(model.get("path")),
                                     "family": adapter.family, "eval": eval_cfg.get("name")}, indent=2))
    return folder


def _resolved_sampling(eval_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sampling settings a preset name stands for (`sampling: toy`), so that changing a registered preset
    changes the cache key instead of meeting records made with the old preset."""
    from erase.evaluation.config import build_settings

    named = {"": eval_cfg.get("sampling")}
    named.update({s: (c or {}).get("sampling") for s, c in (eval_cfg.get("suites") or {}).items()})
    return {name: settings.as_record() for name, value in sorted(named.items())
            if value is not None and (settings := build_settings(value)) is not None}


def base_eval_source(folder: Path, adapter, world: int = 1) -> dict[str, Any]:
    """Where the base evaluation in `folder` (a base_cache entry) comes from, seeding an empty entry first.

    An entry that holds records already is reused ("cache"; or "shipped" if it was seeded earlier). An empty one is
    seeded from a registered `base_eval` source (the toy world ships its models' base evaluations:
    erase/toyworld/base_evals.py) when one has finished work for this key: its records and images are copied in
    and the harness skips every image they hold. Otherwise "computed". Seeds are written by one process, so a
    multi-process evaluation computes its own."""
    from erase import registry

    about = folder / "seeded_from.json"
    if any(p.stat().st_size for p in (folder / "parts").glob("*.jsonl")):
        return json.loads(about.read_text()) if about.is_file() else {"source": "cache", "folder": str(folder)}
    for name in registry.names("base_eval") if world == 1 else ():
        seed = registry.get("base_eval", name)(folder.name)
        if seed is None:
            continue
        seed = Path(seed)
        manifest = json.loads((seed / "seed.json").read_text()) if (seed / "seed.json").is_file() else {}
        _copy_seed(seed, folder, manifest.get("model_id"), _pipe_id(adapter))
        info = {"source": "shipped", "folder": str(folder), "seed": str(seed), "plugin": name,
                **{k: manifest[k] for k in ("built", "command", "versions", "records") if k in manifest}}
        about.write_text(json.dumps(info, indent=2))
        log.info("base evaluation: shipped records from %s (%s)", seed, name)
        return info
    return {"source": "computed", "folder": str(folder)}


def describe_base_source(info: Mapping[str, Any] | None) -> str:
    """One line for reports: where the base model's numbers came from."""
    info = info or {}
    if info.get("source") == "shipped":
        return (f"shipped with the {info.get('plugin')} plugin ({info.get('records')} records built "
                f"{info.get('built')} by `{info.get('command')}`; {info.get('seed')}), reused from {info.get('folder')}")
    if info.get("source") == "cache":
        return f"reused from the base cache {info.get('folder')} (an earlier run's evaluation)"
    return f"computed in this run ({info.get('folder')})"


def _pipe_id(adapter) -> str:
    from erase.evaluation.harness import _pipe_name

    return _pipe_name(adapter.pipe)


def _copy_seed(seed: Path, folder: Path, built_id: str | None, model_id: str) -> None:
    """Copy a seed's records (the model id rewritten to this pipeline's: records name the folder they were made
    from, and the harness checks it on resume) and images into `folder`; the records file is written last."""
    import shutil

    from erase.evaluation.records import read_records, write_sorted

    if (seed / "images").is_dir():
        shutil.copytree(seed / "images", folder / "images", dirs_exist_ok=True)
    records = read_records(seed / "parts" / "rank-0-of-1.jsonl")
    for record in records:
        ident = record.get("settings", {}).get("model", {})
        if built_id is not None and ident.get("id") == built_id:
            ident["id"] = model_id
    write_sorted(records, folder / "parts" / "rank-0-of-1.jsonl")  # atomic: the harness sees all or none


def _original(adapter, result):
    """The model before erasure for the attacks: the training loop's Original over the weights erasure could change,
    as they were before it (`result.before`; LoRA adapters switched off), not a second copy of the network."""
    from erase.methods.base import Original

    prefix = f"{adapter.spec.denoiser}."
    return Original(adapter, lora=result.lora is not None, frozen={k.removeprefix(prefix): v for k, v in result.before.items()})


def _card_info(cfg: DictConfig, model: Mapping[str, Any], adapter) -> dict[str, Any]:
    """What the model card needs beyond the erasure itself: the base (a loadable path for aliases such as
    toy:t2i), its editing route (pipeline_tag), and the concept as path + sha256 of its phrasings, never their text."""
    from erase.card import concept_provenance
    from erase.run import resolve_model_path

    path = str(model["path"])
    base = path if path.startswith("tiny:") else resolve_model_path(path)[0]
    return {"base_model": base, "model_config": dict(model), "editing": adapter.spec.editing,
            "concept_provenance": concept_provenance(OmegaConf.to_container(cfg.concept, resolve=True))}


def comparison_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per measured quantity: base, erased, change."""
    base, erased = summary.get("base", {}).get("metrics", {}), summary.get("erased", {}).get("metrics", {})
    rows = []
    for key in sorted(set(base) | set(erased)):
        b, e = base.get(key), erased.get(key)
        delta = e - b if isinstance(b, (int, float)) and isinstance(e, (int, float)) else None
        rows.append({"metric": key, "base": _pct(b), "erased": _pct(e), "change": _pct(delta, signed=True)})
    return rows


def _pct(x, signed: bool = False) -> str:
    if not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    return f"{100 * x:+.1f}%" if signed else f"{100 * x:.1f}%"


def _finish(summary: dict[str, Any], out: Path) -> dict[str, Any]:
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    from erase.report.runs import terminal_table

    rows = [] if summary.get("comparison") else comparison_rows(summary)
    if table := terminal_table(summary.get("comparison") or {}):
        print("\n" + table)
    if rows:
        width = max(len(r["metric"]) for r in rows)
        print(f"\n{'metric':<{width}}  {'base':>8}  {'erased':>8}  {'change':>8}")
        for r in rows:
            print(f"{r['metric']:<{width}}  {r['base']:>8}  {r['erased']:>8}  {r['change']:>8}")
    if (ev := summary.get("evaluation")) and not summary.get("comparison"):  # the table above has them with n
        for key, value in sorted(ev.get("metrics", {}).items()):
            print(f"{key}: {_pct(value)}")
        if ev.get("report"):
            print(f"report: {ev['report']}")
    if er := summary.get("erasure"):
        stats = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in er["stats"].items())
        print(f"erased {summary['concept']!r} from {summary['model']} with {summary['method']} in {er['seconds']} s ({stats})")
    if msg := summary.get("unfinished"):
        print(msg)
    if ex := summary.get("export"):
        print(f"hardened checkpoint: {ex.get('pipeline')} (card: {ex.get('card')})")
    if summary.get("report"):
        side_by_side = " (base and erased side by side)" if summary.get("erased") else ""
        print(f"report{side_by_side}: {summary['report']}")
    else:
        for name in ("base", "erased"):
            if page := summary.get(name, {}).get("report"):
                print(f"report ({name}): {page}")
    print(f"outputs: {out}")
    return summary


def leaderboard(runs_dir: Path, out: Path) -> dict[str, Any]:
    """Compare every finished run under runs_dir: one ranking per base model and suite set (erase.report.leaderboard)."""
    from erase.report.leaderboard import write_leaderboard

    result = write_leaderboard(runs_dir, out)
    n = sum(len([e for e in g.entries if not e.reference]) for g in result["groups"])
    print(f"leaderboard of {n} runs in {len(result['groups'])} group(s): {result['page']} "
          f"(also {result['csv']}, {result['markdown']})")
    return result


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
