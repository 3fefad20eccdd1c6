"""Where a shard set may live: a local folder, a URL fsspec reads (http(s), s3, gs, ... with their
fsspec package installed), or `pipe:COMMAND` whose standard output is the file.

A root names a folder; the files under it are joined by `locate(root, relative)`: a path, the URL
with `/relative` appended, or for `pipe:` the command with `{}` replaced by the relative name
(`pipe:curl -sf http://host/shards/{}`, `pipe:aws s3 cp s3://bucket/shards/{} -`). Every failure to
reach or read a file is a DataError naming it, and a URL that does not answer gives up after
`timeout` seconds instead of hanging the run.
"""

from __future__ import annotations

import re
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from avsr.errors import AvsrError

PIPE = "pipe:"
DEFAULT_TIMEOUT = 60.0  # seconds to connect to, or hear from, a server
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class RemoteError(AvsrError):
    """A shard or index that cannot be reached or read."""


def is_url(root: str | Path) -> bool:
    """A URL (`scheme://...`) or a `pipe:` command, as opposed to a local path."""
    text = str(root)
    return text.startswith(PIPE) or _SCHEME.match(text) is not None


def locate(root: str | Path, relative: str) -> str | Path:
    """The file `relative` (a /-separated name) under `root`."""
    text = str(root)
    if text.startswith(PIPE):
        if "{}" not in text:
            raise RemoteError(f"{text}: a pipe: root needs {{}} where the file name goes "
                              "(e.g. pipe:curl -sf http://host/shards/{})")
        return text.replace("{}", relative)
    if is_url(text):
        return f"{text.rstrip('/')}/{relative}"
    return Path(root) / relative


def _http_options(url: str, timeout: float) -> dict:
    if not url.startswith(("http://", "https://")):
        return {}
    import aiohttp

    # block_size 0: a streaming reader (no range requests), as a shard is read once, front to back
    return {"block_size": 0, "client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=timeout,
                                                                                 sock_read=timeout)}}


@contextmanager
def open_stream(location: str | Path, timeout: float = DEFAULT_TIMEOUT) -> Iterator[BinaryIO]:
    """A binary stream of one file, read front to back. Errors name the file."""
    text = str(location)
    if text.startswith(PIPE):
        with _pipe(text[len(PIPE):], timeout) as stream:
            yield stream
        return
    if not is_url(text):
        try:
            stream = open(text, "rb")
        except OSError as err:
            raise RemoteError(f"cannot read {text}: {err.strerror or err}") from None
        with stream:
            yield stream
        return
    import fsspec

    try:
        stream = fsspec.open(text, "rb", **_http_options(text, timeout)).open()
    except Exception as err:  # fsspec's backends raise their own types (aiohttp, botocore, ...)
        raise RemoteError(f"cannot read {text}: {_reason(err, timeout)}") from None
    with stream:
        yield stream


def _reason(err: BaseException, timeout: float) -> str:
    """One line saying why: the innermost cause (fsspec reports every failure as FileNotFoundError)."""
    while err.__cause__ is not None:
        err = err.__cause__
    if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__ or type(err).__name__ == "CancelledError":
        return f"no answer within {timeout:g} s"
    if isinstance(err, FileNotFoundError):
        return "not found"
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


@contextmanager
def _pipe(command: str, timeout: float) -> Iterator[BinaryIO]:
    """The command's standard output; a non-zero exit is an error naming the command."""
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc.stdout
        proc.stdout.read()  # the rest, so the command can finish writing
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"pipe:{command} did not finish within {timeout:g} s") from None
        if code != 0:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise RemoteError(f"pipe:{command} failed with exit status {code}"
                              + (f": {err[-1]}" if err else ""))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def read_bytes(location: str | Path, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    with open_stream(location, timeout) as stream:
        try:
            return stream.read()
        except Exception as err:
            raise RemoteError(f"cannot read {location}: {_reason(err, timeout)}") from None


def size(location: str | Path, timeout: float = DEFAULT_TIMEOUT) -> int | None:
    """The file's size in bytes without reading it; None for a `pipe:` (it cannot be asked)."""
    text = str(location)
    if text.startswith(PIPE):
        return None
    if not is_url(text):
        try:
            return Path(text).stat().st_size
        except OSError as err:
            raise RemoteError(f"cannot read {text}: {err.strerror or err}") from None
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(text, **{k: v for k, v in _http_options(text, timeout).items()
                                                  if k != "block_size"})
        return int(fs.size(path))
    except Exception as err:
        raise RemoteError(f"cannot read {text}: {_reason(err, timeout)}") from None

