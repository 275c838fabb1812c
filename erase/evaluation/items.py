"""Items and suites: what one evaluation unit is, and what every suite provides (items, scoring, summary).

An `Item` is one prompt or edit generated once per seed through one generation path; a `Suite` is a named set of
items plus how they are scored and summarised. Prompt suites, edit suites, utility suites and attacks
(erase.evaluation.attack_items) are all suites of the one engine (erase.evaluation.harness).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from PIL import Image

from erase.detect.base import Detection
from erase.detect.protocols import Protocol, count
from erase.evaluation.generate import GenSettings
from erase.models.families import FamilySpec
from erase.photos import ImageRef
from erase.stats import Rate

log = logging.getLogger("erase.evaluation")

EDIT_PATHS: tuple[str, ...] = ("img2img", "inpaint", "instruct", "kontext")


def load_ref(ref: ImageRef) -> Image.Image:
    return ref() if callable(ref) else ref


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Item:
    """One prompt or edit, generated once per seed. Items sharing `batch_key` can share a pipeline call."""

    id: str  # unique within its suite
    index: int  # position in the suite: orders results and assigns shards
    path: str  # generation path (see generate.PATHS)
    text: str  # prompt, or the instruction for instruct/kontext
    seeds: tuple[int, ...]
    image: ImageRef | None = None  # source photo (edit paths)
    mask: ImageRef | None = None  # inpainting mask, white = repaint
    strength: float | None = None  # img2img/inpaint strength (None: the settings')
    guidance: float | None = None  # per-item guidance (I2P's evaluation_guidance)
    expected: Mapping[str, Any] | None = None  # attributes the image should show (toy utility)
    changed: tuple[str, ...] = ()  # attributes an edit changes (toy utility)
    meta: Mapping[str, Any] = field(default_factory=dict)  # recorded as is (must be JSON-serialisable)
    record_text: bool = True
    attack: str | None = None  # set by attack suites: part of the result key
    settings: Mapping[str, Any] = field(default_factory=dict)  # generation-setting overrides (GenSettings names)
    # Images from elsewhere than the stock pipeline (an attack's embeddings, latents or relearned weights):
    # called with the unit's seeds, returns one image per seed.
    render: Callable[[Sequence[int]], list[Image.Image]] | None = None

    @property
    def label(self) -> str:
        """The generation route, for per-path tables: 't2i', 'img2img@0.75', 'inpaint', ..."""
        return f"{self.path}@{self.strength:g}" if self.path == "img2img" and self.strength is not None else self.path

    @property
    def batch_key(self) -> tuple:
        custom = self.id if self.render is not None else None  # a renderer makes only its own item's images
        return (self.path, self.strength, self.guidance, tuple(sorted(map(str, self.settings.items()))), custom)


class Suite:
    """Base: a named set of items plus how they are scored and summarised."""

    name: str = "suite"
    utility: bool = False
    attack: bool = False  # attack suites: summarised under "attacks", run by the first rank of a sharded run
    settings: GenSettings | None = None  # overrides the evaluation's settings for this suite

    def __init__(self) -> None:
        self.load_notes: list[str] = []  # skipped while loading (bad rows, bad photos): kept for every run
        self.notes: list[str] = []  # what was skipped and why in this evaluation; shown in the report

    def _note(self, message: str, loading: bool = False) -> None:
        if loading and message not in self.load_notes:
            self.load_notes.append(message)
        if message not in self.notes:
            self.notes.append(message)
            log.warning(message)

    def reset_notes(self) -> None:
        """Start an evaluation's notes afresh (the same suite object may be run on several models)."""
        self.notes = list(self.load_notes)

    def items(self, spec: FamilySpec) -> list[Item]:
        raise NotImplementedError

    def item_groups(self, spec: FamilySpec) -> Iterator[list[Item]]:
        """Items in groups the engine plans and runs one after the other (ids unique across groups). One group
        by default; an attack suite yields one per attack target, so an attack runs right before its images
        are made and an interruption loses at most one target's work."""
        yield self.items(spec)

    def resume_from(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Called with the records already on disk before `items`: suites whose items are costly to produce
        (attacks) rebuild finished items from them instead of recomputing. Default: nothing to do."""

    def score(self, items: Sequence[Item], images: Sequence[Image.Image], sources: Sequence[Image.Image | None],
              detector: Any) -> list[dict[str, Any]]:
        """Per-image fields to record beyond detections (utility suites: attributes, CLIP score...)."""
        return [{} for _ in images]

    def summarise(self, records: Sequence[Mapping[str, Any]], protocols: Sequence[Protocol],
                  image_root: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(summary for one variant, table rows) from that variant's records of this suite."""
        return leakage_summary(self.name, records, protocols)


# ------------------------------------------------------------------------------------------------ leakage summary


def detections_of(record: Mapping[str, Any]) -> list[Detection]:
    return [Detection(d["label"], float(d["score"]), tuple(d["box"]) if d.get("box") else None)
            for d in record.get("detections", [])]


def leakage_summary(suite: str, records: Sequence[Mapping[str, Any]], protocols: Sequence[Protocol]
                    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Each protocol's rate record over all records, plus table rows overall and per generation route."""
    summary: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    routes = list(dict.fromkeys(r.get("route", r.get("path", "")) for r in records))
    for p in protocols:
        for route in ([None] + routes if len(routes) > 1 else [None]):
            sel = [r for r in records if route is None or r.get("route", r.get("path")) == route]
            if not sel:
                continue
            res = count(p, [detections_of(r) for r in sel], [str(r["item"]) for r in sel])
            rate = rate_record(res.flagged, res.n_groups if p.unit == "prompt" else res.n_images)
            if route is None:
                summary[p.name] = rate
            rows.append({"suite": suite, "variant": sel[0].get("variant"), "route": route or "all",
                         "protocol": p.name, "unit": p.unit, "threshold": p.threshold, "n_images": res.n_images,
                         "n_groups": res.n_groups, "flagged": res.flagged, **rate, "rate": round(res.rate, 4)})
    return summary, rows


def rate_record(k: int, n: int) -> dict[str, Any]:
    """{"rate", "k", "n", "ci95"}: the Wilson 95% interval of k in n (erase.stats). Counts of parts per image
    (the "parts" unit) can exceed n: that is a mean, not a proportion, and gets no interval."""
    if 0 <= k <= n:
        return Rate(k, n).as_record()
    return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci95": None}


def rate_value(value: Any) -> float:
    """The number of a rate record (or of a bare number)."""
    return float(value["rate"]) if isinstance(value, Mapping) else float(value)
