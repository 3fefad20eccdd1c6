"""Synthetic-to-real audio augmentation: rooms, speeds and channels that espeak-ng never makes.

Why: espeak-ng speaks in an anechoic, noiseless, full-band channel at a few fixed tempi; real
recordings are reverberant, band-limited and spoken at other rates. Reverberation with
synthesised room impulse responses, tempo and pitch changes and telephone band limits narrow
that gap for models trained on synthetic speech (docs/reading.md measures each).

- Room impulse response: a direct path, then exponentially decaying Gaussian noise with a drawn
  RT60 (the time the energy takes to fall by 60 dB), its high frequencies decaying faster (a
  one-pole low-pass whose cut-off falls along the tail); a statistical model of a diffuse field,
  not an image-source model of one room, made with numpy alone.
- Speed: resampling by a factor (tempo and pitch together, as Kaldi's speed perturbation).
- Channel: a band-pass of a telephone (300-3,400 Hz) or of a small loudspeaker (150-6,000 Hz).

All randomness comes from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

SAMPLE_RATE = 16000
BANDS = ((300.0, 3400.0), (150.0, 6000.0))  # telephone, small loudspeaker


def room_impulse(rt60: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE,
                 direct_to_reverb_db: float = 0.0) -> np.ndarray:
    """(N,) float32 impulse response of length 1.2 x RT60: a unit direct path at 0, then a tail
    whose energy falls 60 dB in `rt60` seconds, `direct_to_reverb_db` below the direct path."""
    n = max(int(1.2 * rt60 * sample_rate), 2)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * 10.0 ** (-3.0 * t / rt60)  # amplitude: -60 dB of energy at rt60
    # high frequencies die out sooner: a one-pole low-pass whose pole moves towards 1 along the tail
    pole = np.clip(0.1 + 0.8 * t / max(rt60, 1e-3), 0.0, 0.95)
    smoothed = np.empty_like(tail)
    acc = 0.0
    for i in range(n):
        acc = pole[i] * acc + (1.0 - pole[i]) * tail[i]
        smoothed[i] = acc
    smoothed[0] = 0.0
    energy = float(np.sum(smoothed**2)) or 1.0
    smoothed *= np.sqrt(10.0 ** (-direct_to_reverb_db / 10.0) / energy)
    smoothed[0] = 1.0
    return smoothed.astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """audio convolved with rir, cut to its length and brought back to its RMS."""
    wet = fftconvolve(audio, rir)[: audio.shape[0]]
    scale = np.sqrt((np.mean(audio.astype(np.float64) ** 2) + 1e-12) / (np.mean(wet**2) + 1e-12))
    return (wet * scale).astype(np.float32)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Played `factor` times faster (tempo and pitch): resampled to len / factor samples."""
    ratio = Fraction(factor).limit_denominator(50)
    return resample_poly(audio, ratio.denominator, ratio.numerator).astype(np.float32)


def band_limit(audio: np.ndarray, low: float, high: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    sos = butter(4, [low, high], btype="bandpass", fs=sample_rate, output="sos")
    return sosfilt(sos, audio).astype(np.float32)


@dataclass(frozen=True)
class Acoustics:
    """How often and how strongly each change is drawn (0 / empty: never)."""

    reverb: float = 0.0  # probability of a room
    rt60: tuple[float, float] = (0.2, 0.9)  # seconds, drawn uniformly
    direct_to_reverb_db: tuple[float, float] = (-3.0, 9.0)
    speeds: tuple[float, ...] = ()  # factors drawn uniformly among these and 1.0
    band: float = 0.0  # probability of a band limit (telephone or small loudspeaker)

    @property
    def active(self) -> bool:
        return bool(self.reverb or self.speeds or self.band)

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """audio (N,) float32 16 kHz -> changed audio (N', N' = N unless the speed changed)."""
        if self.speeds:
            factor = (1.0, *self.speeds)[int(rng.integers(0, len(self.speeds) + 1))]
            if factor != 1.0:
                audio = change_speed(audio, factor)
        if self.reverb and rng.random() < self.reverb:
            rir = room_impulse(float(rng.uniform(*self.rt60)), rng,
                               direct_to_reverb_db=float(rng.uniform(*self.direct_to_reverb_db)))
            audio = reverberate(audio, rir)
        if self.band and rng.random() < self.band:
            audio = band_limit(audio, *BANDS[int(rng.integers(0, len(BANDS)))])
        return audio
