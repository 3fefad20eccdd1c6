"""Reading and writing the corpus media: mouth-ROI video (.mp4) and 16 kHz mono audio (.wav).

Video goes through PyAV (FFmpeg's libraries in-process: no subprocess per file, and
errors come back as exceptions we can name the file in). Audio goes through soundfile.
Writers write to a temporary name and rename, so a file that exists is complete.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import soundfile as sf

from avsr.errors import AvsrError

VIDEO_FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640


class MediaError(AvsrError):
    """A media file is missing, unreadable, or not in the expected format."""


def _temp_path(path: Path) -> Path:
    # Keep the extension: PyAV and soundfile pick the container from it.
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def write_video(path: str | Path, frames: np.ndarray, fps: int = VIDEO_FPS, crf: int = 16) -> None:
    """Encode (T, H, W) uint8 grayscale frames as H.264 in MP4. Deterministic (one thread)."""
    path = Path(path)
    tmp = _temp_path(path)
    t, h, w = frames.shape
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.time_base = Fraction(1, fps)
            stream.codec_context.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
            stream.thread_count = 1
            for i in range(t):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="gray")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_video(path: str | Path) -> np.ndarray:
    """Decode a video to (T, H, W) uint8 grayscale (the luma plane)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"video file not found: {path}")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(f"no video stream in {path}")
            frames = [f.to_ndarray(format="gray") for f in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError) as err:
        raise MediaError(f"cannot decode video {path}: {err}") from None
    if not frames:
        raise MediaError(f"video has no frames: {path}")
    return np.stack(frames)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float audio in [-1, 1] as 16-bit PCM WAV."""
    path = Path(path)
    tmp = _temp_path(path)
    try:
        sf.write(str(tmp), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a mono WAV as float32 in [-1, 1]; the sample rate must be `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"audio file not found: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise MediaError(f"cannot read audio {path}: {err}") from None
    if rate != sample_rate:
        raise MediaError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (resample it first)")
    if audio.shape[1] != 1:
        raise MediaError(f"{path}: {audio.shape[1]} channels, expected mono")
    return audio[:, 0]
