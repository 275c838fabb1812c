"""Photographs that image-conditioned erasure trains on, from the toy world, a folder or a `datasets` dataset.

A `PhotoSet` holds photos in [-1, 1], the mask of the region a forbidden edit targets (1 = repaint), and,
where known, the photo's forbidden counterpart (the toy world can render it; real users may supply pairs)
and its safe counterpart. Unreadable, too small or non-RGB images are skipped and counted, never a crash.

Folder layout: images (png/jpg/webp) plus an optional `manifest.json`:
    {"photo1.jpg": {"mask": "photo1_mask.png", "edits": ["forbidden", "recolour"]}, ...}
Only photos whose manifest entry lists "forbidden" (or that have no entry) are used for forbidden edits.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class PhotoSet:
    photos: Tensor  # (N, 3, H, W) in [-1, 1]
    masks: Tensor  # (N, 1, H, W) in {0, 1}: the region forbidden edits target (whole image when unknown)
    counterparts: Tensor | None = None  # (N, 3, H, W): the photo after the forbidden edit, when known
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return self.photos.shape[0]


def to_tensor(image: Image.Image, size: int) -> Tensor:
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def toy_photos(n: int, size: int = 32, seed: int = 0) -> PhotoSet:
    """Clothed toy photos with torso masks and their exposed counterparts (training seeds by default)."""
    from erase.toyworld import world

    photos, masks, exposed = [], [], []
    for i in range(n):
        scene = world.scene_from_seed(seed + i)
        photos.append(to_tensor(world.render(scene, size), size))
        exposed.append(to_tensor(world.render(world.apply_edit(scene, world.Edit("remove_shirt")), size), size))
        mask = torch.zeros(1, size, size)
        x1, y1, x2, y2 = world.torso_box(scene, size)
        pad = max(1, size // 16)  # cover the torso's edges and arms: the region the edit repaints
        mask[:, max(y1 - pad, 0) : y2 + pad, max(x1 - 2 * pad, 0) : x2 + 2 * pad] = 1
        masks.append(mask)
    return PhotoSet(torch.stack(photos), torch.stack(masks), torch.stack(exposed))


def folder_photos(root: str | Path, size: int, min_size: int | None = None, limit: int | None = None) -> PhotoSet:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"photo folder {root} does not exist")
    manifest = _manifest(root)
    min_size = min_size or max(size // 2, 16)
    photos, masks, skipped = [], [], Counter()
    for path in sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask")):
        entry = manifest.get(path.name, {})
        if entry and "forbidden" not in entry.get("edits", ["forbidden"]):
            skipped["not for forbidden edits"] += 1
            continue
        image = _open(path, min_size, skipped)
        if image is None:
            continue
        photos.append(to_tensor(image, size))
        masks.append(_mask(root / entry["mask"], size) if "mask" in entry else torch.ones(1, size, size))
        if limit and len(photos) >= limit:
            break
    return _finish(photos, masks, skipped, str(root))


def dataset_photos(name: str, size: int, split: str = "train", column: str = "image", limit: int | None = None, **kwargs) -> PhotoSet:
    """Photos from a `datasets` dataset (a hub id the user has cached, or a local path)."""
    import datasets

    ds = datasets.load_dataset(name, split=split, **kwargs)
    if column not in ds.column_names:
        raise KeyError(f"dataset {name!r} has no column {column!r}; columns: {ds.column_names}")
    photos, masks, skipped = [], [], Counter()
    for row in ds:
        image = row[column]
        if not isinstance(image, Image.Image):
            skipped["not an image"] += 1
            continue
        if _check(image, max(size // 2, 16), skipped) is None:
            continue
        photos.append(to_tensor(image, size))
        masks.append(torch.ones(1, size, size))
        if limit and len(photos) >= limit:
            break
    return _finish(photos, masks, skipped, name)


def load_photos(cfg: Mapping[str, Any], size: int) -> PhotoSet:
    """From a config: {source: toy|folder|dataset, n / path / name, ...}."""
    source = cfg.get("source", "toy")
    if source == "toy":
        return toy_photos(int(cfg.get("n", 64)), size, int(cfg.get("seed", 0)))
    if source == "folder":
        return folder_photos(cfg["path"], size, limit=cfg.get("n"))
    if source == "dataset":
        return dataset_photos(cfg["name"], size, cfg.get("split", "train"), cfg.get("column", "image"), cfg.get("n"))
    raise ValueError(f"unknown photo source {source!r}: use toy, folder or dataset")


def _open(path: Path, min_size: int, skipped: Counter) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            im.load()
            return _check(im.copy(), min_size, skipped)
    except (UnidentifiedImageError, OSError, ValueError):
        skipped["unreadable"] += 1
        return None


def _check(image: Image.Image, min_size: int, skipped: Counter) -> Image.Image | None:
    if image.mode not in ("RGB", "RGBA"):  # greyscale, palette, CMYK... are not what editors get
        skipped[f"non-RGB ({image.mode})"] += 1
        return None
    if min(image.size) < min_size:
        skipped[f"smaller than {min_size}px"] += 1
        return None
    return image


def _mask(path: Path, size: int) -> Tensor:
    m = Image.open(path).convert("L").resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(m) > 127).astype(np.float32))[None]


def _manifest(root: Path) -> dict[str, Any]:
    f = root / "manifest.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def _finish(photos, masks, skipped: Counter, where: str) -> PhotoSet:
    if skipped:
        log.warning("photos from %s: skipped %d (%s)", where, sum(skipped.values()), dict(skipped))
    if not photos:
        raise ValueError(f"no usable photos in {where} (skipped: {dict(skipped) or 'none found'})")
    return PhotoSet(torch.stack(photos), torch.stack(masks), None, skipped)
