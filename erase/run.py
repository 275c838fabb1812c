"""What one run does, independent of how it was configured: load, erase, export (and evaluate, see cli)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from erase.concept import Concept, check_tokenizes
from erase.export import ExportPaths, export, model_hash, snapshot
from erase.methods import ClosedFormMethod, FineTuneMethod, Method, build_method
from erase.models.adapter import DiffusionAdapter
from erase.models.families import get_family, load_pipeline
from erase.training import LoraSpec, TrainConfig, lora_name, train

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_model_path(path: str) -> tuple[str, str | None]:
    """`toy:t2i` / `toy:editor` name the shipped toy models, `tiny:<family>` a tiny random one."""
    if path.startswith("toy:"):
        from erase import toyworld

        which = path.split(":", 1)[1]
        paths = {"t2i": toyworld.t2i_path, "editor": toyworld.editor_path}
        if which not in paths:
            raise ValueError(f"unknown toy model {path!r}: use toy:t2i or toy:editor")
        return str(paths[which]()), None
    if path.startswith("tiny:"):
        return path, path.split(":", 1)[1]
    return path, None


def load_model(model: Mapping[str, Any], precision: str = "fp32", device: str | None = None) -> DiffusionAdapter:
    path, tiny = resolve_model_path(str(model["path"]))
    if tiny is not None:
        from erase.models.tiny import tiny_pipeline

        get_family(tiny)
        pipe = tiny_pipeline(tiny)
        spec = get_family(tiny)
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
    stats: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    export: ExportPaths | None = None


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
    import time

    method = build_method(method_cfg["name"], method_cfg.get("params"))
    check_setup(method, adapter, concept)
    out_dir = Path(out_dir)
    before = snapshot(adapter)
    base_hash = model_hash(adapter)
    t0 = time.time()
    lora = None
    if isinstance(method, ClosedFormMethod):
        stats = method.apply(adapter, concept)
        cfg = None
    else:
        assert isinstance(method, FineTuneMethod)
        cfg = make_train_config(method_cfg.get("train"), method_cfg.get("lora"), seed, **train_overrides)
        result = train(method, adapter, concept, cfg, out_dir)
        stats = {"steps": float(result.steps), "final_loss": result.history[-1]["loss"] if result.history else float("nan")}
        lora = (cfg.lora.name or lora_name(concept.id)) if cfg.lora else None
    seconds = time.time() - t0
    paths = None
    if do_export:
        card_info = {
            "name": f"{adapter.family} without {concept.id} ({method_cfg['name']})",
            "concept": concept.id,
            "method": method_cfg["name"],
            "family": adapter.family,
            "base_model_hash": base_hash,
            "config": {"method": dict(method_cfg), "concept": concept.__dict__},
            "lora": lora is not None,
            **dict(card or {}),
        }
        paths = export(adapter, out_dir / "export", before, card_info, lora_adapter=lora)
    elif lora is not None:  # keep the model usable as one set of weights
        adapter.denoiser.fuse_lora(adapter_names=[lora])
        adapter.denoiser.unload_lora()
    (out_dir / "erasure.json").write_text(json.dumps({"method": method_cfg["name"], "stats": stats, "seconds": seconds}, indent=2))
    return ErasureResult(method_cfg["name"], stats, seconds, paths)
