"""Reading any file FFmpeg reads (PyAV, in-process): video re-timed to 25 fps, audio as 16 kHz mono.

Re-timing: output frame i stands for time i/25 s and takes the source frame shown at that
time (the last one starting at or before it), so 24, 30 or variable frame rates come out at
25 fps with the same duration; frames are repeated or dropped, never blended.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avsr.data.media import SAMPLE_RATE, VIDEO_FPS, MediaError, finite_audio


class PreprocessError(MediaError):
    """A file that cannot be preprocessed: unreadable, without streams, or empty."""


@dataclass(frozen=True)
class MediaInfo:
    """What a quick look at a file found (nothing long decoded yet)."""

    path: Path
    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    duration: float = 0.0  # seconds, as the container states it (0 when it does not): for progress only


_ERRORS = (av.error.FFmpegError, ValueError, OSError)


def _video_stream(container):
    """The first real video stream (an mp3's cover picture is not one), or None."""
    for stream in container.streams.video:
        if not (stream.disposition & av.stream.Disposition.attached_pic):
            return stream
    return None


def _first_frame(container, stream):
    """The first decoded frame of `stream`, or None when it has none."""
    try:
        return next(container.decode(stream), None)
    except av.error.EOFError:
        return None


def probe(path: str | Path) -> MediaInfo:
    """Open `path` and decode one frame of each stream: fails in well under a second, before any
    long work, on a missing or unreadable file, a file with neither video nor audio, or a
    zero-length clip (streams without a single frame)."""
    path = Path(path)
    if not path.is_file():
        raise PreprocessError(f"media file not found: {path}")
    try:
        with av.open(str(path)) as container:
            video, audio = _video_stream(container), (container.streams.audio or [None])[0]
            if video is None and audio is None:
                raise PreprocessError(f"no video or audio stream in {path}")
            first = _first_frame(container, video) if video is not None else None
            width, height = (first.width, first.height) if first is not None else (0, 0)
            duration = container.duration / av.time_base if container.duration else 0.0
        with av.open(str(path)) as container:
            has_audio = audio is not None and _first_frame(container, container.streams.audio[0]) is not None
    except av.error.EOFError:  # FFmpeg found no packet to look at
        raise PreprocessError(f"zero-length clip {path}: the file holds no frames or samples") from None
    except _ERRORS as err:
        raise PreprocessError(f"cannot read {path} as audio or video: {err}") from None
    if first is None and not has_audio:
        raise PreprocessError(f"zero-length clip {path}: no video frame and no audio sample")
    return MediaInfo(path, first is not None, has_audio, width, height, duration)


def video_frames(path: Path, fmt: str = "rgb24") -> Iterator[tuple[int, np.ndarray]]:
    """(source index, frame) for every 25 fps output frame, in order; frame (H, W, 3) uint8 RGB
    for fmt "rgb24", (H, W) uint8 for "gray". The clip ends with its last source frame's display
    time (start + 1/frame rate); the caller holds the last frame for any longer audio."""
    try:
        with av.open(str(path)) as container:
            stream = _video_stream(container)
            rate = float(stream.average_rate or stream.guessed_rate or VIDEO_FPS)
            start, i, k = None, 0, -1
            held = None  # (index, array) of the frame on screen
            for frame in container.decode(stream):
                k += 1
                t = frame.time if frame.time is not None else k / rate
                start = t if start is None else start
                t -= start
                # every output time before this frame starts shows the held frame
                while held is not None and i / VIDEO_FPS < t - 1e-6:
                    yield held
                    i += 1
                held = (k, frame.to_ndarray(format=fmt))
            if held is None:
                return
            end = t + 1.0 / rate
            while i < round(end * VIDEO_FPS) or i == 0:
                yield held
                i += 1
    except _ERRORS as err:
        raise PreprocessError(f"cannot decode the video of {path}: {err}") from None


def read_audio(path: Path) -> np.ndarray:
    """(S,) float32 mono at 16 kHz: resampled by FFmpeg (swresample), channels averaged; NaN or
    infinite samples refused, naming the file."""
    chunks = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                frame.pts = None  # resample by content, not by (possibly broken) timestamps
                chunks += [f.to_ndarray() for f in resampler.resample(frame)]  # each (C, n)
            chunks += [f.to_ndarray() for f in resampler.resample(None)]
    except _ERRORS as err:
        raise PreprocessError(f"cannot decode the audio of {path}: {err}") from None
    if not chunks:
        return np.zeros(0, np.float32)
    return finite_audio(np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32), path)
