"""`evaluate`: generate, detect, record, resume, shard, merge, report.

Work is a list of (suite, variant, item, seed) units. Each process takes items i with i % world == rank,
appends one JSONL line per finished image to its own part file, and skips what is already there when rerun.
Batches are fixed slices of that list (never "whatever is left"), so a resumed run regenerates exactly the
batches an uninterrupted run would have, and the merged `results.jsonl` comes out byte for byte the same.
Once every unit of every rank is on disk, one process merges the parts (sorted) and writes the summary,
image grids (flagged images blurred unless `blur=False`), an HTML page and a markdown table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from erase.detect.protocols import PAPER_PRESETS, PRESETS, Protocol, get_protocol
from erase.evaluation.baselines import Variant
from erase.evaluation.generate import GenSettings, resolution, with_overrides
from erase.evaluation.records import ResultsStore, read_records, record_key, write_sorted
from erase.evaluation.items import Item, Suite, load_ref
from erase.models.families import FamilySpec, family_of, load_pipeline
from erase.report import image_grid, markdown_summary, render_evaluation_page, save_image

log = logging.getLogger("erase.evaluation")

RESULTS = "results.jsonl"
RESERVED = {"utility", "attacks", "by_variant", "notes", "settings", "complete", "files", "rows"}
Shard = tuple[int, int] | Literal["accelerate"] | None


# ------------------------------------------------------------------------------------------------ model identity


def model_fingerprint(pipe: Any, spec: FamilySpec, samples: int = 4096) -> str:
    """A short hash of the denoiser and text encoders: names, shapes and a strided sample of every tensor.

    Why not a full hash: that reads every byte of multi-GB weights. Erasure edits change whole matrices, so
    a strided sample tells an erased model from its base; equal weights always give the same fingerprint.
    """
    h = hashlib.sha256()
    for name in (spec.denoiser, *spec.text_encoders):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        for pname, t in sorted(module.state_dict().items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            h.update(f"{name}.{pname}{tuple(t.shape)}{t.dtype}".encode())
            h.update(flat[::step][:samples].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _load(model: Any, family: str | None, device: Any, torch_dtype: Any) -> tuple[Any, FamilySpec, str | None]:
    if isinstance(model, (str, os.PathLike)):
        pipe, spec = load_pipeline(model, family, torch_dtype=torch_dtype, device=device)
        return pipe, spec, str(model)
    spec = family_of(model)
    if family is not None and family != spec.name:
        raise ValueError(f"the pipeline is a {spec.name!r} model, not {family!r}")
    if device is not None:
        model.to(device)
    return model, spec, None


# ------------------------------------------------------------------------------------------------ sharding


@dataclass
class _Dist:
    rank: int
    world: int
    barrier: Callable[[], None] | None = None  # set under accelerate: all ranks meet, rank 0 merges
    device: Any = None


def _dist(shard: Shard) -> _Dist:
    if shard is None:
        return _Dist(0, 1)
    if shard == "accelerate":
        from accelerate import PartialState

        state = PartialState()
        return _Dist(state.process_index, state.num_processes, state.wait_for_everyone, state.device)
    rank, world = shard  # type: ignore[misc]
    if not (isinstance(rank, int) and isinstance(world, int) and 0 <= rank < world):
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
    return _Dist(rank, world)


# ------------------------------------------------------------------------------------------------ work plan


@dataclass(frozen=True)
class _Unit:
    suite: Suite
    variant: Variant
    item: Item
    seed: int

    @property
    def key(self) -> str:
        return record_key(self.suite.name, self.variant.name, self.item.id, self.seed, self.item.attack)


def _plan(suite: Suite, variant: Variant, items: Sequence[Item], spec: FamilySpec, notes: list[str],
          rank: int | None, world: int) -> list[_Unit]:
    """Units of one suite x variant (all ranks' when rank is None), in the order they run."""
    units = []
    for i, item in enumerate(items):
        if rank is not None and i % world != rank:
            continue
        reason = variant.unavailable(spec, item.path)
        if reason:
            _add_note(notes, f"{variant.name} on {suite.name!r}: {reason}")
            continue
        units += [_Unit(suite, variant, item, s) for s in item.seeds]
    return units


def _batches(units: Sequence[_Unit], batch_size: int) -> Iterator[list[_Unit]]:
    """Consecutive units sharing one pipeline call (same path / strength / guidance), at most batch_size."""
    batch: list[_Unit] = []
    for u in units:
        if batch and (len(batch) >= batch_size or u.item.batch_key != batch[0].item.batch_key):
            yield batch
            batch = []
        batch.append(u)
    if batch:
        yield batch


def _add_note(notes: list[str], message: str) -> None:
    if message not in notes:
        notes.append(message)
        log.warning(message)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


# ------------------------------------------------------------------------------------------------ records


def _protocol_info(protocols: Sequence[Protocol]) -> dict[str, Any]:
    return {p.name: {"labels": list(p.labels), "threshold": p.threshold, "unit": p.unit} for p in protocols}


def _unit_settings(u: _Unit, settings: GenSettings, spec: FamilySpec, base: Mapping[str, Any],
                   size: tuple[int, int]) -> dict[str, Any]:
    """Everything that decides how this image was made and counted (checked again on resume)."""
    s = u.variant.settings(with_overrides(settings, u.item.settings), spec)
    strength = None
    if u.item.path == "img2img":
        strength = s.strength if u.item.strength is None else u.item.strength
    elif u.item.path == "inpaint":
        strength = s.inpaint_strength if u.item.strength is None else u.item.strength
    return {
        **base,
        "variant": u.variant.describe(),
        "seed": u.seed,
        "steps": s.steps,
        "guidance": s.guidance if u.item.guidance is None else u.item.guidance,
        "resolution": list(size),
        "negative_prompt": s.negative_prompt,
        "strength": strength,
        "image_guidance": s.image_guidance if u.item.path == "instruct" else None,
        "true_cfg": s.true_cfg,
        "extra": s.as_record()["extra"],
    }


def _detections_json(dets: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"label": str(d.label), "score": float(d.score),
             "box": None if d.box is None else [float(b) for b in d.box]} for d in dets]


