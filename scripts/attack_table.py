#!/usr/bin/env python
"""Evaluations side by side as markdown: one column per evaluation folder, every suite, utility and attack row with
its rate, 95% Wilson interval and n (what docs/robustness.md's ablation tables are made of).

    python scripts/attack_table.py base=<eval dir> main=<eval dir> robust=<eval dir> [--base base --erased robust]

An evaluation folder is what `erase task=evaluate ... out_dir=D` writes under D/eval (or D itself). `--base` and
`--erased` name the pair whose neutral-text rows are differenced (Newcombe's interval, CREATED when the erased
model is significantly more exposed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from erase.report.compare import Column, card_evaluation, columns_from_eval
from erase.report.runs import attack_markdown, text_cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("columns", nargs="+", metavar="LABEL=DIR")
    ap.add_argument("--base", default=None, help="column differenced against (neutral-text rows)")
    ap.add_argument("--erased", default=None)
    args = ap.parse_args()
    columns: list[Column] = []
    for spec in args.columns:
        label, sep, folder = spec.partition("=")
        if not sep:
            raise SystemExit(f"give columns as LABEL=DIR, not {spec!r}")
        root = Path(folder)
        root = root / "eval" if (root / "eval").is_dir() else root
        if not root.is_dir():
            raise SystemExit(f"{label}: no evaluation folder at {root}")
        columns += columns_from_eval(root, label, baselines=False)
    card = card_evaluation(columns, base=args.base, erased=args.erased)
    labels = [c.label for c in columns]
    head = ["row", *labels]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in [*card["leakage"], *card["utility"]]:
        name = " / ".join(str(row[k]) for k in ("suite", "route", "protocol", "metric") if row.get(k) not in (None, "all"))
        print("| " + " | ".join([name, *[text_cell(row["values"].get(c)) for c in labels]]) + " |")
    print()
    print(attack_markdown(card, columns=labels))


if __name__ == "__main__":
    main()
