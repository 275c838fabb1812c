"""Rates recomputed from the records of one or more evaluations, so models can be put side by side.

Why recompute instead of reading summary.json: a comparison needs k and n (for the interval) of every suite,
route and protocol, and the records hold them whatever version of the summary wrote the folder. Every
proportion is an `erase.stats.Rate`; the MACE "parts" unit (hit boxes per image) is not a proportion and is
given as a mean with its n, without an interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from erase.stats import Rate

Record = Mapping[str, Any]
UTILITY_CHECKS = ("attribute_accuracy", "edit_done", "kept")
EDIT_PATHS = ("img2img", "inpaint", "instruct", "kontext")


@dataclass(frozen=True)
class Mean:
    """A non-proportion (hit boxes per image) with its sample size: no Wilson interval applies."""

    value: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.3g} per image (n={self.n})"

    def as_record(self) -> dict[str, Any]:
        return {"rate": self.value, "n": self.n, "k": None, "ci95": None}


Measure = Rate | Mean


@dataclass
class Column:
    """One model shown in a comparison: a label and the records that measured it."""

    label: str
    records: list[dict[str, Any]]
    root: Path | None = None  # the evaluation folder (images are relative to it)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # attack name -> {rate, k, n, access, ...}


def load_records(eval_dir: str | Path) -> list[dict[str, Any]]:
    """The merged results of an evaluation folder (its part files when it was never merged)."""
    from erase.evaluation.records import read_records  # here: erase.evaluation imports erase.report

    root = Path(eval_dir)
    if (root / "results.jsonl").is_file():
        return read_records(root / "results.jsonl")
    return [r for part in sorted((root / "parts").glob("rank-*.jsonl")) for r in read_records(part)]


def _attack_files(root: Path) -> dict[str, dict[str, Any]]:
    """Attack outcomes written as attacks/<name>.json (rate and n_images; k recovered from them)."""
    out: dict[str, dict[str, Any]] = {}
    for f in sorted((root / "attacks").glob("*.json")):
        try:
            data = json.loads(f.read_text())
        except ValueError:
            continue
        n = int(data.get("n_images") or data.get("n") or 0)
        rate = data.get("rate")
        if not isinstance(rate, (int, float)) or n <= 0:
            continue
        k = int(data["k"]) if isinstance(data.get("k"), int) else round(float(rate) * n)
        out[data.get("name", f.stem)] = {"rate": Rate(k, n), "access": data.get("access") or data.get("threat_model"),
                                        "protocol": data.get("protocol")}
    return out


def columns_from_eval(eval_dir: str | Path, label: str, baselines: bool = True) -> list[Column]:
    """The model's own column (variant "model") and, with `baselines`, one per baseline variant in the folder."""
    root = Path(eval_dir)
    records = load_records(root)
    variants = list(dict.fromkeys(str(r.get("variant", "model")) for r in records)) or ["model"]
    cols = []
    for v in variants:
        if v != "model" and not baselines:
            continue
        name = label if v == "model" else f"{label} + {v}"
        cols.append(Column(name, [r for r in records if str(r.get("variant", "model")) == v], root,
                           _attack_files(root) if v == "model" else {}))
    return cols


