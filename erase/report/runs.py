"""What the CLI's erase_and_eval writes and prints about one run: the comparison page, the evaluation as data
(for the card and summary.json), and the terminal's final table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from erase.report.compare import Column, card_evaluation, columns_from_eval
from erase.report.run_report import render_comparison

log = logging.getLogger("erase.report")


def known_attacks() -> list[str]:
    try:
        from erase.evaluation.attacks import ATTACKS
    except ImportError:  # pragma: no cover - attacks need optional pieces
        return []
    return sorted(ATTACKS)


def photo_lookup(eval_cfg: Mapping[str, Any], adapter: Any) -> Callable[[Mapping[str, Any]], Image.Image | None]:
    """record -> its source photo, found through the configured edit suites (records name the item, not the photo).

    Built on first use; a suite that cannot list its items leaves its triplets without a source (logged)."""
    cache: dict[tuple[str, str], Any] | None = None

    def build() -> dict[tuple[str, str], Any]:
        from erase.evaluation.config import build_suites

        found: dict[tuple[str, str], Any] = {}
        quiet = logging.getLogger("erase.evaluation")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the suites' warnings were logged by the evaluation already
        try:
            suites = build_suites(eval_cfg.get("suites") or {}, adapter.default_size)
            listed = []
            for suite in suites:
                try:
                    listed.append((suite, suite.items(adapter.spec)))
                except Exception as err:  # noqa: BLE001 - a report without a source photo beats no report
                    log.warning("report: no source photos for suite %r (%s)", suite.name, err)
        finally:
            quiet.setLevel(level)
        for suite, items in listed:
            for it in items:
                if getattr(it, "image", None) is not None:
                    found[(suite.name, it.id)] = it.image
        return found

    def lookup(record: Mapping[str, Any]) -> Image.Image | None:
        nonlocal cache
        if cache is None:
            cache = build()
        ref = cache.get((str(record.get("suite")), str(record.get("item"))))
        if ref is None:
            return None
        image = ref() if callable(ref) else ref
        return image if isinstance(image, Image.Image) else None

    return lookup


def run_columns(base_dir: str | Path | None, erased_dir: str | Path | None,
                stage_dirs: Sequence[tuple[str, str | Path]] = ()) -> list[Column]:
    """Base (and its baselines), every stage evaluated on its own, the erased model: the report's columns."""
    cols: list[Column] = []
    if base_dir is not None and Path(base_dir).is_dir():
        cols += columns_from_eval(base_dir, "base")
    for label, d in stage_dirs:
        cols += columns_from_eval(d, label, baselines=False)
    if erased_dir is not None and Path(erased_dir).is_dir():
        cols += columns_from_eval(erased_dir, "erased", baselines=False)
    return [c for c in cols if c.records]


def write_run_report(out: Path, columns: Sequence[Column], meta: Mapping[str, Any], title: str,
                     source_of: Callable[[Mapping[str, Any]], Image.Image | None] | None = None) -> tuple[Path, dict[str, Any]]:
    """out/report.html and the evaluation as data (rates in the Rate record format)."""
    labels = [c.label for c in columns]
    page = render_comparison(columns, out / "report.html", meta, title, source_of,
                             base="base" if "base" in labels else None,
                             erased="erased" if "erased" in labels else None)
    return page, card_evaluation(columns, known_attacks())


def text_cell(rate: Mapping[str, Any] | None) -> str:
    if not rate or rate.get("rate") is None:
        return "-"
    if rate.get("ci95") is None:
        return f"{rate['rate']:.3g}/img n={rate['n']}"
    lo, hi = rate["ci95"]
    return f"{100 * rate['rate']:.1f}% [{100 * lo:.0f}-{100 * hi:.0f}] n={rate['n']}"


def _delta(b: Mapping[str, Any] | None, e: Mapping[str, Any] | None) -> str:
    if not b or not e or b.get("rate") is None or e.get("rate") is None:
        return "-"
    d = e["rate"] - b["rate"]
    if b.get("ci95") is None or e.get("ci95") is None:
        return f"{d:+.3g}"
    disjoint = b["ci95"][1] < e["ci95"][0] or e["ci95"][1] < b["ci95"][0]
    return f"{100 * d:+.1f} pts" + ("" if disjoint else " (within CI)")


