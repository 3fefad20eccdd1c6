"""Phonemes -> visemes -> pixels: what lips can and cannot show."""

import itertools

import numpy as np
import pytest

from avsr.synth.corpus import SynthConfig, SynthError
from avsr.synth.espeak import Voice, engine
from avsr.synth.fortunes import fortune_sentences
from avsr.synth.lips import Appearance, render_mouth
from avsr.synth.text import GRID_GRAMMAR
from avsr.synth.visemes import (PARAMS, VISEME_NAMES, VISEMES, VOICES, VisemeError, mouth_trajectory, phoneme_visemes,
                                viseme_segments)


def hold(viseme: str, look: Appearance, frames: int = 9) -> np.ndarray:
    """Noise-free frames of one phoneme held for 360 ms between rests; returns the middle frame."""
    phones = [("", 0.0, 0.2), (viseme, 0.2, 0.56), ("", 0.56, 0.8)]
    shape = mouth_trajectory(viseme_segments(phones), 20)
    return render_mouth(shape, look)[frames].astype(np.float32)


@pytest.fixture(scope="module")
def looks():
    return [Appearance.sample(np.random.default_rng(s)) for s in range(3)]


def test_phonemes_map_to_visemes():
    assert phoneme_visemes("p") == phoneme_visemes("b") == phoneme_visemes("m") == ["bilabial"]
    assert phoneme_visemes("f") == phoneme_visemes("v") == ["labiodental"]
    assert phoneme_visemes("s") == phoneme_visemes("z")  # voicing is invisible
    assert phoneme_visemes("aʊ") == ["open_vowel", "rounded_vowel"]  # a diphthong moves
    assert phoneme_visemes("tʃ") == ["postalveolar"] and phoneme_visemes("uː") == ["rounded_vowel"]
    assert phoneme_visemes("a:") == ["open_vowel"]  # en-gb-scotland marks length with an ASCII colon
    assert phoneme_visemes("") == ["rest"] and phoneme_visemes("h") == []
    assert len(VISEME_NAMES) >= 12


def test_every_phoneme_espeak_produces_has_a_viseme():
    """In every voice `avsr synth --voices` accepts (VOICES): the GRID words, sounds English
    spells in many ways, and 300 fortune sentences (all 4,463 were checked once, in 8 voices; the
    3,882 of MORE_FORTUNE_FILES once, in the 6 default voices)."""
    sentences = ["the quick brown fox jumps over the lazy dog", "she sells sea shells by the sea shore",
                 "thin things through the church judge", "boy toy joy year hour fire cure pure tour",
                 "measure vision garage orange azure", "bin blue at f two now", "lay green by w eight soon",
                 "as long as the answer is right who cares if the question is wrong",  # Scottish "a:"
                 " ".join(w for slot in GRID_GRAMMAR for w in slot), " ".join(fortune_sentences()[:300])]
    seen = set()
    for name in VOICES:
        for text in sentences:
            for ipa, _ in engine().synthesize(text, Voice(name)).phonemes:
                seen.add(ipa)
                phoneme_visemes(ipa)  # VisemeError if a symbol has no viseme
    assert {"p", "b", "m", "f", "θ"} <= seen


def test_a_voice_outside_english_is_refused_and_a_foreign_symbol_named():
    with pytest.raises(SynthError, match="--voices de,klingon: not an English voice .* choose from en,en-us,"):
        SynthConfig(voices=("en-us", "de", "klingon"))
    german = [ipa for ipa, _ in engine().synthesize("Grüße aus München", Voice("de")).phonemes]
    with pytest.raises(VisemeError, match="no viseme for the symbol"):
        for ipa in german:
            phoneme_visemes(ipa)


def test_bilabials_look_the_same(looks):
    for look in looks:
        p, b, m = (hold(x, look) for x in ("p", "b", "m"))
        assert np.array_equal(p, b) and np.array_equal(b, m)


def test_distinct_visemes_look_measurably_different(looks):
    """p vs f vs o (and every other pair of viseme classes) differ in the image."""
    ipa = {"bilabial": "p", "labiodental": "f", "rounded_vowel": "o", "open_vowel": "a", "spread_vowel": "i",
           "dental": "θ", "sibilant": "s", "postalveolar": "ʃ", "labial_glide": "w", "rest": ""}
    for look in looks:
        frames = {v: hold(x, look) for v, x in ipa.items()}
        diffs = {(a, b): float(np.abs(frames[a] - frames[b]).mean()) for a, b in itertools.combinations(frames, 2)}
        pfo = [diffs[("bilabial", "labiodental")], diffs[("bilabial", "rounded_vowel")],
               diffs[("labiodental", "rounded_vowel")]]
        assert min(pfo) > 1.5, pfo  # measured 2.1-5.2 gray levels (mean over 96x96)
        assert min(diffs.values()) > 0.3, min(diffs, key=diffs.get)  # measured >= 0.46


def test_coarticulation_reaches_lip_targets_but_not_tongue_ones():
    """Bilabial closure is reached even when short; an alveolar between rounded vowels stays rounded."""
    short_p = mouth_trajectory(viseme_segments([("a", 0.0, 0.2), ("p", 0.2, 0.26), ("a", 0.26, 0.5)]), 13)
    assert short_p[:, PARAMS.index("open")].min() < 0.15
    utu = mouth_trajectory(viseme_segments([("u", 0.0, 0.2), ("t", 0.2, 0.28), ("u", 0.28, 0.5)]), 13)
    ata = mouth_trajectory(viseme_segments([("a", 0.0, 0.2), ("t", 0.2, 0.28), ("a", 0.28, 0.5)]), 13)
    rnd = PARAMS.index("round")
    assert utu[6, rnd] > ata[6, rnd] + 0.3  # the /t/ in "utu" is rounded, in "ata" not
    assert VISEMES["bilabial"].dominance > VISEMES["alveolar"].dominance
