"""Writing files and folders so that a reader never sees a half-written one, and the one rule
for what avsr may write at all (`check_output`, `check_output_folder`)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from avsr.errors import AvsrError


# Errors of the file system, not of avsr: a name too long, a full disk, a read-only or forbidden place.
FS_ERRNOS = frozenset({errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES,
                       errno.EPERM})


def fs_error(err: OSError, writing: str | os.PathLike | None = None) -> AvsrError:
    """One line naming the file for a file-system error: `writing`, the output being written (not
    its temporary sibling), else the file the error names."""
    reason = err.strerror or str(err)
    if writing is not None:
        return AvsrError(f"cannot write {writing}: {reason}")
    return AvsrError(f"{err.filename}: {reason}" if err.filename else f"{reason} (while reading or writing a file)")


@contextmanager
def fs_errors_named(path: str | os.PathLike) -> Iterator[None]:
    """Inside: a file-system error (`FS_ERRNOS`) becomes an AvsrError naming `path`, the output
    written; also from native writers that give the errno only in their message (safetensors:
    "I/O error: No space left on device (os error 28)")."""
    try:
        yield
    except OSError as err:
        if err.errno not in FS_ERRNOS:
            raise
        raise fs_error(err, path) from None
    except Exception as err:
        code = re.search(r"\(os error (\d+)\)", str(err))
        if code is None or int(code[1]) not in FS_ERRNOS:
            raise
        raise fs_error(OSError(int(code[1]), os.strerror(int(code[1]))), path) from None


@contextmanager
def atomic_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces `out_dir` by renames.

    On an exception nothing changes at `out_dir`. The caller decides beforehand whether an
    existing `out_dir` may be replaced (`check_output`).
    """
    out_dir = Path(out_dir)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.{tag}.partial"
    old = out_dir.parent / f".{out_dir.name}.{tag}.old"
    with fs_errors_named(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
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
    renamed over `path`, on an exception removed, so `path` is never half-written. A full disk
    or a read-only place ends as an AvsrError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # one per process (DDP ranks)
    with fs_errors_named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
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
CHECKPOINT_WEIGHTS = "trainable.safetensors"  # the file that makes a folder a checkpoint (models/loading.py)
TEMP_NAME_BYTES = 32  # what a temporary sibling's name adds to a name (".<name>.<pid>-<tag>.partial")


class UnsafeOutput(AvsrError):
    """An output path that avsr must not write or replace (the rule of `check_output`)."""


class UnsafeRemoval(UnsafeOutput):
    """`--overwrite` named a folder that avsr must not delete."""


def _marker(folder: Path) -> dict | None:
    try:
        marker = json.loads((folder / RUN_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("entries"), list) else None


def written_by(path: str | os.PathLike) -> str | None:
    """The command ("avsr eval") that the marker of `path`'s folder records as writing it, if any."""
    path = Path(path)
    marker = _marker(path.parent)
    if marker is None or path.name not in marker["entries"]:
        return None
    return marker.get("owners", {}).get(path.name, marker.get("written_by"))


def _guarded(path: Path) -> Path | None:
    """The root, home or working folder that `path` (resolved) is or holds, if any."""
    for guarded in (Path("/"), Path.home().resolve(), Path.cwd().resolve()):
        if path == guarded or path in guarded.parents:
            return guarded
    return None


def refuse_guarded(folder: str | os.PathLike, doing: str = "delete anything in",
                   error: type[AvsrError] = UnsafeRemoval) -> Path:
    """The resolved path, unless it is the root, the home or the working folder or holds one of
    them: those are never deleted nor used as an output, whatever marks they carry."""
    path = Path(folder).expanduser().resolve()
    guarded = _guarded(path)
    if guarded is not None:
        raise error(f"refusing to {doing} {folder} ({path}): it is the root, home or working folder or holds "
                    f"{guarded}; choose an output folder of its own")
    return path


def check_name(path: str | os.PathLike) -> None:
    """Refuse now, not after the work, a path the file system cannot hold: a name to create that,
    with the bytes of avsr's temporary sibling names, is longer than the file system allows."""
    full = Path(os.path.abspath(os.path.expanduser(path)))
    base = next(p for p in (full, *full.parents) if os.path.lexists(p))
    try:
        name_max, path_max = os.pathconf(base, "PC_NAME_MAX"), os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in (*full.relative_to(base).parts, full.name):
        size = len(os.fsencode(part))
        if size + TEMP_NAME_BYTES > name_max:
            raise UnsafeOutput(f"name too long for the file system: {path} (a name of {size} bytes; avsr writes "
                               f"names of at most {name_max - TEMP_NAME_BYTES} bytes there): choose a shorter one")
    if len(os.fsencode(str(full))) + TEMP_NAME_BYTES > path_max:
        raise UnsafeOutput(f"path too long for the file system: {path} (at most {path_max - TEMP_NAME_BYTES} "
                           "bytes): choose a shorter one")


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse now a folder that cannot be written (read-only, forbidden, a file in the way): a
    temporary file is made in it, or in its nearest existing parent, and removed at once."""
    full = Path(os.path.abspath(folder))
    base = next(p for p in (full, *full.parents) if os.path.lexists(p))
    try:
        tempfile.TemporaryFile(dir=base).close()
    except OSError as err:
        raise AvsrError(f"cannot write to output folder {folder}: {err.strerror or err}") from None


def _within(path: Path, inputs) -> tuple[str, Path] | None:
    """(how, input) when `path` (resolved) is an input or lies inside an input folder."""
    for given in inputs:
        if given is None or str(given).strip() == "":
            continue
        source = Path(given).expanduser().resolve()
        if path == source or source in path.parents:
            return ("" if path == source else "inside "), given
    return None


def _holding(folder: Path, inputs) -> str | os.PathLike | None:
    """The first input that lies inside `folder` (resolved), if any."""
    return next((i for i in inputs if i and str(i).strip() and folder in Path(i).expanduser().resolve().parents),
                None)


def check_target(path: str | os.PathLike, inputs=(), error: type[AvsrError] = UnsafeOutput) -> Path:
    """What every output passes, whoever wrote what is there: a name the file system can hold;
    not the root, home or working folder (nor one holding them); not an input of the command nor
    inside an input folder; not a checkpoint folder nor inside one. Returns the resolved path."""
    if str(path).strip() == "":
        raise error("empty output path: name the file or folder to write")
    check_name(path)
    full = refuse_guarded(path, "write", error)
    inside = _within(full, inputs)
    if inside:
        raise error(f"refusing to write {path}: it is {inside[0]}{inside[1]}, an input of this command; "
                    "choose another output")
    checkpoint = next((p for p in (full, *full.parents) if (p / CHECKPOINT_WEIGHTS).is_file()), None)
    if checkpoint is not None:
        raise error(f"refusing to write {path}: it is {'' if checkpoint == full else 'inside '}the checkpoint "
                    f"{checkpoint}, which avsr never changes; choose another output")
    return full


def check_output(path: str | os.PathLike, command: str | None = None, *, inputs=(), replace: bool = False,
                 flag: str = "--overwrite", folder: bool = False, mine=None, what: str = "",
                 error: type[AvsrError] = UnsafeOutput) -> Path:
    """The one rule for a file (or, with `folder`, a whole folder) that `avsr <command>` is about
    to write at `path`, checked before any long work: `check_target`, its folder writable, and
    if something is there already (not an empty folder), it is replaced only when `replace`
    (the command's `flag`) and only when it is ours: recorded as written by this command in its
    folder's marker (`written_by`), or `mine(path)` is true for a kind with its own marker (a
    backbone folder: `what` names the kind). A folder replaced whole may not hold an input."""
    full = check_target(path, inputs, error)
    check_writable(Path(path).parent)
    if not os.path.lexists(full) or folder and full.is_dir() and not any(full.iterdir()):
        return Path(path)
    if full.is_dir() and not folder:
        raise error(f"{path} is a folder: name a file")
    if mine is not None:
        if not mine(full):
            raise error(f"{path} exists and is not {what}; remove it or choose another folder")
    else:
        owner = written_by(full)
        if owner != f"avsr {command}":
            why = (f"{owner} wrote it" if owner else f"it is not in {full.parent / RUN_MARKER}"
                   if _marker(full.parent) else "avsr records what it writes only in folders it made")
            raise error(f"refusing to replace {path}: avsr {command} did not write it ({why}); move it away "
                        "or choose another output")
    if not replace:
        raise error(f"{path} exists (an earlier output of avsr {command}); pass {flag} to replace it")
    held = full.is_dir() and _holding(full, inputs)
    if held:
        raise error(f"refusing to replace {path}: it holds {held}, an input of this command")
    return Path(path)


def check_output_folder(folder: str | os.PathLike, command: str, entries=(), *, inputs=(), replace: bool = False,
                        flag: str = "--overwrite") -> Path:
    """The rule of `check_output` for a folder that `avsr <command>` writes `entries` (top-level
    names) into: the folder passes `check_target`, is writable, and is new, empty or one avsr
    made (a user's folder is refused: nothing avsr wrote there could be resumed or replaced);
    each entry is new, or ours and `replace` is set."""
    full = check_target(folder, inputs)
    if os.path.lexists(full) and not full.is_dir():
        raise UnsafeOutput(f"cannot write to output folder {folder}: it is a file, not a folder")
    check_writable(folder)
    if full.is_dir() and _marker(full) is None and any(not p.name.startswith(".") for p in full.iterdir()):
        raise UnsafeOutput(f"refusing to write into {folder}: it holds files and was not written by avsr (no "
                           f"{RUN_MARKER} marker); choose a new or empty output folder")
    for name in entries:
        check_output(Path(folder) / name, command, inputs=inputs, replace=replace, flag=flag, folder=True)
    return Path(folder)


def claim_folder(folder: str | os.PathLike, command: str, entries: tuple[str, ...] = ()) -> Path:
    """Create `folder` (checked writable now, before long work) and record in its marker that
    `avsr <command>` writes `entries` (top-level names) there. A folder that exists without
    a marker and is not empty (a user's), or that is the root, home or working folder, is used
    as it is but never marked, so it is never removed and nothing in it counts as ours."""
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
    if marker is None and (any(not p.name.startswith(".") for p in folder.iterdir())
                           or _guarded(folder.resolve()) is not None):
        return folder
    who = f"avsr {command}"
    marker = marker or {"written_by": who, "entries": []}
    owners = {**marker.get("owners", {}), **{e: who for e in entries if written_by(folder / e) != who
                                              and not os.path.lexists(folder / e)}}
    marker["entries"] = sorted(set(marker["entries"]) | set(entries))
    marker.pop("owners", None)
    if owners := {e: o for e, o in owners.items() if o != marker["written_by"]}:
        marker["owners"] = owners  # the entries another command than written_by wrote
    write_text_atomic(folder / RUN_MARKER, json.dumps(marker, indent=1))
    return folder


@contextmanager
def claimed_file(path: str | os.PathLike, command: str) -> Iterator[Path]:
    """`atomic_file` for a single output of `avsr <command>` (passed `check_output`): its folder's
    marker records it first (when avsr made that folder), so a later run may replace it."""
    path = Path(path)
    claim_folder(path.parent, command, (path.name,))
    with atomic_file(path) as tmp:
        yield tmp


def check_removable(folder: str | os.PathLike, inputs=()) -> Path:
    """Refuse, with the reason, to delete anything but a folder avsr marked and that holds only
    what avsr wrote: not an empty path, the root, the home folder or the working folder (or a
    parent of either), not an unmarked folder, not a folder with foreign top-level entries, not
    a folder holding an input of the command."""
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
    held = _holding(path, inputs)
    if held:
        raise UnsafeRemoval(f"refusing to delete {folder}: it holds {held}, an input of this command")
    return path


def remove_written(folder: str | os.PathLike, inputs=()) -> None:
    """Delete a folder that passes `check_removable` (what avsr wrote, then the folder)."""
    path = check_removable(folder, inputs)
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
