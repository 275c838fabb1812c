"""From an `eval/` config to suites, detector and attacks, and back to a flat table of numbers.

    detector:    a registered detector (nudenet; plugins add theirs, e.g. toy)
    sampling:    a registered preset (`toy`), GenSettings fields, or {preset: toy, steps: 30}
    suites:      {<kind>[-anything]: {source: csv|dataset|folder|<registered>, sampling: ..., options...}}
      prompts:   {csv: path | dataset: id, filters...}   |  {source: toy, n, phrases: heldout|train|all}
      edits:     {folder: path, edits_csv: path}         |  {source: toy, n_photos, paths, strengths}
      utility / benign...: {csv: path}                   |  {source: toy, n_prompts, n_edits_per_kind}
    attacks:     [{name: unlearndiffatk, params: {...}, n_prompts, images, path, label}, ...]
    attack_material: {source: toy} | {prompts_file, instructions_file, references: {folder}, photos: {folder}}

The flat `metrics` ({"<suite>/<protocol>": rate, "<suite>/<utility key>": value, "attack/<name>": rate,
"leakage": headline, "utility": headline}) is what the CLI prints, the model card shows and the leaderboard plots.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from erase.concept import Concept
from erase.models.adapter import DiffusionAdapter

SUITE_KINDS = ("prompts", "edits", "utility", "benign")  # a suite's name starts with its kind


def required(value: Any, where: str) -> Any:
    """`value`, or a clear error when a required setting is missing. Configs mark one with an environment
    default such as `${oc.env:ERASE_PHOTOS,'??? set ERASE_PHOTOS to your photo folder'}`: the text after ??? says
    what to set."""
    if value is None or (isinstance(value, str) and value.strip().startswith("???")):
        hint = str(value).strip()[3:].strip() if isinstance(value, str) else ""
        raise ValueError(f"{where} is not set: {hint + ' (or pass ' if hint else 'pass '}{where}=<value> on the "
                         f"command line{')' if hint else ''}")
    return value


def build_detector(name: str, options: Mapping[str, Any] | None = None):
    """A detector by registered name (core: nudenet; plugins: e.g. the toy world's `toy`)."""
    from erase import registry

    return registry.get("detector", str(name))(**dict(options or {}))


def build_settings(sampling: Any):
    """Sampling settings from `sampling:` (a preset name such as `toy`, or GenSettings fields, or both)."""
    from erase.evaluation.generate import settings_from

    return settings_from(sampling)


def build_suites(suites_cfg: Mapping[str, Any], size: int) -> list:
    """Suites from `suites:` ({name: {source: csv|dataset|folder|<registered>, ...}}); the name starts with its kind."""
    from erase import registry
    from erase.evaluation.edit_suites import EditSuite
    from erase.evaluation.prompt_suites import PromptSuite
    from erase.evaluation.utility import UtilitySuite

    suites = []
    for name, c in (suites_cfg or {}).items():
        if c is None:  # a suite switched off by an override (e.g. `eval.suites.prompts=null`)
            continue
        kind = next((k for k in SUITE_KINDS if name.startswith(k)), None)
        if kind is None:
            raise ValueError(f"unknown suite {name!r}: names start with {', '.join(SUITE_KINDS)}")
        kind = "utility" if kind == "benign" else kind
        c = dict(c)
        where = f"eval.suites.{name}"
        sampling = c.pop("sampling", None)
        source = c.pop("source", None) or next((k for k in ("csv", "folder", "dataset") if k in c), None)
        if source is None:
            raise ValueError(f"{where} needs a source: csv, folder or dataset (with its path), or a registered "
                             f"one (known: {', '.join(registry.names('suite')) or 'none'})")
        if source in ("csv", "folder", "dataset"):
            c[source] = required(c.get(source), f"{where}.{source}")
        if "edits_csv" in c:
            c["edits_csv"] = required(c["edits_csv"], f"{where}.edits_csv")
        if sampling is not None:
            c["settings"] = build_settings(sampling)
        if source in ("csv", "folder", "dataset") and kind == "prompts":
            suite = (PromptSuite.from_csv(c.pop("csv"), name=name, **c) if source == "csv"
                     else PromptSuite.from_dataset(c.pop("dataset"), name=name, **c))
        elif source in ("folder", "dataset") and kind == "edits":
            edits = required(c.pop("edits_csv", None), f"{where}.edits_csv")
            suite = (EditSuite.from_folder(c.pop("folder"), edits, name=name, **c) if source == "folder"
                     else EditSuite.from_dataset(c.pop("dataset"), edits, name=name, **c))
        elif source == "csv" and kind == "utility":
            suite = UtilitySuite.from_csv(c.pop("csv"), name=name, **c)
        elif source in ("csv", "folder", "dataset"):
            raise ValueError(f"{where}: a {kind} suite cannot be read from a {source}")
        else:
            suite = registry.get("suite", str(source))(kind, name, size, **c)
        suites.append(suite)
    return suites


def build_attack_material(eval_cfg: Mapping[str, Any], concept: Concept | None, size: int, n: int, seed: int = 0):
    """What attacks work with (issue: material from the run's config), from `attack_material:`:

        source: <registered>        a plugin's material (the toy world's `toy`), or else, from the user's files:
        prompts_file / instructions_file   default: the concept's prompts and forbidden edits
        references: {folder: <path>} | {dataset: <id>, split, column}    images of the concept
        photos: {folder: <path>, manifest}    photos to edit; default: the edit suite's folder (with its masks)
    """
    from erase import registry
    from erase.evaluation.attack_items import AttackMaterial

    cfg = dict(eval_cfg.get("attack_material") or {})
    if cfg.get("source"):
        return registry.get("attack_material", str(cfg["source"]))(n, size, seed, concept)
    prompts = _lines(cfg["prompts_file"], "eval.attack_material.prompts_file") if cfg.get("prompts_file") \
        else list(getattr(concept, "prompts", []) or [])
    instructions = _lines(cfg["instructions_file"], "eval.attack_material.instructions_file") \
        if cfg.get("instructions_file") else list(getattr(concept, "forbidden_edits", []) or [])
    references = _images(cfg["references"], "eval.attack_material.references") if cfg.get("references") else None
    photos_cfg = cfg.get("photos")
    if photos_cfg is None:  # the edit suite's photo source
        for name, suite in (eval_cfg.get("suites") or {}).items():
            if name.startswith("edits") and suite and suite.get("folder"):
                photos_cfg = {"folder": suite["folder"]}
                break
    photos = masks = None
    if photos_cfg:
        from erase.photos import read_photo_folder

        folder = required(photos_cfg.get("folder"), "eval.attack_material.photos.folder")
        found, _ = read_photo_folder(folder, photos_cfg.get("manifest"), int(photos_cfg.get("min_size", 64)))
        photos = [p.load() for p in found]
        masks = [(p.mask() if callable(p.mask) else p.mask) for p in found]
    return AttackMaterial(
        prompts=prompts, instructions=instructions, references=references, photos=photos, masks=masks,
        benign_prompts=list(getattr(concept, "preserve", []) or []),
        benign_instructions=list(getattr(concept, "benign_edits", []) or []),
        anchor=str(getattr(concept, "anchor", "") or ""), record_text=bool(cfg.get("record_text", False)),
    )


def _lines(path: Any, where: str) -> list[str]:
    path = Path(str(required(path, where))).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {path} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _images(cfg: Mapping[str, Any], where: str) -> list:
    """Reference images from {folder: path} or {dataset: id, split, column}, checked like photos."""
    from erase.photos import PhotoChecker, read_photo_folder

    min_size = int(cfg.get("min_size", 16))
    if cfg.get("folder"):
        found, _ = read_photo_folder(required(cfg["folder"], f"{where}.folder"), cfg.get("manifest"), min_size)
        return [p.load() for p in found]
    if cfg.get("dataset"):
        from erase.evaluation.prompt_suites import dataset_rows

        checker = PhotoChecker(min_size)
        rows = dataset_rows(cfg["dataset"], cfg.get("split", "train"))
        images = [im for row in rows if (im := checker.check(lambda row=row: row[cfg.get("column", "image")]))]
        if not images:
            raise ValueError(f"{where}: no usable image in dataset {cfg['dataset']!r} (skipped: {checker.skipped})")
        return images
    raise ValueError(f"{where} needs `folder:` or `dataset:`")


def build_attacks(eval_cfg: Mapping[str, Any], adapter: DiffusionAdapter, concept: Concept | None,
                  original: Any = None, settings: Any = None) -> list:
    """The configured attacks as one AttackSuite (checked before any work), or [] when none are configured."""
    from erase.evaluation.attack_items import AttackSpec, AttackSuite

    specs = [AttackSpec.from_config(a) for a in (eval_cfg.get("attacks") or [])]
    if not specs:
        return []
    n = max(s.n_prompts for s in specs)
    material = build_attack_material(eval_cfg, concept, adapter.default_size, n)
    return [AttackSuite(specs, material, adapter, original=original, settings=settings,
                        seed=int((eval_cfg.get("attack_material") or {}).get("seed", 0)))]


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
    """{"<suite>/<protocol>": rate, "<suite>/<utility key>": value, "attack/<name>": worst rate, "leakage": the
    worst suite, "utility": mean of the headline utility numbers}: the numbers the CLI prints and the leaderboard
    plots (rates as bare numbers; `rate_records` keeps their n and interval)."""
    from erase.evaluation.items import rate_value

    metrics: dict[str, float] = {}
    leak = []
    for suite, value in summary.items():
        if suite in RESERVED_KEYS or not isinstance(value, dict):
            continue
        for proto, rate in value.items():
            metrics[f"{suite}/{proto}"] = rate_value(rate)
        if value:
            leak.append(rate_value(value[headline_protocol] if headline_protocol in value else next(iter(value.values()))))
    util = []
    for suite, value in (summary.get("utility") or {}).items():
        for k, v in value.items():
            if isinstance(v, Mapping) and "rate" in v:
                metrics[f"{suite}/{k}"] = rate_value(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n_images" and v is not None:
                metrics[f"{suite}/{k}"] = float(v)
        for k in ("attribute_accuracy", "edit_done", "kept"):
            if k in value:
                util.append(float(value[k]))
    for name, rate in _attack_rates(summary, headline_protocol).items():
        metrics[f"attack/{name}"] = rate_value(rate)
    if leak:
        metrics["leakage"] = max(leak)  # the worst suite: what a provider has to answer for
    if util:
        metrics["utility"] = sum(util) / len(util)
    return metrics


RESERVED_KEYS = ("utility", "by_variant", "notes", "settings", "complete", "files", "attacks")


def _attack_rates(summary: Mapping[str, Any], headline_protocol: str | None) -> dict[str, Any]:
    """Each attack's worst-variant rate record under the headline protocol (first protocol otherwise)."""
    out: dict[str, Any] = {}
    for suite in (summary.get("attacks") or {}).values():
        for label, entry in suite.items():
            if not isinstance(entry, Mapping) or "variants" not in entry:
                continue
            protos = [k for k, v in entry.items() if isinstance(v, Mapping) and "rate" in v]
            if protos:
                out[label] = entry[headline_protocol] if headline_protocol in protos else entry[protos[0]]
    return out


def rate_records(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Every rate of the summary with its n and 95% interval, under the same names as `flat_metrics`."""
    out: dict[str, Any] = {}
    for suite, value in summary.items():
        if suite in RESERVED_KEYS or not isinstance(value, dict):
            continue
        out.update({f"{suite}/{proto}": rate for proto, rate in value.items() if isinstance(rate, Mapping)})
    for suite, value in (summary.get("utility") or {}).items():
        out.update({f"{suite}/{k}": v for k, v in value.items() if isinstance(v, Mapping) and "rate" in v})
    for suite in (summary.get("attacks") or {}).values():
        for label, entry in suite.items():
            for variant, protos in (entry.get("variants") or {}).items() if isinstance(entry, Mapping) else ():
                for proto, rate in protos.items():
                    out[f"attack/{label}/{variant}/{proto}"] = rate
    return out


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
    """Run the configured suites and attacks on the adapter's model: one engine, one records file, resumable
    (finished items are skipped; an interrupted attack resumes like any suite)."""
    from accelerate import PartialState

    from erase.evaluation.harness import evaluate

    out_dir = Path(out_dir)
    detector = build_detector(required(eval_cfg.get("detector"), "eval.detector"), eval_cfg.get("detector_options"))
    settings = build_settings(eval_cfg.get("sampling"))
    suites = build_suites(eval_cfg.get("suites") or {}, adapter.default_size)
    suites += build_attacks(eval_cfg, adapter, concept, original, settings)  # bad attack input fails here
    protocols = list(eval_cfg.get("protocols") or []) or None
    world = PartialState().num_processes
    summary = evaluate(
        adapter.pipe, suites, detector, protocols, out_dir,
        shard="accelerate" if world > 1 else None,
        settings=settings,
        batch_size=int(eval_cfg.get("batch_size", 8)),
        title=title, wandb=wandb, blur=bool(eval_cfg.get("blur", True)),
        variants=build_variants(eval_cfg.get("baselines")) if baselines else None,
    )
    protos = eval_cfg.get("protocols") or []
    metrics = flat_metrics(summary, protos[0] if protos else None)
    for variant, vs in (summary.get("by_variant") or {}).items():
        if variant != "model":
            metrics.update({f"baseline:{variant}/{k}": v for k, v in flat_metrics(vs, protos[0] if protos else None).items()
                            if k in ("leakage", "utility")})
    result = {"metrics": metrics, "rates": rate_records(summary),
              "attacks": (summary.get("attacks") or {}),
              "report": summary.get("files", {}).get("html"),
              "markdown": summary.get("files", {}).get("markdown")}
    tmp = out_dir / f"metrics.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out_dir / "metrics.json")  # atomic: a reader never sees half a file
    return result
