"""Additive noise at a target signal-to-noise ratio: babble from a file, white and pink noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avsr.data.media import MediaError, read_audio

# The SNRs (dB) avsr mixes at: below -50 dB the speech is a 300th of the noise's amplitude, above
# 100 dB the noise is under 16-bit quantisation (96 dB): beyond either end nothing changes but the
# arithmetic, which overflows for large values (10 ** (snr / 10)).
SNR_RANGE = (-50.0, 100.0)


def read_noise(path: str | Path) -> np.ndarray:
    """A noise recording (16 kHz mono wav) for mixing. An empty or silent one is refused, naming
    the file: it would fail mid-run, or leave "noisy" conditions clean (mix_at_snr)."""
    noise = read_audio(path)
    if noise.size == 0:
        raise MediaError(f"noise file {path} has no samples")
    if not np.any(noise):
        raise MediaError(f"noise file {path} is silent (every sample is 0)")
    return noise


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped by 1/sqrt(f) in the frequency domain, unit variance."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    return (pink / (pink.std() + 1e-12)).astype(np.float32)


def noise_segment(noise: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A random n-sample stretch of a noise recording (looped if the recording is shorter)."""
    if noise.size == 0:
        raise ValueError("empty noise signal")
    if noise.size < n:
        noise = np.tile(noise, n // noise.size + 1)
    start = int(rng.integers(0, noise.size - n + 1))
    return noise[start:start + n]


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled so that 10*log10(P_speech / P_noise) == snr_db (same lengths).

    Power is measured over the whole signal, as in torchaudio's add_noise, which the
    Llama-AVSR recipes use. A silent speech signal is returned unchanged.
    """
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} differ in shape")
    p_speech = float(np.mean(speech.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_speech == 0.0 or p_noise == 0.0:
        return speech.copy()
    scale = np.sqrt(p_speech / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (speech + scale * noise).astype(speech.dtype)
