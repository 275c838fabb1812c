"""Refuse a multi-process launch that came up as one process.

`accelerate launch --cpu --num_processes 2 -m erase.cli ...` starts ONE process: with `--cpu` accelerate's
launcher takes its single-process path and drops the count without a word (no WORLD_SIZE in the environment).
A run that silently trains and evaluates on one rank looks fine and takes twice as long, so the CLI stops with
the forms that do start N processes on CPU:

    accelerate launch --multi_gpu --num_processes 2 -m erase.cli cpu=true ...   (gloo on CPU despite the name)
    torchrun --nproc_per_node 2 -m erase.cli cpu=true ...
"""

from __future__ import annotations

import os
import re
from pathlib import Path

WORKING_FORMS = ("accelerate launch --multi_gpu --num_processes N -m erase.cli cpu=true ...",
                 "torchrun --nproc_per_node N -m erase.cli cpu=true ...")


class LaunchError(RuntimeError):
    """The launcher was asked for more processes than started."""


def _launcher_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # not Linux, or the parent is gone: nothing to read
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def requested_processes(environ: dict[str, str] | None = None, parent_cmdline: list[str] | None = None) -> int | None:
    """How many processes the launch asked for: WORLD_SIZE, else `--num_processes N` on the accelerate
    launcher's command line (this process's parent). None when neither says."""
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE", "").isdigit():
        return int(env["WORLD_SIZE"])
    args = _launcher_cmdline(os.getppid()) if parent_cmdline is None else parent_cmdline
    joined = " ".join(args)
    if "accelerate" not in joined or "launch" not in joined:
        return None
    m = re.search(r"--num[_-]processes(?:=|\s+)(\d+)", joined)
    return int(m.group(1)) if m else None


def check_launch(num_processes: int, environ: dict[str, str] | None = None,
                 parent_cmdline: list[str] | None = None) -> None:
    """Raise LaunchError when the launch asked for N > 1 processes and `num_processes` (accelerate's
    PartialState.num_processes) is not N."""
    asked = requested_processes(environ, parent_cmdline)
    if asked is None or asked == num_processes:
        return
    raise LaunchError(
        f"the launch asked for {asked} processes but {num_processes} started (accelerate launch --cpu runs one "
        "process whatever --num_processes says). On CPU use one of:\n  " + "\n  ".join(WORKING_FORMS)
    )
