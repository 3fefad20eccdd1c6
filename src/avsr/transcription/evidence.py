"""Is there anything to transcribe in a segment? An LLM recogniser writes a fluent sentence for a
1-frame video or a silent file (the quickstart model: score -0.97 / -0.60), so a segment that is
too short, silent or a still picture is not decoded: its transcript is empty, with a warning.

Thresholds (measured: docs/transcribe.md, "Empty input"):

* too short: under `MIN_SECONDS` = 0.2 s (5 video frames). No word fits: the shortest spoken word
  in the real recordings of experiments/real_recordings.py is the sonnet's "one", a 0.3 s burst.
* silent: no 25 ms frame (10 ms hop, mean square) louder than `SILENT_DB` = -50 dBFS. The
  quietest speech peak measured is -21.8 dBFS (the real recordings' loudest frames: -8.0 to
  -21.8; the synthetic corpus: -20.0 or louder); their pauses (5th percentile of the frames)
  lie at -42 to -62 dBFS. So this is nothing recorded at all (digital silence, a muted
  microphone), not room noise, which decodes and is left to the confidence.
* a still mouth: no two successive frames whose centre 88x88 crops differ by more than
  `STILL_LEVELS` = 0.5 grey levels on average. A speaking synthetic mouth moves by at least
  5.3 (the largest step of each of 140 corpus clips), camera noise alone by about 3: only a
  frozen picture (a photo, a held frame; 0.06 after x264) is still.

Which stream decides: ASR needs sound, VSR a moving mouth, AVSR either (a silent clip of a
speaking face is still read from the lips).
"""

from __future__ import annotations

import numpy as np

from avsr.data.media import SAMPLE_RATE, VIDEO_FPS
from avsr.data.segments import frame_energy_db
from avsr.data.transforms import AVHUBERT_CROP_SIZE
from avsr.models.tasks import MODALITIES

MIN_SECONDS = 0.2
SILENT_DB = -50.0
STILL_LEVELS = 0.5
FRAME, HOP = round(0.025 * SAMPLE_RATE), round(0.010 * SAMPLE_RATE)  # 25 ms frames every 10 ms


def loudest_db(audio: np.ndarray) -> float:
    """The loudest 25 ms frame's mean square in dBFS (-100 for digital silence or no samples)."""
    return float(frame_energy_db(audio, FRAME, HOP).max()) if audio.size else -100.0


def mouth_motion(video: np.ndarray) -> float:
    """(T, H, W) uint8 mouth crops -> the largest mean absolute difference, in grey levels, between
    the centre 88x88 crops of two successive frames (0 for a single frame)."""
    if len(video) < 2:
        return 0.0
    h, w = video.shape[1:]
    top, left = max(0, (h - AVHUBERT_CROP_SIZE) // 2), max(0, (w - AVHUBERT_CROP_SIZE) // 2)
    centre = video[:, top:top + AVHUBERT_CROP_SIZE, left:left + AVHUBERT_CROP_SIZE].astype(np.int16)  # (T, 88, 88)
    return float(np.abs(np.diff(centre, axis=0)).mean(axis=(1, 2)).max())


def nothing_to_transcribe(task: str, seconds: float, audio: np.ndarray | None,
                          video: np.ndarray | None) -> tuple[str, str] | None:
    """(flag, why) when a segment of `seconds` holds nothing `task` can transcribe: "too_short",
    "silent" or "still_mouth"; None when it is worth decoding. `audio` (N,) float32 16 kHz and
    `video` (T, H, W) uint8: the streams the task reads (the other may be None)."""
    if seconds < MIN_SECONDS:
        return "too_short", f"{seconds:.2f} s is too short to hold a word (under {MIN_SECONDS:g} s)"
    reads = MODALITIES[task]
    silent = "audio" in reads and loudest_db(audio) < SILENT_DB
    still = "video" in reads and mouth_motion(video) < STILL_LEVELS
    if silent and (still or "video" not in reads):
        why = f"silent (no sound above {SILENT_DB:g} dBFS)"
        return "silent", why + (" and the mouth does not move" if still else "")
    if still and "audio" not in reads:
        return "still_mouth", (f"the mouth does not move (no frame differs from the one before by more than "
                               f"{STILL_LEVELS:g} grey levels; {len(video) / VIDEO_FPS:.2f} s of picture)")
    return None
