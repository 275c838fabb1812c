"""wandb=true: offline without an API key, and ONE run holding training, evaluation (with n and intervals),
and image panels, under WANDB_DIR (or the run's out_dir), not ./wandb."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from hydra import compose, initialize_config_dir

from erase.cli import CONFIGS, run_task

TINY_EVAL = ["eval.base_cache=null", "eval.suites.prompts.n=2", "eval.suites.prompts-train-phrase=null",
             "eval.suites.edits.n_photos=1", "eval.suites.utility=null", "eval.suites.benign-edits.n_edits_per_kind=1"]
ESD_FAST = ["method=esd", "method.params.num_steps=3", "method.params.trajectories=2", "method.params.refresh_every=2",
            "method.train.steps=2", "method.train.checkpoint_every=0"]


def _records(path: Path):
    """The protobuf records of an offline .wandb file (a LevelDB-style log: 32 KiB blocks of chunks, each with
    a 7-byte header: crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb data file"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record
        elif kind == 0:
            buf = b""


def _history(path: Path) -> dict[str, list]:
    keys: dict[str, list] = {}
    for r in _records(path):
        if r.WhichOneof("record_type") == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                keys.setdefault(key, []).append(json.loads(item.value_json))
    return keys


def test_wandb_offline_one_run_holds_training_evaluation_and_panels(tmp_path, monkeypatch):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    wandb_dir = tmp_path / "wandb-dir"
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=["wandb=true", "cpu=true", f"out_dir={tmp_path / 'run'}", *ESD_FAST,
                                           *TINY_EVAL])
    summary = run_task(cfg)  # no API key anywhere: must not raise wandb's UsageError
    assert summary["comparison"]["leakage"]

    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one wandb run, got {[r.name for r in runs]}"
    assert not (cwd / "wandb").exists() and not list((tmp_path / "run").rglob("offline-run-*"))
    history = _history(next(runs[0].glob("run-*.wandb")))

    assert len(history["train/esd/loss"]) == 2 and len(history["train/lr"]) == 2  # every step, this one run
    assert all(g > 0 for g in history["train/grad_norm"])
    for column in ("base", "erased"):
        n = history[f"leakage/{column}/prompts/toy/n"]
        rate = history[f"leakage/{column}/prompts/toy/rate"][0]
        lo, hi = history[f"leakage/{column}/prompts/toy/ci95_lo"][0], history[f"leakage/{column}/prompts/toy/ci95_hi"][0]
        assert n == [2.0] and lo <= rate <= hi
    assert any(k.startswith("utility/erased/benign-edits/") for k in history)
    panels = {k.split("/_type")[0] for k in history if k.startswith("panel/") and k.endswith("/_type")}
    assert panels and all(history[f"{p}/_type"] == ["image-file"] for p in panels)
    assert any(k.startswith("grid/eval-erased/") for k in history)  # the evaluation's own grids, same run
