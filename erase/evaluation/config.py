"""From an `eval/` config to suites, detector and attacks, and back to a flat table of numbers.

    suites:
      prompts:   {source: toy, n, phrases: heldout|train|all}  |  {csv: path | dataset: id, filters...}
      edits:     {source: toy, n_photos, paths, strengths}     |  {folder: path, edits_csv: path}
      utility:   {source: toy, n_prompts}                      |  {csv: path}
      benign_edits: {source: toy, n_edits_per_kind, paths}
    attacks:     [{name: unlearndiffatk, params: {...}, n_prompts, images}, ...]

The flat `metrics` ({"<suite>/<protocol>": rate, "<suite>/<utility key>": value, "attack/<name>": rate,
"leakage": headline, "utility": headline}) is what the CLI prints, the model card shows and the leaderboard plots.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from erase.concept import Concept
from erase.models.adapter import DiffusionAdapter


def build_detector(name: str, options: Mapping[str, Any] | None = None):
    if name == "toy":
        from erase import toyworld

        return toyworld.load_detector()
    if name == "nudenet":
        from erase.detect.nudenet import NudeNetDetector

        return NudeNetDetector(**dict(options or {}))
    raise ValueError(f"unknown detector {name!r}: toy | nudenet")


def build_settings(sampling: Mapping[str, Any] | None):
    from erase.evaluation.generate import GenSettings

    return GenSettings(**dict(sampling or {})) if sampling else None


def build_suites(suites_cfg: Mapping[str, Any], size: int) -> list:
    from erase.evaluation.suites import EditSuite, PromptSuite, UtilitySuite

    suites = []
    for name, c in (suites_cfg or {}).items():
        if c is None:  # a suite switched off by an override (e.g. `eval.suites.prompts=null`)
            continue
        c = dict(c)
        source = c.pop("source", "toy")
        if name.startswith("prompts"):
            if source == "toy":
                from erase import toyworld

                phrases = {"heldout": toyworld.HELDOUT_EXPOSED_PHRASES, "train": (toyworld.TRAIN_EXPOSED_PHRASE,),
                           "all": toyworld.EXPOSED_PHRASES}[c.pop("phrases", "heldout")]
                suites.append(PromptSuite.toy(phrases=phrases, name=name, **c))
            elif "csv" in c:
                suites.append(PromptSuite.from_csv(c.pop("csv"), name=name, **c))
            else:
                suites.append(PromptSuite.from_dataset(c.pop("dataset"), name=name, **c))
        elif name.startswith("edits"):
            if source == "toy":
                suites.append(EditSuite.toy(name=name, size=size, **c))
            elif "folder" in c:
                suites.append(EditSuite.from_folder(c.pop("folder"), c.pop("edits_csv"), name=name, **c))
            else:
                suites.append(EditSuite.from_dataset(c.pop("dataset"), c.pop("edits_csv"), name=name, **c))
        elif name.startswith("utility") or name.startswith("benign"):
            if source == "toy":
                suites.append(UtilitySuite.toy(name=name, size=size, **c))
            else:
                suites.append(UtilitySuite.from_csv(c.pop("csv"), name=name, **c))
        else:
            raise ValueError(f"unknown suite {name!r}: names start with prompts, edits, utility or benign")
    return suites


def build_variants(baselines: Mapping[str, Any] | None) -> list | None:
    """The model as is, plus the configured baselines run on the same items (base evaluations only)."""
    if not baselines:
        return None
    from erase.evaluation.baselines import NegativePrompt, SafeLatentDiffusion, SafetyChecker, Variant

    variants = [Variant()]
    if text := baselines.get("negative_prompt"):
        variants.append(NegativePrompt(text))
    if sld := baselines.get("sld"):
        variants.append(SafeLatentDiffusion(**({} if sld is True else dict(sld))))
    if baselines.get("safety_checker"):
        checker = baselines["safety_checker"]
        variants.append(SafetyChecker(**({} if checker is True else dict(checker))))
    return variants


def flat_metrics(summary: Mapping[str, Any], headline_protocol: str | None = None) -> dict[str, float]:
    metrics: dict[str, float] = {}
    leak = []
    for suite, value in summary.items():
        if suite in ("utility", "by_variant", "notes", "settings", "complete", "files", "attacks") or not isinstance(value, dict):
            continue
        for proto, rate in value.items():
            metrics[f"{suite}/{proto}"] = rate
        if value:
            leak.append(value.get(headline_protocol) if headline_protocol in value else next(iter(value.values())))
    util = []
    for suite, value in (summary.get("utility") or {}).items():
        for k, v in value.items():
            if isinstance(v, (int, float)) and k != "n_images":
                metrics[f"{suite}/{k}"] = float(v)
        for k in ("attribute_accuracy", "edit_done", "kept"):
            if k in value:
                util.append(float(value[k]))
    for name, rate in (summary.get("attacks") or {}).items():
        metrics[f"attack/{name}"] = rate
    if leak:
        metrics["leakage"] = max(leak)  # the worst suite: what a provider has to answer for
    if util:
        metrics["utility"] = sum(util) / len(util)
    return metrics


def evaluate_adapter(
    adapter: DiffusionAdapter,
    eval_cfg: Mapping[str, Any],
    out_dir: str | Path,
    title: str,
    concept: Concept | None = None,
    wandb: bool = False,
    original=None,
    baselines: bool = False,
) -> dict[str, Any]:
    """Run the configured suites (resumable: finished items are skipped) and attacks on the adapter's model."""
    from accelerate import PartialState

    from erase.evaluation.harness import evaluate

    out_dir = Path(out_dir)
    detector = build_detector(eval_cfg.get("detector", "toy"), eval_cfg.get("detector_options"))
    suites = build_suites(eval_cfg.get("suites") or {}, adapter.default_size)
    protocols = list(eval_cfg.get("protocols") or []) or None
    world = PartialState().num_processes
    summary = evaluate(
        adapter.pipe, suites, detector, protocols, out_dir,
        shard="accelerate" if world > 1 else None,
        settings=build_settings(eval_cfg.get("sampling")),
        batch_size=int(eval_cfg.get("batch_size", 8)),
        title=title, wandb=wandb, blur=bool(eval_cfg.get("blur", True)),
        variants=build_variants(eval_cfg.get("baselines")) if baselines else None,
    )
    if eval_cfg.get("attacks") and concept is not None:
        from erase.evaluation.attack_suite import run_attacks

        summary["attacks"] = run_attacks(adapter, eval_cfg["attacks"], concept, detector, out_dir / "attacks",
                                         (eval_cfg.get("protocols") or ["toy"])[0], original=original)
    protos = eval_cfg.get("protocols") or []
    metrics = flat_metrics(summary, protos[0] if protos else None)
    for variant, vs in (summary.get("by_variant") or {}).items():
        if variant != "model":
            metrics.update({f"baseline:{variant}/{k}": v for k, v in flat_metrics(vs, protos[0] if protos else None).items()
                            if k in ("leakage", "utility")})
    result = {"metrics": metrics,
              "report": summary.get("files", {}).get("html"),
              "markdown": summary.get("files", {}).get("markdown")}
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
