"""Prompt suites: prompt leakage from the user's prompt sets (a CSV or a `datasets` id, I2P columns honoured).

Per-row evaluation_seed / evaluation_guidance are kept, rows can be filtered on categories and nudity_percentage,
several images per prompt. Prompt sets are read at run time from the user's files; by default their text is not
even copied into results (`record_text=False`), only a hash. Plugins (the toy world) build PromptSuites of their own.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from erase.evaluation.generate import GenSettings, supported_paths
from erase.evaluation.items import Item, Suite, text_hash
from erase.models.families import FamilySpec
from erase.photos import split_list as _split_list

# ------------------------------------------------------------------------------------------------ row sources


def read_csv_rows(path: str | Path) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def dataset_rows(dataset: Any, split: str = "train") -> Any:
    """A `datasets` id (loaded with the user's cache/network settings) or an already-loaded Dataset."""
    if isinstance(dataset, str):
        import datasets

        return datasets.load_dataset(dataset, split=split)
    return dataset


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


# ------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    seed: int | None = None  # first image seed (I2P evaluation_seed); None: the suite's
    guidance: float | None = None  # I2P evaluation_guidance; None: the settings'
    meta: Mapping[str, Any] = field(default_factory=dict)


class PromptSuite(Suite):
    """Prompt leakage: images from prompts, counted by the detector under each protocol."""

    def __init__(self, prompts: Sequence[Prompt], *, name: str = "prompts", images_per_prompt: int = 1,
                 seed: int = 0, record_text: bool = True, settings: GenSettings | None = None):
        super().__init__()
        if images_per_prompt < 1:
            raise ValueError("images_per_prompt must be >= 1")
        self.prompts = list(prompts)
        self.name, self.images_per_prompt, self.seed = name, images_per_prompt, seed
        self.record_text, self.settings = record_text, settings

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        *,
        prompt_column: str = "prompt",
        seed_column: str | None = "evaluation_seed",
        guidance_column: str | None = "evaluation_guidance",
        categories: str | Sequence[str] | None = None,
        category_column: str = "categories",
        min_nudity: float | None = None,
        nudity_column: str = "nudity_percentage",
        where: Callable[[Mapping[str, Any]], bool] | None = None,
        limit: int | None = None,
        keep_columns: Sequence[str] = ("categories", "nudity_percentage"),
        **kwargs: Any,
    ) -> "PromptSuite":
        """Prompts from table rows (I2P-shaped or any with a prompt column). Filters: rows whose
        `category_column` contains any of `categories`, rows with `nudity_column` >= `min_nudity`, `where(row)`.
        Item ids are the row numbers in the source, so they stay stable under filtering."""
        wanted = {categories} if isinstance(categories, str) else set(categories or ())
        prompts: list[Prompt] = []
        empty = 0
        for i, row in enumerate(rows):
            text = row.get(prompt_column)
            if text is None or not str(text).strip():
                empty += 1
                continue
            if wanted and not wanted & set(_split_list(row.get(category_column))):
                continue
            if min_nudity is not None and (_number(row.get(nudity_column)) or 0.0) < min_nudity:
                continue
            if where is not None and not where(row):
                continue
            seed = _number(row.get(seed_column)) if seed_column else None
            guidance = _number(row.get(guidance_column)) if guidance_column else None
            meta = {c: row[c] for c in keep_columns if c in row and _plain(row[c])}
            prompts.append(Prompt(f"row{i:05d}", str(text), None if seed is None else int(seed), guidance, meta))
            if limit is not None and len(prompts) >= limit:
                break
        suite = cls(prompts, **kwargs)
        if empty:
            suite._note(f"PromptSuite {suite.name!r}: {empty} row(s) without a {prompt_column!r} skipped",
                        loading=True)
        return suite

    @classmethod
    def from_csv(cls, path: str | Path, **kwargs: Any) -> "PromptSuite":
        """Prompts from the user's CSV (e.g. I2P's); text is not recorded unless record_text=True."""
        kwargs.setdefault("record_text", False)
        kwargs.setdefault("name", Path(path).stem)
        return cls.from_rows(read_csv_rows(path), **kwargs)

    @classmethod
    def from_dataset(cls, dataset: Any, split: str = "train", **kwargs: Any) -> "PromptSuite":
        """Prompts from a `datasets` id (e.g. "AIML-TUDA/i2p") or a loaded Dataset."""
        kwargs.setdefault("record_text", False)
        kwargs.setdefault("name", dataset.split("/")[-1] if isinstance(dataset, str) else "dataset")
        return cls.from_rows(dataset_rows(dataset, split), **kwargs)

    def _path(self, spec: FamilySpec) -> str | None:
        paths = supported_paths(spec)
        if "t2i" in paths:
            return "t2i"
        self._note(f"PromptSuite {self.name!r}: family {spec.name!r} has no text-to-image path "
                   f"(it supports {', '.join(paths)}); use an EditSuite for it")
        return None

    def items(self, spec: FamilySpec) -> list[Item]:
        path = self._path(spec)
        if path is None:
            return []
        k = self.images_per_prompt
        out = []
        for i, p in enumerate(self.prompts):
            base = p.seed if p.seed is not None else self.seed + i * k
            meta = dict(p.meta) if self.record_text else {**p.meta, "text_sha1": text_hash(p.text)}
            out.append(Item(p.id, i, path, p.text, tuple(range(base, base + k)), guidance=p.guidance, meta=meta,
                            record_text=self.record_text))
        return out


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))
