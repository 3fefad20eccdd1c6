"""A checkpoint records what it was trained on (issue 23, item 6), and `avsr transcribe` (text and
JSON) says plainly what a model trained on the synthetic GRID corpus can write; older
checkpoints get the record from their corpus, or are said to be of unknown training data."""

import json
import math
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from avsr.data.manifests import read_manifest
from avsr.training.data_record import data_record, knowledge_note


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "last"


@pytest.fixture(scope="module")
def expected(tiny_corpus, tiny_backbones) -> dict:
    """The record of the tiny corpus's training split, computed here from its labels."""
    from transformers import AutoTokenizer

    root = Path(tiny_corpus[0].out)
    rows = read_manifest(root / "labels" / "synth_train.csv", root=root)
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["llm"])
    rates = [(len(tokenizer(r.text, add_special_tokens=False)["input_ids"]) + 1) / (r.n_frames / 25) for r in rows]
    return {"corpus": "synth", "split": "train", "kind": "synthetic", "sentences": "grid", "utterances": len(rows),
            "hours": round(sum(r.n_frames for r in rows) / 25 / 3600, 3),
            "vocabulary": len({w for r in rows for w in r.text.split()}),
            "tokens_per_second": {"mean": round(sum(rates) / len(rates), 2), "max": round(max(rates), 2)},
            "seconds": {"mean": round(sum(r.n_frames for r in rows) / 25 / len(rows), 2),
                        "max": round(max(r.n_frames for r in rows) / 25, 2)}}


def test_training_saves_the_record_with_every_checkpoint(checkpoint, expected):
    saved = json.loads((checkpoint / "config.json").read_text())
    assert saved["training_data"] == expected
    assert expected["utterances"] == 12 and 10 < expected["vocabulary"] < 60 and expected["hours"] > 0


def test_transcribe_says_what_a_grid_model_can_write_in_text_and_json(checkpoint, expected):
    wav = corpus_wav(checkpoint)
    sentence = (f"this model was trained on a synthetic corpus of {expected['vocabulary']} words (GRID commands, "
                f"{expected['hours']} h of espeak-ng speech and drawn lips): it writes only such sentences, "
                "whatever it hears")
    code, out, err = run_cli("transcribe", wav, "--checkpoint", checkpoint, "--beams", 1, "--quiet")
    assert code == 0 and out.count("\n") == 1, err
    assert f"[avsr transcribe] note: {sentence}\n" in err
    code, out, err = run_cli("transcribe", wav, "--checkpoint", checkpoint, "--beams", 1, "--format", "json", "--quiet")
    doc = json.loads(out)
    assert doc["training_data"] == {**expected, "note": sentence}
    assert doc["token_limit"]["tokens_per_second"] == round(1.5 * expected["tokens_per_second"]["max"], 2)


def test_an_older_checkpoint_gets_the_record_from_its_corpus_or_says_it_is_unknown(checkpoint, expected, tmp_path):
    from avsr.transcription import Transcriber

    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    saved = json.loads((old / "config.json").read_text())
    del saved["training_data"]
    (old / "config.json").write_text(json.dumps(saved))
    assert Transcriber(old).training_data == expected  # its training section names the corpus: found
    saved["train"]["data"]["root"] = str(tmp_path / "gone")
    saved["paths"].pop("data.root")
    (old / "config.json").write_text(json.dumps(saved))
    lost = Transcriber(old)
    assert lost.training_data is None and "training data of this checkpoint is unknown" in lost.knowledge
    assert lost.tokens_per_second == 5.0  # the default rate: 128 tokens for a 16 s segment
    code, out, err = run_cli("transcribe", corpus_wav(checkpoint), "--checkpoint", old, "--beams", 1, "--format",
                             "json", "--quiet")
    assert code == 0, err
    assert json.loads(out)["training_data"] == {"known": False, "note": lost.knowledge}
    assert f"[avsr transcribe] note: {lost.knowledge}" in err


def corpus_wav(checkpoint: Path) -> Path:
    """A test utterance's wav of the corpus `checkpoint` was trained on."""
    saved = json.loads((checkpoint / "config.json").read_text())
    return sorted((Path(saved["train"]["data"]["root"]) / "synth" / "test").rglob("*.wav"))[0]


def test_a_corpus_not_made_by_avsr_synth_is_real_and_needs_no_note(tiny_corpus, tmp_path):
    root = tmp_path / "lrs3like"
    (root / "labels").mkdir(parents=True)
    shutil.copy(Path(tiny_corpus[0].out) / "labels" / "synth_train.csv", root / "labels" / "synth_train.csv")
    record = data_record(str(root), "synth")
    assert record["kind"] == "real" and record["sentences"] is None and record["utterances"] == 12
    assert record["tokens_per_second"] is None  # no tokenizer named
    assert knowledge_note(record) is None
    assert data_record(str(tmp_path / "nothing"), "synth") is None
    fortunes = knowledge_note({**record, "kind": "synthetic", "sentences": "fortunes"})
    assert "fortunes" in fortunes and "never heard a real voice" in fortunes and not math.isnan(record["hours"])
