"""NudeNet v3 behind the `Detector` interface.

Why a wrapper and not `NudeDetector` directly:
- NudeNet treats a numpy array like the output of `cv2.imread`, i.e. BGR. Papers pass file paths, so to
  reproduce their numbers a PIL (RGB) image must be handed over as BGR. Passing RGB silently changes scores
  (on `skimage.data.astronaut()` FACE_FEMALE moves from 0.72 to 0.81), enough to cross a threshold.
- The ONNX graph has a Concat that fails unless the input side is a multiple of 32 (the "concat error"
  evaluators report); we reject such resolutions up front and rebuild the session once if a run still fails.
- Results must record which detector counted them: `version` pins the package and the exact ONNX weights.
"""

from __future__ import annotations

import hashlib
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from erase.detect.base import Detection

# The order NudeNet's 320n/640m heads emit classes in (nudenet/nudenet.py, v3.4).
NUDENET_LABELS: tuple[str, ...] = (
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
)


def _import_nudenet() -> Any:
    # Lazy: importing nudenet pulls in cv2 and onnxruntime, which most of the framework never needs.
    try:
        import nudenet
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "NudeNetDetector needs the 'nudenet' package (pip install 'nudenet>=3.4'); "
            f"importing it failed: {e}"
        ) from e
    return nudenet


def pil_to_bgr(image: Image.Image) -> np.ndarray:
    """RGB PIL image -> contiguous uint8 HxWx3 BGR array, the layout NudeNet expects from numpy input."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[..., ::-1])


def _short_sha256(path: Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def _to_detection(raw: dict) -> Detection:
    x, y, w, h = (float(v) for v in raw["box"])  # NudeNet's boxes are already x, y, w, h in pixels
    return Detection(label=str(raw["class"]), score=float(raw["score"]), box=(x, y, w, h))


class NudeNetDetector:
    """NudeNet v3 part detector. Scores below NudeNet's built-in 0.2 cut-off are never returned."""

    name = "nudenet"
    labels: tuple[str, ...] = NUDENET_LABELS

    def __init__(self, model_path: str | Path | None = None, inference_resolution: int = 320) -> None:
        if inference_resolution <= 0 or inference_resolution % 32:
            raise ValueError(
                f"inference_resolution must be a positive multiple of 32 (got {inference_resolution}); "
                "other sizes make the ONNX graph fail in a Concat node"
            )
        nudenet = _import_nudenet()
        self._nudenet = nudenet
        bundled = Path(nudenet.__file__).parent / "320n.onnx"
        self.model_path = Path(model_path) if model_path else bundled
        if not self.model_path.is_file():
            raise FileNotFoundError(f"NudeNet ONNX model not found: {self.model_path}")
        self.inference_resolution = inference_resolution
        self.version = f"nudenet-{metadata.version('nudenet')}+{self.model_path.stem}-{_short_sha256(self.model_path)}"
        self._detector = self._new_detector()

    def _new_detector(self) -> Any:
        return self._nudenet.NudeDetector(
            model_path=str(self.model_path), inference_resolution=self.inference_resolution
        )

    def _detect_one(self, bgr: np.ndarray) -> list[dict]:
        try:
            return self._detector.detect(bgr)
        except Exception:
            # A failed ONNX run can leave the session unusable; rebuild it once, then let errors surface.
            self._detector = self._new_detector()
            return self._detector.detect(bgr)

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        # One image per ONNX run: it keeps memory flat and one bad image cannot poison a batch.
        out: list[list[Detection]] = []
        for image in images:
            raw = self._detect_one(pil_to_bgr(image))
            out.append([_to_detection(d) for d in raw])
        return out

    def __repr__(self) -> str:
        return f"NudeNetDetector(version={self.version!r}, inference_resolution={self.inference_resolution})"
