"""Cutting long recordings into segments at pauses (avsr.data.segments), on synthetic signals."""

import numpy as np
import pytest

from avsr.data.segments import SegmentError, segment_spans, split_audio

SR = 16000


def tone(seconds: float, freq: float = 220.0, level: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * SR))) / SR
    return (level * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speech_like(pattern: list[tuple[str, float]], noise_level: float = 0.0, seed: int = 0):
    """Tones ("s") and silences ("p") of the given lengths; returns the signal and the
    [start, end) sample ranges of its pauses. Optional background noise everywhere."""
    parts, pauses, at = [], [], 0
    for kind, seconds in pattern:
        n = int(round(seconds * SR))
        if kind == "s":
            parts.append(tone(seconds, 150 + 40 * len(parts)))
        else:
            parts.append(np.zeros(n, np.float32))
            pauses.append((at, at + n))
        at += n
    x = np.concatenate(parts)
    if noise_level:
        x = x + noise_level * np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)
    return x, pauses


def assert_partition(spans, n, max_seconds=16.0):
    assert spans[0][0] == 0 and spans[-1][1] == n
    for (a, b), (c, _) in zip(spans, spans[1:]):
        assert b == c  # contiguous: no gap, no overlap
    for a, b in spans:
        assert 0 < b - a <= int(max_seconds * SR)
        assert isinstance(a, int) and isinstance(b, int)


def in_a_pause(cut, pauses):
    return any(a < cut < b for a, b in pauses)


def test_tones_separated_by_silences_are_cut_in_a_silence():
    x, pauses = speech_like([("s", 3.0), ("p", 0.6)] * 5 + [("s", 3.0)])  # 21 s
    spans = segment_spans(x)
    assert_partition(spans, x.size)
    assert len(spans) == 2
    cut = spans[0][1]
    assert in_a_pause(cut, pauses)
    # Cut in the middle of the pause (digital silence: all its frames are equally quiet).
    a, b = next(p for p in pauses if p[0] < cut < p[1])
    assert abs(cut - (a + b) // 2) <= 0.05 * SR


def test_forty_seconds_with_pauses_are_cut_only_at_pauses():
    pattern = []
    for k in range(13):  # phrases of 2.1-3.3 s and pauses of 0.3-0.7 s: about 41 s
        pattern += [("s", 2.1 + 0.1 * k), ("p", 0.3 + 0.1 * (k % 5))]
    x, pauses = speech_like(pattern, noise_level=0.003)  # a noise floor, as in a real room
    assert 38 * SR < x.size < 45 * SR
    spans = segment_spans(x)
    assert_partition(spans, x.size)
    assert len(spans) >= 3
    for _, cut in spans[:-1]:
        assert in_a_pause(cut, pauses), f"cut at {cut / SR:.2f} s is not in a pause"
    # The search window is the last half of the limit: no segment is needlessly short.
    assert all(b - a >= 8 * SR - 0.7 * SR for a, b in spans[:-1])


def test_without_pauses_the_cuts_are_hard_at_the_limit():
    x = tone(40.0)
    assert segment_spans(x) == [(0, 16 * SR), (16 * SR, 32 * SR), (32 * SR, 40 * SR)]
    noise = (0.1 * np.random.default_rng(1).standard_normal(40 * SR)).astype(np.float32)
    assert segment_spans(noise, max_seconds=10) == [(0, 160000), (160000, 320000), (320000, 480000),
                                                    (480000, 640000)]


def test_a_pause_before_the_window_is_used_rather_than_cutting_speech():
    # One pause at ~3 s, then 20 s of uninterrupted "speech": cut at the pause, then a hard cut.
    x, pauses = speech_like([("s", 2.8), ("p", 0.4), ("s", 20.0)])
    spans = segment_spans(x)
    assert_partition(spans, x.size)
    assert in_a_pause(spans[0][1], pauses)
    assert spans[1][1] == spans[1][0] + 16 * SR  # nothing but speech left: hard cut at the limit


def test_short_input_is_one_segment():
    assert segment_spans(tone(3.0)) == [(0, 3 * SR)]
    assert segment_spans(tone(16.0)) == [(0, 16 * SR)]  # exactly the limit
    assert segment_spans(np.zeros(1, np.float32)) == [(0, 1)]
    assert segment_spans(tone(3.0), max_seconds=1.0)[-1][1] == 3 * SR


def test_empty_and_malformed_input_is_refused():
    with pytest.raises(SegmentError, match="empty audio"):
        segment_spans(np.zeros(0, np.float32))
    with pytest.raises(SegmentError, match="mono"):
        segment_spans(np.zeros((2, 100), np.float32))
    with pytest.raises(SegmentError, match="NaN"):
        segment_spans(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="max_seconds"):
        segment_spans(tone(1.0), max_seconds=0)


def test_deterministic_and_split_matches_spans():
    x, _ = speech_like([("s", 2.5), ("p", 0.5)] * 14, noise_level=0.01, seed=3)
    first = segment_spans(x, max_seconds=7.5)
    assert first == segment_spans(x.copy(), max_seconds=7.5)
    assert_partition(first, x.size, max_seconds=7.5)
    pieces = split_audio(x, first)
    assert np.array_equal(np.concatenate(pieces), x)
