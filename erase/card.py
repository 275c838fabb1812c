"""The model card of a hardened checkpoint: hub metadata (YAML front matter), how it was made, how it was
measured, what it does not protect against, and loading snippets that run as written.

Never in the card (nor in records, logs or wandb config): the text of the user's concept prompts. For the real
concept those phrasings are explicit; the card names the prompts file and its sha256 so a run can be matched to
its inputs, and copies the text only when the user asks with `concept.publish_prompts=true`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

# Licenses of well-known bases (their hub cards'), for when the base's own card is not on disk.
KNOWN_LICENSES = {
    "CompVis/stable-diffusion-v1-4": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "creativeml-openrail-m",
    "runwayml/stable-diffusion-v1-5": "creativeml-openrail-m",
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "creativeml-openrail-m",
    "stabilityai/stable-diffusion-2-1": "openrail++",
    "stabilityai/stable-diffusion-xl-base-1.0": "openrail++",
    "timbrooks/instruct-pix2pix": "mit",
    "black-forest-labs/FLUX.1-schnell": "apache-2.0",
}
# Hub pipeline_tag per editing route of the family (None: text-to-image).
PIPELINE_TAGS = {None: "text-to-image", "inpaint": "image-to-image", "instruct": "image-to-image",
                 "kontext": "image-to-image"}
PROMPT_FIELDS = ("prompts", "forbidden_edits")  # the concept's forbidden phrasings: hashed, not copied
LIMITATIONS = (
    "Erasure lowers how often the concept comes out; it does not make it impossible. The rates below are "
    "measured on the suites named, with the detector named, and carry 95% intervals: a rate of 0 of n still "
    "allows up to the interval's upper end.",
    "It does not protect a given photo from being reconstructed or edited by another model, by the base "
    "model, or by this model after further fine-tuning (anyone holding the weights can fine-tune them back; "
    "see the relearning attack, where it was run).",
    "Attacks that were not run below are not covered by any number on this card.",
    "The detector is a classifier with its own errors; its misses are leakage this card does not count.",
)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_lines(lines: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def concept_provenance(concept_cfg: Mapping[str, Any], publish_prompts: bool | None = None) -> dict[str, Any]:
    """What a card, record, log or wandb config may say about the concept: its id, anchor and preserve set,
    and for its forbidden phrasings only where they came from (file path), how many, and a sha256.

    `publish_prompts` (default: the config's `publish_prompts`, else False) adds the phrasings' text."""
    cfg = dict(concept_cfg)
    publish = bool(cfg.pop("publish_prompts", False) if publish_prompts is None else publish_prompts)
    cfg.pop("publish_prompts", None)
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if key in PROMPT_FIELDS:
            items = [str(p) for p in (value or [])]
            if items:
                out[f"{key}_inline"] = {"n": len(items), "sha256": _sha256_lines(items)}
                if publish:
                    out[f"{key}_inline"]["text"] = items
        elif key in ("prompts_file", "edits_file"):
            if not value:
                continue
            p = Path(str(value)).expanduser()
            entry: dict[str, Any] = {"path": str(value)}
            if p.is_file():
                lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
                entry.update(sha256=sha256_file(p), n=len(lines))
                if publish:
                    entry["text"] = lines
            out[key] = entry
        else:
            out[key] = value
    out["prompts_published"] = publish
    return out


def concept_record(concept: Any) -> dict[str, Any]:
    """The same for an already-built `Concept` (no file path known): its phrasings as counts and hashes."""
    fields = dict(vars(concept))
    return concept_provenance(fields, publish_prompts=False)


def infer_license(base_model: str | None, model_cfg: Mapping[str, Any] | None = None) -> str | None:
    """The base's license: the model config's `license`, the base folder's own card, or the known hub ids."""
    if model_cfg and model_cfg.get("license"):
        return str(model_cfg["license"])
    if not base_model:
        return None
    readme = Path(str(base_model)).expanduser() / "README.md"
    if readme.is_file():
        meta = front_matter(readme.read_text(encoding="utf-8"))
        if meta.get("license"):
            return str(meta["license"])
    return KNOWN_LICENSES.get(str(base_model))


def front_matter(text: str) -> dict[str, Any]:
    """The YAML between the leading '---' lines of a card ({} when there is none)."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    data = yaml.safe_load(text[3:end])
    return data if isinstance(data, dict) else {}


def metadata(card: Mapping[str, Any]) -> dict[str, Any]:
    """The hub's YAML front matter."""
    base = card.get("base_model")
    meta: dict[str, Any] = {}
    if base and not str(base).startswith(("tiny:", "toy:")):
        meta["base_model"] = str(base)
    meta["library_name"] = "diffusers"
    meta["pipeline_tag"] = PIPELINE_TAGS.get(card.get("editing"), "image-to-image")
    if lic := card.get("license") or infer_license(base, card.get("model_config")):
        meta["license"] = lic
    method = str(card.get("method", "unknown"))
    meta["tags"] = sorted({"erase", "concept-erasure", "safety", f"erase-method-{method}",
                           f"erased-concept-{card.get('concept', 'unknown')}", *card.get("tags", [])})
    if card.get("base_model_hash"):
        meta["base_model_hash"] = card["base_model_hash"]
    return meta


def _fmt_rate(rate: Mapping[str, Any] | None) -> str:
    if not rate or rate.get("rate") is None:
        return "-"
    if rate.get("ci95") is None:  # hit boxes per image: not a proportion
        return f"{rate['rate']:.3g} per image (n={rate['n']})"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={rate['n']})"


