"""Measurements on rendered lips and audio, shared by the tests and the corpus benchmark."""

from __future__ import annotations

import numpy as np

from avsr.data.media import SAMPLES_PER_FRAME


def frame_energy_db(audio: np.ndarray) -> np.ndarray:
    """Audio energy per 40 ms video frame in dB, (T,). The audio holds whole frames."""
    frames = audio[: audio.size // SAMPLES_PER_FRAME * SAMPLES_PER_FRAME].reshape(-1, SAMPLES_PER_FRAME)
    return 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-8)


def mouth_opening_area(video: np.ndarray) -> np.ndarray:
    """Pixels of the dark mouth opening per frame, (T,), measured from the images alone.

    The threshold sits 40% of the way from the darkest pixels of the clip (the mouth
    cavity when open) to its median (skin), so it adapts to each speaker's tones.
    """
    v = video.astype(np.float32)
    darkest, median = np.percentile(v, 0.1), np.median(v)
    return (v < darkest + 0.4 * (median - darkest)).sum(axis=(1, 2)).astype(np.float64)


def lip_audio_correlation(video: np.ndarray, audio: np.ndarray) -> float:
    """Pearson correlation, over frames, of mouth opening area and audio energy (dB)."""
    area, energy = mouth_opening_area(video), frame_energy_db(audio)
    n = min(area.size, energy.size)
    if np.std(area[:n]) == 0 or np.std(energy[:n]) == 0:
        return 0.0
    return float(np.corrcoef(area[:n], energy[:n])[0, 1])
