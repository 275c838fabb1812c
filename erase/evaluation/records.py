"""Append-only JSONL results: one line per finished image, so a killed evaluation resumes where it stopped.

Why JSONL and not one JSON document: a line is written (and fsync'ed) the moment its image is scored, so a
crash loses at most the line being written. That line may be cut short; readers drop an unterminated last
line and the next `append` cuts it off before writing, so the file never holds garbage in the middle.

Why a separate `finalise`: appends happen in completion order, which depends on where a run was killed and on
sharding. The final file is the records sorted by a stable order with one canonical serialisation, so an
interrupted-and-resumed evaluation ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

log = logging.getLogger("erase.evaluation")

Record = dict[str, Any]


def record_key(suite: str, variant: str, item: str, seed: int, attack: str | None = None) -> str:
    """The identity of one result: which suite, generation variant, item, seed (and attack, if any)."""
    key = f"{suite}/{variant}/{item}/{seed}"
    return key if attack is None else f"{key}/{attack}"


def record_order(record: Mapping[str, Any]) -> tuple:
    """Sort order of the final file: suite, variant, item position, seed, attack (numbers compare as numbers)."""
    return (
        str(record.get("suite", "")),
        str(record.get("variant", "")),
        int(record.get("index", 0)),
        str(record.get("item", "")),
        int(record.get("seed", 0)),
        str(record.get("attack") or ""),
        str(record["key"]),
    )


def dumps(record: Mapping[str, Any]) -> str:
    """Canonical one-line JSON (sorted keys, no spaces): equal records serialise to equal bytes."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def read_records(path: str | Path) -> list[Record]:
    """Every complete record of a JSONL file (missing file: none). An unterminated or unparsable last line
    (a run killed mid-write) is dropped; a bad line in the middle is skipped with a warning."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline; else the unterminated last line
    if tail.strip():
        log.warning("%s: dropping an unterminated last line (%d bytes) left by an interrupted run", path, len(tail))
    out: list[Record] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s: line %d is not valid JSON; skipped", path, number)
            continue
        if isinstance(record, dict) and "key" in record:
            out.append(record)
        else:
            log.warning("%s: line %d has no 'key'; skipped", path, number)
    return out


class ResultsStore:
    """One append-only JSONL file of records, each with a unique "key"."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def done_keys(self) -> set[str]:
        """Keys of every complete record already in the file."""
        return {r["key"] for r in read_records(self.path)}

    def records(self) -> list[Record]:
        return read_records(self.path)

    def _repair(self) -> None:
        """Cut an unterminated last line off, so the next append starts on a fresh line."""
        if not self.path.exists():
            return
        with open(self.path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":  # the common case: one byte read, nothing to do
                return
            f.seek(0)
            data = f.read()
            f.truncate(data.rfind(b"\n") + 1)  # 0 when there is no complete line at all
            f.flush()
            os.fsync(f.fileno())

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line and make it durable (flush + fsync) before returning."""
        if "key" not in record:
            raise ValueError("a record needs a 'key' (see record_key)")
        self._repair()
        line = (dumps(record) + "\n").encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def write_sorted(
    records: Iterable[Mapping[str, Any]],
    path: str | Path,
    order: Callable[[Mapping[str, Any]], Any] = record_order,
) -> list[Record]:
    """Write `records` (deduplicated by key, first kept) sorted by `order` to `path`, atomically.

    Returns the records as written. Same records in, same bytes out, whatever order they came in.
    """
    unique: dict[str, Record] = {}
    for r in records:
        unique.setdefault(r["key"], dict(r))
    ordered = sorted(unique.values(), key=order)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One temporary name per process: two runs sharing a cache (the base model's evaluation) must not collide.
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        for r in ordered:
            f.write((dumps(r) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # readers see the old file or the new one, never half of it
    return ordered
