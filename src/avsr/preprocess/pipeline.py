"""One raw recording -> `Preprocessed` (mouth ROIs at 25 fps + 16 kHz mono audio), and its corpus pair."""

from __future__ import annotations

from pathlib import Path
from time import perf_counter

import cv2
import numpy as np
from tqdm import tqdm

from avsr.data.media import SAMPLES_PER_FRAME, SAMPLE_RATE, VIDEO_FPS, write_audio, write_video
from avsr.io import check_output_folder, claim_folder, fs_errors_named
from avsr.preprocess.decode import PreprocessError, probe, read_audio, video_frames
from avsr.preprocess.detect import Detector, MediaPipeFaceMesh
from avsr.preprocess.roi import ROI, crop, fill_and_smooth, largest, roi_transforms
from avsr.preprocess.result import Preprocessed

# Audio and picture lengths further apart than this are said (and extended, see preprocess_file):
# container-level differences stay well under it (an AAC encoder's priming, 21-46 ms; one frame,
# 33-40 ms), and people notice an offset of sound and picture from about 0.1-0.2 s (ITU-R BT.1359).
AV_TOLERANCE_S = 0.2
ROI_SIDES = (96, 88)  # square frames of these sizes are mouth ROIs already (corpus, LRS3-style clips)
KEEP_GRAY_BYTES = 512 * 2**20  # gray frames kept from the detection pass up to this; else decoded again


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)  # (H, W, 3) -> (H, W) uint8, BT.601 luma


