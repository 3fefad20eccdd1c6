"""Synthetic-to-real augmentation (avsr.data.acoustics)."""

import numpy as np
import pytest

from avsr.data.acoustics import Acoustics, band_limit, change_speed, reverberate, room_impulse


@pytest.mark.parametrize("rt60", [0.3, 0.8])
def test_room_impulse_decays_by_60_db_in_rt60(rt60):
    rir = room_impulse(rt60, np.random.default_rng(0), direct_to_reverb_db=0.0)
    assert rir[0] == 1.0 and abs(float(np.sum(rir[1:] ** 2)) - 1.0) < 1e-3  # direct = reverberant energy
    energy = np.cumsum(rir[1:][::-1] ** 2)[::-1]  # Schroeder's backward integral
    decay = 10 * np.log10(energy / energy[0])
    # the -5..-25 dB stretch, extrapolated to -60 dB (T20), within 20% of the drawn RT60
    t5, t25 = np.argmax(decay < -5) / 16000, np.argmax(decay < -25) / 16000
    assert abs(3 * (t25 - t5) - rt60) < 0.2 * rt60


def test_reverberation_keeps_length_and_level_and_smears_in_time():
    rng = np.random.default_rng(1)
    audio = np.zeros(16000, np.float32)
    audio[4000:4400] = rng.standard_normal(400)
    wet = reverberate(audio, room_impulse(0.6, rng))
    assert wet.shape == audio.shape and wet.dtype == np.float32
    assert abs(np.sqrt(np.mean(wet**2)) / np.sqrt(np.mean(audio**2)) - 1) < 1e-3
    assert np.abs(wet[6000:]).max() > 0.01 and not np.any(audio[6000:])  # the tail rings on


def test_speed_and_band_limit():
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    faster = change_speed(tone, 1.1)
    assert abs(len(faster) - 16000 / 1.1) <= 1
    spectrum = np.abs(np.fft.rfft(faster))
    assert abs(np.argmax(spectrum) * 16000 / len(faster) - 1100) < 5  # the pitch rose with the tempo
    low = np.sin(2 * np.pi * 100 * np.arange(16000) / 16000).astype(np.float32)
    assert np.std(band_limit(low, 300, 3400)[4000:]) < 0.1 * np.std(low)
    assert np.std(band_limit(tone, 300, 3400)[4000:]) > 0.8 * np.std(tone)


def test_acoustics_draws_from_the_generator_only():
    audio = np.random.default_rng(2).standard_normal(8000).astype(np.float32)
    aug = Acoustics(reverb=1.0, speeds=(0.9, 1.1), band=0.5)
    a = aug(audio, np.random.default_rng(3))
    assert np.array_equal(a, aug(audio, np.random.default_rng(3)))
    assert not Acoustics().active and np.array_equal(Acoustics()(audio, np.random.default_rng(3)), audio)
