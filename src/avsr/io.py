"""Writing files and folders so that a reader never sees a half-written one."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from avsr.errors import AvsrError


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


RUN_MARKER = ".avsr-run"  # in every output folder avsr creates: who wrote it and what it holds


class UnsafeRemoval(AvsrError):
    """`--overwrite` named a folder that avsr must not delete."""


def _marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None


def claim_folder(folder: str | os.PathLike, command: str, entries: tuple[str, ...] = ()) -> Path:
    """Create `folder` (checked writable now, before long work) and record in its marker that
    `avsr <command>` writes `entries` (top-level names) there. A folder that exists without
    a marker and is not empty is used as it is but never marked, so it is never removed."""
    if str(folder).strip() == "":
        raise AvsrError("empty output path: name an output folder")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise AvsrError(f"cannot write to output folder {folder}: {err.strerror or err}") from None
    marker = _marker(folder)
    if marker is None and any(not p.name.startswith(".") for p in folder.iterdir()):
        return folder
    marker = marker or {"written_by": f"avsr {command}", "entries": []}
    marker["entries"] = sorted(set(marker["entries"]) | set(entries))
    write_text_atomic(folder / RUN_MARKER, json.dumps(marker, indent=1))
    return folder


def refuse_guarded(folder: str | os.PathLike) -> Path:
    """The resolved path, unless it is the root, the home or the working folder or holds one of
    them: those are never deleted, whatever marks they carry."""
    path = Path(folder).expanduser().resolve()
    for guarded in (Path("/"), Path.home().resolve(), Path.cwd().resolve()):
        if path == guarded or path in guarded.parents:
            raise UnsafeRemoval(f"refusing to delete anything in {folder} ({path}): it is the root, home or "
                                f"working folder or holds {guarded}; choose an output folder of its own")
    return path


def check_removable(folder: str | os.PathLike) -> Path:
    """Refuse, with the reason, to delete anything but a folder avsr marked and that holds only
    what avsr wrote: not an empty path, the root, the home folder or the working folder (or a
    parent of either), not an unmarked folder, not a folder with foreign top-level entries."""
    if str(folder).strip() == "":
        raise UnsafeRemoval("--overwrite with an empty output path: refusing to delete anything")
    path = refuse_guarded(folder)
    if not path.is_dir():
        raise UnsafeRemoval(f"refusing to delete {folder}: not a folder")
    marker = _marker(path)
    if marker is None:
        raise UnsafeRemoval(f"refusing to delete {folder}: it was not written by avsr (no {RUN_MARKER} marker); "
                            "choose another output folder or remove it yourself")
    foreign = sorted(p.name for p in path.iterdir() if p.name != RUN_MARKER and p.name not in marker["entries"]
                     and not (p.name.startswith(".") and p.name.endswith((".partial", ".old", ".tmp"))))
    if foreign:
        raise UnsafeRemoval(f"refusing to delete {folder}: it holds files avsr did not write there: "
                            f"{', '.join(foreign[:10])}; move them away or choose another output folder")
    return path


def remove_written(folder: str | os.PathLike) -> None:
    """Delete a folder that passes `check_removable` (what avsr wrote, then the folder)."""
    path = check_removable(folder)
    shutil.rmtree(path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (model files run to gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_utf8(path: str | os.PathLike, hint: str, error: type[AvsrError] = AvsrError) -> str:
    """A text file's content, or `error` naming the file, and the line of the first byte that is
    not UTF-8 (a binary file, another encoding), with `hint`: what the file should be."""
    path = Path(path)
    try:
        data = path.read_bytes()
        return data.decode("utf-8")
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{path}:{line}: not UTF-8 text ({err.reason} at byte {err.start}); {hint}") from None
