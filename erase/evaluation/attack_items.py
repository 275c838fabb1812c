"""Attacks as item producers of the one evaluation engine.

An `AttackSuite` is a suite like any other: its items go through the harness (same JSONL records, protocols,
blur, report, resume). Each configured attack is run once per target (one concept prompt, or for editors one
forbidden instruction with one held-out photo); every `AttackResult` it returns (a sweep returns one per
`variant`) becomes generation items:

    text results (prompt / instruction, with `settings` overrides, `path`, photo)  -> the stock diffusers pipeline,
        exactly as an unattacked item (same path, same seeds), so attacked and unattacked rows compare directly
    embeddings / latents / weights / repeated edits                                 -> the item's own renderer

The "no-attack" rows are the same targets unattacked: the rate every attack is compared with.

Resume: every record carries the attack label, its target and how many records that target makes. On a rerun
the suite rebuilds finished targets' items from their records (the attack is not run again) and reruns the
attack of unfinished targets (deterministic: the attack's generator is seeded per target), whose missing images
the harness then generates. Bad input (no material an attack needs, a family it cannot take, a zero budget) is
an error when the suite is built, before any work.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from erase.detect.protocols import Protocol, count
from erase.evaluation.generate import GenSettings, fit, generate, with_overrides
from erase.evaluation.items import Item, Suite, detections_of, rate_record, text_hash
from erase.models.families import FamilySpec

log = logging.getLogger("erase.evaluation")

NO_ATTACK = "no-attack"
THREAT_PATHS = {None: "t2i", "inpaint": "inpaint", "instruct": "instruct", "kontext": "kontext"}
EDIT_PATHS = ("img2img", "inpaint", "instruct", "kontext")


@dataclass
class AttackMaterial:
    """What attacks work with, from the user's files (or a plugin such as the toy world): never stored here.

    prompts: phrasings of the concept (the text-to-image threat; the target prompt of img2img / inpainting).
    instructions: forbidden edit instructions (the instruction-editor threat: InstructPix2Pix, Kontext).
    neutral_prompts: the prompts with the concept taken out, paired by index (Ring-A-Bell).
    references: images showing the concept (concept inversion, photo inversion, relearning).
    photos / masks: held-out photos to edit and the region a forbidden edit repaints (editing threats).
    benign_prompts / benign_instructions: benign text (image-space attack's benign instruction, sweeps).
    anchor / negative_words: what the concept becomes, and words naming what it removes (negative prompts).
    record_text: copy the attacked text into the records (False for the user's real prompt sets: a hash only).
    """

    prompts: Sequence[str]
    instructions: Sequence[str] = ()
    neutral_prompts: Sequence[str] = ()
    references: Sequence[Image.Image] | None = None
    photos: Sequence[Image.Image] | None = None
    masks: Sequence[Image.Image | None] | None = None
    benign_prompts: Sequence[str] = ()
    benign_instructions: Sequence[str] = ()
    anchor: str = ""
    negative_words: Sequence[str] = ()
    record_text: bool = True


@dataclass(frozen=True)
class AttackSpec:
    """One configured attack: {name, params, n_prompts (targets), images (per target and result), path, label}."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    n_prompts: int = 4
    images: int = 4
    path: str | None = None  # the generation path attacked; None: the family's threat (THREAT_PATHS)
    label: str = ""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str) -> "AttackSpec":
        cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"attack entry {cfg.get('name')!r} has unknown key(s) {unknown}; keys: {sorted(known)}")
        if "name" not in cfg:
            raise ValueError(f"an attack entry needs a name: {cfg}")
        spec = cls(**{**cfg, "params": dict(cfg.get("params") or {})})
        for key in ("n_prompts", "images"):
            value = getattr(spec, key)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"attack {spec.name!r}: {key} must be a positive integer (the budget of images "
                                 f"to measure), got {value!r}")
        if spec.path is not None and spec.path not in ("t2i",) + EDIT_PATHS:
            raise ValueError(f"attack {spec.name!r}: unknown path {spec.path!r}; one of t2i, {', '.join(EDIT_PATHS)}")
        return spec

    @property
    def key(self) -> str:
        return self.label or self.name


