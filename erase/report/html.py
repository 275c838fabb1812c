"""Self-contained HTML reports and markdown tables.

Pages embed every image as a base64 PNG data URI and carry their CSS inline, so one file can be archived,
mailed or attached to a model card and still render offline. All text goes through `html.escape`: run
names, prompts ids and metadata come from users and configs.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from PIL import Image

# Shown first, in this order, in the evaluation header; any other meta keys follow.
META_ORDER = ("model", "method", "detector", "version", "protocol", "seed", "steps", "guidance", "resolution")

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; margin: 0 0 12px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; font-size: 13px;
          background: #f7f7f9; border: 1px solid #e3e3e8; padding: 10px 14px; margin: 0; }
dl.meta dt { font-weight: 600; color: #555; }
dl.meta dd { margin: 0; font-family: ui-monospace, Menlo, monospace; }
figure { margin: 8px 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
div.scroll { overflow-x: auto; max-width: 100%; }
body { max-width: 1100px; }
td.rate { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.rate small { color: #666; }
td.good b { color: #0a6b2d; } td.bad b { color: #a40000; } td.same b { color: #555; }
p.note, ul.note { font-size: 12px; color: #555; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
div.edits { display: flex; flex-wrap: wrap; gap: 6px 24px; }
div.triplet { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; margin: 6px 0 10px; width: 440px; }
div.triplet .tlabel { flex-basis: 100%; font-size: 12px; font-weight: 600; }
div.triplet.forbidden .tlabel { color: #a40000; } div.triplet.benign .tlabel { color: #0a6b2d; }
div.triplet figure { margin: 0; width: 140px; } div.triplet figcaption { font-size: 11px; color: #444; }
div.triplet figure img { width: 128px; image-rendering: pixelated; }
figure.missing div { width: 128px; height: 128px; background: #eee; color: #888; font-size: 11px;
                     display: flex; align-items: center; justify-content: center; }
section { margin-bottom: 10px; }
"""

# Click a header to sort its table (numbers by data-sort, else by text); no library, works offline.
_SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(row) {
        var cell = row.cells[col], v = cell.getAttribute('data-sort');
        if (v === null) { v = cell.textContent.trim(); }
        var x = Number(v);
        return (v === '' || isNaN(x)) ? v : x;
      }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b), blank = (x === '') - (y === '');
        if (blank) { return blank; }  // empty cells last either way
        var c = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def image_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    return list(dict.fromkeys(key for row in rows for key in row))  # union, first-seen order


def html_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    cols = _columns(rows, columns)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in rows:
        cells = []
        for c in cols:
            v = row.get(c)
            cls = ' class="num"' if isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    # The wrapper scrolls wide tables (e.g. 18 per-label columns) instead of widening the whole page.
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _meta_list(meta: Mapping[str, Any]) -> str:
    keys = [k for k in META_ORDER if k in meta] + [k for k in meta if k not in META_ORDER]
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(_fmt(meta[k]))}</dd>" for k in keys)
    return f'<dl class="meta">{items}</dl>'


def _page(title: str, body: Iterable[str]) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n" + "\n".join(body) + f"\n<script>{_SORT_JS}</script>\n</body></html>\n"
    )


def _write(text: str, path: str | Path) -> Path:
    """Atomic: a reader (or a killed run) sees the old page or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def render_evaluation_page(
    title: str,
    summary_rows: Sequence[Mapping[str, Any]],
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    grids: Mapping[str, Image.Image],
    meta: Mapping[str, Any],
    path: str | Path,
) -> Path:
    """One evaluation: run metadata, a summary table, further named tables, then named image grids.

    Grids are embedded as given: blur flagged tiles before (`image_grid` does by default).
    """
    body = [_meta_list(meta), "<h2>Summary</h2>", html_table(summary_rows)]
    for name, rows in tables.items():
        body += [f"<h2>{html.escape(name)}</h2>", html_table(rows)]
    for name, grid in grids.items():
        alt = html.escape(name, quote=True)
        body += [
            f"<h2>{html.escape(name)}</h2>",
            f'<figure><img alt="{alt}" src="{image_data_uri(grid)}"></figure>',
        ]
    return _write(_page(title, body), path)


def markdown_summary(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured markdown table (for model cards)."""
    cols = _columns(rows, columns)

    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"
