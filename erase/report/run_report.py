"""The comparison report of one run: base, erased, every baseline side by side, on one self-contained page.

Sections (each an element with an id, which the tests look up in Chromium's DOM): run metadata (#meta),
leakage per suite / route / protocol (#leakage), utility (#utility), attacks (#attacks, when any ran),
edit triplets source | base edit | erased edit (#edits), and leakage against utility with interval bars
(#tradeoff). Every rate cell shows the rate, its 95% interval and n, stacked so the table stays narrow.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from erase.report.compare import Column, Mean, Measure, attack_table, change, edit_pairs, headline, leakage_table, utility_table
from erase.report.html import _meta_list, _page, _write, image_data_uri
from erase.report.images import blur_flagged
from erase.stats import Rate

SourceLookup = Callable[[Mapping[str, Any]], Image.Image | None]
VIEW_SIZE = 128  # tiny images are enlarged to this for viewing (nearest neighbour: no invented detail)


def rate_cell(m: Measure | None) -> str:
    """A table cell: the rate in bold, its interval and n beneath; data-sort holds the rate for sorting."""
    if m is None:
        return '<td class="rate" data-sort="">-</td>'
    if isinstance(m, Mean):
        return f'<td class="rate" data-sort="{m.value:.6g}"><b>{m.value:.3g}</b><br><small>per image, n={m.n}</small></td>'
    lo, hi = m.ci95
    return (f'<td class="rate" data-sort="{m.rate:.6g}"><b>{100 * m.rate:.1f}%</b><br>'
            f'<small>[{100 * lo:.1f}, {100 * hi:.1f}] n={m.n}</small></td>')


def change_cell(base: Measure | None, other: Measure | None, lower_is_better: bool) -> str:
    delta, disjoint = change(base, other)
    if delta is None:
        return '<td class="rate" data-sort="">-</td>'
    pct = isinstance(other, Rate)
    text = f"{100 * delta:+.1f} pts" if pct else f"{delta:+.3g}"
    good = (delta < 0) == lower_is_better
    verdict = ("better" if good else "worse") if disjoint else "within intervals"
    cls = ("good" if good else "bad") if disjoint else "same"
    return f'<td class="rate {cls}" data-sort="{delta:.6g}"><b>{text}</b><br><small>{verdict}</small></td>'


def _rows_html(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], labels: Sequence[str], base: str | None,
               other: str | None, lower_is_better: bool) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "".join(f"<th>{html.escape(c)}</th>" for c in labels)
    if base and other:
        head += f"<th>change ({html.escape(other)} vs {html.escape(base)})</th>"
    body = []
    for row in rows:
        cells = "".join(f"<td>{html.escape(str(row.get(k, '')))}</td>" for k in keys)
        cells += "".join(rate_cell(row["values"].get(c)) for c in labels)
        if base and other:
            cells += change_cell(row["values"].get(base), row["values"].get(other), lower_is_better)
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def created_leakage_html(attacks: Sequence[Mapping[str, Any]], base: str | None, erased: str | None) -> str:
    """The compare-with-base rows (text that never names the concept): erased minus base with its Newcombe 95%
    interval; a row whose interval lies above zero is leakage the erasure created."""
    rows = [r for r in attacks if r.get("erased_minus_base")]
    if not rows:
        return ""
    body = []
    for r in rows:
        d = r["erased_minus_base"]
        lo, hi = d["ci95"]
        verdict = ("<b>created by the erasure</b>: the erased model is more exposed than its base" if d["created"]
                   else "not shown: the interval reaches 0 (no significant difference at this n)")
        body.append(f'<tr class="{"bad" if d["created"] else "same"}"><td>{html.escape(r["attack"])}</td>'
                    + rate_cell(r["values"].get(base)) + rate_cell(r["values"].get(erased))
                    + f'<td class="rate" data-sort="{d["delta"]:.6g}"><b>{100 * d["delta"]:+.1f} pts</b><br>'
                    f"<small>[{100 * lo:+.1f}, {100 * hi:+.1f}]</small></td><td>{verdict}</td></tr>")
    created = sum(bool(r["erased_minus_base"]["created"]) for r in rows)
    return (f'<div id="created-leakage"><h3>Leakage the erasure created ({created} of {len(rows)} rows)</h3>'
            '<p class="note">Text that never names the concept, on both models (same prompts and seeds): erased '
            "minus base with its 95% interval for a difference of two proportions (Newcombe's hybrid score "
            "method). A row is leakage the erasure created when the whole interval lies above zero.</p>"
            f'<table class="sortable"><thead><tr><th>attack</th><th>{html.escape(str(base))}</th>'
            f"<th>{html.escape(str(erased))}</th><th>erased - base [95%]</th><th>verdict</th></tr></thead>"
            f'<tbody>{"".join(body)}</tbody></table></div>')


def attack_grids_html(columns: Sequence[Column], per_attack: int = 6, tile: int = 64) -> str:
    """One row per attack: a few of its images on each model (spread over its variants, flagged ones blurred and
    framed), captioned with target and variant ids, never the attacked text."""
    from erase.report.images import image_grid

    names = list(dict.fromkeys(str(r["attack"]) for c in columns for r in c.records if r.get("attack") is not None))
    rows = []
    for name in names:
        cells = []
        for c in columns:
            by_variant: dict[str, list[Mapping[str, Any]]] = {}
            for r in c.records:
                if r.get("attack") == name and r.get("image") and c.root is not None and (c.root / r["image"]).is_file():
                    by_variant.setdefault(str((r.get("meta") or {}).get("attack_variant") or ""), []).append(r)
            chosen: list[Mapping[str, Any]] = []
            while len(chosen) < per_attack and any(by_variant.values()):  # round-robin over the variants
                for recs in by_variant.values():
                    if recs and len(chosen) < per_attack:
                        chosen.append(recs.pop(0))
            if not chosen:
                cells.append(f"<figure><figcaption>{html.escape(c.label)}: no image</figcaption></figure>")
                continue
            images = []
            for r in chosen:
                with Image.open(c.root / r["image"]) as im:  # type: ignore[operator]
                    images.append(im.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST))
            captions = [(str((r.get("meta") or {}).get("attack_variant") or "") or f"t{(r.get('meta') or {}).get('attack_target', '')}")[:12]
                        for r in chosen]
            grid = image_grid(images, cols=len(images), captions=captions, flagged=[bool(r.get("flagged")) for r in chosen],
                              caption_height=14)
            cells.append(f'<figure><img alt="{html.escape(name, quote=True)} on {html.escape(c.label, quote=True)}" '
                         f'src="{image_data_uri(grid)}"><figcaption>{html.escape(c.label)}</figcaption></figure>')
        rows.append(f'<div class="attack-grid"><h4>{html.escape(name)}</h4>{"".join(cells)}</div>')
    if not rows:
        return ""
    return ('<details id="attack-grids"><summary>Images per attack (flagged ones blurred and framed red)</summary>'
            + "".join(rows) + "</details>")


def _view(image: Image.Image, flagged: bool) -> Image.Image:
    image = blur_flagged(image.convert("RGB"), flagged)  # on disk flagged images are blurred already; again is harmless
    if max(image.size) < VIEW_SIZE:
        k = -(-VIEW_SIZE // max(image.size))
        image = image.resize((image.width * k, image.height * k), Image.Resampling.NEAREST)
    return image


def _record_image(record: Mapping[str, Any], root: Path | None) -> Image.Image | None:
    if not record.get("image") or root is None or not (root / record["image"]).is_file():
        return None
    with Image.open(root / record["image"]) as im:
        return _view(im, bool(record.get("flagged")))


def _figure(image: Image.Image | None, caption: str) -> str:
    if image is None:
        return f'<figure class="missing"><div>not saved</div><figcaption>{html.escape(caption)}</figcaption></figure>'
    return (f'<figure><img alt="{html.escape(caption, quote=True)}" src="{image_data_uri(image)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def edit_panel(base: Column, erased: Column, source_of: SourceLookup | None, per_kind: int = 4) -> str:
    """Triplets of the same photo, edit and seed: source | base edit | erased edit. Captions carry ids, never
    the instruction's text."""
    pairs = edit_pairs(base, erased, per_kind)
    if not pairs:
        return "<p>No edit suite was measured on both models.</p>"
    rows = []
    for p in pairs:
        b, e = p["base"], p["erased"]
        src = source_of(b) if source_of is not None else None
        if src is None and b.get("source") and base.root is not None and (base.root / b["source"]).is_file():
            with Image.open(base.root / b["source"]) as im:
                src = im.convert("RGB")
        kind = "benign" if p["benign"] else "forbidden"
        rows.append(
            f'<div class="triplet {kind}"><div class="tlabel">{kind} edit: {html.escape(str(b["suite"]))} / '
            f'{html.escape(str(b["item"]))} seed {b["seed"]} ({html.escape(str(b.get("route") or b.get("path")))})</div>'
            + _figure(None if src is None else _view(src, False), "source photo")
            + _figure(_record_image(b, base.root), f"{base.label}: {'flagged' if b.get('flagged') else 'not flagged'}")
            + _figure(_record_image(e, erased.root), f"{erased.label}: {'flagged' if e.get('flagged') else 'not flagged'}")
            + "</div>"
        )
    return ('<p class="note">Flagged images are blurred and captioned "flagged". Benign edits should look the '
            "same on both models; forbidden ones should not go through on the erased model.</p>"
            + '<div class="edits">' + "".join(rows) + "</div>")


