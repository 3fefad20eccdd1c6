"""Writing files and folders so that a reader never sees a half-written one."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `out_dir` by renames.

    On an exception nothing changes at `out_dir`. The caller decides beforehand whether an
    existing `out_dir` may be replaced.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.{tag}.partial"
    old = out_dir.parent / f".{out_dir.name}.{tag}.old"
    tmp.mkdir()
    try:
        yield tmp
        if out_dir.exists():
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `path` to write (parents created); on success it is
    renamed over `path`, on an exception removed, so `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process (DDP ranks)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through `atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, "utf-8")
    return Path(path)
