"""Reading and writing the corpus media: mouth-ROI video (.mp4) and 16 kHz mono audio (.wav).

Video goes through PyAV (FFmpeg's libraries in-process: no subprocess per file, and
errors come back as exceptions we can name the file in). Audio goes through soundfile.
Writers write to a temporary name and rename, so a file that exists is complete.
"""

from __future__ import annotations

import io
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


# Pixel values mean full range (0 = black, 255 = white) on both sides: the writer stores the
# gray frames as the luma plane of a full-range ("JPEG range") YUV 4:2:0 stream, and the reader
# returns the luma plane, expanding limited-range (16-235) streams, as most cameras write them.
_LUMA_FORMATS = {"gray", "yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p",
                 "yuvj440p", "yuv411p", "yuv410p", "nv12", "nv21", "nv16", "nv24"}


def _yuv420_frame(gray: np.ndarray) -> av.VideoFrame:
    """A full-range yuv420p frame whose luma is `gray` (H, W) and whose chroma is neutral.

    We fill the planes ourselves instead of letting swscale convert gray -> yuv420p: that
    conversion's output bytes depended on what the process had converted before (its SIMD
    paths differ between CPUs), so the same frames could give different files.
    """
    h, w = gray.shape
    planes = np.empty(h * w * 3 // 2, np.uint8)
    planes[: h * w] = gray.reshape(-1)
    planes[h * w:] = 128  # U and V: no colour
    frame = av.VideoFrame.from_ndarray(planes.reshape(h * 3 // 2, w), format="yuv420p")
    frame.color_range = av.video.reformatter.ColorRange.JPEG
    return frame


def write_video(path: str | Path, frames: np.ndarray, fps: int = VIDEO_FPS, crf: int = 16) -> None:
    """Encode (T, H, W) uint8 grayscale frames (even H and W) as full-range H.264 in MP4.

    Deterministic: the same frames give the same bytes in any process (one encoder thread,
    no swscale conversion, no macroblock tree: with it, libx264 on a CPU without AVX2 made
    different bytes for the same frames from one call to the next, 9-11 versions in 20 calls)."""
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8 or frames.shape[1] % 2 or frames.shape[2] % 2:
        raise MediaError(f"{path}: expected (T, H, W) uint8 frames with even H and W, got "
                         f"{frames.shape} {frames.dtype}")
    tmp = _temp_path(path)
    t, h, w = frames.shape
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.time_base = Fraction(1, fps)
            stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
            stream.codec_context.options = {"crf": str(crf), "preset": "veryfast", "threads": "1",
                                            "x264-params": "mbtree=0"}
            stream.thread_count = 1
            for i in range(t):
                frame = _yuv420_frame(frames[i])
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _luma(frame: av.VideoFrame) -> np.ndarray:
    """(H, W) uint8 full-range luma of a decoded frame, read from its first plane when it has one."""
    name = frame.format.name
    if name not in _LUMA_FORMATS:  # RGB, 10-bit, ...: let swscale make gray
        return frame.to_ndarray(format="gray")
    plane = frame.planes[0]
    y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : frame.width]
    full = name in ("gray",) or name.startswith("yuvj") or frame.color_range == av.video.reformatter.ColorRange.JPEG
    if full:
        return y.copy()
    expanded = (y.astype(np.int32) - 16) * 255 + 109  # round((y - 16) * 255 / 219)
    return np.clip(expanded // 219, 0, 255).astype(np.uint8)


def _source(source: str | Path | bytes, name: str | Path | None, what: str) -> tuple[str | io.BytesIO, str | Path]:
    """(what to open, the name for messages): a file that must exist, or a file's bytes (from a shard)."""
    if isinstance(source, bytes):
        return io.BytesIO(source), name or f"<{what} bytes>"
    if not Path(source).is_file():
        raise MediaError(f"{what} file not found: {source}")
    return str(source), Path(source)


def read_video(source: str | Path | bytes, name: str | Path | None = None) -> np.ndarray:
    """Decode a video (a file, or its bytes named `name`) to (T, H, W) uint8 grayscale: the luma
    plane, in full range (see above)."""
    opened, path = _source(source, name, "video")
    try:
        with av.open(opened) as container:
            if not container.streams.video:
                raise MediaError(f"no video stream in {path}")
            frames = [_luma(f) for f in container.decode(video=0)]
    except (av.error.FFmpegError, ValueError) as err:
        raise MediaError(f"cannot decode video {path}: {err}") from None
    if not frames:
        raise MediaError(f"video has no frames: {path}")
    return np.stack(frames)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float audio in [-1, 1] as 16-bit PCM WAV. Encoded in memory first: libsndfile reports
    a full disk as a bare "System error", a write of ours raises OSError(ENOSPC) with its name."""
    path = Path(path)
    tmp = _temp_path(path)
    wav = io.BytesIO()
    sf.write(wav, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")
    try:
        tmp.write_bytes(wav.getbuffer())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def finite_audio(samples: np.ndarray, path: str | Path) -> np.ndarray:
    """`samples`, refused with a MediaError naming `path` when one is NaN or infinite (a float WAV
    can hold them): such audio decodes into empty or made-up text and poisons a training step, so
    every reader of audio (corpus items, noise, a recording to transcribe) checks here."""
    bad = np.flatnonzero(~np.isfinite(samples))
    if bad.size:
        raise MediaError(f"{path}: the audio holds NaN or infinite samples ({bad.size} of {samples.size}, the "
                         f"first at {bad[0] / SAMPLE_RATE:.3f} s)")
    return samples


def read_audio(source: str | Path | bytes, sample_rate: int = SAMPLE_RATE, name: str | Path | None = None) -> np.ndarray:
    """Read a mono WAV (a file, or its bytes named `name`) as float32 (in [-1, 1] for integer PCM);
    the sample rate must be `sample_rate`; NaN or infinite samples are refused (`finite_audio`)."""
    opened, path = _source(source, name, "audio")
    try:
        audio, rate = sf.read(opened, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise MediaError(f"cannot read audio {path}: {err}") from None
    if rate != sample_rate:
        raise MediaError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz (resample it first)")
    if audio.shape[1] != 1:
        raise MediaError(f"{path}: {audio.shape[1]} channels, expected mono")
    return finite_audio(audio[:, 0], path)
