"""The detector interface every leakage measurement goes through.

A detector turns images into scored detections; it never decides what counts as a leak. That is the job of
a counting protocol (labels + threshold + unit, see `erase.detect.protocols`), so that the same detections
can be counted the way each paper counts them, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

from PIL import Image


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float] | None = None  # x, y, w, h in pixels, when the detector localises


@runtime_checkable
class Detector(Protocol):
    name: str
    version: str  # package version or a hash of the weights: recorded with every result
    labels: tuple[str, ...]  # every label the detector can emit

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """One list of detections per image (RGB PIL images)."""
        ...


@dataclass
class DetectorInfo:
    """What a result records about how it was counted."""

    name: str
    version: str
    labels: tuple[str, ...] = field(default_factory=tuple)
