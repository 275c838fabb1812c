"""Ship a hardened model: a diffusers folder, a single safetensors file of the changed weights, the LoRA
adapter where one was trained, and a model card that says what was erased, how, and how much still leaks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import save_file

from erase.models.adapter import DiffusionAdapter


@dataclass
class ExportPaths:
    pipeline: Path
    weights: Path
    lora: Path | None
    card: Path


def snapshot(adapter: DiffusionAdapter) -> dict[str, torch.Tensor]:
    """CPU copies of every weight in the pipeline's modules (keys prefixed by component), to diff against later."""
    return {f"{c}.{k}": v.detach().cpu().clone() for c, m in adapter.modules().items() for k, v in m.state_dict().items()}


def changed_weights(adapter: DiffusionAdapter, before: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    after = snapshot(adapter)
    return {k: v for k, v in after.items() if k in before and not torch.equal(v, before[k])}


def model_hash(adapter: DiffusionAdapter) -> str:
    """sha256 over the denoiser's weights: identifies the base model a card refers to."""
    h = hashlib.sha256()
    for k, v in sorted(adapter.denoiser.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def save_lora(adapter: DiffusionAdapter, adapter_name: str, out: Path) -> Path:
    """The trained adapter, in the format `pipe.load_lora_weights(out)` reads."""
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(adapter.denoiser, adapter_name=adapter_name)
    key = "unet_lora_layers" if adapter.spec.denoiser == "unet" else "transformer_lora_layers"
    type(adapter.pipe).save_lora_weights(out, **{key: layers}, safe_serialization=True)
    return out


def export(
    adapter: DiffusionAdapter,
    out_dir: str | os.PathLike,
    before: Mapping[str, torch.Tensor],
    card: Mapping[str, Any],
    lora_adapter: str | None = None,
) -> ExportPaths:
    """Write everything under out_dir. With a LoRA adapter the folder holds it both separately and fused."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lora_path = None
    if lora_adapter is not None:
        lora_path = save_lora(adapter, lora_adapter, out / "lora")
        adapter.denoiser.fuse_lora(adapter_names=[lora_adapter])
        adapter.denoiser.unload_lora()
    changed = changed_weights(adapter, before)
    weights = out / "erased_weights.safetensors"
    _atomic(weights, lambda tmp: save_file(changed, tmp, metadata={"format": "pt", "components": "prefixed"}))
    pipe_dir = out / "pipeline"
    tmp_dir = out / ".pipeline.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    adapter.pipe.save_pretrained(tmp_dir, safe_serialization=True)
    shutil.rmtree(pipe_dir, ignore_errors=True)
    os.replace(tmp_dir, pipe_dir)
    card_path = write_model_card(out / "README.md", {**card, "changed_tensors": len(changed)})
    return ExportPaths(pipe_dir, weights, lora_path, card_path)


def load_erased_weights(adapter: DiffusionAdapter, path: str | os.PathLike) -> int:
    """Apply a changed-weights file to a pipeline of the same base model; returns how many tensors were set."""
    from safetensors.torch import load_file

    weights = load_file(str(path))
    modules = adapter.modules()
    for key, value in weights.items():
        component, name = key.split(".", 1)
        if component not in modules:
            raise KeyError(f"{path}: weights for component {component!r}, which this pipeline lacks ({sorted(modules)})")
        target = modules[component].get_parameter(name) if name in dict(modules[component].named_parameters()) else None
        if target is None:
            raise KeyError(f"{path}: {key} does not exist in this pipeline: is it the same base model?")
        with torch.no_grad():
            target.copy_(value)
    return len(weights)


def write_model_card(path: Path, card: Mapping[str, Any]) -> Path:
    concept = card.get("concept", "?")
    lines = [
        "---",
        "tags: [erase, concept-erasure, safety]",
        f"base_model_hash: {card.get('base_model_hash', 'unknown')}",
        "---",
        f"# {card.get('name', 'erased model')}",
        "",
        f"Concept erased from the weights: **{concept}** (neutral concept id), method **{card.get('method', '?')}**"
        f" on a **{card.get('family', '?')}** model (base: `{card.get('base_model', '?')}`).",
        "",
        "## How it was made",
        "",
        "```json",
        json.dumps(card.get("config", {}), indent=2, default=str),
        "```",
        "",
        "## Files",
        "",
        "- `pipeline/`: a diffusers pipeline folder (`DiffusionPipeline.from_pretrained`).",
        "- `erased_weights.safetensors`: only the tensors that changed, keys prefixed by component.",
    ]
    if card.get("lora"):
        lines.append("- `lora/`: the safety LoRA adapter (`pipe.load_lora_weights`).")
    lines += ["", "## Evaluation", ""]
    lines.append(card.get("evaluation_markdown") or "Not evaluated yet: run `erase task=evaluate` on this folder.")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)