class AttackSuite(Suite):
    """Every configured attack on one model, as items of the evaluation engine (see the module docstring)."""

    attack = True

    def __init__(self, specs: Sequence[AttackSpec | Mapping[str, Any]], material: AttackMaterial, adapter: Any, *,
                 original: Any = None, name: str = "attacks", seed: int = 0, settings: GenSettings | None = None,
                 unattacked: bool = True):
        super().__init__()
        from erase.evaluation.attacks import get_attack

        self.name, self.seed, self.settings, self.adapter, self.original = name, seed, settings, adapter, original
        self.material = material
        self.specs = [s if isinstance(s, AttackSpec) else AttackSpec.from_config(s) for s in specs]
        if len({s.key for s in self.specs}) != len(self.specs):
            raise ValueError(f"attack labels must be unique (give `label:` to run one attack twice): "
                             f"{[s.key for s in self.specs]}")
        self.attacks = {s.key: get_attack(s.name, **dict(s.params)) for s in self.specs}  # unknown option: error
        self.unattacked = unattacked
        self._done: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
        self._skip: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        self.statistics: dict[str, dict[str, Any]] = {}
        # Wall and CPU seconds per attack label in this process: the attack's own runs, and everything its groups
        # cost (attack + generation + detection). Targets rebuilt from records on resume are not timed.
        self.seconds: dict[str, dict[str, float]] = {}
        for s in self.specs:
            self._validate(s)

    # -------------------------------------------------------------- validation (before any work)

    def path_of(self, spec: AttackSpec | None) -> str:
        """The generation path attacked: the family's threat for the unattacked rows, the resolved one per attack."""
        if spec is not None and spec.key in self._paths:
            return self._paths[spec.key]
        editing = self.adapter.spec.editing
        if editing not in THREAT_PATHS:
            raise ValueError(f"family {self.adapter.spec.name!r} (editing={editing!r}) has no known threat path")
        return THREAT_PATHS[editing]

    def _resolve_path(self, spec: AttackSpec, attack: Any) -> str | None:
        """The spec's path where the family has it; an attack that edits photos (`needs_photo`) falls back to the
        family's editing path (img2img on a text-to-image family); otherwise None: not applicable to this family
        (one attack list serves every family of a config)."""
        from erase.evaluation.generate import supported_paths

        available = supported_paths(self.adapter.spec)
        threat = self.path_of(None)
        wanted = spec.path or threat
        if wanted in available and not (getattr(attack, "needs_photo", False) and wanted == "t2i"):
            return wanted
        if getattr(attack, "needs_photo", False):
            own = attack.path(self.adapter) if callable(getattr(attack, "path", None)) else None
            for path in (own, threat if threat in EDIT_PATHS else None, "img2img"):
                if path in available:
                    return path
        return None

    def _validate(self, spec: AttackSpec) -> None:
        from erase.evaluation.attacks import AttackError
        from erase.evaluation.generate import supported_paths

        attack = self.attacks[spec.key]
        family = self.adapter.spec
        path = self._resolve_path(spec, attack)
        if path is None:
            self._skip[spec.key] = (f"{spec.key}: a {family.name!r} model has no {spec.path or 'photo-editing'} path "
                                    f"(it supports {', '.join(supported_paths(family))})")
            self._note(f"attack {self._skip[spec.key]}; not measured", loading=True)
            return
        self._paths[spec.key] = path
        attack.check(self.adapter)  # the family the attack cannot take: AttackError naming why
        m = self.material
        texts = m.instructions if path in ("instruct", "kontext") else m.prompts
        if not texts:
            what = "forbidden edit instructions (the concept's edits_file)" if path in ("instruct", "kontext") \
                else "concept prompts (the concept's prompts / prompts_file)"
            raise AttackError(f"attack {spec.key!r} on the {path!r} path needs {what}; none were given")
        if attack.needs_references and not m.references:
            raise AttackError(f"attack {spec.key!r} learns from reference images of the concept; give them with "
                              f"eval.attack_material.references={{folder: <path>}} (or {{dataset: <id>}})")
        if path in EDIT_PATHS and not m.photos:
            raise AttackError(f"attack {spec.key!r} edits photos on the {path!r} path; give photos to edit with "
                              f"eval.attack_material.photos={{folder: <path>}} (or an edit suite with a folder)")
        if path == "inpaint" and m.masks is not None and not any(x is not None for x in m.masks):
            raise AttackError(f"attack {spec.key!r} inpaints: the photos need masks (manifest.csv mask or box)")
        if attack.access == "white-box+original" and self.original is None:
            self._skip[spec.key] = f"{spec.key} needs the model before erasure (evaluate with task=erase_and_eval)"
            self._note(f"attack {self._skip[spec.key]}; not measured", loading=True)

    # -------------------------------------------------------------- targets

    def _text(self, path: str, i: int) -> str:
        texts = self.material.instructions if path in ("instruct", "kontext") else self.material.prompts
        return str(texts[i % len(texts)])

    def _photo(self, i: int) -> tuple[Image.Image | None, Image.Image | None]:
        m = self.material
        if not m.photos:
            return None, None
        mask = None if m.masks is None else m.masks[i % len(m.masks)]
        return m.photos[i % len(m.photos)], mask

    def target(self, spec: AttackSpec, i: int) -> Any:
        """The AttackTarget of target i: its text, a reference, and for edit paths its photo (and mask)."""
        from erase.evaluation.attacks import AttackTarget

        m, path, size = self.material, self.path_of(spec), int(self.adapter.default_size)
        photo, mask = self._photo(i) if path in EDIT_PATHS else (None, None)
        square = (size, size)
        kw: dict[str, Any] = dict(
            prompts=[self._text(path, i)],
            images=[fit(m.references[i % len(m.references)].convert("RGB"), square)] if m.references else None,
            original=self.original,
            neutral_prompts=_paired(m.neutral_prompts if path not in ("instruct", "kontext") else
                                    m.benign_instructions, i),  # Ring-A-Bell's concept-free pair
            photo=None if photo is None else [fit(photo.convert("RGB"), square)],
            mask=None if mask is None or path != "inpaint" else [fit(mask.convert("L"), square, mask=True)],
            # the target's own benign text first (the image-space attack's benign instruction, the sweep's
            # compound clause), the rest after it, so that each target gets its own, not the first one
            benign_prompts=_rotated(m.benign_instructions if path in ("instruct", "kontext") else m.benign_prompts, i),
            anchor=m.anchor,
            negative_words=list(m.negative_words),
        )
        accepted = {f.name for f in fields(AttackTarget)}
        return AttackTarget(**{k: v for k, v in kw.items() if k in accepted})

    def _seeds(self, i: int, n: int) -> tuple[int, ...]:
        base = self.seed + 1000 * i  # the same images per target for every attack: paired comparisons
        return tuple(range(base, base + n))

    # -------------------------------------------------------------- items

    def resume_from(self, records: Sequence[Mapping[str, Any]]) -> None:
        self._done = {}
        for r in records:
            meta = r.get("meta") or {}
            if r.get("suite") == self.name and "attack_target" in meta:
                self._done.setdefault((str(r["attack"]), int(meta["attack_target"])), []).append(r)

    def items(self, spec: FamilySpec) -> list[Item]:
        return [it for group in self.item_groups(spec) for it in group]

    def item_groups(self, spec: FamilySpec) -> Iterator[list[Item]]:
        """One group per (attack, target): the attack runs when the engine reaches its group, right before its
        images are generated (finished targets are rebuilt from their records and not run again)."""
        plan: list[AttackSpec | None] = ([None] if self.unattacked else []) + list(self.specs)
        n_max = max([s.n_prompts for s in self.specs] or [1])
        img_max = max([s.images for s in self.specs] or [1])
        index = 0
        for spec_ in plan:
            label = NO_ATTACK if spec_ is None else spec_.key
            if label in self._skip:
                continue
            n = n_max if spec_ is None else spec_.n_prompts
            for i in range(n):
                done = self._done.get((label, i), [])
                wall, cpu = time.perf_counter(), time.process_time()
                rebuilt = bool(done) and len(done) >= int(done[0]["meta"].get("attack_records", 0) or 0)
                if rebuilt:
                    group = self._rebuilt(done)
                elif spec_ is None:
                    group = self._plain_items(i, img_max)
                else:
                    group = self._attack_items(spec_, i)
                yield [replace(it, index=index + k) for k, it in enumerate(group)]
                index += len(group)
                if not rebuilt:  # the engine generated and scored this group's images before coming back here
                    t = self.seconds.setdefault(label, {"targets": 0, "attack_wall": 0.0, "attack_cpu": 0.0,
                                                        "total_wall": 0.0, "total_cpu": 0.0})
                    t["targets"] += 1
                    t["total_wall"] += time.perf_counter() - wall
                    t["total_cpu"] += time.process_time() - cpu

    def _rebuilt(self, records: Sequence[Mapping[str, Any]]) -> list[Item]:
        """Items of a finished target, from its records (every unit is on disk: nothing is generated)."""
        by_item: dict[str, list[Mapping[str, Any]]] = {}
        for r in records:
            by_item.setdefault(str(r["item"]), []).append(r)
        items = []
        for item_id, recs in by_item.items():
            r = recs[0]
            meta = dict(r.get("meta") or {})
            items.append(Item(item_id, 0, str(r["path"]), str(r.get("text") or ""),
                              tuple(sorted(int(x["seed"]) for x in recs)), meta=meta,
                              record_text=r.get("text") is not None, attack=str(r["attack"]),
                              settings=dict(meta.get("attack_settings") or {})))
        return items

    def _meta(self, label: str, i: int, text: str, variant: str, total: int, extra: Mapping[str, Any]) -> dict:
        meta: dict[str, Any] = {"attack_target": i, "attack_variant": variant, "attack_records": total, **extra}
        if not self.material.record_text:
            meta["text_sha1"] = text_hash(text)
        return meta

    def _plain_items(self, i: int, n_images: int) -> list[Item]:
        path = self.path_of(None)
        text = self._text(path, i)
        photo, mask = self._photo(i) if path in EDIT_PATHS else (None, None)
        meta = self._meta(NO_ATTACK, i, text, "", n_images, {"access": "none"})
        return [Item(f"{NO_ATTACK}/t{i:03d}", 0, path, text, self._seeds(i, n_images), image=photo,
                     mask=mask if path == "inpaint" else None, meta=meta, record_text=self.material.record_text,
                     attack=NO_ATTACK)]

    def _attack_items(self, spec: AttackSpec, i: int) -> list[Item]:
        attack = self.attacks[spec.key]
        generator = torch.Generator().manual_seed(self.seed + 7919 * (i + 1))
        log.info("attack %s: target %d of %d", spec.key, i + 1, spec.n_prompts)  # the engine's bar follows
        wall, cpu = time.perf_counter(), time.process_time()
        outcome = attack.run(self.adapter, self.target(spec, i), generator)
        t = self.seconds.setdefault(spec.key, {"targets": 0, "attack_wall": 0.0, "attack_cpu": 0.0,
                                               "total_wall": 0.0, "total_cpu": 0.0})
        t["attack_wall"] += time.perf_counter() - wall
        t["attack_cpu"] += time.process_time() - cpu
        results = list(outcome) if isinstance(outcome, (list, tuple)) else [outcome]
        rows = [(res, r) for res in results if getattr(res, "kind", "") != "statistics" for r in range(res.rows)]
        for res in results:
            if getattr(res, "statistics", None):
                self.statistics.setdefault(spec.key, {})[f"t{i:03d}{'/' + res.variant if res.variant else ''}"] = \
                    dict(res.statistics)
        total = len(rows) * spec.images
        items = []
        for res, r in rows:
            items.append(self._result_item(spec, i, res, r, len(results) > 1, total))
        return items

    def _result_item(self, spec: AttackSpec, i: int, res: Any, r: int, several: bool, total: int) -> Item:
        """One result row -> one item: through the stock pipeline when it is text, else its own renderer."""
        variant = str(getattr(res, "variant", "") or "")
        item_id = f"{spec.key}/t{i:03d}" + (f"/{variant or 'result'}" if several else "") + \
                  (f"/r{r}" if res.rows > 1 else "")
        path = getattr(res, "path", None) or self.path_of(spec)
        overrides = _settings_of(res)
        prompts = res.prompts if res.prompts is not None else [self._text(path, i)]
        text = str(prompts[r % len(prompts)]) if prompts else ""
        photo, mask = self._photo(i) if path in EDIT_PATHS else (None, None)
        if res.photo is not None and path in EDIT_PATHS:
            photo = _to_pil(res.photo[r % len(res.photo)])
        if res.mask is not None and path == "inpaint":
            mask = _to_pil(res.mask[r % len(res.mask)], mask=True)
        info = {"access": res.access, "kind": res.kind, "attack_settings": overrides, "attack_path": path}
        for key in ("budget", "info"):
            value = getattr(res, key, None)
            if value and key == "budget":
                info["budget"] = _plain(value)
        if res.final_loss is not None:
            info["final_loss"] = float(res.final_loss)
        if getattr(res, "compare_with_base", False):  # the base model's evaluation holds the same rows
            info["compare_with_base"] = True
        if getattr(res, "statistics", None):
            info["attack_statistics"] = _plain(dict(res.statistics))
        meta = self._meta(spec.key, i, text, variant, total, info)
        seeds = self._seeds(i, spec.images)
        repeat = int(getattr(res, "repeat", 1) or 1)
        pipeline_form = res.kind == "text" and not getattr(res, "start_step", 0) and res.adapter is None
        render = None
        if not pipeline_form or repeat > 1:
            render = self._renderer(_row(res, r), path, text, photo, mask, overrides, repeat, pipeline_form)
        return Item(item_id, 0, path, text, seeds, image=photo, mask=mask if path == "inpaint" else None,
                    meta=meta, record_text=self.material.record_text, attack=spec.key, settings=overrides,
                    render=render)

    def _renderer(self, res: Any, path: str, text: str, photo: Image.Image | None, mask: Image.Image | None,
                  overrides: Mapping[str, Any], repeat: int, pipeline_form: bool):
        adapter = self.adapter
        settings = with_overrides(self.settings or GenSettings(), overrides)

        def render(seeds: Sequence[int]) -> list[Image.Image]:
            if pipeline_form:  # repeated edits: each output is the next edit's input
                images = [photo] * len(seeds)
                for _ in range(repeat if path != "t2i" else 1):
                    images = generate(adapter.pipe, adapter.spec, path, [text] * len(seeds), list(seeds), settings,
                                      images=images if path != "t2i" else None,
                                      masks=[mask] * len(seeds) if path == "inpaint" else None)
                return images
            from erase.evaluation.attacks import generate_with

            kw = {"num_steps": settings.steps, "guidance": settings.guidance}
            out: list[Image.Image] = []
            runs = _consecutive(seeds)
            for start, n in runs:  # image k of a call uses seed start + k: same image in any batch
                out += generate_with(adapter, res, n, start, **kw)
            return out

        return render

    # -------------------------------------------------------------- summary

    def summarise(self, records: Sequence[Mapping[str, Any]], protocols: Sequence[Protocol],
                  image_root: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Per attack: each variant's rate (n and 95% interval) per protocol, and the worst variant's."""
        summary: dict[str, Any] = {}
        rows: list[dict[str, Any]] = []
        labels = list(dict.fromkeys(str(r["attack"]) for r in records))
        for label in labels:
            recs = [r for r in records if str(r["attack"]) == label]
            by_variant: dict[str, list[Mapping[str, Any]]] = {}
            for r in recs:
                by_variant.setdefault(str((r.get("meta") or {}).get("attack_variant") or ""), []).append(r)
            entry: dict[str, Any] = {"access": (recs[0].get("meta") or {}).get("access"),
                                     "path": recs[0].get("path"), "variants": {}}
            for p in protocols:
                worst = None
                for variant, vrecs in by_variant.items():
                    res = count(p, [detections_of(r) for r in vrecs], [str(r["item"]) for r in vrecs])
                    rate = rate_record(res.flagged, res.n_groups if p.unit == "prompt" else res.n_images)
                    entry["variants"].setdefault(variant or "-", {})[p.name] = rate
                    if worst is None or rate["rate"] > worst[1]["rate"]:
                        worst = (variant, rate)
                    if len(by_variant) > 1:
                        rows.append(self._row(label, variant or "-", p, rate, vrecs))
                assert worst is not None
                entry[p.name] = worst[1]
                entry.setdefault("worst_variant", {})[p.name] = worst[0] or "-"
                rows.append(self._row(label, f"worst: {worst[0]}" if len(by_variant) > 1 else "-", p, worst[1], recs))
            stats = {f"{(r.get('meta') or {}).get('attack_target')}/{(r.get('meta') or {}).get('attack_variant')}":
                     r["meta"]["attack_statistics"] for r in recs if (r.get("meta") or {}).get("attack_statistics")}
            stats.update(self.statistics.get(label, {}))
            if stats:
                entry["statistics"] = stats
            if any((r.get("meta") or {}).get("compare_with_base") for r in recs):
                entry["compare_with_base"] = True  # compare with the same attack in the base model's evaluation
            if label in self.seconds:
                entry["seconds"] = {k: round(v, 2) if isinstance(v, float) else v
                                    for k, v in self.seconds[label].items()}
            summary[label] = entry
        for label, stats in self.statistics.items():  # probes that measure numbers, not images
            entry = summary.setdefault(label, {"statistics": stats})
            if label in self.seconds and "seconds" not in entry:
                entry["seconds"] = {k: round(v, 2) if isinstance(v, float) else v
                                    for k, v in self.seconds[label].items()}
        for label, why in self._skip.items():
            summary.setdefault(label, {"skipped": why})
        return summary, rows

    def _row(self, label: str, variant: str, p: Protocol, rate: Mapping[str, Any],
             recs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return {"suite": self.name, "variant": recs[0].get("variant"), "attack": label, "attack_variant": variant,
                "access": (recs[0].get("meta") or {}).get("access"), "route": recs[0].get("path"),
                "protocol": p.name, "unit": p.unit, "n_images": len(recs), **rate, "rate": round(rate["rate"], 4)}


# ------------------------------------------------------------------------------------------------ helpers


def _paired(texts: Sequence[str], i: int) -> list[str]:
    return [str(texts[i % len(texts)])] if texts else []


def _rotated(texts: Sequence[str], i: int) -> list[str]:
    """texts starting at target i's own (i mod len), the others after it in order."""
    k = i % len(texts) if texts else 0
    return [str(t) for t in list(texts)[k:] + list(texts)[:k]]


def _settings_of(res: Any) -> dict[str, Any]:
    """The result's generation-setting overrides, older spellings (num_steps, guidance, negative_prompt) included."""
    out: dict[str, Any] = {}
    if getattr(res, "num_steps", None):
        out["steps"] = int(res.num_steps)
    if getattr(res, "guidance", None) is not None:
        out["guidance"] = float(res.guidance)
    if getattr(res, "negative_prompt", ""):
        out["negative_prompt"] = str(res.negative_prompt)
    out.update(_plain(dict(getattr(res, "settings", None) or {})))
    return out


def _plain(x: Any) -> Any:
    from erase.serial import to_jsonable

    return to_jsonable(x)


def _row(res: Any, r: int) -> Any:
    """A single-row copy of a result (row r of its prompts / embeddings / latents / photos)."""
    if res.rows <= 1:
        return res
    changes: dict[str, Any] = {}
    if res.prompts is not None:
        changes["prompts"] = [res.prompts[r % len(res.prompts)]]
    if res.conditioning is not None:
        changes["conditioning"] = res.conditioning.select([r % len(res.conditioning)])
    if res.latents is not None:
        changes["latents"] = res.latents[r % len(res.latents)][None]
    if res.photo is not None:
        changes["photo"] = res.photo[r % len(res.photo)][None]
    if res.mask is not None:
        changes["mask"] = res.mask[r % len(res.mask)][None]
    return replace(res, **changes)


def _to_pil(t: torch.Tensor, mask: bool = False) -> Image.Image:
    """A (C, H, W) tensor in [-1, 1] (masks: [0, 1]) as the 8-bit image a user would hand the pipeline."""
    x = t.detach().float().cpu()
    x = x if mask else (x + 1) / 2
    a = (x.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(a[0], "L") if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0), "RGB")


def _consecutive(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of consecutive seeds as (first, length)."""
    runs: list[tuple[int, int]] = []
    for s in seeds:
        if runs and runs[-1][0] + runs[-1][1] == s:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((int(s), 1))
    return runs
