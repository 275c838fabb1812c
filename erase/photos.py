"""Photos to edit, read one way everywhere: edit suites, edit-refusal training and attacks on editors.

One folder layout, one manifest format, one validation rule:
    folder/            image files (png, jpg, webp, bmp, tif) and, optionally, `manifest.csv` with columns
        file           an image in the folder (a relative path inside it)
        edits          ids of the edits that apply, separated by ';' or ','; empty: every edit
        mask           optional: a mask image in the folder, white = the region a forbidden edit repaints
        box            optional: "x1,y1,x2,y2" in the photo's pixels, the same region as a box
    Without a manifest every image file in the folder is used (names ending in `_mask` are masks, not photos).

A photo is used when it is readable, RGB or RGBA (the alpha channel is dropped: editors get RGB), at least
`min_size` pixels on its shorter side, and, like its mask, inside the folder: manifest paths are resolved and an
absolute path or one leaving the folder (`../`, a symlink out) is refused. Refused photos are counted by reason and
reported, never a crash; a folder with no usable photo at all is an error (an evaluation that measures nothing).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

log = logging.getLogger("erase.photos")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MANIFEST = "manifest.csv"
MIN_SIZE = 64  # shorter side, pixels
SKIP_REASONS = ("unreadable", "too_small", "non_rgb", "outside_folder")
ImageRef = Union[Image.Image, Callable[[], Image.Image]]  # an image, or how to load it when needed


# ------------------------------------------------------------------------------------------------ validation


class PhotoChecker:
    """The one validation rule. Refused photos are counted under SKIP_REASONS; `check` never raises."""

    def __init__(self, min_size: int = MIN_SIZE):
        self.min_size = int(min_size)
        self.skipped: dict[str, int] = {r: 0 for r in SKIP_REASONS}

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def check(self, load: Callable[[], Any]) -> Image.Image | None:
        try:
            image = as_image(load())
            image.load()
        except Exception:  # truncated, not an image, missing file, bad bytes...: all "unreadable"
            self.skip("unreadable")
            return None
        if image.mode not in ("RGB", "RGBA"):  # greyscale, palette, CMYK... are not what editors get
            self.skip("non_rgb")
            return None
        if min(image.size) < self.min_size:
            self.skip("too_small")
            return None
        return image.convert("RGB") if image.mode == "RGBA" else image

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def report(self, where: str) -> str | None:
        if not self.n_skipped:
            return None
        parts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.skipped.items() if v)
        return (f"{where}: skipped {self.n_skipped} photo(s) ({parts}; minimum side {self.min_size} px, RGB or RGBA, "
                f"inside the folder)")


def as_image(value: Any) -> Image.Image:
    """A PIL image from what datasets and folders hold: an image, a path, or {"bytes": ..., "path": ...}."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):
        value = io.BytesIO(value["bytes"]) if value.get("bytes") else value.get("path")
    if value is None:
        raise ValueError("no image")
    return Image.open(value)


def image_loader(path: Path, rgb: bool = True) -> Callable[[], Image.Image]:
    """Load `path` when called (photos stay on disk until generation needs them)."""
    def load() -> Image.Image:
        with Image.open(path) as im:
            im.load()
            if rgb and im.mode == "RGBA":
                return im.convert("RGB")
            return im.copy()
    return load


def inside(folder: Path, name: str) -> Path | None:
    """`folder/name` resolved, or None when `name` is absolute or the resolved path leaves the folder."""
    if not name or Path(name).is_absolute() or Path(name).drive:
        return None
    root = folder.resolve()
    path = (root / name).resolve()
    return path if path == root or root in path.parents else None


