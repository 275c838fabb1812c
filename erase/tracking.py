"""One wandb run per erase run: training losses, learning rate, gradient norm, evaluation rates with n and
intervals, attack rates and a few image panels all land in the same run.

Offline unless WANDB_MODE says otherwise (set before any `wandb.init`, so a machine without an API key never
sees "No API key configured"); the run's files go under the run's out_dir (or WANDB_DIR when set), not into
./wandb. Pieces that log (training, the evaluation harness, the CLI) call `ensure_run`: it joins the run the
CLI started or starts one that the caller then owns and finishes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

_run: Any = None


def _prepare(out_dir: str | os.PathLike) -> Path:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")  # its banner and sync hints would flood the terminal
    root = Path(os.environ.get("WANDB_DIR") or out_dir)
    root.mkdir(parents=True, exist_ok=True)
    return root


def active() -> Any:
    """The run erase is logging to, or None."""
    return _run


def start(out_dir: str | os.PathLike, project: str = "erase", config: Mapping[str, Any] | None = None,
          name: str | None = None, mode: str | None = None) -> Any:
    """Start this process's run (finishing an earlier one). `mode`: a wandb mode for this run only (default:
    WANDB_MODE, else offline). Config must not hold prompt text (see erase.card)."""
    global _run
    import wandb

    finish()
    root = _prepare(out_dir)
    _run = wandb.init(project=project, dir=str(root), config=dict(config or {}), name=name,
                      mode=mode or os.environ["WANDB_MODE"])
    return _run


def ensure_run(out_dir: str | os.PathLike, project: str = "erase", config: Mapping[str, Any] | None = None,
               mode: str | None = None) -> bool:
    """Join the active run (its config gains `config` under keys it lacks) or start one; True when this call
    started it (the caller finishes it)."""
    if _run is not None:
        if config:
            _run.config.update({k: v for k, v in dict(config).items() if k not in _run.config}, allow_val_change=True)
        return False
    start(out_dir, project, config, mode=mode)
    return True


def log(values: Mapping[str, Any]) -> None:
    if _run is not None and values:
        _run.log(dict(values))


def finish() -> None:
    global _run
    if _run is not None:
        _run.finish()
        _run = None


def rate_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """Flat wandb keys from erase.report's evaluation data: <section>/<column>/<row>/{rate,n,ci95_lo,ci95_hi}."""
    out: dict[str, float] = {}
    for section, keys in (("leakage", ("suite", "route", "protocol")), ("utility", ("suite", "metric")),
                          ("attack", ("attack",))):
        for row in evaluation.get("attacks" if section == "attack" else section) or []:
            name = "/".join(str(row[k]) for k in keys if not (k == "route" and row.get(k) == "all"))
            for column, rate in (row.get("values") or {}).items():
                if not rate or rate.get("rate") is None:
                    continue
                prefix = f"{section}/{column}/{name}"
                out[f"{prefix}/rate"] = float(rate["rate"])
                out[f"{prefix}/n"] = float(rate["n"])
                if rate.get("ci95"):
                    out[f"{prefix}/ci95_lo"], out[f"{prefix}/ci95_hi"] = map(float, rate["ci95"])
    return out


def log_evaluation(evaluation: Mapping[str, Any], panels: Sequence[tuple[str, Any]] = ()) -> None:
    """Every rate with its n and interval, into the run's summary too; `panels`: (key, PIL image), already
    blurred where flagged."""
    if _run is None:
        return
    import wandb

    metrics = rate_metrics(evaluation)
    log({**metrics, **{f"panel/{key}": wandb.Image(img) for key, img in panels}})
    _run.summary.update(metrics)
