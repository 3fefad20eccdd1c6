"""How far to trust what the model wrote for a segment: a token limit that follows the segment's
duration, repetition loops cut, and a confidence in [0, 1] with the threshold under which a
segment is flagged (measured: docs/transcribe.md, "Confidence").

Token limit: `FLOOR_TOKENS` + `MARGIN` x the training transcripts' fastest rate x the segment's
seconds. The rate is the most LLM tokens per second of speech (EOS included) of any training
utterance, counted with the model's own tokenizer when the checkpoint was saved
(avsr.training.data_record); `MARGIN` leaves room for speech half again as fast, and the floor
for a word or two in a short segment. A checkpoint without that record uses
`DEFAULT_TOKENS_PER_SECOND`, which gives the 128 tokens per 16 s segment avsr used before.

Segments: at most `MARGIN` x the longest training utterance (the record's seconds), and at most
`avsr.data.segments.MAX_SECONDS` (the papers' longest): an LLM trained on short sentences ends
its transcript after about as many words as it saw, so a much longer segment loses its end (the
reading profile, trained on utterances of at most 6.8 s, on the real recordings: 52 of 205
words deleted with 16-s segments, 26 with 10.1-s ones, WER 56.1 -> 44.4%; docs/reading.md).

Loops: a run of words that the model repeats back to back, at least `LOOP_WORDS` repeated words
in all ("set white at b one set white at b one ..." until the limit), is kept once. Natural
repetition is shorter ("no no no", "very very"), and a correct in-domain output never loops.

Confidence: the mean probability of the hypothesis's tokens, 0 for a loop. A loop is judged by
its shape, not its probabilities: inside one the model finds each next copy likely (the real
faces' VSR loops average 0.81 to 0.97 per token, as high as correct in-domain outputs).
`THRESHOLD` is the largest that flags at most 5 % of the correct segments of the GRID
quickstart model's val split (all tasks); measured with experiments/confidence.py, the figures
in docs/transcribe.md ("Confidence"). Measured and left out: the least likely token and the
geometric mean of the probabilities (the score), which separate less well, and the
hypothesis's tokens per second against the training's slowest, which flags no more segments
at the threshold and would make a correct segment with long pauses look made up.
"""

from __future__ import annotations

import math

FLOOR_TOKENS = 8
MARGIN = 1.5
DEFAULT_TOKENS_PER_SECOND = 5.0
LOOP_WORDS = 4
THRESHOLD = 0.88  # a segment under it is flagged low_confidence


def token_rate(record: dict | None) -> float:
    """The token rate a segment's limit is drawn from: the training transcripts' fastest (see the
    module docstring), or the default without a record."""
    rate = (record or {}).get("tokens_per_second") or {}
    return float(rate.get("max") or DEFAULT_TOKENS_PER_SECOND)


def longest_segment(record: dict | None, most: float) -> float:
    """The longest segment to decode (see the module docstring): MARGIN x the longest training
    utterance, at most `most`; `most` without a record of it."""
    longest = ((record or {}).get("seconds") or {}).get("max")
    return min(round(MARGIN * float(longest), 2), most) if longest else most


def token_limit(seconds: float, rate: float, most: int | None = None) -> int:
    """The new tokens a segment of `seconds` may get: FLOOR_TOKENS + MARGIN x rate x seconds, at most `most`."""
    limit = FLOOR_TOKENS + math.ceil(MARGIN * rate * seconds)
    return min(limit, most) if most else limit


def cut_loop(text: str) -> tuple[str, str | None, int]:
    """(text, repeated words or None, times said): the first back-to-back repetition of at least
    LOOP_WORDS repeated words kept once, with a last copy cut short at the end dropped too."""
    words = text.split()
    for start in range(len(words)):
        for n in range(1, (len(words) - start) // 2 + 1):
            gram, times = words[start:start + n], 1
            while words[start + times * n:start + (times + 1) * n] == gram:
                times += 1
            if times > 1 and (times - 1) * n >= LOOP_WORDS:
                rest = words[start + times * n:]
                if rest == gram[:len(rest)]:  # the limit cut the last copy short
                    rest = []
                return " ".join(words[:start + n] + rest), " ".join(gram), times
    return text, None, 1


def confidence(token_logp: list[float], loop: bool = False) -> float:
    """The mean probability of the hypothesis's tokens (EOS included); 0 for a repetition loop,
    whose tokens the model finds likely once it is in it (see the module docstring)."""
    return 0.0 if loop or not token_logp else sum(math.exp(x) for x in token_logp) / len(token_logp)
