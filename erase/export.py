"""Ship a hardened model as one hub-ready folder: a diffusers pipeline (model_index.json and its components) with,
beside it, the model card (README.md), a single safetensors file of the changed weights and the LoRA adapter where
one was trained. `DiffusionPipeline.from_pretrained(folder)` loads it; uploading the folder publishes it.

    export/
      README.md                    model card
      model_index.json, unet/, text_encoder/, vae/, scheduler/, tokenizer/ ...
      erased_weights.safetensors   only the changed tensors, keys prefixed by component
      lora/                        pytorch_lora_weights.safetensors (LoRA runs only)

The folder is built under a temporary name unique to this process and renamed into place, so a kill leaves the
previous export or none, never a mix; the changed-weights file is byte-reproducible (its sha256 is in the card).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors.torch import save

from erase.models.adapter import DiffusionAdapter


WEIGHTS_FILE = "erased_weights.safetensors"
CARD_FILE = "README.md"
LORA_DIR = "lora"


@dataclass
class ExportPaths:
    pipeline: Path  # the export folder itself: model_index.json, the card and the files below sit in it
    weights: Path
    lora: Path | None
    card: Path
    weights_sha256: str = ""


def snapshot(adapter: DiffusionAdapter, denoiser_names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """CPU copies of the weights to diff against later (keys prefixed by component): every weight of every module,
    or only the named denoiser parameters (what erasure can change: `parameters_changed_by`), which for a 12B
    denoiser whose cross-attention trains is the difference between tens of GB and a few hundred MB."""
    if denoiser_names is not None:
        names, prefix = set(denoiser_names), adapter.spec.denoiser
        return {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in adapter.denoiser.state_dict().items() if k in names}
    return {f"{c}.{k}": v.detach().cpu().clone() for c, m in adapter.modules().items() for k, v in m.state_dict().items()}


def changed_weights(adapter: DiffusionAdapter, before: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `before` whose current value differs, as they are now (one tensor copied at a time)."""
    modules, changed = adapter.modules(), {}
    states = {c: modules[c].state_dict() for c in {k.split(".", 1)[0] for k in before} if c in modules}
    for key, old in before.items():
        component, name = key.split(".", 1)
        now = states.get(component, {}).get(name)
        if now is not None:
            now = now.detach().cpu()
            if not torch.equal(now, old):
                changed[key] = now.clone()
    return changed


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
    """Write the export folder `out_dir` (replacing an earlier one atomically). With a LoRA adapter the folder holds
    it both separately (lora/) and fused into the pipeline's weights."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        if lora_adapter is not None:
            save_lora(adapter, lora_adapter, tmp / LORA_DIR)
            adapter.denoiser.fuse_lora(adapter_names=[lora_adapter])
            adapter.denoiser.unload_lora()
        changed = changed_weights(adapter, before)
        adapter.pipe.save_pretrained(tmp, safe_serialization=True)
        digest = save_safetensors(changed, tmp / WEIGHTS_FILE, {"format": "pt", "components": "prefixed"})
        write_model_card(tmp / CARD_FILE, {**card, "changed_tensors": len(changed), "weights_sha256": digest,
                                           "weights_file": WEIGHTS_FILE})
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ExportPaths(out, out / WEIGHTS_FILE, out / LORA_DIR if lora_adapter is not None else None, out / CARD_FILE,
                       digest)


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> str:
    """A safetensors file whose bytes depend only on the tensors and metadata; returns its sha256.

    Why: the safetensors library writes `__metadata__` from a hash map, so its key order (and the file's hash)
    changes from process to process. The header is rewritten with sorted metadata; the data is untouched."""
    raw = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    if metadata:
        header = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}, **header}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    data = struct.pack("<Q", len(text)) + text + raw[8 + n:]
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return hashlib.sha256(data).hexdigest()


def _swap_into_place(tmp: Path, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; the export needs that name for a folder: move the file away")
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temporaries(out: Path) -> None:
    """Leftovers of exports killed midway (the run holds out_dir's lock, so no other process is writing them)."""
    if out.parent.is_dir():
        for p in out.parent.glob(f".{out.name}.*-*"):
            if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-")):
                shutil.rmtree(p, ignore_errors=True)
    legacy = out / ".pipeline.tmp"
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)


def load_erased_weights(adapter: DiffusionAdapter, path: str | os.PathLike) -> int:
    """Apply a changed-weights file to a pipeline of the same base model; returns how many tensors were set."""
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, not safetensors: one remedy
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); it is corrupt or "
                         "truncated: export it again (rerun the erase run), or delete its folder and run again") from err
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
    """The hub model card (erase.card): metadata, evaluation, limitations, loading snippets for the files beside it."""
    from erase.card import write_card

    return write_card(path, card)


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    write(str(tmp))
    os.replace(tmp, path)
