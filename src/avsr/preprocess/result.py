"""What preprocessing hands on: one recording as the model reads it (mouth ROIs at 25 fps, 16 kHz
mono audio), with what was found on the way, so a transcription can choose its task and say why."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avsr.data.media import SAMPLE_RATE, VIDEO_FPS


@dataclass
class Preprocessed:
    """One recording after preprocessing.

    `video` is None when the file has no video stream or no face was found in it; `audio` is
    None when it has no audio stream. Both, when present, cover the same `duration`: the shorter
    stream is extended (see `avsr.preprocess.preprocess_file`); `audio_seconds` and
    `video_seconds` keep what each held before (None: as long as the array).
    """

    source: Path
    video: np.ndarray | None  # (T, 96, 96) uint8 gray mouth ROIs at 25 fps
    audio: np.ndarray | None  # (S,) float32 mono at 16 kHz
    duration: float  # seconds
    total_frames: int = 0  # video frames after re-timing to 25 fps (0 without a video stream)
    face_frames: int = 0  # of those, frames where the detector found a face (the rest interpolated)
    mouth_centres: np.ndarray | None = None  # (T, 2) float32 mouth centre per frame in source pixels (x, y)
    transforms: np.ndarray | None = None  # (T, 2, 3) float32 per frame: source pixels -> ROI pixels
    warnings: list[str] = field(default_factory=list)  # e.g. "no face found in clip.mp4: audio only"
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage: decode, detect, crop
    audio_seconds: float | None = None  # the audio's own length, before it was extended to the picture's
    video_seconds: float | None = None  # the picture's own length, before its last frame was held for the audio

    @property
    def face_ratio(self) -> float:
        """Share of video frames with a detected face (0 without video)."""
        return self.face_frames / self.total_frames if self.total_frames else 0.0

    def own_seconds(self, modality: str) -> float:
        """How long the "audio" or the "video" really is, before either was extended to the other
        (0 without that stream)."""
        if modality == "audio":
            known, array = self.audio_seconds, self.audio
            return known if known is not None else (array.size / SAMPLE_RATE if array is not None else 0.0)
        known, array = self.video_seconds, self.video
        return known if known is not None else (len(array) / VIDEO_FPS if array is not None else 0.0)
