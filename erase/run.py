"""What one run does, independent of how it was configured: load, erase, export (and evaluate, see cli)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from erase.card import concept_record
from erase.concept import Concept, check_tokenizes
from erase.export import ExportPaths, export, model_hash, snapshot
from erase.methods import ClosedFormMethod, FineTuneMethod, Method, build_method, method_label, stage_list
from erase.methods.base import parameters_before, parameters_changed_by
from erase.methods.edit_refusal import EditRefusal
from erase.models.adapter import DiffusionAdapter
from erase.models.families import FamilySpec, ModelLoadError, detect_family, get_family, load_pipeline
from erase.outdir import is_main_rank, locked_out_dir
from erase.training import LoraSpec, TrainConfig, lora_name, train

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_model_path(path: str) -> tuple[str, str | None]:
    """Registered model aliases (erase.registry, e.g. the toy world's `toy:t2i`) name a pipeline folder,
    `tiny:<family>` a tiny random one."""
    from erase import registry

    if (folder := registry.resolve_model(path)) is not None:
        return folder, None
    if path.startswith("tiny:"):
        return path, path.split(":", 1)[1]
    return path, None


def load_model(model: Mapping[str, Any], precision: str = "fp32", device: str | None = None) -> DiffusionAdapter:
    path, tiny = resolve_model_path(str(model["path"]))
    if tiny is not None:
        from erase.models.tiny import tiny_pipeline

        spec = get_family(tiny)  # an unknown family name fails here, before anything is built
        pipe = tiny_pipeline(tiny)
    else:
        pipe, spec = load_pipeline(path, model.get("family"), torch_dtype=DTYPES[precision])
    if device:
        pipe.to(device)
    adapter = DiffusionAdapter(pipe, spec)
    if model.get("size"):
        adapter.default_size = int(model["size"])
    return adapter


def make_train_config(train_cfg: Mapping[str, Any] | None, lora: Mapping[str, Any] | None, seed: int, **extra) -> TrainConfig:
    kw = dict(train_cfg or {})
    kw.update(extra)
    lora_spec = LoraSpec(**{k: v for k, v in dict(lora).items() if v is not None}) if lora else None
    return TrainConfig(**kw, seed=seed, lora=lora_spec)


@dataclass
class ErasureResult:
    method: str
    concept: Concept
    method_cfg: Mapping[str, Any]
    stats: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    base_hash: str = ""
    lora: str | None = None  # name of the trained LoRA adapter, still attached until export/fuse
    unfinished: str | None = None  # why training stopped before its steps (stop_after) and how to resume; None = done
    before: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    export: ExportPaths | None = None


def family_from_config(model: Mapping[str, Any]) -> FamilySpec | None:
    """The model's family as far as it is known without loading weights: `model.family`, a `tiny:`/`toy:` name,
    or a local pipeline folder's model_index.json (cheap to read). None for a hub id without `family`."""
    path = str(model.get("path", ""))
    if path.startswith("tiny:"):
        return get_family(path.split(":", 1)[1])
    if model.get("family"):
        return get_family(str(model["family"]))
    try:
        local, _ = resolve_model_path(path)
        return get_family(detect_family(local)) if Path(local).expanduser().is_dir() else None
    except (ModelLoadError, ValueError):
        return None  # load_model says what is wrong with the path


def check_method_config(method_cfg: Mapping[str, Any], spec: FamilySpec | None) -> list[Method]:
    """Build every stage's method and check it against the family: refusals before the model is built."""
    stages = stage_list(method_cfg)
    methods = [build_method(s["name"], s.get("params")) for s in stages]
    for s, m in zip(stages, methods):
        if isinstance(m, FineTuneMethod):
            make_train_config(s.get("train"), s.get("lora"), 0)  # bad train settings fail here, not after loading
        if spec is not None:
            m.check(spec)
        check_photo_source((s.get("params") or {}).get("photos"))
        if isinstance(m, EditRefusal):
            m.require_photos()
    return methods


def check_photo_source(photos: Mapping[str, Any] | None) -> None:
    """A method's photo source, checked without reading any photo: a folder that exists, a registered source."""
    if not photos:
        return
    source = photos.get("source")
    if source == "folder":
        path = photos.get("path")
        if not path or str(path).startswith("???"):
            raise ValueError("method.params.photos: {source: folder} needs `path`, the folder of photos to train on")
        if not Path(str(path)).expanduser().is_dir():
            raise FileNotFoundError(f"method.params.photos.path={path}: no such folder (give the folder of photos to "
                                    "train on)")
    elif source not in (None, "dataset"):
        from erase import registry

        registry.get("photos", str(source))  # an unknown source is named with the known ones


def check_setup(method: Method, adapter: DiffusionAdapter, concept: Concept) -> None:
    """Everything that can be refused before any work starts."""
    method.check(adapter.spec)
    tok = getattr(adapter.pipe, "tokenizer", None) or getattr(adapter.pipe, "tokenizer_2", None)
    if tok is not None:
        check_tokenizes(concept, tok)


def erase(
    adapter: DiffusionAdapter,
    method_cfg: Mapping[str, Any],
    concept: Concept,
    out_dir: str | Path,
    seed: int = 0,
    do_export: bool = True,
    card: Mapping[str, Any] | None = None,
    **train_overrides,
) -> ErasureResult:
    """Erase `concept` from the adapter's model in place; export unless told not to (then call `export_erased`).

    A method config with `stages: [cfg, cfg, ...]` runs them in order on the same weights (e.g. UCE, then edit
    refusal); every stage is checked against the family before the first one starts. Every stage's targets come
    from the model before the first stage: measured on an already-erased model, the concept's direction points
    away from the concept, and a second stage pushing "away" from it would push back toward the concept."""
    stages = stage_list(method_cfg)
    methods = check_method_config(method_cfg, adapter.spec)
    for m in methods:
        check_setup(m, adapter, concept)
    out_dir = Path(out_dir)
    with locked_out_dir(out_dir) if is_main_rank() else _no_lock(out_dir):
        return _erase(adapter, method_cfg, stages, methods, concept, out_dir, seed, do_export, card, train_overrides)


def _erase(adapter, method_cfg, stages, methods, concept, out_dir: Path, seed, do_export, card, train_overrides):
    changeable = parameters_changed_by(adapter, methods)  # only these are copied: for export's diff, later stages
    result = ErasureResult(method_label(method_cfg), concept, method_cfg, before=snapshot(adapter, changeable),
                           base_hash=model_hash(adapter))
    base = parameters_before(adapter, changeable) if len(stages) > 1 else None
    t0 = time.time()
    for i, (stage, method) in enumerate(zip(stages, methods)):
        stage_dir = out_dir if len(stages) == 1 else out_dir / f"stage-{i}-{stage['name']}"
        if result.lora is not None:  # a later stage trains on top of the earlier adapter, fused
            adapter.denoiser.fuse_lora(adapter_names=[result.lora])
            adapter.denoiser.unload_lora()
            result.lora = None
        if isinstance(method, ClosedFormMethod):
            stats = method.apply(adapter, concept)
        else:
            assert isinstance(method, FineTuneMethod)
            cfg = make_train_config(stage.get("train"), stage.get("lora"), seed, **train_overrides)
            identity = {"stage": i, "params": _jsonable_cfg(stage.get("params")), "concept": concept_hash(concept)}
            run = train(method, adapter, concept, cfg, stage_dir, original=base, identity=identity)
            stats = {"steps": float(run.steps), "final_loss": run.history[-1]["loss"] if run.history else float("nan")}
            result.lora = (cfg.lora.name or lora_name(concept.id)) if cfg.lora else None
            if run.steps < cfg.steps:
                result.unfinished = (
                    f"training stopped at step {run.steps} of {cfg.steps} (train.stop_after={cfg.stop_after}) in "
                    f"{stage_dir}: nothing was exported. Resume by running the same command again with the same "
                    f"out_dir and without stop_after")
        result.stats.update({f"{stage['name']}/{k}" if len(stages) > 1 else k: v for k, v in stats.items()})
        if result.unfinished:
            break  # later stages start from finished weights only
    result.seconds = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "erasure.json").write_text(
        json.dumps({"method": result.method, "stats": result.stats, "seconds": result.seconds,
                    "finished": result.unfinished is None, "unfinished": result.unfinished}, indent=2)
    )
    if result.unfinished:
        print(result.unfinished)
    elif do_export:
        export_erased(adapter, result, out_dir / "export", card)
    return result


