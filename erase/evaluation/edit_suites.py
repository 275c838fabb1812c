"""Edit suites: photo-edit leakage, every photo x every forbidden edit that applies x every editing path.

SDEdit at given strengths, inpainting over the region the edit targets, instruction editing, Kontext. Photos come
from the user's folder or `datasets` id, read by erase.photos (one manifest format, one validation rule); edits
from the user's CSV (id, instruction, prompt). Plugins (the toy world) build EditSuites of their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence, Iterable

from PIL import Image

from erase.evaluation.generate import GenSettings, supported_paths
from erase.evaluation.items import EDIT_PATHS, Item, Suite, text_hash
from erase.evaluation.prompt_suites import dataset_rows, read_csv_rows
from erase.models.families import FamilySpec
from erase.photos import (MIN_SIZE, SKIP_REASONS, ImageRef, PhotoChecker, as_image, box_mask, image_loader,
                          parse_box, read_photo_folder, split_list as _split_list)

@dataclass(frozen=True)
class EditSpec:
    """One edit, worded for each path: an instruction (instruct/Kontext) and a target prompt (img2img/inpaint)."""

    id: str
    instruction: str
    prompt: str

    @staticmethod
    def from_csv(path: str | Path) -> list["EditSpec"]:
        """Edits from the user's CSV with columns id, instruction, prompt (read at run time)."""
        return [EditSpec(str(r["id"]), str(r["instruction"]), str(r.get("prompt") or r["instruction"]))
                for r in read_csv_rows(path)]


@dataclass(frozen=True)
class EditCase:
    """One photo with one edit: everything an item of any edit path needs."""

    id: str
    photo: ImageRef
    instruction: str
    prompt: str
    mask: ImageRef | None = None  # the region the edit targets; no mask, no inpainting item
    expected: Mapping[str, Any] | None = None
    changed: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Photo:
    id: str
    image: ImageRef
    edits: tuple[str, ...] | None = None  # ids of the edits that apply; None: all
    mask: ImageRef | None = None


class _EditItems:
    """Shared by EditSuite and UtilitySuite: edit cases -> items for every path the model supports."""

    def __init__(self, cases: Sequence[EditCase], paths: Sequence[str], strengths: Sequence[float],
                 images_per_edit: int, seed: int):
        unknown = set(paths) - set(EDIT_PATHS)
        if unknown:
            raise ValueError(f"unknown edit paths {sorted(unknown)}; choose from {EDIT_PATHS}")
        self.cases, self.paths, self.strengths = list(cases), tuple(paths), tuple(strengths)
        self.images_per_edit, self.seed = images_per_edit, seed

    def build(self, suite: Suite, spec: FamilySpec, record_text: bool, start: int = 0) -> list[Item]:
        available = supported_paths(spec)
        paths = [p for p in self.paths if p in available]
        missing = [p for p in self.paths if p not in available]
        if missing:
            suite._note(f"{type(suite).__name__} {suite.name!r}: family {spec.name!r} has no {', '.join(missing)} "
                        f"path (it supports {', '.join(available)}); those edits are not measured")
        no_mask = 0
        items: list[Item] = []
        k = self.images_per_edit
        for ci, case in enumerate(self.cases):
            seeds = tuple(range(self.seed + ci * k, self.seed + ci * k + k))  # same noise on every path
            for path in paths:
                if path == "inpaint" and case.mask is None:
                    no_mask += 1
                    continue
                text = case.instruction if path in ("instruct", "kontext") else case.prompt
                strengths = self.strengths if path == "img2img" else (None,)
                for s in strengths:
                    meta = {**case.meta, "case": case.id}
                    if not record_text:
                        meta["text_sha1"] = text_hash(text)
                    item = Item(case.id, 0, path, text, seeds, image=case.photo,
                                mask=case.mask if path == "inpaint" else None, strength=s,
                                expected=case.expected, changed=case.changed, meta=meta, record_text=record_text)
                    items.append(item)
        if no_mask:
            suite._note(f"{type(suite).__name__} {suite.name!r}: {no_mask} photo/edit pair(s) have no mask of the "
                        f"edited region; not measured through inpainting")
        return [replace(it, id=f"{it.id}:{it.label}", index=start + i) for i, it in enumerate(items)]