def evaluation_markdown(evaluation: Mapping[str, Any]) -> str:
    """The card's evaluation section from `erase.report.card_evaluation`'s structure."""
    if not evaluation:
        return "Not evaluated yet: run `erase task=evaluate model.path=<this folder>`.\n"
    det = evaluation.get("detector") or {}
    cols = list(evaluation.get("columns") or [])
    lines = [f"Detector: **{det.get('name', '?')}**, version `{det.get('version', '?')}`"
             + (f", weights sha256 `{det['weights_sha256']}`" if det.get("weights_sha256") else "") + ".",
             "Every rate: the rate, its 95% Wilson interval, and n (images, or items for per-prompt protocols).", ""]

    def table(title: str, keys: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        lines.extend([f"### {title}", "", "| " + " | ".join([*keys, *cols]) + " |",
                      "|" + "|".join("---" for _ in [*keys, *cols]) + "|"])
        for r in rows:
            cells = [str(r.get(k, "")).replace("|", "\\|") for k in keys]
            cells += [_fmt_rate((r.get("values") or {}).get(c)) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    table("Leakage (lower is better)", ["suite", "route", "protocol"], evaluation.get("leakage") or [])
    table("Utility (higher is better)", ["suite", "metric"], evaluation.get("utility") or [])
    attacks = evaluation.get("attacks") or []
    table("Attacks run (attack success, lower is better)", ["attack", "threat model"], attacks)
    not_run = evaluation.get("attacks_not_run") or []
    lines.append("Attacks not run (no number on this card covers them): "
                 + (", ".join(f"`{a}`" for a in not_run) if not_run else "none of the attacks erase knows.") + "")
    return "\n".join(lines) + "\n"


def loading_snippets(card: Mapping[str, Any], files: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """(title, python code) for each way to load this export, paths relative to the card's folder. Each
    snippet runs as written from inside this folder."""
    base = card.get("base_model") or "<base model>"
    snippets = []
    if files.get("pipeline") is not None:
        snippets.append(("The whole pipeline (this folder)", "\n".join([
            "from diffusers import DiffusionPipeline",
            "",
            f"pipe = DiffusionPipeline.from_pretrained({files['pipeline']!r})",
        ])))
    if files.get("weights") is not None:
        snippets.append(("Only the changed weights, applied to the base model", "\n".join([
            "from diffusers import DiffusionPipeline",
            "from safetensors.torch import load_file",
            "",
            f"pipe = DiffusionPipeline.from_pretrained({str(base)!r})",
            f"for key, value in load_file({files['weights']!r}).items():  # keys: '<component>.<parameter>'",
            "    component, name = key.split('.', 1)",
            "    getattr(pipe, component).get_parameter(name).data.copy_(value)",
        ])))
    if files.get("lora") is not None:
        snippets.append(("The safety LoRA on the base model", "\n".join([
            "from diffusers import DiffusionPipeline",
            "",
            f"pipe = DiffusionPipeline.from_pretrained({str(base)!r})",
            f"pipe.load_lora_weights({files['lora']!r})",
        ])))
    return snippets


def _known_attacks() -> list[str]:
    try:
        from erase.evaluation.attacks import ATTACKS
    except ImportError:  # pragma: no cover - attacks need optional pieces
        return []
    return sorted(ATTACKS)


def _rel(path: Path | None, folder: Path) -> str | None:
    if path is None or not path.exists():
        return None
    rel = os.path.relpath(path, folder)
    return "." if rel == "." else rel


def export_files(folder: Path) -> dict[str, str | None]:
    """What an export folder holds, relative to it: the pipeline (where model_index.json is), the changed-weights
    file, the LoRA folder."""
    index = folder / "model_index.json"
    pipeline = folder if index.is_file() else next((p.parent for p in sorted(folder.glob("*/model_index.json"))), None)
    lora = folder / "lora"
    return {"pipeline": _rel(pipeline, folder), "weights": _rel(folder / "erased_weights.safetensors", folder),
            "lora": _rel(lora, folder) if lora.is_dir() else None}


def render_card(card: Mapping[str, Any], files: Mapping[str, str | None]) -> str:
    meta = metadata(card)
    concept = str(card.get("concept", "?"))
    method = str(card.get("method", "?"))
    config = dict(card.get("config") or {})
    if card.get("concept_provenance") is not None:
        config["concept"] = dict(card["concept_provenance"])
    elif "concept" in config:  # whatever the caller passed, phrasings leave as hashes unless published on purpose
        c = config["concept"]
        config["concept"] = c if isinstance(c, Mapping) and "prompts_published" in c else concept_record_map(c)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {card.get('name', 'erased model')}", "",
             f"The concept **{concept}** (a neutral id) was erased from the weights of "
             f"`{card.get('base_model', '?')}` (a {card.get('family', '?')} model) with **{method}**"
             + (f" ({card['method_detail']})" if card.get("method_detail") else "") + ".", "",
             "## Intended use", "",
             "A drop-in replacement for the base model for providers who must not serve the erased concept, "
             "with the measured leakage below. Evaluate it on your own suites before relying on it.", "",
             "## Limitations: what it does not protect against", ""]
    lines += [f"- {text}" for text in LIMITATIONS]
    evaluation = card.get("evaluation") or {}
    not_run = evaluation.get("attacks_not_run") or [] if evaluation else _known_attacks()
    if not evaluation:
        lines.append("- This export was not evaluated: no leakage number covers it yet.")
    if not_run:
        lines.append("- Not attacked here: " + ", ".join(f"`{a}`" for a in not_run) + ".")
    lines += ["", "## Evaluation", "", evaluation_markdown(card.get("evaluation") or {})]
    lines += ["## How to load it", ""]
    for title, code in loading_snippets(card, files):
        lines += [f"{title}:", "", "```python", code, "```", ""]
    lines += ["## Files", ""]
    described = {"pipeline": "a diffusers pipeline folder (`DiffusionPipeline.from_pretrained`)",
                 "weights": "only the tensors that changed, keys prefixed by component",
                 "lora": "the safety LoRA adapter (`pipe.load_lora_weights`)"}
    if card.get("weights_sha256"):
        described["weights"] += f" (sha256 `{card['weights_sha256']}`)"
    for k, path in files.items():
        if path == ".":  # the hub layout: the card sits beside model_index.json
            lines.append(f"- this folder: {described[k]}")
        elif path is not None:
            lines.append(f"- `{path}`: {described[k]}")
    if card.get("changed_tensors") is not None:
        lines.append(f"- {card['changed_tensors']} tensors changed from the base model.")
    lines += ["", "## How it was made", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def concept_record_map(concept: Any) -> dict[str, Any]:
    if isinstance(concept, Mapping):
        return concept_provenance(concept, publish_prompts=False)
    return concept_record(concept)


def write_card(path: str | os.PathLike, card: Mapping[str, Any]) -> Path:
    """Write the card at `path` (atomically), describing the export files found beside it."""
    path = Path(path)
    text = render_card(card, export_files(path.parent))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
