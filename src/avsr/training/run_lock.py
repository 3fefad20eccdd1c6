"""One run at a time per run folder: the training process locks `<run>/.avsr-lock` while it writes.

The lock is a POSIX record lock (fcntl): the kernel drops it when its process ends, however it
ends (kill -9 included), and it belongs to that process alone, so the DataLoader workers it
forks never hold it. Of a run of several processes (DDP, FSDP; Lightning's launcher, torchrun,
SLURM) only global rank 0 takes it: the other ranks would otherwise find their own run's lock.
The file names the holder (process id, host, start, command) for the message a second run gets.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from avsr.errors import AvsrError

LOCK = ".avsr-lock"
# This process's locks, by path. A POSIX lock is dropped when its process closes any descriptor
# of the file, so a path locked here is never opened again here (a nested run reuses the lock).
_HELD: dict[str, int] = {}


class RunFolderBusy(AvsrError):
    """Another process is writing this run folder."""


def first_rank() -> bool:
    """Whether this process is global rank 0 of its launch, by what the launchers set: torchrun
    RANK, Lightning's launcher LOCAL_RANK and NODE_RANK, SLURM SLURM_PROCID. A plain process is."""
    return all(os.environ.get(name, "0").strip() in ("", "0")
               for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _try_lock(fd: int, folder: Path) -> None:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        try:
            holder = json.loads(os.pread(fd, 4096, 0))
            who = (f"process {holder['pid']} on {holder['host']} since {holder['started']}: "
                   f"{holder['command'][:160]}")
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        os.close(fd)
        raise RunFolderBusy(f"{folder} is in use by another avsr run ({who}); wait for it to end, "
                            "or choose another out=") from None


def check_unlocked(folder: str | os.PathLike) -> None:
    """Refuse now, before any other check or work, a folder that another process is writing;
    creates nothing."""
    path = Path(folder) / LOCK
    if not first_rank() or str(path.resolve()) in _HELD or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return  # unreadable: `locked` names the problem when it creates the lock
    _try_lock(fd, Path(folder))
    os.close(fd)  # it was free: our lock goes with the descriptor


@contextmanager
def locked(folder: str | os.PathLike) -> Iterator[None]:
    """Hold the folder's lock for the block (global rank 0 only; re-entrant in one process)."""
    path = Path(folder) / LOCK
    key = str(path.resolve())
    if not first_rank() or key in _HELD:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:  # e.g. the folder deleted meanwhile by another run's --fresh
        raise RunFolderBusy(f"{folder}: cannot make its lock file {LOCK} ({err.strerror or err})") from None
    _try_lock(fd, Path(folder))
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(["avsr" if i == 0 else a for i, a in enumerate(sys.argv)])}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    _HELD[key] = fd
    try:
        yield
    finally:
        del _HELD[key]
        os.close(fd)
