"""Utility suites: what erasure must not break, measured on benign prompts and benign edits.

Toy-like worlds (a detector with `.attributes()` and items with expected attributes): per-attribute accuracy of
prompted images; for edits whether the edit was done and the rest kept. Real world: CLIP score, LPIPS, FID when
the user has those weights and libraries locally (else skipped, with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from erase.detect.protocols import Protocol
from erase.evaluation.edit_suites import EditCase, _EditItems
from erase.evaluation.generate import GenSettings, fit, supported_paths
from erase.evaluation.items import EDIT_PATHS, Item, Suite, leakage_summary, text_hash
from erase.evaluation.prompt_suites import read_csv_rows
from erase.models.families import FamilySpec
from erase.photos import IMAGE_SUFFIXES

@dataclass(frozen=True)
class BenignPrompt:
    id: str
    text: str
    expected: Mapping[str, Any] | None = None  # toy world: the attributes the prompt asks for
    seed: int | None = None


class UtilitySuite(Suite):
    """What erasure must not break: benign prompts and edits.

    Toy world (a detector with `.attributes()` and items with expected attributes): per-attribute accuracy of
    prompted images; for edits whether the edit was done (changed attributes) and the rest kept. Real world:
    CLIP score (`clip_model`: a local transformers CLIP folder or a (model, processor) pair), LPIPS between
    photo and edit (`lpips=True`: needs the `lpips` package and its cached weights), FID against
    `fid_reference` (a folder of real images; needs torchmetrics and cached Inception weights). Whatever is
    missing is skipped with the reason in the report; nothing is downloaded.
    """

    utility = True

    def __init__(self, prompts: Sequence[BenignPrompt] = (), edits: Sequence[EditCase] = (), *,
                 name: str = "utility", images_per_prompt: int = 1, seed: int = 0,
                 paths: Sequence[str] = EDIT_PATHS, strengths: Sequence[float] = (0.5,),
                 images_per_edit: int = 1, record_text: bool = True, settings: GenSettings | None = None,
                 clip_model: Any = None, lpips: bool = False, fid_reference: str | Path | None = None):
        super().__init__()
        self.prompts = list(prompts)
        self.name, self.images_per_prompt, self.seed = name, images_per_prompt, seed
        self.record_text, self.settings = record_text, settings
        self.edits = _EditItems(edits, paths, strengths, images_per_edit, seed + 7919)
        self.clip_model, self.use_lpips, self.fid_reference = clip_model, lpips, fid_reference
        self._clip: tuple[Any, Any] | None = None
        self._lpips: Any = None

    @classmethod
    def from_csv(cls, path: str | Path, prompt_column: str = "prompt", limit: int | None = None,
                 **kwargs: Any) -> "UtilitySuite":
        """Benign prompts (e.g. COCO captions) from the user's CSV."""
        rows = read_csv_rows(path)
        prompts = [BenignPrompt(f"row{i:05d}", str(r[prompt_column])) for i, r in enumerate(rows)
                   if str(r.get(prompt_column) or "").strip()][:limit]
        kwargs.setdefault("name", f"utility-{Path(path).stem}")
        return cls(prompts, **kwargs)

    def items(self, spec: FamilySpec) -> list[Item]:
        out: list[Item] = []
        k = self.images_per_prompt
        if self.prompts:
            if "t2i" in supported_paths(spec):
                for i, p in enumerate(self.prompts):
                    base = p.seed if p.seed is not None else self.seed + i * k
                    meta = {} if self.record_text else {"text_sha1": text_hash(p.text)}
                    out.append(Item(p.id, i, "t2i", p.text, tuple(range(base, base + k)), expected=p.expected,
                                    meta=meta, record_text=self.record_text))
            else:
                self._note(f"UtilitySuite {self.name!r}: family {spec.name!r} has no text-to-image path; "
                           f"benign prompts not measured")
        return out + self.edits.build(self, spec, self.record_text, start=len(out))

    # -------------------------------------------------------------- scoring

    def score(self, items: Sequence[Item], images: Sequence[Image.Image], sources: Sequence[Image.Image | None],
              detector: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in images]
        if any(it.expected for it in items):
            if hasattr(detector, "attributes"):
                for row, item, attrs in zip(out, items, detector.attributes(list(images))):
                    if item.expected:
                        row.update(_attribute_checks(item, attrs))
            else:
                self._note(f"UtilitySuite {self.name!r}: detector {getattr(detector, 'name', detector)!r} has no "
                           f".attributes(); attribute accuracy not measured")
        if self.clip_model is not None:
            for row, s in zip(out, self._clip_scores([it.text for it in items], images)):
                row["clip_score"] = s
        if self.use_lpips and any(s is not None for s in sources):
            scores = self._lpips_scores(images, sources)
            if scores is not None:
                for row, s in zip(out, scores):
                    if s is not None:
                        row["lpips"] = s
        return out

    def _clip_scores(self, texts: Sequence[str], images: Sequence[Image.Image]) -> list[float]:
        """CLIP score as torchmetrics defines it: 100 * max(cos(image, text), 0)."""
        import torch

        if self._clip is None:
            if isinstance(self.clip_model, (str, Path)):
                from transformers import CLIPModel, CLIPProcessor

                self._clip = (CLIPModel.from_pretrained(self.clip_model).eval(),
                              CLIPProcessor.from_pretrained(self.clip_model))
            else:
                self._clip = tuple(self.clip_model)  # type: ignore[assignment]
        model, processor = self._clip  # type: ignore[misc]
        inputs = processor(text=list(texts), images=[im.convert("RGB") for im in images], return_tensors="pt",
                           padding=True, truncation=True)
        with torch.no_grad():
            out = model(**inputs)
        img = torch.nn.functional.normalize(out.image_embeds, dim=-1)
        txt = torch.nn.functional.normalize(out.text_embeds, dim=-1)
        return [float(100 * max(v, 0.0)) for v in (img * txt).sum(-1).tolist()]

    def _lpips_scores(self, images: Sequence[Image.Image], sources: Sequence[Image.Image | None]
                      ) -> list[float | None] | None:
        if self._lpips is None:
            reason = _lpips_unavailable()
            if reason:
                self._note(f"UtilitySuite {self.name!r}: LPIPS skipped: {reason}")
                self._lpips = False
            else:
                import lpips

                self._lpips = lpips.LPIPS(net="alex", verbose=False).eval()
        if self._lpips is False:
            return None
        import torch

        def tensor(im: Image.Image) -> torch.Tensor:
            return torch.from_numpy(np.asarray(im.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]

        out: list[float | None] = []
        for im, src in zip(images, sources):
            if src is None:
                out.append(None)
                continue
            with torch.no_grad():
                out.append(float(self._lpips(tensor(im), tensor(fit(src, (im.height, im.width))))))
        return out

    # -------------------------------------------------------------- summary

    def summarise(self, records: Sequence[Mapping[str, Any]], protocols: Sequence[Protocol],
                  image_root: Path | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        summary: dict[str, Any] = {"n_images": len(records)}
        correct: dict[str, list[bool]] = {}
        for r in records:
            for k, v in (r.get("utility", {}).get("correct") or {}).items():
                correct.setdefault(k, []).append(bool(v))
        if correct:
            per_attr = {k: float(np.mean(v)) for k, v in sorted(correct.items())}
            summary["attribute_accuracy"] = float(np.mean([x for v in correct.values() for x in v]))
            summary.update({f"acc_{k}": v for k, v in per_attr.items()})
        for field_name in ("edit_done", "kept"):
            vals = [bool(r["utility"][field_name]) for r in records if field_name in r.get("utility", {})]
            if vals:
                summary[field_name] = float(np.mean(vals))
        for field_name in ("clip_score", "lpips"):
            vals = [float(r["utility"][field_name]) for r in records if field_name in r.get("utility", {})]
            if vals:
                summary[field_name] = float(np.mean(vals))
        if self.clip_model is None and not correct:
            self._note(f"UtilitySuite {self.name!r}: CLIP score not measured (pass clip_model=<a local CLIP folder>)")
        if self.fid_reference is not None:
            fid, why = _fid(records, image_root, Path(self.fid_reference))
            summary["fid"] = fid
            if why:
                self._note(f"UtilitySuite {self.name!r}: FID skipped: {why}")
        leak, _ = leakage_summary(self.name, records, protocols)
        summary.update({f"leak_{k}": v for k, v in leak.items()})  # false exposure on benign inputs
        variant = records[0].get("variant") if records else None
        row = {"suite": self.name, "variant": variant,
               **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}}
        return summary, [row]


def _attribute_checks(item: Item, attrs: Mapping[str, Any]) -> dict[str, Any]:
    expected = dict(item.expected or {})
    keys = [k for k in expected if k in attrs]
    correct = {k: attrs[k] == expected[k] for k in keys}
    row: dict[str, Any] = {"attributes": {k: attrs[k] for k in keys}, "correct": correct}
    if item.path != "t2i":
        changed = [k for k in item.changed if k in correct]
        row["edit_done"] = all(correct[k] for k in changed) if changed else None
        row["kept"] = all(v for k, v in correct.items() if k not in item.changed)
        if row["edit_done"] is None:
            del row["edit_done"]
    return row


def _lpips_unavailable() -> str | None:
    try:
        import lpips  # noqa: F401
        import torch
    except ImportError:
        return "the 'lpips' package is not installed"
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(ckpt.glob("alexnet-owt-*.pth")):
        return f"AlexNet weights are not cached under {ckpt} (they would have to be downloaded)"
    return None


def _fid(records: Sequence[Mapping[str, Any]], image_root: Path | None, reference: Path
         ) -> tuple[float | None, str | None]:
    """FID of the saved images against `reference` with torchmetrics, if available offline."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:
        return None, "torchmetrics (with torch-fidelity) is not installed"
    import torch

    if not any((Path(torch.hub.get_dir()) / "checkpoints").glob("weights-inception-2015-12-05-*.pth")):
        return None, "the FID Inception weights are not cached (they would have to be downloaded)"
    if image_root is None or not all(r.get("image") for r in records):
        return None, "generated images were not saved (save_images=False)"
    if not reference.is_dir():
        return None, f"reference folder {reference} does not exist"
    fid = FrechetInceptionDistance(normalize=True)

    def batch(paths: Iterable[Path]) -> torch.Tensor:
        arrs = [np.asarray(Image.open(p).convert("RGB").resize((299, 299)), np.float32) / 255 for p in paths]
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)

    refs = [p for p in sorted(reference.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    gens = [image_root / str(r["image"]) for r in records]
    if len(refs) < 2 or len(gens) < 2:
        return None, "FID needs at least 2 reference and 2 generated images"
    for i in range(0, len(refs), 32):
        fid.update(batch(refs[i:i + 32]), real=True)
    for i in range(0, len(gens), 32):
        fid.update(batch(gens[i:i + 32]), real=False)
    return float(fid.compute()), None