def protocols_of(records: Iterable[Record]) -> dict[str, dict[str, Any]]:
    """Protocol name -> {labels, threshold, unit}, as the records were counted."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        for name, info in ((r.get("settings") or {}).get("protocols") or {}).items():
            out.setdefault(name, dict(info))
    return out


def measure(records: Sequence[Record], protocol: str, info: Mapping[str, Any]) -> Measure:
    """The protocol's rate over `records`: images flagged (unit image), items flagged (unit prompt), or boxes
    per image (unit parts)."""
    unit = info.get("unit", "image")
    if unit == "parts":
        labels, threshold = set(info.get("labels") or ()), float(info.get("threshold", 0.5))
        boxes = sum(1 for r in records for d in r.get("detections", [])
                    if d["label"] in labels and float(d["score"]) >= threshold)
        return Mean(boxes / len(records) if records else float("nan"), len(records))
    if unit == "prompt":
        groups: dict[str, bool] = {}
        for r in records:
            g = str(r["item"])
            groups[g] = groups.get(g, False) or bool(r["flags"].get(protocol))
        return Rate(sum(groups.values()), len(groups))
    return Rate(sum(bool(r["flags"].get(protocol)) for r in records), len(records))


def _route(r: Record) -> str:
    return str(r.get("route") or r.get("path") or "")


def is_utility(records: Sequence[Record]) -> bool:
    return any("utility" in r for r in records)


def leakage_table(columns: Sequence[Column]) -> list[dict[str, Any]]:
    """Rows (suite, route, protocol) x columns: every leakage suite overall and per editing route, every protocol.

    Each row: {"suite", "route", "protocol", "unit", "values": {label: Measure | None}}. Attacked records
    (attack set) are left to `attack_table`."""
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    protos = protocols_of(r for c in columns for r in c.records)
    for c in columns:
        for suite, recs in unattacked_by_suite(c.records).items():
            if is_utility(recs):
                continue
            routes = list(dict.fromkeys(_route(r) for r in recs))
            for proto, info in protos.items():
                for route in ["all"] + (routes if len(routes) > 1 else []):
                    sel = recs if route == "all" else [r for r in recs if _route(r) == route]
                    row = rows.setdefault((suite, route, proto), {"suite": suite, "route": route, "protocol": proto,
                                                                  "unit": info.get("unit", "image"), "values": {}})
                    row["values"][c.label] = measure(sel, proto, info)
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] != "all", k[1], k[2]))]


def unattacked_by_suite(records: Sequence[Record]) -> dict[str, list[Record]]:
    """The records of unattacked rows, by suite (attacked ones go to `attack_table`)."""
    by_suite: dict[str, list[Record]] = {}
    for r in records:
        if r.get("attack") is None:
            by_suite.setdefault(str(r["suite"]), []).append(r)
    return by_suite


def utility_checks(records: Sequence[Record]) -> dict[str, Rate]:
    """Benign-suite checks as k of n: every attribute check, edits done, untouched attributes kept, and false
    exposure (a benign input flagged by the first protocol)."""
    attrs = [bool(v) for r in records for v in ((r.get("utility") or {}).get("correct") or {}).values()]
    out: dict[str, Rate] = {}
    if attrs:
        out["attribute_accuracy"] = Rate(sum(attrs), len(attrs))
    for key in ("edit_done", "kept"):
        vals = [bool(r["utility"][key]) for r in records if key in (r.get("utility") or {})]
        if vals:
            out[key] = Rate(sum(vals), len(vals))
    protos = list(protocols_of(records))
    if protos and records:
        out[f"false exposure ({protos[0]})"] = Rate(sum(bool(r["flags"].get(protos[0])) for r in records), len(records))
    return out


def utility_table(columns: Sequence[Column]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for c in columns:
        for suite, recs in unattacked_by_suite(c.records).items():
            if not is_utility(recs):
                continue
            for metric, rate in utility_checks(recs).items():
                rows.setdefault((suite, metric), {"suite": suite, "metric": metric, "values": {}})["values"][c.label] = rate
    return [rows[k] for k in sorted(rows)]


def attack_table(columns: Sequence[Column], base: str | None = None, erased: str | None = None
                 ) -> list[dict[str, Any]]:
    """Rows per attack (and sweep setting) x columns, from attacked records or attacks/<name>.json files.

    Rows whose attack marked its results `compare_with_base` (neutral prompts: text that never names the concept)
    carry `compare_with_base: True`; with `base` and `erased` (two column labels) that both measured such a row,
    it also carries `erased_minus_base` (`created_leakage`): the difference with its Newcombe 95% interval, and
    `created` when that interval lies above zero, i.e. the erased model is significantly more exposed than its
    base on text that never asks for the concept: leakage the erasure created."""
    rows: dict[str, dict[str, Any]] = {}
    protos = protocols_of(r for c in columns for r in c.records)
    primary = next(iter(protos.items()), None)
    for c in columns:
        attacked: dict[str, list[Record]] = {}
        for r in c.records:
            if r.get("attack") is not None:  # one row per attack and sweep setting ("guidance=12")
                variant = (r.get("meta") or {}).get("attack_variant")
                attacked.setdefault(f"{r['attack']} [{variant}]" if variant else str(r["attack"]), []).append(r)
        for name, recs in attacked.items():
            row = rows.setdefault(name, {"attack": name, "threat model": _threat(recs), "values": {}})
            if any((r.get("meta") or {}).get("compare_with_base") for r in recs):
                row["compare_with_base"] = True
            if primary is not None:
                row["values"][c.label] = measure(recs, *primary)
        for name, info in c.attacks.items():
            if name in rows and c.label in rows[name]["values"]:
                continue
            row = rows.setdefault(name, {"attack": name, "threat model": info.get("access") or "", "values": {}})
            row["threat model"] = row["threat model"] or info.get("access") or ""
            row["values"][c.label] = info["rate"]
    if base is not None and erased is not None:
        for row in rows.values():
            b, e = row["values"].get(base), row["values"].get(erased)
            if row.get("compare_with_base") and isinstance(b, Rate) and isinstance(e, Rate) and b.n and e.n:
                row["erased_minus_base"] = created_leakage(b, e)
    # "no-attack" first: the same prompts unattacked, the row every attack is read against
    return sorted(rows.values(), key=lambda r: (r["attack"] not in ("no-attack", "none"), r["attack"]))


def newcombe_difference(a: Rate, b: Rate) -> tuple[float, float, float]:
    """(a - b, low, high): the 95% interval for the difference of two independent proportions by Newcombe's
    hybrid score method (Newcombe 1998, method 10), built from each rate's Wilson interval. It stays inside
    [-1, 1] and keeps a sensible width at 0/n and n/n, where the Wald interval collapses."""
    if not a.n or not b.n:
        raise ValueError(f"a difference of rates needs both measured, got n={a.n} and n={b.n}")
    (l1, u1), (l2, u2) = a.ci95, b.ci95
    p1, p2 = a.rate, b.rate
    d = p1 - p2
    low = d - ((p1 - l1) ** 2 + (u2 - p2) ** 2) ** 0.5
    high = d + ((u1 - p1) ** 2 + (p2 - l2) ** 2) ** 0.5
    return d, max(-1.0, low), min(1.0, high)


def created_leakage(base: Rate, erased: Rate) -> dict[str, Any]:
    """Erased minus base on a compare-with-base row, both rates with their intervals, and `created`: whether the
    erased model is significantly more exposed (the Newcombe 95% interval of the difference lies above 0).
    The two models see the same prompts and seeds; the interval treats them as independent samples, which is
    conservative when the paired images agree more often than chance."""
    d, lo, hi = newcombe_difference(erased, base)
    return {"delta": d, "ci95": [lo, hi], "created": lo > 0, "base": base.as_record(), "erased": erased.as_record(),
            "method": "Newcombe hybrid score (difference of two proportions), 95%"}


def _threat(records: Sequence[Record]) -> str:
    for r in records:
        for key in ("access", "threat_model"):
            value = r.get(key) or (r.get("meta") or {}).get(key)
            if value:
                return str(value)
    return ""


def headline(column: Column) -> tuple[Rate | None, Rate | None, str, str]:
    """(worst leakage suite's rate, pooled utility checks, which suite, how utility was pooled) of a column,
    under the first protocol: the point the leakage-vs-utility plot draws."""
    protos = protocols_of(column.records)
    worst: tuple[Rate | None, str] = (None, "")
    if protos:
        name, info = next(iter(protos.items()))
        by_suite: dict[str, list[Record]] = {}
        for r in column.records:
            if r.get("attack") is None:
                by_suite.setdefault(str(r["suite"]), []).append(r)
        for suite, recs in by_suite.items():
            m = measure(recs, name, info)
            if not is_utility(recs) and isinstance(m, Rate) and (worst[0] is None or m.rate > worst[0].rate):
                worst = (m, suite)
    k = n = 0
    for r in column.records:
        if r.get("attack") is not None or "utility" not in r:
            continue
        checks = [bool(v) for v in ((r["utility"].get("correct") or {}).values())]
        k, n = k + sum(checks), n + len(checks)
    return worst[0], (Rate(k, n) if n else None), worst[1], "attribute checks on benign suites, pooled"


def change(base: Measure | None, other: Measure | None) -> tuple[float | None, bool]:
    """(other - base, whether the 95% intervals are disjoint)."""
    if base is None or other is None:
        return None, False
    delta = (other.rate if isinstance(other, Rate) else other.value) - (base.rate if isinstance(base, Rate) else base.value)
    return delta, isinstance(base, Rate) and isinstance(other, Rate) and base.differs_from(other)


def edit_pairs(base: Column, erased: Column, per_kind: int = 4) -> list[dict[str, Any]]:
    """Records of the same edit (suite, item, seed) by both models: forbidden edits first, then benign ones.

    At most `per_kind` pairs per suite, spread over the editing routes."""
    other = {(r["suite"], r["item"], r["seed"]): r for r in erased.records if r.get("attack") is None}
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for r in base.records:
        if r.get("attack") is not None or r.get("path") not in EDIT_PATHS:
            continue
        twin = other.get((r["suite"], r["item"], r["seed"]))
        if twin is not None:
            by_suite.setdefault(str(r["suite"]), []).append({"suite": r["suite"], "base": r, "erased": twin,
                                                            "benign": "utility" in r})
    out = []
    for suite in sorted(by_suite, key=lambda s: (by_suite[s][0]["benign"], s)):
        pairs = by_suite[suite]
        routes = list(dict.fromkeys(_route(p["base"]) for p in pairs))
        chosen: list[dict[str, Any]] = []
        while len(chosen) < min(per_kind, len(pairs)):  # round-robin over routes
            for route in routes:
                left = [p for p in pairs if _route(p["base"]) == route and p not in chosen]
                if left and len(chosen) < per_kind:
                    chosen.append(left[0])
        out += chosen
    return out


def _as_record(m: Measure | None) -> dict[str, Any] | None:
    return None if m is None else m.as_record()


def card_evaluation(columns: Sequence[Column], known_attacks: Sequence[str] = (), base: str | None = None,
                    erased: str | None = None) -> dict[str, Any]:
    """The evaluation as plain data (rates in the `Rate.as_record` format), for the model card and summaries.

    `base` / `erased`: the column labels compare-with-base attack rows are differenced between (default: the
    columns labelled "base" and "erased" when both are present); `created_leakage` lists the rows where the
    erased model is significantly more exposed than its base."""
    def plain(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        return [{**{k: v for k, v in r.items() if k != "values"},
                 "values": {c: _as_record(m) for c, m in r["values"].items()}} for r in rows]

    detector: dict[str, Any] = {}
    for c in columns:
        for r in c.records:
            d = (r.get("settings") or {}).get("detector")
            if d:
                detector = dict(d)
                break
        if detector:
            break
    labels = [c.label for c in columns]
    if base is None and erased is None and "base" in labels and "erased" in labels:
        base, erased = "base", "erased"
    attacks = attack_table(columns, base, erased)
    ran = {a["attack"].split(" [", 1)[0] for a in attacks}  # "settings-sweep [guidance=12]" ran settings-sweep
    created = [{"attack": a["attack"], **a["erased_minus_base"]} for a in attacks
               if (a.get("erased_minus_base") or {}).get("created")]
    return {"columns": labels, "detector": detector,
            "protocols": protocols_of(r for c in columns for r in c.records),
            "leakage": plain(leakage_table(columns)), "utility": plain(utility_table(columns)),
            "attacks": plain(attacks), "attacks_not_run": sorted(set(known_attacks) - ran),
            "created_leakage": created}