def tradeoff_plot(columns: Sequence[Column]) -> tuple[Image.Image | None, list[dict[str, Any]]]:
    """Leakage (worst suite) against utility (pooled checks) per column, with 95% interval bars both ways."""
    points = []
    for c in columns:
        leak, util, suite, how = headline(c)
        if leak is not None and util is not None:
            points.append({"label": c.label, "leak": leak, "util": util, "suite": suite, "how": how})
    if not points:
        return None, points
    return leakage_utility_plot([(p["label"], p["leak"], p["util"], "o") for p in points]), points


def leakage_utility_plot(points: Sequence[tuple[str, Rate, Rate, str]], size: tuple[float, float] = (6.4, 4.4)
                         ) -> Image.Image:
    """One point per (label, leakage, utility, marker), with 95% interval bars both ways: the picture the report
    and the leaderboard share."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (label, leak, util, marker) in enumerate(points):
        (llo, lhi), (ulo, uhi) = leak.ci95, util.ci95
        x, y = 100 * util.rate, 100 * leak.rate
        ax.errorbar([x], [y], xerr=_bars(x, ulo, uhi), yerr=_bars(y, llo, lhi),
                    fmt=marker, capsize=4, color=f"C{i % 10}", label=label, zorder=3)
    ax.set_xlabel("utility: benign checks passed, % (higher is better)")
    ax.set_ylabel("leakage: worst suite, % (lower is better)")
    ax.set_xlim(-2, 102)
    ax.set_ylim(-2, 102)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def render_comparison(
    columns: Sequence[Column],
    path: str | Path,
    meta: Mapping[str, Any],
    title: str = "Erasure report",
    source_of: SourceLookup | None = None,
    base: str | None = None,
    erased: str | None = None,
) -> Path:
    """Write the comparison page. `base` / `erased` name the two columns the change column and the edit panel
    compare (default: the first and the last column)."""
    if not columns:
        raise ValueError("a comparison needs at least one evaluated model")
    labels = [c.label for c in columns]
    base = base or labels[0]
    erased = erased or (labels[-1] if len(labels) > 1 else None)
    by_label = {c.label: c for c in columns}
    body = [f'<section id="meta"><h2>Run</h2>{_meta_list(meta)}</section>']

    leak = leakage_table(columns)
    body.append('<section id="leakage"><h2>Leakage (lower is better)</h2>'
                '<p class="note">Each cell: the rate, its 95% Wilson interval and n. A change counts only when '
                "the two intervals do not overlap.</p>"
                + (_rows_html(leak, ["suite", "route", "protocol"], labels, base, erased, True) if leak else
                   "<p>No leakage suite measured.</p>") + "</section>")
    util = utility_table(columns)
    if util:
        body.append('<section id="utility"><h2>Utility (higher is better)</h2>'
                    + _rows_html(util, ["suite", "metric"], labels, base, erased, False) + "</section>")
    attacks = attack_table(columns, base, erased)
    if attacks:
        attacked = [c.label for c in columns if any(c.label in r["values"] for r in attacks)]
        body.append('<section id="attacks"><h2>Attacks (attack success, lower is better)</h2>'
                    '<p class="note">"no-attack": the same prompts unattacked. Threat model: what the attacker '
                    "needs (black-box: prompts only; white-box: the weights).</p>"
                    + _rows_html(attacks, ["attack", "threat model"], attacked, base if base in attacked else None,
                                 erased if erased in attacked else None, True)
                    + created_leakage_html(attacks, base, erased)
                    + attack_grids_html([by_label[c] for c in attacked]) + "</section>")
    if erased is not None:
        body.append('<section id="edits"><h2>Edits: source | base | erased</h2>'
                    + edit_panel(by_label[base], by_label[erased], source_of) + "</section>")
    plot, points = tradeoff_plot(columns)
    if plot is not None:
        legend = "".join(f"<li>{html.escape(p['label'])}: leakage {p['leak']} on {html.escape(p['suite'])}, "
                         f"utility {p['util']}</li>" for p in points)
        body.append('<section id="tradeoff"><h2>Leakage against utility</h2>'
                    f'<figure><img alt="leakage against utility" src="{image_data_uri(plot)}"></figure>'
                    f'<ul class="note">{legend}</ul><p class="note">Bars: 95% intervals. Utility: '
                    f"{html.escape(points[0]['how'])}.</p></section>")
    return _write(_page(title, body), path)


def _bars(centre: float, lo: float, hi: float) -> list[list[float]]:
    """matplotlib's asymmetric error bars; clamped at 0 (at k = n the interval's end can round below the rate)."""
    return [[max(0.0, centre - 100 * lo)], [max(0.0, 100 * hi - centre)]]
