"""Noise at a target SNR, and the noise files of the corpus."""

from pathlib import Path

import numpy as np
import pytest

from avsr.data.media import read_audio
from avsr.data.noise import mix_at_snr, noise_segment, pink_noise, white_noise


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_mix_hits_the_requested_snr(snr):
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 300, 16000)).astype(np.float32) * 0.3
    noise = white_noise(16000, rng)
    mixed = mix_at_snr(speech, noise, snr)
    residual = mixed - speech
    measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(residual.astype(np.float64) ** 2))
    assert abs(measured - snr) < 0.01


def test_pink_noise_falls_3db_per_octave():
    power = np.abs(np.fft.rfft(pink_noise(2**16, np.random.default_rng(1)))) ** 2
    freqs = np.fft.rfftfreq(2**16, 1 / 16000)
    low = power[(freqs > 100) & (freqs < 200)].mean()
    high = power[(freqs > 3200) & (freqs < 6400)].mean()  # 5 octaves up
    assert 12 < 10 * np.log10(low / high) < 18  # ~15 dB


def test_noise_segment_is_reproducible_and_loops():
    noise = np.arange(10, dtype=np.float32)
    a = noise_segment(noise, 25, np.random.default_rng(3))
    b = noise_segment(noise, 25, np.random.default_rng(3))
    assert a.size == 25 and np.array_equal(a, b)
    # Longer than the recording: the recording again and again from a random point, without gaps
    # (noise[k] == k, so every next sample is the previous one + 1, wrapping from 9 to 0).
    starts = set()
    for seed in range(20):
        seg = noise_segment(noise, 25, np.random.default_rng(seed))
        assert np.array_equal(seg, (seg[0] + np.arange(25)) % 10), seg
        starts.add(int(seg[0]))
    assert len(starts) >= 5  # the start is drawn, not always the recording's beginning
    # Shorter: a stretch of the recording itself, never running past its end.
    for seed in range(20):
        seg = noise_segment(noise, 4, np.random.default_rng(seed))
        assert np.array_equal(seg, seg[0] + np.arange(4)) and seg[0] <= 6


def test_corpus_babble_is_speech_of_several_talkers(tiny_corpus):
    cfg, summary = tiny_corpus
    babble = read_audio(Path(cfg.out) / "noise" / "synth_babble.wav")
    assert babble.size == int(cfg.noise_seconds * 16000)
    # Several talkers overlap: fewer silent 40 ms frames than in one talker's speech.
    frames = babble[: babble.size // 640 * 640].reshape(-1, 640)
    level = 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-10)
    assert np.mean(level < level.max() - 30) < 0.05
    # Babble is speech-shaped: most energy below 4 kHz, unlike white noise.
    spectrum = np.abs(np.fft.rfft(babble)) ** 2
    freqs = np.fft.rfftfreq(babble.size, 1 / 16000)
    assert spectrum[freqs < 4000].sum() / spectrum.sum() > 0.8
    assert summary["babble_talkers"] == cfg.noise_speakers