class EditSuite(Suite):
    """Photo-edit leakage: every photo x every forbidden edit that applies to it x every editing path."""

    def __init__(self, cases: Sequence[EditCase], *, name: str = "edits", paths: Sequence[str] = EDIT_PATHS,
                 strengths: Sequence[float] = (0.5, 0.75), images_per_edit: int = 1, seed: int = 0,
                 record_text: bool = True, settings: GenSettings | None = None,
                 skipped: Mapping[str, int] | None = None):
        super().__init__()
        self.name, self.record_text, self.settings = name, record_text, settings
        self.edits = _EditItems(cases, paths, strengths, images_per_edit, seed)
        self.skipped = dict(skipped or {r: 0 for r in SKIP_REASONS})

    @property
    def cases(self) -> list[EditCase]:
        return self.edits.cases

    @classmethod
    def from_photos(cls, photos: Iterable[Photo], edits: Sequence[EditSpec], **kwargs: Any) -> "EditSuite":
        by_id = {e.id: e for e in edits}
        cases = []
        for photo in photos:
            unknown = [e for e in photo.edits or () if e not in by_id]
            if unknown:
                raise ValueError(f"photo {photo.id!r} lists unknown edit id(s) {unknown}; known: {sorted(by_id)}")
            for e in (edits if photo.edits is None else [by_id[x] for x in photo.edits]):
                cases.append(EditCase(f"{photo.id}~{e.id}", photo.image, e.instruction, e.prompt, photo.mask,
                                      meta={"photo": photo.id, "edit": e.id}))
        return cls(cases, **kwargs)

    @classmethod
    def from_folder(cls, folder: str | Path, edits: Sequence[EditSpec] | str | Path,
                    manifest: str | Path | Mapping[str, Sequence[str]] | None = None, min_size: int = MIN_SIZE,
                    **kwargs: Any) -> "EditSuite":
        """Photos from a folder, read by erase.photos (one manifest format, `manifest.csv`: file, edits, mask,
        box; or a {file: [edit ids]} mapping). Without a manifest every image file takes every edit (and, without
        a mask, is not inpainted). Refused photos are counted in `skipped`; no usable photo at all is an error."""
        folder = Path(folder)
        edit_list = EditSpec.from_csv(edits) if isinstance(edits, (str, Path)) else list(edits)
        found, checker = read_photo_folder(folder, manifest, min_size)
        photos = [Photo(p.id, image_loader(p.path), p.edits, p.mask) for p in found]
        kwargs.setdefault("name", folder.name or "edits")
        kwargs.setdefault("record_text", False)
        suite = cls.from_photos(photos, edit_list, skipped=checker.skipped, **kwargs)
        if (msg := checker.report(f"EditSuite {suite.name!r} ({folder})")):
            suite._note(msg, loading=True)
        return suite

    @classmethod
    def from_dataset(cls, dataset: Any, edits: Sequence[EditSpec] | str | Path, split: str = "train",
                     image_column: str = "image", edits_column: str = "edits", mask_column: str = "mask",
                     box_column: str = "box", id_column: str | None = None, min_size: int = MIN_SIZE,
                     **kwargs: Any) -> "EditSuite":
        """Photos from a `datasets` image dataset (id or loaded); the manifest is in its columns."""
        ds = dataset_rows(dataset, split)
        edit_list = EditSpec.from_csv(edits) if isinstance(edits, (str, Path)) else list(edits)
        checker = PhotoChecker(min_size)
        photos = []
        for i in range(len(ds)):
            try:
                row = ds[i]  # decoding the row decodes its image: a broken one fails here
            except Exception:
                checker.skipped["unreadable"] += 1
                continue
            image = checker.check(lambda row=row: row[image_column])
            if image is None:
                continue
            mask = None
            if row.get(mask_column) is not None:
                mask_image = row[mask_column]
                mask = mask_image if isinstance(mask_image, Image.Image) else None
            elif row.get(box_column):
                mask = box_mask(image.size, parse_box(row[box_column]))
            pid = str(row[id_column]) if id_column else f"img{i:05d}"
            photos.append(Photo(pid, lambda i=i: as_image(ds[i][image_column]),
                                tuple(_split_list(row.get(edits_column))) or None, mask))
        if not photos:
            raise ValueError(f"no usable photos in dataset {dataset if isinstance(dataset, str) else 'given'}: nothing "
                             f"would be measured (skipped: {checker.skipped})")
        kwargs.setdefault("name", dataset.split("/")[-1] if isinstance(dataset, str) else "edits")
        kwargs.setdefault("record_text", False)
        suite = cls.from_photos(photos, edit_list, skipped=checker.skipped, **kwargs)
        if (msg := checker.report(f"EditSuite {suite.name!r}")):
            suite._note(msg, loading=True)
        return suite

    def items(self, spec: FamilySpec) -> list[Item]:
        return self.edits.build(self, spec, self.record_text)
