"""Cut a long recording into segments a model can take in one piece, at pauses where possible.

Why: the models here are trained on utterances of at most 16 s (the LRS3 segments of the
Llama-AVSR / Llama-MTSK / Llama-SMoP papers), Whisper's encoder sees at most 30 s, and
AV-HuBERT and Whisper-based recognisers are known to degrade on inputs longer than about
20-30 s (long-form audio drifts, repeats or stops early). A lecture, an audiobook chapter or
a speech therefore has to be decoded in pieces of training length, and a cut in the middle
of a word costs that word on both sides, so cuts go into pauses.

How (deterministic, numpy only):

1. Frame energy: mean square of 25 ms frames every 10 ms, in dB (a floor of -100 dB for
   digital silence), smoothed over `pause_seconds` so that the quiet of a stop consonant
   (tens of ms) does not look like a pause, while a real pause between phrases does.
2. What counts as a pause: a smoothed frame below `low + pause_fraction * (high - low)`,
   where `low` is the quietest smoothed frame (the recording's floor, found even when pauses
   are rare) and `high` the 95th percentile of the frame energies (its speech level), so the
   rule adapts to the recording's loudness and noise. A recording whose floor and speech
   level lie less than `min_contrast_db` apart (steady noise, one long note) has no pauses.
3. Cutting: while more than `max_seconds` are left after the current start, look for pause
   frames in a search window that ends at the limit (start + max_seconds) and spans
   `search_seconds` (default: half the limit); cut at the quietest of them (the middle of
   the last stretch of equally quiet frames, so a pause of digital silence is cut in its
   middle), never in the pause the segment starts in. No pause there: the quietest pause
   anywhere before the limit (a shorter segment rather than a cut through speech). No pause
   at all: a hard cut at the limit.

The result is a list of (start, end) sample indices, in order, without gaps or overlaps,
covering the whole input; no segment is longer than `max_seconds`.
"""

from __future__ import annotations

import numpy as np

from avsr.errors import AvsrError

SAMPLE_RATE = 16000
MAX_SECONDS = 16.0  # the papers' longest training utterance (LRS3 segments)
FLOOR_DB = -100.0  # energy of digital silence (the log needs a floor)


class SegmentError(AvsrError):
    """Audio that cannot be segmented: empty, not mono, or not finite."""


def frame_energy_db(audio: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """(F,) mean-square energy in dB of frames of `frame` samples every `hop` samples; frame i
    covers samples [i * hop, i * hop + frame), the last frame possibly short (never empty)."""
    x = np.asarray(audio, dtype=np.float64)
    n = x.shape[0]
    count = max(1, -(-max(n - frame, 0) // hop) + 1)  # enough frames to reach the last sample
    starts = np.arange(count) * hop
    ends = np.minimum(starts + frame, n)
    cumulative = np.concatenate([[0.0], np.cumsum(x * x)])
    power = (cumulative[ends] - cumulative[starts]) / np.maximum(ends - starts, 1)
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DB / 10.0)))


def smooth_db(energy_db: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of the frames' power over `width` frames (fewer at the edges), in dB."""
    if width <= 1:
        return energy_db.copy()
    power = 10.0 ** (energy_db / 10.0)
    cumulative = np.concatenate([[0.0], np.cumsum(power)])
    idx = np.arange(power.shape[0])
    lo = np.maximum(idx - width // 2, 0)
    hi = np.minimum(idx - width // 2 + width, power.shape[0])
    mean = (cumulative[hi] - cumulative[lo]) / (hi - lo)
    return 10.0 * np.log10(np.maximum(mean, 10.0 ** (FLOOR_DB / 10.0)))


def _quietest(smoothed: np.ndarray, candidates: np.ndarray, tolerance_db: float) -> int:
    """The frame to cut at among `candidates` (sorted frame indices): the middle of the last
    run of consecutive candidates within `tolerance_db` of the quietest one."""
    values = smoothed[candidates]
    near = candidates[values <= values.min() + tolerance_db]
    end = len(near) - 1
    begin = end
    while begin > 0 and near[begin - 1] == near[begin] - 1:
        begin -= 1
    return int(near[(begin + end) // 2])


def segment_spans(audio, sample_rate: int = SAMPLE_RATE, max_seconds: float = MAX_SECONDS,
                  search_seconds: float | None = None, frame_seconds: float = 0.025, hop_seconds: float = 0.010,
                  pause_seconds: float = 0.15, pause_fraction: float = 0.3, min_contrast_db: float = 10.0,
                  tolerance_db: float = 0.5) -> list[tuple[int, int]]:
    """[(start, end)] sample indices of segments of at most `max_seconds` that cover the (N,)
    waveform `audio` in order, cut at pauses where there are any (see the module docstring).
    An input no longer than `max_seconds` is one segment. Empty, multi-channel or non-finite
    audio is refused with a SegmentError; bad settings with a ValueError."""
    if max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if sample_rate <= 0 or frame_seconds <= 0 or hop_seconds <= 0:
        raise ValueError("sample_rate, frame_seconds and hop_seconds must be positive")
    if search_seconds is not None and search_seconds <= 0:
        raise ValueError(f"search_seconds must be positive, got {search_seconds}")
    x = np.asarray(audio)
    if x.ndim != 1:
        raise SegmentError(f"expected a mono waveform (N,), got an array of shape {x.shape} "
                           f"(mix or pick a channel first)")
    if x.shape[0] == 0:
        raise SegmentError("empty audio: there is nothing to segment")
    if not np.all(np.isfinite(x)):
        raise SegmentError("the audio holds NaN or infinite samples")
    n = int(x.shape[0])
    limit = int(round(max_seconds * sample_rate))
    if limit < 1:
        raise ValueError(f"max_seconds={max_seconds} is shorter than one sample at {sample_rate} Hz")
    if n <= limit:
        return [(0, n)]

    frame = max(1, int(round(frame_seconds * sample_rate)))
    hop = max(1, int(round(hop_seconds * sample_rate)))
    energy = frame_energy_db(x, frame, hop)
    smoothed = smooth_db(energy, max(1, int(round(pause_seconds / hop_seconds))))
    low, high = float(smoothed.min()), float(np.percentile(energy, 95))
    if high - low >= min_contrast_db:
        is_pause = smoothed <= low + pause_fraction * (high - low)
    else:  # no contrast between floor and speech: nothing is a pause
        is_pause = np.zeros(energy.shape, dtype=bool)
    centres = np.arange(energy.shape[0]) * hop + np.minimum(frame, n) // 2  # sample of each frame's middle
    search = int(round((search_seconds if search_seconds is not None else max_seconds / 2) * sample_rate))

    spans: list[tuple[int, int]] = []
    start = 0
    while n - start > limit:
        end = start + limit
        # A segment that starts in a pause (the previous cut) is not cut again in that same pause.
        first = int(np.searchsorted(centres, start, side="right"))
        while first < is_pause.shape[0] and is_pause[first]:
            first += 1
        inside = is_pause & (centres < end)  # a cut strictly inside the span, after `first`
        inside[:first] = False
        window = np.flatnonzero(inside & (centres >= end - search))
        anywhere = window if window.size else np.flatnonzero(inside)
        cut = int(centres[_quietest(smoothed, anywhere, tolerance_db)]) if anywhere.size else end
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


def split_audio(audio, spans: list[tuple[int, int]]) -> list[np.ndarray]:
    """The pieces of `audio` named by `spans` (views, not copies)."""
    x = np.asarray(audio)
    return [x[a:b] for a, b in spans]
