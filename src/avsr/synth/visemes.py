"""Phonemes -> visemes -> mouth-shape trajectories at 25 fps.

Lips show only part of speech: p, b and m look alike (one viseme), voicing is invisible
(f/v, s/z, t/d share visemes), and tongue-internal places (k, g, ng) show little. The
classes below follow the usual English viseme groupings. Each viseme is a target mouth
shape; the trajectory between targets uses dominance-function coarticulation (Cohen &
Massaro, 1993): every target pulls the shape towards itself with a strength that decays
with time from its centre. Lip-critical visemes (bilabial closure, labiodental contact,
rounding) dominate strongly and narrowly, so they are reached; tongue-place consonants
dominate weakly, so their lips take the shape of neighbouring vowels, as in real speech.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np

from avsr.errors import AvsrError

FPS = 25

# The espeak-ng voices whose phonemes the table below covers: the English voices of espeak-ng's
# own data (not the mbrola ones, which need other packages). Every phoneme they give for the GRID
# words and the fortune sentences has a viseme (tests/test_visemes.py); another language's voice
# gives symbols English lips have no shape for here (German ç, y, œ, ...).
VOICES = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")


class VisemeError(AvsrError):
    """A phoneme with no viseme in the table (a voice or text outside what it covers)."""

# Mouth-shape parameters, each in [0, 1]:
#   open   jaw/lip opening; width  lip spread (0.5 neutral); round  rounding/protrusion;
#   teeth  how much of the teeth shows; tongue  how much of the tongue shows.
PARAMS = ("open", "width", "round", "teeth", "tongue")


@dataclass(frozen=True)
class Viseme:
    name: str
    shape: tuple[float, float, float, float, float]  # values for PARAMS
    dominance: float  # how strongly this target pulls the trajectory
    reach_ms: float  # time constant of the pull (larger = wider influence)


VISEMES: dict[str, Viseme] = {v.name: v for v in (
    Viseme("rest", (0.04, 0.50, 0.10, 0.00, 0.00), 1.0, 60),
    Viseme("bilabial", (0.00, 0.46, 0.05, 0.00, 0.00), 12.0, 30),  # p b m: lips pressed shut
    Viseme("labiodental", (0.12, 0.55, 0.00, 1.00, 0.00), 8.0, 30),  # f v: upper teeth on lower lip
    Viseme("dental", (0.28, 0.56, 0.00, 0.80, 1.00), 3.0, 35),  # th: tongue tip between the teeth
    Viseme("alveolar", (0.26, 0.56, 0.05, 0.60, 0.50), 0.6, 40),  # t d n l
    Viseme("sibilant", (0.10, 0.66, 0.00, 1.00, 0.00), 2.5, 35),  # s z: teeth together, spread
    Viseme("postalveolar", (0.20, 0.36, 0.65, 0.80, 0.00), 4.0, 35),  # sh zh ch j: protruded
    Viseme("velar", (0.34, 0.52, 0.10, 0.30, 0.15), 0.5, 40),  # k g ng
    Viseme("rhotic", (0.20, 0.40, 0.55, 0.35, 0.00), 2.0, 40),  # r
    Viseme("labial_glide", (0.10, 0.24, 1.00, 0.00, 0.00), 6.0, 40),  # w
    Viseme("open_vowel", (1.00, 0.56, 0.08, 0.30, 0.40), 1.5, 60),  # a ae ah
    Viseme("mid_vowel", (0.55, 0.62, 0.02, 0.50, 0.30), 1.2, 60),  # e eh schwa er
    Viseme("spread_vowel", (0.24, 0.86, 0.00, 0.85, 0.20), 1.5, 55),  # i ih y
    Viseme("rounded_vowel", (0.42, 0.28, 0.92, 0.10, 0.05), 2.0, 55),  # u uh o aw
)}
VISEME_NAMES = tuple(VISEMES)

# Single IPA symbols (length marks and diacritics stripped) -> viseme.
_SYMBOL_VISEME = {
    "p": "bilabial", "b": "bilabial", "m": "bilabial",
    "f": "labiodental", "v": "labiodental",
    "θ": "dental", "ð": "dental",
    "t": "alveolar", "d": "alveolar", "n": "alveolar", "l": "alveolar", "ɾ": "alveolar", "ɫ": "alveolar",
    "s": "sibilant", "z": "sibilant",
    "ʃ": "postalveolar", "ʒ": "postalveolar", "tʃ": "postalveolar", "dʒ": "postalveolar",
    "k": "velar", "g": "velar", "ɡ": "velar", "ŋ": "velar", "x": "velar",
    "ɹ": "rhotic", "r": "rhotic", "ɻ": "rhotic",
    "w": "labial_glide", "ʍ": "labial_glide",
    "a": "open_vowel", "ɑ": "open_vowel", "æ": "open_vowel", "ʌ": "open_vowel", "ɐ": "open_vowel", "ɒ": "open_vowel",
    "e": "mid_vowel", "ɛ": "mid_vowel", "ə": "mid_vowel", "ɜ": "mid_vowel", "ɚ": "mid_vowel", "ɝ": "mid_vowel",
    "i": "spread_vowel", "ɪ": "spread_vowel", "j": "spread_vowel", "ᵻ": "spread_vowel", "ɨ": "spread_vowel",
    "u": "rounded_vowel", "ʊ": "rounded_vowel", "o": "rounded_vowel", "ɔ": "rounded_vowel", "ʉ": "rounded_vowel",
    "ɵ": "rounded_vowel",
}
# Symbols with no lip target of their own: they take the shape of what follows.
_TRANSPARENT = {"h", "ʔ", "ɦ"}
_AFFRICATES = ("tʃ", "dʒ")


def phoneme_visemes(ipa: str) -> list[str]:
    """Visemes of one espeak-ng IPA phoneme name, in order ("aʊ" -> open, rounded).

    "" (a pause) is rest; h and glottal stops give []; diphthongs give one viseme per
    vowel quality. Raises VisemeError for a symbol we have no viseme for.
    """
    if ipa == "":
        return ["rest"]
    # Drop length marks (IPA, or the ASCII colon some voices give, e.g. en-gb-scotland "a:"),
    # stress marks, syllabic/dental/palatalised diacritics.
    base = "".join(c for c in unicodedata.normalize("NFD", ipa)
                   if not unicodedata.combining(c) and c not in "ːˑ:ˈˌʲ")
    out: list[str] = []
    i = 0
    while i < len(base):
        pair = base[i:i + 2]
        symbol = pair if pair in _AFFRICATES else base[i]
        i += len(symbol)
        if symbol in _TRANSPARENT:
            continue
        viseme = _SYMBOL_VISEME.get(symbol)
        if viseme is None:
            raise VisemeError(f"no viseme for the symbol {symbol!r} of the espeak-ng phoneme {ipa!r}")
        if not out or out[-1] != viseme:
            out.append(viseme)
    return out


@dataclass
class VisemeSegment:
    viseme: str
    start: float  # seconds
    end: float


def viseme_segments(phonemes: list[tuple[str, float, float]]) -> list[VisemeSegment]:
    """Split timed phonemes (ipa, start, end) into timed viseme segments."""
    segments = []
    for ipa, start, end in phonemes:
        names = phoneme_visemes(ipa)
        step = (end - start) / max(len(names), 1)
        segments += [VisemeSegment(n, start + k * step, start + (k + 1) * step) for k, n in enumerate(names)]
    return segments


def mouth_trajectory(segments: list[VisemeSegment], n_frames: int, fps: int = FPS,
                     subframes: int = 4) -> np.ndarray:
    """Mouth parameters per video frame, (n_frames, len(PARAMS)) float32 in [0, 1].

    Dominance blending: shape(t) = sum_k D_k(t) S_k / sum_k D_k(t), with
    D_k(t) = dominance_k * exp(-|t - c_k| / reach_k), c_k the segment centre. Each frame
    averages `subframes` instants over its 40 ms exposure (motion blur), so short
    phonemes that fall between frame instants still leave a trace.
    """
    # Rest targets at both ends hold the mouth closed outside the speech.
    keys = [VisemeSegment("rest", -0.2, 0.0)] + segments + [
        VisemeSegment("rest", n_frames / fps, n_frames / fps + 0.2)]
    centres = np.array([(s.start + s.end) / 2 for s in keys])  # (K,)
    shapes = np.array([VISEMES[s.viseme].shape for s in keys], np.float64)  # (K, P)
    dom = np.array([VISEMES[s.viseme].dominance for s in keys])  # (K,)
    reach = np.array([VISEMES[s.viseme].reach_ms for s in keys]) / 1000.0  # (K,)
    # A segment longer than its reach is held, not just touched at its centre.
    half = np.array([(s.end - s.start) / 2 for s in keys])
    times = (np.arange(n_frames * subframes) + 0.5) / (fps * subframes)  # (T*S,)
    dist = np.maximum(np.abs(times[:, None] - centres[None, :]) - half[None, :] * 0.6, 0.0)
    weights = dom[None, :] * np.exp(-dist / reach[None, :])  # (T*S, K)
    traj = (weights @ shapes) / (weights.sum(axis=1, keepdims=True) + 1e-12)  # (T*S, P)
    return traj.reshape(n_frames, subframes, len(PARAMS)).mean(axis=1).astype(np.float32)
