"""Neural voices in the corpus (avsr.synth.neural): Piper's joe voice run by onnxruntime, phonemes
from our espeak-ng engine, lips stretched onto its speech, the same bytes in any order or process."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from avsr.data.dataset import load_item, read_manifest
from avsr.synth.analysis import lip_audio_correlation
from avsr.synth.corpus import SPLITS, make_speakers, make_tasks, synthesize_corpus
from avsr.synth.espeak import Voice, engine
from avsr.synth.neural import NeuralVoice, PiperModel, model_files, speech_span, synthesize
from conftest import tiny_config

SENTENCE = "you canna change the laws of physics captain"


def sha(audio: np.ndarray) -> str:
    return hashlib.sha256(audio.tobytes()).hexdigest()


def test_phonemes_and_ids_follow_the_voice_config():
    """espeak-ng's IPA for the text (what Piper's own front end gives: stress marks, spaces), and
    the ids "^" "_" (phoneme "_")* "$" of the voice's map."""
    ipa = engine().phonemize(SENTENCE, Voice("en-us"))
    assert ipa == "juː kˈænə tʃˈeɪndʒ ðə lˈɔːz ʌv fˈɪzɪks kˈæptɪn"
    model = PiperModel("joe")
    ids = model.phoneme_ids("ðə")
    m = json.loads(model_files("joe")[1].read_text())["phoneme_id_map"]
    assert ids == [*m["^"], *m["_"], *m["ð"], *m["_"], *m["ə"], *m["_"], *m["$"]]


def test_same_text_same_bytes_whatever_came_before_and_in_another_process():
    voice = NeuralVoice("joe", 1.1)
    first = synthesize(SENTENCE, voice)
    synthesize("something else entirely first", NeuralVoice("joe", 0.9))
    assert sha(synthesize(SENTENCE, voice).audio) == sha(first.audio)
    code = ("import hashlib; from avsr.synth.neural import NeuralVoice, synthesize; "
            f"print(hashlib.sha256(synthesize({SENTENCE!r}, NeuralVoice('joe', 1.1)).audio.tobytes()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == sha(first.audio)


def test_length_scale_sets_the_pace_and_phonemes_cover_the_speech():
    fast, slow = synthesize(SENTENCE, NeuralVoice("joe", 0.85)), synthesize(SENTENCE, NeuralVoice("joe", 1.2))
    assert fast.sample_rate == slow.sample_rate == 16000
    span = [np.subtract(*speech_span(s.audio.astype(np.float32))[::-1]) for s in (fast, slow)]
    assert 1.2 < span[1] / span[0] < 1.6  # 1.2 / 0.85 = 1.41
    for speech, (start, end) in ((s, speech_span(s.audio.astype(np.float32))) for s in (fast, slow)):
        times = [t for _, t in speech.phonemes]
        assert times == sorted(times)
        assert abs(times[0] - start / 16000) < 0.05 and times[-1] <= end / 16000 + 0.05


def test_a_corpus_with_neural_speakers(tmp_path):
    """The neural voice re-speaks its split's sentences with speakers of its own (their own random
    stream: the espeak-ng speakers and utterances stay as they were), the lips follow its audio,
    and the same seed gives the same bytes with 1 or 2 workers."""
    plain = make_speakers(tiny_config(tmp_path / "x"))
    neural_settings = dict(neural_utterances={"train": 5, "test": 2}, neural_speakers={"train": 2, "test": 1})
    cfg = tiny_config(tmp_path / "a", **neural_settings)
    speakers = make_speakers(cfg)
    assert speakers[:len(plain)] == plain
    neural = [s for s in speakers if isinstance(s.voice, NeuralVoice)]
    assert [s.split for s in neural] == ["train", "train", "test"]
    assert len({s.voice.length_scale for s in neural}) == 3
    synthesize_corpus(cfg, progress=False)
    tasks, before = make_tasks(cfg, speakers), make_tasks(tiny_config(tmp_path / "x"), plain)
    assert [(t.rel_path, t.text, t.seed) for t in tasks if not isinstance(t.speaker.voice, NeuralVoice)] == [
        (t.rel_path, t.text, t.seed) for t in before]
    for split, count in (("train", 5), ("test", 2)):
        said = [t.text for t in before if t.split == split]
        assert [t.text for t in tasks if t.split == split and isinstance(t.speaker.voice, NeuralVoice)] == said[:count]
    again = tiny_config(tmp_path / "b", **neural_settings, workers=1)
    synthesize_corpus(again, progress=False)
    files = {}
    for root in (tmp_path / "a", tmp_path / "b"):
        files[root] = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                       for p in sorted(root.rglob("*")) if p.is_file() and p.name != "corpus.json"}
    assert files[tmp_path / "a"] == files[tmp_path / "b"]
    rows = [r for s in SPLITS for r in read_manifest(tmp_path / "a" / "labels" / f"synth_{s}.csv")]
    by_speaker = {s.id: s for s in speakers}
    mine = [r for r in rows if isinstance(by_speaker[Path(r.id).parent.name].voice, NeuralVoice)]
    assert len(mine) == 7
    r = [lip_audio_correlation(load_item(row).video, load_item(row).audio) for row in mine]
    assert np.mean(r) > 0.3, r
    meta = json.loads((tmp_path / "a" / "synth" / "corpus.json").read_text())
    assert meta["identity"]["neural_utterances"] == {"train": 5, "test": 2}
    assert not {"neural_utterances", "neural_speakers", "neural_voice"} & set(tiny_config(tmp_path / "x").identity())