# ------------------------------------------------------------------------------------------------ evaluate


def evaluate(
    model: str | os.PathLike | Any,
    suites: Sequence[Suite],
    detector: Any,
    protocols: Sequence[Protocol | str] | None = None,
    out_dir: str | os.PathLike = "evaluation",
    *,
    shard: Shard = None,
    settings: GenSettings | None = None,
    variants: Sequence[Variant] | None = None,
    batch_size: int = 8,
    family: str | None = None,
    device: str | torch.device | None = None,
    torch_dtype: torch.dtype | None = None,
    model_id: str | None = None,
    save_images: bool = True,
    blur: bool = True,
    grid_size: int = 16,
    progress: bool = True,
    wandb: bool | str = False,
    wandb_project: str = "erase",
    title: str | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a model (pipeline folder, hub id or pipeline object) on `suites`, resumably.

    `protocols`: counting conventions (names or Protocols); default "toy" for a detector emitting the toy
    label, else the paper presets. `settings`: sampling (a suite's own `settings` win for that suite).
    `variants`: generation variants (baselines) run on the same items; default the model as is.
    `shard`: (rank, world) for independent processes, or "accelerate". `wandb`: False, True (offline) or a
    wandb mode. `on_record` is called after each record is durably written.

    Returns the summary {suite: {protocol: rate}, "utility": {suite: {...}}, "by_variant": ..., "notes": ...,
    "complete": bool}; when other ranks are still running, "complete" is False and only counts are given.
    """
    names = [s.name for s in suites]
    clash = RESERVED & {s.name for s in suites if not (s.utility or s.attack)}  # those live under their key
    if len(set(names)) != len(names) or clash:
        raise ValueError(f"suite names must be unique, and leakage suites not named {sorted(RESERVED)}: {names}")
    dist = _dist(shard)
    pipe, spec, model_path = _load(model, family, device or dist.device, torch_dtype)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)  # one bar per suite (below), not one per pipeline call
    protos = _protocols(protocols, detector)
    settings = settings or GenSettings()
    variants = list(variants or [Variant()])
    if len({v.name for v in variants}) != len(variants):
        raise ValueError(f"variant names must be unique: {[v.name for v in variants]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    model_info = {"id": model_id or model_path or _pipe_name(pipe), "family": spec.name,
                  "hash": model_fingerprint(pipe, spec)}
    base = {"model": model_info, "detector": {"name": str(detector.name), "version": str(detector.version)},
            "protocols": _protocol_info(protos), "scheduler": type(pipe.scheduler).__name__}
    notes: list[str] = []
    runnable = []
    for v in variants:
        reason = v.setup(pipe, spec, model_path)
        if reason:
            _add_note(notes, f"{v.name}: {reason}")
        else:
            runnable.append(v)

    store = ResultsStore(out / "parts" / f"rank-{dist.rank}-of-{dist.world}.jsonl")
    existing = {r["key"]: r for r in store.records()}
    # Keys only: an attack group's items (and the relearned weights their renderers hold) are freed once run.
    all_keys: list[str] = []
    for suite in suites:
        suite.reset_notes()
        if suite.attack and dist.world > 1 and dist.rank != 0:
            continue  # attacks run (and are merged) on the first rank: their items exist once the attack ran
        suite.resume_from(list(existing.values()))
        s_settings = suite.settings or settings
        size = resolution(pipe, s_settings)
        ids: set[str] = set()
        for items in suite.item_groups(spec):  # one group, or one per attack target (planned as it comes)
            if len({it.id for it in items} | ids) != len(items) + len(ids):
                raise ValueError(f"suite {suite.name!r} has duplicate item ids: results would overwrite each other")
            ids |= {it.id for it in items}
            for v in (runnable[:1] if suite.attack else runnable):  # attacks: the model as it is
                all_keys += [u.key for u in _plan(suite, v, items, spec, notes, None,
                                                  1 if suite.attack else dist.world)]
                mine = _plan(suite, v, items, spec, notes, 0 if suite.attack else dist.rank,
                             1 if suite.attack else dist.world)
                _run(mine, pipe, spec, detector, protos, s_settings, base, size, store, existing, out, batch_size,
                     save_images, blur, progress, on_record)
        notes += [n for n in suite.notes if n not in notes]  # already logged by the suite

    if suites and not all_keys:
        raise ValueError("this evaluation would measure nothing: no suite produced an image to generate for a "
                         f"{spec.name!r} model ({'; '.join(notes) or 'every suite is empty'})")
    if dist.barrier is not None:
        dist.barrier()
        if dist.rank != 0:
            return {"complete": False, "rank": dist.rank, "world": dist.world, "notes": notes}
    elif dist.rank != 0 and any(s.attack for s in suites):
        return {"complete": False, "rank": dist.rank, "world": dist.world, "notes": notes + [
            "attack suites run on rank 0, which merges the results (rerun rank 0 once the other ranks are done)"]}
    expected = set(all_keys)
    records = [r for part in sorted((out / "parts").glob(f"rank-*-of-{dist.world}.jsonl"))
               for r in read_records(part) if r["key"] in expected]
    missing = expected - {r["key"] for r in records}
    if missing:
        log.info("rank %d done; %d unit(s) of other ranks still missing: results are merged by the last rank to "
                 "finish (or rerun any rank)", dist.rank, len(missing))
        return {"complete": False, "rank": dist.rank, "world": dist.world, "missing": len(missing), "notes": notes}
    ordered = write_sorted(records, out / RESULTS)
    return _finish(ordered, suites, runnable, protos, out, base, notes, blur, grid_size, wandb, wandb_project,
                   title or f"Evaluation of {model_info['id']}")


def _pipe_name(pipe: Any) -> str:
    return str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or type(pipe).__name__)


def _protocols(protocols: Sequence[Protocol | str] | None, detector: Any) -> list[Protocol]:
    if protocols is None:
        toy = PRESETS["toy"]
        protocols = ["toy"] if set(toy.labels) <= set(getattr(detector, "labels", ())) else list(PAPER_PRESETS)
    out = [get_protocol(p) if isinstance(p, str) else p for p in protocols]
    if not out:
        raise ValueError("at least one counting protocol is needed")
    return out


def _run(units: Sequence[_Unit], pipe: Any, spec: FamilySpec, detector: Any, protos: Sequence[Protocol],
         settings: GenSettings, base: Mapping[str, Any], size: tuple[int, int], store: ResultsStore,
         existing: dict[str, dict[str, Any]], out: Path, batch_size: int, save_images: bool, blur: bool,
         progress: bool, on_record: Callable[[dict[str, Any]], None] | None) -> None:
    if not units:
        return
    primary = protos[0].name
    done = [u for u in units if u.key in existing]
    for u in done:  # resuming with other settings would silently mix two evaluations in one file
        old = existing[u.key].get("settings")
        new = json.loads(json.dumps(_unit_settings(u, settings, spec, base, size)))
        if old != new:
            raise ValueError(f"{store.path} holds {u.key} made with other settings ({_diff(old, new)}); "
                             f"use a new out_dir to evaluate with these settings")
    flagged = sum(bool(existing[u.key]["flags"].get(primary)) for u in done)
    seen = len(done)
    attack = units[0].item.attack
    desc = f"{units[0].suite.name}[{units[0].variant.name}]" + (f" {attack}" if attack else "")
    with tqdm(total=len(units), initial=len(done), desc=desc, disable=not progress, leave=False) as bar:
        for batch in _batches(units, batch_size):
            todo = [u for u in batch if u.key not in existing]
            if not todo:
                continue
            records = _generate_batch(batch, pipe, spec, detector, protos, settings, base, size)
            for u, record in zip(batch, records):
                if u.key in existing:
                    continue
                if save_images:
                    rel = (Path("images") / _safe(u.suite.name) / _safe(u.variant.name)
                           / f"{_safe(u.item.id)}_{u.seed}.png")
                    save_image(record.pop("_image"), out / rel, flagged=record["flagged"], blur=blur)
                    record["image"] = rel.as_posix()
                else:
                    record.pop("_image")
                    record["image"] = None
                store.append(record)
                existing[u.key] = record
                seen += 1
                flagged += bool(record["flags"].get(primary))
                bar.update(1)
                bar.set_postfix_str(f"{primary} leak {flagged / seen:.1%}")
                if on_record is not None:
                    on_record(record)


def _diff(old: Any, new: Any) -> str:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "no settings recorded"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:4])


def _generate_batch(batch: Sequence[_Unit], pipe: Any, spec: FamilySpec, detector: Any,
                    protos: Sequence[Protocol], settings: GenSettings, base: Mapping[str, Any],
                    size: tuple[int, int]) -> list[dict[str, Any]]:
    """Generate, detect and score one batch; records still carry the image under "_image"."""
    first = batch[0]
    settings = with_overrides(settings, first.item.settings)  # a batch shares its settings (see Item.batch_key)
    loaded: dict[str, tuple[Image.Image | None, Image.Image | None]] = {}
    for u in batch:
        if u.item.id not in loaded:
            loaded[u.item.id] = (None if u.item.image is None else load_ref(u.item.image),
                                 None if u.item.mask is None else load_ref(u.item.mask))
    sources = [loaded[u.item.id][0] for u in batch]
    masks = [loaded[u.item.id][1] for u in batch]
    if first.item.render is not None:  # an attack's own form (embeddings, latents, weights)
        images, extras = list(first.item.render([u.seed for u in batch])), [{} for _ in batch]
    else:
        images, extras = first.variant.generate(
            pipe, spec, first.item.path, [u.item.text for u in batch], [u.seed for u in batch], settings,
            images=sources if first.item.image is not None else None,
            masks=masks if first.item.path == "inpaint" else None,
            strength=first.item.strength, guidance=first.item.guidance,
        )
    detections = detector.detect(list(images))
    scores = first.suite.score([u.item for u in batch], images, sources, detector)
    records = []
    for u, image, dets, extra, score in zip(batch, images, detections, extras, scores):
        flags = {p.name: bool(p.hits(dets)) for p in protos}
        record: dict[str, Any] = {
            "key": u.key, "suite": u.suite.name, "variant": u.variant.name, "item": u.item.id,
            "index": u.item.index, "seed": u.seed, "attack": u.item.attack, "path": u.item.path, "route": u.item.label,
            "text": u.item.text if u.item.record_text else None, "meta": dict(u.item.meta),
            "detections": _detections_json(dets), "flags": flags, "flagged": any(flags.values()),
            "settings": _unit_settings(u, settings, spec, base, size), "_image": image,
        }
        if extra:
            record["variant_info"] = extra
        if u.suite.utility:
            record["utility"] = score
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------------ merge + report


def _finish(records: Sequence[dict[str, Any]], suites: Sequence[Suite], variants: Sequence[Variant],
            protos: Sequence[Protocol], out: Path, base: Mapping[str, Any], notes: list[str], blur: bool,
            grid_size: int, wandb: bool | str, wandb_project: str, title: str) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    by_variant: dict[str, dict[str, Any]] = {}
    summary_rows: list[dict[str, Any]] = []  # leakage, one row per suite x variant x protocol
    utility_rows: list[dict[str, Any]] = []
    tables: dict[str, list[dict[str, Any]]] = {}
    grids: dict[str, Image.Image] = {}
    for vi, v in enumerate(variants):
        vs: dict[str, Any] = {}
        for suite in suites:
            recs = [r for r in records if r["suite"] == suite.name and r["variant"] == v.name]
            if not recs:
                continue
            result, rows = suite.summarise(recs, protos, image_root=out)
            if suite.utility:
                vs.setdefault("utility", {})[suite.name] = result
                utility_rows += rows
            elif suite.attack:
                vs.setdefault("attacks", {})[suite.name] = result
                tables.setdefault("Attacks (leakage under attack; the worst variant of each attack)", []).extend(rows)
            else:
                vs[suite.name] = result
                summary_rows += [r for r in rows if r["route"] == "all"]
                per_route = [r for r in rows if r["route"] != "all"]
                if per_route:
                    tables.setdefault(f"{suite.name}: leakage per editing route", []).extend(per_route)
            grid = _grid(recs, out, grid_size, blur)
            if grid is not None:
                grids[f"{suite.name} [{v.name}] (first {min(grid_size, len(recs))} images)"] = grid
                grid.save(_mkdir(out / "grids") / f"{_safe(suite.name)}__{_safe(v.name)}.png")
        by_variant[v.name] = vs
        if vi == 0:
            summary.update(vs)
    for suite in suites:  # notes raised while summarising (e.g. FID skipped)
        notes += [n for n in suite.notes if n not in notes]
    summary.update(by_variant=by_variant, notes=notes, settings=dict(base), complete=True)
    if utility_rows:
        tables = {"Utility": utility_rows, **tables}
    if notes:
        tables["Notes (not measured, and why)"] = [{"note": n} for n in notes]
    meta = {"model": base["model"]["id"], "family": base["model"]["family"], "model hash": base["model"]["hash"],
            "detector": base["detector"]["name"], "version": base["detector"]["version"],
            "protocol": ", ".join(f"{p.name} ({p.unit}, >= {p.threshold})" for p in protos),
            "variants": ", ".join(v.name for v in variants), "images": len(records)}
    if records:
        first = records[0]["settings"]
        meta.update(steps=first.get("steps"), guidance=first.get("guidance"),
                    resolution="x".join(map(str, first.get("resolution", []))))
    html = render_evaluation_page(title, summary_rows, tables, grids, meta, out / "report.html")
    md = out / "summary.md"
    md.write_text(_markdown(summary_rows, utility_rows), encoding="utf-8")
    summary["files"] = {"results": str(out / RESULTS), "html": str(html), "markdown": str(md)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    if wandb:
        _log_wandb(summary, grids, meta, out, wandb, wandb_project)
    return summary


def _markdown(leakage: Sequence[Mapping[str, Any]], utility: Sequence[Mapping[str, Any]]) -> str:
    """Model-card tables: leakage per suite / variant / protocol, then utility."""
    parts = []
    if leakage:
        cols = ["suite", "variant", "protocol", "unit", "threshold", "n_images", "flagged", "rate"]
        parts.append("### Leakage\n\n" + markdown_summary(leakage, cols))
    if utility:
        parts.append("### Utility\n\n" + markdown_summary(utility))
    return "\n".join(parts)


def _grid(records: Sequence[Mapping[str, Any]], out: Path, n: int, blur: bool) -> Image.Image | None:
    shown = [r for r in records if r.get("image") and (out / r["image"]).is_file()][:n]
    if not shown:
        return None
    images = []
    for r in shown:
        with Image.open(out / r["image"]) as im:
            im = im.convert("RGB")
        if max(im.size) < 128:  # tiny models: enlarge for viewing (flagged images are blurred already)
            k = -(-128 // max(im.size))
            im = im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)
        images.append(im)
    captions = [f"{r['item']}#{r['seed']}"[-20:] for r in shown]  # ids, never prompt text
    return image_grid(images, captions=captions, flagged=[bool(r.get("flagged")) for r in shown], blur=blur)


def _log_wandb(summary: Mapping[str, Any], grids: Mapping[str, Image.Image], meta: Mapping[str, Any], out: Path,
               mode: bool | str, project: str) -> None:
    import wandb

    from erase import tracking

    # The erase run's one wandb run (the CLI's) when there is one; else a run of this evaluation alone, in the
    # mode given ("online", "disabled"; True = offline unless WANDB_MODE says otherwise).
    owns = tracking.ensure_run(out, project, {"evaluation": {k: str(v) for k, v in meta.items()}},
                               mode=None if mode is True else str(mode))
    flat: dict[str, Any] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                add(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[prefix] = value

    add(f"eval/{out.name}", summary["by_variant"])  # eval/<folder>/variant/suite/protocol (or .../utility/suite/metric)
    flat.update({f"grid/{out.name}/{name}": wandb.Image(g) for name, g in grids.items()})  # already blurred where flagged
    tracking.log(flat)
    if owns:
        tracking.finish()


def merge(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Merge whatever part files `out_dir` holds into a sorted results.jsonl (no summary); returns the records."""
    out = Path(out_dir)
    records = [r for part in sorted((out / "parts").glob("rank-*.jsonl")) for r in read_records(part)]
    return write_sorted(records, out / RESULTS)