def terminal_table(evaluation: Mapping[str, Any], base: str = "base", erased: str = "erased") -> str:
    """The final summary: each suite (all routes), utility check and attack; base, erased, change; n and
    95% intervals in every cell."""
    rows: list[tuple[str, Mapping[str, Any]]] = []
    rows += [(f"leak  {r['suite']} ({r['protocol']})", r["values"]) for r in evaluation.get("leakage") or []
             if r.get("route") == "all"]
    rows += [(f"util  {r['suite']} {r['metric']}", r["values"]) for r in evaluation.get("utility") or []]
    rows += [(f"attack {r['attack']}" + (" (CREATED BY THE ERASURE)" if (r.get("erased_minus_base") or {})
                                         .get("created") else ""), r["values"]) for r in evaluation.get("attacks") or []]
    if not rows:
        return ""
    cols = [c for c in (base, erased) if any(c in v for _, v in rows)]
    if len(cols) < 2:  # not a base/erased pair (task=evaluate): every column measured, no change column
        cols = [c for c in evaluation.get("columns") or [] if any(c in v for _, v in rows)][:3]
    table = [("", *cols, "change" if len(cols) == 2 and cols == [base, erased] else "")]
    for name, values in rows:
        cells = [text_cell(values.get(c)) for c in cols]
        table.append((name, *cells, _delta(values.get(base), values.get(erased)) if cols == [base, erased] else ""))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]
    return "\n".join(lines)


def attack_markdown(evaluation: Mapping[str, Any], columns: Sequence[str] = ("base", "erased"),
                    seconds: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> str:
    """The attack table as markdown (docs, README): a row per attack and variant, its threat model, each
    column's rate with its 95% interval and n, and for compare-with-base rows erased minus base with its
    Newcombe interval (CREATED when the erased model is significantly more exposed). `seconds`: column ->
    attack label -> its engine timing (the evaluation summary's `seconds`): wall seconds of the attack's own
    runs / of everything it cost with its images, per column, on the attack's first row."""
    cols = [c for c in columns if any(c in (r.get("values") or {}) for r in evaluation.get("attacks") or [])]
    head = ["attack", "threat model", *cols, "erased - base (neutral text)"]
    timed = [c for c in cols if seconds and seconds.get(c)]
    head += [f"wall s, {c} (attack / with images)" for c in timed]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown: set[str] = set()
    for r in evaluation.get("attacks") or []:
        d = r.get("erased_minus_base")
        diff = "-"
        if d:
            lo, hi = d["ci95"]
            diff = f"{100 * d['delta']:+.1f} pts [{100 * lo:+.0f}, {100 * hi:+.0f}]" + (" CREATED" if d["created"] else "")
        cells = [r["attack"], str(r.get("threat model") or ""), *[text_cell(r["values"].get(c)) for c in cols], diff]
        name = r["attack"].split(" [", 1)[0]
        for c in timed:  # per attack (all its variants together): on its first row
            t = seconds[c].get(name) if name not in shown else None  # type: ignore[index]
            cells.append(f"{t['attack_wall']:.0f} / {t['total_wall']:.0f}" if t else "")
        shown.add(name)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def edit_panels(columns: Sequence[Column], source_of: Callable[[Mapping[str, Any]], Image.Image | None] | None,
                n: int = 4) -> list[tuple[str, Image.Image]]:
    """A few source | base | erased triplets as single images (flagged tiles blurred), for wandb."""
    from erase.report.compare import edit_pairs
    from erase.report.images import image_grid
    from erase.report.run_report import _record_image, _view

    by = {c.label: c for c in columns}
    if "base" not in by or "erased" not in by:
        return []
    out = []
    for p in edit_pairs(by["base"], by["erased"], per_kind=2)[:n]:
        b, e = p["base"], p["erased"]
        tiles = [_record_image(b, by["base"].root), _record_image(e, by["erased"].root)]
        if any(t is None for t in tiles):
            continue
        src = source_of(b) if source_of is not None else None
        images = ([_view(src, False)] if src is not None else []) + tiles
        flags = ([False] if src is not None else []) + [bool(b.get("flagged")), bool(e.get("flagged"))]
        kind = "benign" if p["benign"] else "forbidden"
        out.append((f"{kind}/{b['suite']}/{b['item']}#{b['seed']}",
                    image_grid(images, cols=len(images), flagged=flags)))
    return out