def _roi_passthrough(path: Path, side: int, timings: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A clip that is a mouth ROI already: re-timed only, no detection. 88x88 frames are padded to
    96x96 by repeating their border, so the loaders' 88x88 centre crop gives them back exactly."""
    start = perf_counter()
    frames = np.stack([_gray(rgb) for _, rgb in video_frames(path)])  # (T, side, side)
    pad = (ROI - side) // 2
    frames = np.pad(frames, ((0, 0), (pad, pad), (pad, pad)), mode="edge")  # (T, 96, 96)
    timings["decode"] += perf_counter() - start
    n = len(frames)
    centres = np.full((n, 2), side / 2, np.float32)
    transforms = np.tile(np.array([[1, 0, pad], [0, 1, pad]], np.float32), (n, 1, 1))
    return frames, centres, transforms


def _detect_and_crop(path: Path, detector: Detector, timings: dict, progress: bool, expected: int = 0):
    """Detection pass (largest face per 25 fps frame), then alignment and cropping. Returns
    (rois (T, 96, 96) | None, detected frames, frame count, mouth centres (T, 2), transforms (T, 2, 3))."""
    tracks, grays, seen = [], [], (None, None)  # seen: (source index, landmarks) of the last source frame
    bar = tqdm(desc=f"faces {path.name}", total=expected or None, unit="frame", disable=not progress,
               dynamic_ncols=True)
    detect, start = 0.0, perf_counter()
    for src, rgb in video_frames(path):
        if src != seen[0]:  # a repeated source frame (re-timing) is not detected twice
            t = perf_counter()
            seen = (src, largest(detector.detect(rgb)))
            detect += perf_counter() - t
        tracks.append(seen[1])
        if grays is not None:
            grays.append(_gray(rgb))
            if len(grays) * grays[0].nbytes > KEEP_GRAY_BYTES:
                grays = None
        bar.update()
    bar.close()
    timings["decode"] += perf_counter() - start - detect
    timings["detect"] += detect
    found = sum(t is not None for t in tracks)
    if not found:
        return None, 0, len(tracks), None, None
    start = perf_counter()
    transforms, centres = roi_transforms(fill_and_smooth(tracks), detector.scheme)
    timings["crop"] += perf_counter() - start
    if grays is None:  # long or large video: decode again rather than hold every frame
        start, cropping, rois = perf_counter(), 0.0, []
        for i, (_, rgb) in enumerate(video_frames(path)):
            gray = _gray(rgb)
            t = perf_counter()
            rois.append(crop(gray, transforms[i]))
            cropping += perf_counter() - t
        timings["decode"] += perf_counter() - start - cropping
        timings["crop"] += cropping
    else:
        start = perf_counter()
        rois = [crop(g, m) for g, m in zip(grays, transforms)]
        timings["crop"] += perf_counter() - start
    return np.stack(rois), found, len(tracks), centres, transforms


def preprocess_file(path: str | Path, detector: Detector | None = None, progress: bool = False) -> Preprocessed:
    """Read a recording (any container, codec, frame rate, sample rate, channels) and return its
    mouth ROIs (96x96 gray, 25 fps) and 16 kHz mono audio covering the same duration.

    Unreadable files, files with neither video nor audio, and zero-length clips are refused
    (PreprocessError naming the file) before any long work. A video whose frames are 96x96 or
    88x88 is taken as a mouth ROI already (our corpus, LRS3-style preprocessed clips): no face
    detection, every frame counts as a face frame. Otherwise `detector` (default: mediapipe's face
    mesh) finds the face in every frame; a video without any face gives `video=None` and a warning.
    When audio and video differ in length, the shorter is extended (last ROI held, audio
    zero-padded) to whole 25 fps frames of 640 samples, so the pair loads like a corpus item; the
    own lengths are kept (`audio_seconds`, `video_seconds`), and a difference over
    `AV_TOLERANCE_S` is a warning (a transcription then reads only the part both cover; `aligned`).
    """
    path = Path(path)
    info = probe(path)
    timings = {"decode": 0.0, "detect": 0.0, "crop": 0.0}
    warnings: list[str] = []
    start = perf_counter()
    audio = read_audio(path) if info.has_audio else None  # (S,) float32 16 kHz
    timings["decode"] += perf_counter() - start
    video = centres = transforms = None
    total = found = 0
    if not info.has_audio:
        warnings.append(f"no audio stream in {path.name}: video only")
    if not info.has_video:
        warnings.append(f"no video stream in {path.name}: audio only")
    elif info.width == info.height and info.width in ROI_SIDES:
        video, centres, transforms = _roi_passthrough(path, info.width, timings)
        total = found = len(video)
    else:
        own = detector is None
        detector = MediaPipeFaceMesh() if own else detector
        try:
            video, found, total, centres, transforms = _detect_and_crop(path, detector, timings, progress,
                                                                        expected=round(info.duration * VIDEO_FPS))
        finally:
            if own:
                detector.close()
        if video is None:
            warnings.append(f"no face found in {path.name}" + (": audio only" if audio is not None else ""))
    if audio is not None and audio.size == 0 and video is None:
        raise PreprocessError(f"zero-length clip {path}: no audio samples and no usable video")
    return aligned(Preprocessed(source=path, video=video, audio=audio, duration=0.0, total_frames=total,
                                face_frames=found, mouth_centres=centres, transforms=transforms, warnings=warnings,
                                timings=timings))


def aligned(pre: Preprocessed) -> Preprocessed:
    """`pre` (changed in place) with its audio and picture brought to one length of whole 25 fps
    frames of 640 samples: the shorter extended (last ROI held, audio zero-padded), each one's own
    length kept in `audio_seconds` / `video_seconds`, a difference over `AV_TOLERANCE_S` warned
    about, and `duration` set. `total_frames`: the video stream's frames (0 without one)."""
    audio, video = pre.audio, pre.video
    pre.audio_seconds = audio.size / SAMPLE_RATE if audio is not None else None
    pre.video_seconds = len(video) / VIDEO_FPS if video is not None else None
    if audio is not None and video is not None and abs(pre.audio_seconds - pre.video_seconds) > AV_TOLERANCE_S:
        longer, extended = (("audio", "the last frame held") if pre.audio_seconds > pre.video_seconds
                            else ("picture", "the audio padded with silence"))
        pre.warnings.append(f"audio ({pre.audio_seconds:.2f} s) and picture ({pre.video_seconds:.2f} s) of "
                            f"{Path(pre.source).name} differ by {abs(pre.audio_seconds - pre.video_seconds):.2f} s: "
                            f"the {longer} runs on alone ({extended})")
    frames = max(pre.total_frames, len(video) if video is not None else 0,
                 round(audio.size / SAMPLES_PER_FRAME) if audio is not None else 0)
    if video is not None and frames > len(video):  # audio runs longer: hold the last frame
        extra = frames - len(video)
        pre.video, pre.mouth_centres, pre.transforms = (
            None if a is None else np.concatenate([a, np.repeat(a[-1:], extra, axis=0)])
            for a in (video, pre.mouth_centres, pre.transforms))
    if pre.video is not None or pre.total_frames:
        pre.duration = frames / VIDEO_FPS
        if audio is not None:
            pre.audio = np.pad(audio, (0, max(0, frames * SAMPLES_PER_FRAME - audio.size)))[: frames * SAMPLES_PER_FRAME]
    else:
        pre.duration = audio.size / SAMPLE_RATE
    if pre.video is not None:
        pre.total_frames = len(pre.video)
    return pre


def write_pair(result: Preprocessed, out_dir: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write `<stem>.mp4` (the ROIs) and `<stem>.wav` (the audio; silence of the same length when
    the recording has none, so the pair loads like any corpus item) into out_dir, atomically.
    avsr.io's rule first: never over the source, nor over files avsr preprocess did not write
    there (and over its own only with `overwrite`)."""
    if result.video is None:
        raise PreprocessError(f"no mouth video for {result.source}: {'; '.join(result.warnings) or 'no face'}")
    out = Path(out_dir)
    mp4, wav = out / f"{result.source.stem}.mp4", out / f"{result.source.stem}.wav"
    check_output_folder(out, "preprocess", (mp4.name, wav.name), inputs=(result.source,), replace=overwrite)
    audio = result.audio if result.audio is not None else np.zeros(len(result.video) * SAMPLES_PER_FRAME, np.float32)
    claim_folder(out, "preprocess", (mp4.name, wav.name))
    with fs_errors_named(mp4):
        write_video(mp4, result.video)
    try:
        with fs_errors_named(wav):
            write_audio(wav, audio)
    except BaseException:
        mp4.unlink()  # no half pair: the video alone would pass for a preprocessed recording
        raise
    return mp4, wav
