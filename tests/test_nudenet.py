"""NudeNet on a real, harmless photograph (skimage's astronaut portrait), and its input channel order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("nudenet")
skdata = pytest.importorskip("skimage.data")

from erase.detect.base import Detection, Detector  # noqa: E402
from erase.detect.nudenet import NUDENET_LABELS, NudeNetDetector, pil_to_bgr  # noqa: E402


@pytest.fixture(scope="module")
def detector() -> NudeNetDetector:
    return NudeNetDetector()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())  # 512x512 RGB


def test_protocol_and_version(detector: NudeNetDetector) -> None:
    assert isinstance(detector, Detector)
    assert detector.labels == NUDENET_LABELS and len(set(detector.labels)) == 18
    from importlib.metadata import version

    assert detector.version.startswith(f"nudenet-{version('nudenet')}+320n-")
    assert len(detector.version.rsplit("-", 1)[1]) == 12  # short sha256 of the ONNX weights


def test_astronaut_face(detector: NudeNetDetector, astronaut: Image.Image) -> None:
    (dets,) = detector.detect([astronaut])
    assert all(isinstance(d, Detection) and d.label in NUDENET_LABELS for d in dets)
    faces = [d for d in dets if d.label == "FACE_FEMALE"]
    assert faces and max(d.score for d in faces) > 0.5
    w, h = astronaut.size
    for d in dets:
        assert d.box is not None
        x, y, bw, bh = d.box
        assert 0 <= x and 0 <= y and bw > 0 and bh > 0 and x + bw <= w and y + bh <= h
    face = max(faces, key=lambda d: d.score)
    assert face.box is not None and face.box[1] < h / 2  # the face is in the upper half of the portrait


def test_passes_bgr_like_cv2_imread(detector: NudeNetDetector, astronaut: Image.Image, monkeypatch, tmp_path) -> None:
    captured: list[np.ndarray] = []
    original = type(detector._detector).detect

    def spy(self, image_path):  # noqa: ANN001
        captured.append(np.array(image_path, copy=True))
        return original(self, image_path)

    monkeypatch.setattr(type(detector._detector), "detect", spy)
    (ours,) = detector.detect([astronaut])
    rgb = np.asarray(astronaut)
    (arr,) = captured
    assert arr.shape == rgb.shape and arr.dtype == np.uint8
    assert np.array_equal(arr, rgb[..., ::-1]) and not np.array_equal(arr, rgb)

    # Same numbers as NudeNet's own file-path route (what the papers use), which reads BGR via cv2.imread.
    path = tmp_path / "astronaut.png"
    astronaut.save(path)
    monkeypatch.undo()
    from_file = detector._detector.detect(str(path))
    assert [(d["class"], round(d["score"], 5)) for d in from_file] == [(d.label, round(d.score, 5)) for d in ours]


def test_channel_order_matters(detector: NudeNetDetector, astronaut: Image.Image) -> None:
    # Feeding RGB where NudeNet expects BGR changes scores: the reason the wrapper converts explicitly.
    bgr_scores = [d["score"] for d in detector._detector.detect(pil_to_bgr(astronaut))]
    rgb_scores = [d["score"] for d in detector._detector.detect(np.ascontiguousarray(np.asarray(astronaut)))]
    assert bgr_scores and rgb_scores
    assert abs(max(bgr_scores) - max(rgb_scores)) > 1e-3


def test_non_rgb_inputs_and_batches(detector: NudeNetDetector, astronaut: Image.Image) -> None:
    small = astronaut.resize((200, 150))  # non-square: exercises NudeNet's letterbox padding
    out = detector.detect([astronaut.convert("L"), astronaut.convert("RGBA"), small])
    assert len(out) == 3
    for d in out[2]:
        assert d.box is not None and d.box[0] + d.box[2] <= 200 and d.box[1] + d.box[3] <= 150


def test_bad_resolution_rejected() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        NudeNetDetector(inference_resolution=300)


def test_session_rebuilt_after_failure(astronaut: Image.Image) -> None:
    class Broken:
        def detect(self, image_path):  # noqa: ANN001
            raise RuntimeError("Concat node failed")

    det = NudeNetDetector()
    det._detector = Broken()
    (dets,) = det.detect([astronaut])  # rebuilt once, then succeeds
    assert any(d.label == "FACE_FEMALE" for d in dets)