def _no_lock(out_dir: Path):
    from contextlib import nullcontext

    return nullcontext(out_dir)


def concept_hash(concept: Concept) -> str:
    """Identifies the concept's prompts without storing them (checkpoints and cards never hold prompt text)."""
    return hashlib.sha256(json.dumps(concept.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _jsonable_cfg(x: Any) -> Any:
    return json.loads(json.dumps(x, sort_keys=True, default=str)) if x is not None else None


def export_erased(adapter: DiffusionAdapter, result: ErasureResult, out_dir: str | Path, card: Mapping[str, Any] | None = None) -> ExportPaths:
    """Write the hardened checkpoint (folder, changed weights, LoRA adapter, model card); fuses any LoRA."""
    if result.unfinished:
        raise RuntimeError(f"not exporting an unfinished run: {result.unfinished}")
    info = {
        "name": f"{adapter.family} without {result.concept.id} ({result.method})",
        "concept": result.concept.id,
        "method": result.method,
        "family": adapter.family,
        "base_model_hash": result.base_hash,
        # the concept's phrasings never reach the card: counts and hashes (the CLI passes the file's provenance)
        "config": {"method": dict(result.method_cfg), "concept": concept_record(result.concept)},
        "lora": result.lora is not None,
        **dict(card or {}),
    }
    result.export = export(adapter, out_dir, result.before, info, lora_adapter=result.lora)
    result.lora = None  # fused into the weights by export
    return result.export
