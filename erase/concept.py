"""What to erase: a concept named by a neutral id, its phrasings, and what it should turn into.

Real-world concepts keep their text out of the repository: `prompts_file` / `edits_file` point at the user's
own files (one item a line), read at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


class ConceptError(ValueError):
    """A concept definition that cannot be erased as given."""


@dataclass
class Concept:
    id: str
    prompts: list[str]  # phrasings of the concept the methods train on
    anchor: str = ""  # what the concept should become (UCE guide, ablation anchor, ESD's neutral is "")
    preserve: list[str] = field(default_factory=list)  # concepts to keep (UCE preserve set, retain prompts)
    erase_from: str | None = None  # ESD: erase the concept as it appears under this prompt
    forbidden_edits: list[str] = field(default_factory=list)  # instructions an editing model must refuse
    safe_edit: str = ""  # the instruction forbidden ones are pulled to ("" = no edit)
    benign_edits: list[str] = field(default_factory=list)  # instructions to keep working

    def __post_init__(self) -> None:
        if not self.id or not str(self.id).strip():
            raise ConceptError("concept has no id: name it with a neutral id, e.g. concept.id=nudity")
        self.prompts = [p.strip() for p in self.prompts if p and p.strip()]
        if not self.prompts:
            raise ConceptError(
                f"concept {self.id!r} has no prompts: give concept.prompts=[...] or concept.prompts_file=<file, one a line>"
            )

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "Concept":
        cfg = dict(cfg)
        prompts = list(cfg.pop("prompts", None) or [])
        edits = list(cfg.pop("forbidden_edits", None) or [])
        if f := cfg.pop("prompts_file", None):
            prompts += _read_lines(f, "prompts_file")
        if f := cfg.pop("edits_file", None):
            edits += _read_lines(f, "edits_file")
        known = {k: v for k, v in cfg.items() if k in cls.__dataclass_fields__}
        return cls(prompts=prompts, forbidden_edits=edits, **known)


def check_tokenizes(concept: Concept, tokenizer) -> None:
    """Stop early when a phrasing carries no words the model knows (it would erase nothing)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = set(getattr(tokenizer, "all_special_ids", []))
    for prompt in concept.prompts:
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        if not [i for i in ids if i != unk and i not in special]:
            raise ConceptError(
                f"concept {concept.id!r}: prompt {prompt!r} tokenises to nothing the model knows "
                f"(ids {ids}); rephrase it with words in the model's vocabulary"
            )


def _read_lines(path: str | Path, what: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConceptError(f"{what}: no file at {p} (one prompt or instruction a line)")
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

