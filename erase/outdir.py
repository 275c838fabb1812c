"""One run per output folder: `out_dir` is checked, created and locked before any work.

The lock is an `fcntl.flock` on `<out_dir>/.erase.lock`, which also holds the holder's pid (for the message a second
run gets). The kernel drops a flock when its process dies, however it dies, so a lock left by a killed run is taken
over without guessing from pids (a reused pid cannot keep a folder locked forever). The lock is re-entrant inside
one process: the CLI locks the run's folder and `erase()` locks it again without deadlocking.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".erase.lock"

_held: dict[Path, tuple[int, int]] = {}  # resolved out_dir -> (fd, depth) for locks this process holds


class OutDirError(ValueError):
    """out_dir cannot be used: it is a file, not writable, or another run holds it."""


class OutDirLocked(OutDirError):
    def __init__(self, path: Path, holder: str):
        self.path, self.holder = path, holder
        super().__init__(
            f"{path} is in use by another erase run ({holder}); two runs in one out_dir would overwrite each other's "
            "checkpoints and export. Wait for it to finish, or pass another out_dir"
        )


def prepare_out_dir(path: str | os.PathLike) -> Path:
    """`path` as an existing folder (created with its parents if missing); OutDirError saying what it must be."""
    out = Path(path).expanduser()
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            what = "the out_dir" if p == out else f"{p}, a parent of the out_dir,"
            raise OutDirError(f"out_dir {out}: {what} is a file; out_dir must be a folder (existing, or one that can be "
                              "created). Pass out_dir=<folder> or move the file away")
        if p.is_dir():
            break
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutDirError(f"out_dir {out} is not writable by this user; pass out_dir=<a folder you can write to>")
    return out


def is_main_rank() -> bool:
    """Rank 0 of an `accelerate launch` (or a plain process): the one that owns the run's folder lock."""
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def locked_out_dir(path: str | os.PathLike, wait: bool = False) -> Iterator[Path]:
    """Prepare `path` and hold its lock for the block; OutDirLocked naming the holder if another run has it, or
    with `wait` (a folder runs share on purpose, such as the base-evaluation cache) wait for it, saying for whom."""
    out = prepare_out_dir(path)
    key = out.resolve()
    if key in _held:  # this process already holds it (CLI run -> erase())
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield out
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    fd = _acquire(key / LOCK_NAME, wait)
    _held[key] = (fd, 1)
    try:
        yield out
    finally:
        del _held[key]
        _release(key / LOCK_NAME, fd)


def _acquire(lock: Path, wait: bool = False) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                if not wait:
                    os.close(fd)
                    raise OutDirLocked(lock.parent, holder) from None
                print(f"waiting for another erase run ({holder}), which is writing {lock.parent}", flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OutDirLocked:
            raise
        except OSError as err:  # e.g. a network filesystem without locks
            os.close(fd)
            raise OutDirError(f"cannot lock {lock} ({err}): out_dir must be on a filesystem with file locks (a local "
                              "disk); pass another out_dir") from err
        # The holder may have unlinked the file between our open and our flock: then we locked an orphan inode
        # that nobody else sees; start again on the file now at that path.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    os.fsync(fd)
    return fd


def _release(lock: Path, fd: int) -> None:
    try:
        os.unlink(lock)  # before unlocking: a waiter that opened the old file sees the inode change and retries
    except FileNotFoundError:
        pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"
