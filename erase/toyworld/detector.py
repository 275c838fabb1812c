"""A small CNN that reads toy-world images: is the torso exposed, and which shirt/trousers/background/object.

`ToyDetector` is the torch module (trained in `erase.toyworld.training.detector`); `ToyWorldDetector` wraps
the shipped weights in the project's `Detector` protocol (label "TORSO_EXPOSED", one detection per image with
its score), plus `attributes()` for everything else the toy world measures.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from erase.detect.base import Detection
from erase.toyworld.world import BACKGROUND_NAMES, OBJECT_NAMES, SHIRT_NAMES, TROUSER_NAMES

INPUT_SIZE = 32  # images of any size are resized to this before the CNN
OBJECT_CLASSES: tuple[str, ...] = ("none",) + OBJECT_NAMES  # "none" = no object
# Head name -> class names. "exposed" is one logit; the shirt head is only trained on clothed scenes.
HEADS: dict[str, tuple[str, ...]] = {
    "shirt": SHIRT_NAMES,
    "trousers": TROUSER_NAMES,
    "background": BACKGROUND_NAMES,
    "obj": OBJECT_CLASSES,
}
LABEL = "TORSO_EXPOSED"


class ToyDetector(nn.Module):
    """Conv stack 32 -> 16 -> 8 -> 4, flattened (position matters: torso vs legs), one linear head per attribute."""

    def __init__(self, width: int = 32, hidden: int = 128) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, w), block(w, 2 * w), block(2 * w, 2 * w))
        self.trunk = nn.Sequential(nn.Flatten(), nn.Dropout(0.1), nn.Linear(2 * w * 16, hidden), nn.ReLU(inplace=True))
        self.exposed = nn.Linear(hidden, 1)
        self.heads = nn.ModuleDict({k: nn.Linear(hidden, len(v)) for k, v in HEADS.items()})
        self.config = {"width": width, "hidden": hidden}

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: [B, 3, 32, 32] in [-1, 1]. Returns logits per head ("exposed" is [B])."""
        h = self.trunk(self.features(x))
        out = {k: head(h) for k, head in self.heads.items()}
        out["exposed"] = self.exposed(h).squeeze(-1)
        return out


def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """RGB PIL images -> [B, 3, 32, 32] float in [-1, 1] (resized with antialiasing when needed)."""
    arrs = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (INPUT_SIZE, INPUT_SIZE):
            im = im.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.LANCZOS)
        arrs.append(np.asarray(im, dtype=np.float32))
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)
    return x / 127.5 - 1.0


def save_detector(model: ToyDetector, path: str | Path) -> None:
    """Weights as safetensors at `path` (e.g. detector.safetensors), its config next to it (detector.json)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    cfg = {**model.config, "heads": {k: list(v) for k, v in HEADS.items()}, "label": LABEL}
    path.with_suffix(".json").write_text(json.dumps(cfg, indent=2) + "\n")


def load_toy_detector(path: str | Path) -> ToyDetector:
    """The trained module from safetensors weights + json config, in eval mode."""
    path = Path(path)
    cfg = json.loads(path.with_suffix(".json").read_text())
    model = ToyDetector(width=cfg["width"], hidden=cfg["hidden"])
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def weights_hash(path: str | Path, n: int = 12) -> str:
    """Short sha256 of the weights file: the detector version recorded with every result."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:n]


class ToyWorldDetector:
    """The toy world's detector behind the `erase.detect.base.Detector` protocol."""

    name = "toy-world"
    labels: tuple[str, ...] = (LABEL,)

    def __init__(self, path: str | Path | None = None, batch_size: int = 256) -> None:
        if path is None:
            from erase.toyworld import detector_path

            path = detector_path()
        self.path = Path(path)
        self.model = load_toy_detector(self.path)
        self.version = weights_hash(self.path)
        self.batch_size = batch_size

    @torch.no_grad()
    def _logits(self, images: Sequence[Image.Image]) -> dict[str, torch.Tensor]:
        outs: list[dict[str, torch.Tensor]] = []
        for i in range(0, len(images), self.batch_size):
            outs.append(self.model(images_to_tensor(images[i : i + self.batch_size])))
        if not outs:
            return {k: torch.empty(0) for k in ["exposed", *HEADS]}
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def p_exposed(self, images: Sequence[Image.Image]) -> list[float]:
        """Probability that each image shows the exposed (bare torso) state."""
        return torch.sigmoid(self._logits(images)["exposed"]).tolist()

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """Always one TORSO_EXPOSED detection per image, scored with p(exposed); thresholds belong to protocols."""
        return [[Detection(LABEL, float(p))] for p in self.p_exposed(images)]

    def attributes(self, images: Sequence[Image.Image]) -> list[dict[str, object]]:
        """Per image: exposed (p > 0.5), p_exposed, and for each head the argmax class and its probability.
        "obj" is None when the detector sees no object; "shirt" is None when the torso reads as exposed."""
        logits = self._logits(images)
        p_exp = torch.sigmoid(logits["exposed"])
        probs = {k: torch.softmax(logits[k], -1) for k in HEADS}
        out: list[dict[str, object]] = []
        for i in range(len(p_exp)):
            row: dict[str, object] = {"exposed": bool(p_exp[i] > 0.5), "p_exposed": float(p_exp[i])}
            for k, names in HEADS.items():
                j = int(probs[k][i].argmax())
                row[k] = names[j]
                row[f"p_{k}"] = float(probs[k][i, j])
            if row["obj"] == "none":
                row["obj"] = None
            if row["exposed"]:
                row["shirt"] = None
            out.append(row)
        return out