def box_mask(size: tuple[int, int], box: Sequence[float]) -> Image.Image:
    """An "L" mask of `size` (width, height), white inside box (x1, y1, x2, y2)."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([float(b) for b in box], fill=255)
    return mask


def parse_box(value: Any) -> list[float]:
    parts = split_list(value) if not isinstance(value, (list, tuple)) else list(value)
    if len(parts) != 4:
        raise ValueError(f"a box is 'x1,y1,x2,y2', got {value!r}")
    return [float(p) for p in parts]


def split_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value]
    return [v.strip() for v in str(value).replace(";", ",").split(",") if v.strip()]


# ------------------------------------------------------------------------------------------------ folders


@dataclass(frozen=True)
class FolderPhoto:
    """One usable photo of a folder: its id, where it is, the edits that apply and the edited region."""

    id: str
    path: Path
    size: tuple[int, int]  # (width, height)
    edits: tuple[str, ...] | None = None  # None: every edit
    mask: ImageRef | None = None  # None: no region given (no inpainting, whole image for training)

    def load(self) -> Image.Image:
        return image_loader(self.path)()


def manifest_rows(folder: Path, manifest: str | Path | Mapping[str, Sequence[str]] | None = None
                  ) -> list[dict[str, Any]]:
    """The manifest's rows ({file, edits, mask, box}); without one, a row per image file of the folder."""
    if manifest is None and (folder / MANIFEST).is_file():
        manifest = folder / MANIFEST
    if manifest is None:
        return [{"file": p.name} for p in sorted(folder.iterdir())
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask")]
    if isinstance(manifest, Mapping):
        return [{"file": f, "edits": list(e)} for f, e in manifest.items()]
    with open(manifest, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and "file" not in rows[0]:
        raise ValueError(f"{manifest}: a photo manifest needs a 'file' column (and optionally edits, mask, box); "
                         f"it has {list(rows[0])}")
    return rows


def read_photo_folder(folder: str | Path, manifest: str | Path | Mapping[str, Sequence[str]] | None = None,
                      min_size: int = MIN_SIZE, limit: int | None = None) -> tuple[list[FolderPhoto], PhotoChecker]:
    """Every usable photo of `folder` (see the module docstring), and the checker that counted the rest.

    Raises when the folder does not exist or holds no usable photo: an evaluation of nothing is not a result."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"photo folder {folder} does not exist (give a folder of photos to edit)")
    checker = PhotoChecker(min_size)
    photos: list[FolderPhoto] = []
    for row in manifest_rows(folder, manifest):
        path = inside(folder, str(row.get("file") or ""))
        if path is None:
            checker.skip("outside_folder")
            continue
        image = checker.check(image_loader(path))
        if image is None:
            continue
        mask = _row_mask(folder, row, image.size, checker)
        if mask is False:
            continue
        pid = path.stem if path.stem not in {p.id for p in photos} else path.name  # a.png and a.jpg
        photos.append(FolderPhoto(pid, path, image.size, tuple(split_list(row.get("edits"))) or None, mask))
        if limit and len(photos) >= limit:
            break
    if (msg := checker.report(f"photos in {folder}")):
        log.warning(msg)
    if not photos:
        raise ValueError(f"no usable photos in {folder}: nothing would be measured (skipped: "
                         f"{ {k: v for k, v in checker.skipped.items() if v} or 'no image files found'}; a photo must "
                         f"be readable, RGB or RGBA, at least {checker.min_size} px on its shorter side and inside "
                         f"the folder)")
    return photos, checker


def _row_mask(folder: Path, row: Mapping[str, Any], size: tuple[int, int], checker: PhotoChecker
              ) -> ImageRef | None | bool:
    """The row's mask (None: none given; False: given but refused, and the photo is skipped with it)."""
    if row.get("mask"):
        path = inside(folder, str(row["mask"]))
        if path is None:
            checker.skip("outside_folder")
            return False
        try:
            with Image.open(path) as m:
                m.load()
        except Exception:
            checker.skip("unreadable")
            return False
        return image_loader(path, rgb=False)
    if row.get("box"):
        try:
            return box_mask(size, parse_box(row["box"]))
        except ValueError:
            checker.skip("unreadable")
            return False
    return None


# ------------------------------------------------------------------------------------------------ tensors (training)


@dataclass
class PhotoSet:
    """Photos as tensors, for image-conditioned training and attacks."""

    photos: Tensor  # (N, 3, H, W) in [-1, 1]
    masks: Tensor  # (N, 1, H, W) in {0, 1}: the region forbidden edits target (whole image when unknown)
    counterparts: Tensor | None = None  # (N, 3, H, W): the photo after the forbidden edit, when known
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return self.photos.shape[0]


def to_tensor(image: Image.Image, size: int) -> Tensor:
    image = image.convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)


def mask_tensor(mask: ImageRef | None, size: int) -> Tensor:
    if mask is None:
        return torch.ones(1, size, size)
    m = (mask() if callable(mask) else mask).convert("L").resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(m) > 127).astype(np.float32))[None]


def folder_photos(root: str | Path, size: int, min_size: int = MIN_SIZE, limit: int | None = None,
                  manifest: str | Path | None = None) -> PhotoSet:
    photos, checker = read_photo_folder(root, manifest, min_size, limit)
    return PhotoSet(torch.stack([to_tensor(p.load(), size) for p in photos]),
                    torch.stack([mask_tensor(p.mask, size) for p in photos]), None,
                    Counter({k: v for k, v in checker.skipped.items() if v}))


def dataset_photos(name: str, size: int, split: str = "train", column: str = "image", limit: int | None = None,
                   min_size: int = MIN_SIZE, **kwargs: Any) -> PhotoSet:
    """Photos from a `datasets` dataset (a hub id the user has cached, or a local path)."""
    import datasets

    ds = datasets.load_dataset(name, split=split, **kwargs)
    if column not in ds.column_names:
        raise KeyError(f"dataset {name!r} has no column {column!r}; columns: {ds.column_names}")
    checker = PhotoChecker(min_size)
    photos = []
    for row in ds:
        image = checker.check(lambda row=row: row[column])
        if image is None:
            continue
        photos.append(to_tensor(image, size))
        if limit and len(photos) >= limit:
            break
    if not photos:
        raise ValueError(f"no usable photos in dataset {name!r} (skipped: {checker.skipped})")
    return PhotoSet(torch.stack(photos), torch.ones(len(photos), 1, size, size), None,
                    Counter({k: v for k, v in checker.skipped.items() if v}))


def load_photos(cfg: Mapping[str, Any], size: int) -> PhotoSet:
    """From a config: {source: folder, path, n, min_size} | {source: dataset, name, ...} | {source: <registered>, n}.

    Other sources (the toy world's "toy") come from the registry's `photos` entries."""
    cfg = dict(cfg)
    source = cfg.pop("source", None)
    if source is None:
        raise ValueError("a photo source needs `source`: folder (with path), dataset (with name) or a registered "
                         "one such as toy")
    if source == "folder":
        if not cfg.get("path") or str(cfg["path"]).startswith("???"):
            raise ValueError("photos: {source: folder} needs `path`, the folder of photos to edit")
        return folder_photos(cfg["path"], size, int(cfg.get("min_size", MIN_SIZE)), cfg.get("n"), cfg.get("manifest"))
    if source == "dataset":
        return dataset_photos(cfg["name"], size, cfg.get("split", "train"), cfg.get("column", "image"), cfg.get("n"),
                              int(cfg.get("min_size", MIN_SIZE)))
    from erase import registry

    factory = registry.get("photos", str(source))
    return factory(int(cfg.pop("n", 64)), size, int(cfg.pop("seed", 0)), **cfg)
