"""Leaderboards of finished runs: one ranking per base model and suite set, never across them.

Runs on different bases (the toy editor and the toy text-to-image model) or on different suites measure
different things, so each (base model, suites) group gets its own table, ranked by worst-suite leakage
(ties: higher utility first), with the base model itself as the reference row. Every rate is a percentage
with its 95% interval and n. Beside the HTML: the same rows as CSV (one row per run, k/n/interval columns)
and Markdown (for a README or a model card).
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from erase.report.compare import Column, columns_from_eval, headline, leakage_table
from erase.report.html import _page, _write, image_data_uri
from erase.report.run_report import leakage_utility_plot, rate_cell
from erase.stats import Rate

MAX_SUITE_COLUMNS = 5  # more suites than this: the detail lives in each run's own report, not in the ranking


@dataclass
class Entry:
    method: str
    run: str
    leakage: Rate | None
    utility: Rate | None
    worst_suite: str
    suites: dict[str, Any] = field(default_factory=dict)  # suite -> Measure (first protocol, all routes)
    report: str | None = None
    reference: bool = False  # the base model's row


@dataclass
class Group:
    base_model: str
    suites: tuple[str, ...]
    protocol: str
    entries: list[Entry] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.base_model} on {', '.join(self.suites)} ({self.protocol})"


def _entry(column: Column, method: str, run: str, report: str | None, reference: bool = False) -> Entry:
    leak, util, worst, _ = headline(column)
    rows = leakage_table([column])
    first = rows[0]["protocol"] if rows else ""
    suites = {r["suite"]: r["values"].get(column.label) for r in rows if r["route"] == "all" and r["protocol"] == first}
    return Entry(method, run, leak, util, worst, suites, report, reference)


def _base_model(records: Sequence[Mapping[str, Any]], fallback: str) -> str:
    for r in records:
        model = (r.get("settings") or {}).get("model") or {}
        if model.get("hash"):
            return f"{fallback} [{model['hash'][:8]}]" if fallback else str(model["hash"])
    return fallback


def collect(runs_dir: str | Path) -> list[Group]:
    """Every finished run (a summary.json with an erased evaluation) under `runs_dir`, grouped."""
    groups: dict[tuple[str, tuple[str, ...], str], Group] = {}
    bases_added: set[tuple[str, tuple[str, ...], str]] = set()
    for f in sorted(Path(runs_dir).rglob("summary.json")):
        try:
            s = json.loads(f.read_text())
        except ValueError:
            continue
        if not isinstance(s, dict) or "erased" not in s or "method" not in s:
            continue
        erased_dir = _eval_dir(s["erased"], f.parent / "eval-erased")
        if erased_dir is None:
            continue
        erased = columns_from_eval(erased_dir, "erased", baselines=False)[0]
        if not erased.records:
            continue
        base_dir = _eval_dir(s.get("base") or {}, f.parent / "eval-base")
        model = _base_model(erased.records if base_dir is None else
                            columns_from_eval(base_dir, "base", baselines=False)[0].records, str(s.get("model", "")))
        entry = _entry(erased, str(s.get("method_label") or s["method"]), f.parent.name, s["erased"].get("report"))
        key = (model, tuple(sorted(entry.suites)), _protocol(erased))
        group = groups.setdefault(key, Group(model, key[1], key[2]))
        group.entries.append(entry)
        if base_dir is not None and key not in bases_added:
            base = columns_from_eval(base_dir, "base", baselines=False)[0]
            group.entries.append(_entry(base, "base model (no erasure)", "-", (s.get("base") or {}).get("report"), True))
            bases_added.add(key)
    out = list(groups.values())
    for g in out:
        g.entries.sort(key=_rank_key)
    return sorted(out, key=lambda g: g.title)


def _eval_dir(part: Mapping[str, Any], default: Path) -> Path | None:
    report = part.get("report")
    for candidate in ([Path(report).parent] if report else []) + [default]:
        if (candidate / "results.jsonl").is_file():
            return candidate
    return None


def _protocol(column: Column) -> str:
    from erase.report.compare import protocols_of

    return next(iter(protocols_of(column.records)), "")


def _rank_key(e: Entry) -> tuple:
    leak = e.leakage.rate if e.leakage is not None else float("inf")
    util = -e.utility.rate if e.utility is not None else 0.0
    return (e.reference, leak, util, e.method, e.run)  # reference row last: it is not ranked


def _suite_columns(g: Group) -> list[str]:
    return list(g.suites)[:MAX_SUITE_COLUMNS]


def _plot(g: Group):
    pts = [(f"{e.method} ({e.run})", e.leakage, e.utility, "s" if e.reference else "o")
           for e in g.entries if e.leakage is not None and e.utility is not None]
    return leakage_utility_plot(pts, size=(6.0, 3.8)) if pts else None


def _group_html(g: Group, index: int, page_dir: Path) -> str:
    suites = _suite_columns(g)
    head = ["rank", "method", "run", "leakage (worst suite)", "utility", *suites]
    rows = []
    rank = 0
    for e in g.entries:
        rank += 0 if e.reference else 1
        run = html.escape(e.run)
        if e.report:
            # relative to the page, so the link survives moving or copying the runs folder with it
            href = Path(os.path.relpath(Path(e.report).resolve(), page_dir.resolve())).as_posix()
            run = f'<a href="{html.escape(href, quote=True)}">{run}</a>'
        cells = [f'<td class="num" data-sort="{rank if not e.reference else ""}">{"ref" if e.reference else rank}</td>',
                 f"<td>{html.escape(e.method)}</td>", f"<td>{run}</td>", rate_cell(e.leakage), rate_cell(e.utility)]
        cells += [rate_cell(e.suites.get(s)) for s in suites]
        rows.append(f'<tr{" class=reference" if e.reference else ""}>{"".join(cells)}</tr>')
    thead = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    table = f'<table class="sortable"><thead><tr>{thead}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    more = len(g.suites) - len(suites)
    note = f'<p class="note">{more} more suite(s) in each run\'s report.</p>' if more > 0 else ""
    plot = _plot(g)
    fig = "" if plot is None else f'<figure><img alt="leakage against utility" src="{image_data_uri(plot)}"></figure>'
    return (f'<section class="group" id="group-{index}"><h2>{html.escape(g.title)}</h2>'
            '<p class="note">Ranked by worst-suite leakage, then utility. Click a header to sort. Cells: rate, '
            f"95% interval, n.</p>{table}{note}{fig}</section>")


def _pct(rate: Rate | None) -> tuple[str, str, str, str, str]:
    if rate is None:
        return ("", "", "", "", "")
    lo, hi = rate.ci95
    return (f"{100 * rate.rate:.1f}", str(rate.k), str(rate.n), f"{100 * lo:.1f}", f"{100 * hi:.1f}")


def csv_text(groups: Sequence[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["base_model", "suites", "protocol", "rank", "method", "run",
                "leakage_pct", "leakage_k", "leakage_n", "leakage_ci95_lo_pct", "leakage_ci95_hi_pct", "worst_suite",
                "utility_pct", "utility_k", "utility_n", "utility_ci95_lo_pct", "utility_ci95_hi_pct"])
    for g in groups:
        rank = 0
        for e in g.entries:
            rank += 0 if e.reference else 1
            w.writerow([g.base_model, " ".join(g.suites), g.protocol, "ref" if e.reference else rank, e.method,
                        e.run, *_pct(e.leakage), e.worst_suite, *_pct(e.utility)])
    return buf.getvalue()


def markdown_text(groups: Sequence[Group]) -> str:
    parts = []
    for g in groups:
        lines = [f"### {g.title}", "", "| rank | method | run | leakage (worst suite) | utility |", "|---|---|---|---|---|"]
        rank = 0
        for e in g.entries:
            rank += 0 if e.reference else 1
            lines.append(f"| {'ref' if e.reference else rank} | {e.method} | {e.run} | "
                         f"{e.leakage if e.leakage is not None else '-'} | {e.utility if e.utility is not None else '-'} |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def write_leaderboard(runs_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write leaderboard.html, .csv and .md into `out_dir`; returns their paths and the groups."""
    groups = collect(runs_dir)
    if not groups:
        raise FileNotFoundError(f"no finished runs (summary.json with an erased evaluation) under {runs_dir}: "
                                "run `erase` (task=erase_and_eval) first, or point runs_dir at a multirun folder")
    out = Path(out_dir)
    body = [_group_html(g, i, out) for i, g in enumerate(groups)]
    page = _write(_page("Leaderboard", body), out / "leaderboard.html")
    csv_path = _write(csv_text(groups), out / "leaderboard.csv")
    md_path = _write(markdown_text(groups), out / "leaderboard.md")
    return {"groups": groups, "page": str(page), "csv": str(csv_path), "markdown": str(md_path)}

