"""The synthetic corpus: determinism, layout, splits, resume, read-back."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from avsr.data.dataset import load_item, read_labels, validate_corpus
from avsr.synth.corpus import SPLITS, SynthError, synthesize_corpus
from avsr.synth.analysis import lip_audio_correlation
from conftest import tiny_config


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file in a corpus tree except corpus.json (which records the run)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "corpus.json"}


def test_same_seed_same_bytes_whatever_the_workers(tiny_corpus, tmp_path):
    cfg, _ = tiny_corpus
    again = tiny_config(tmp_path / "again", workers=1)
    synthesize_corpus(again, progress=False)
    first, second = digest(Path(cfg.out)), digest(tmp_path / "again")
    assert len(first) > 60 and first == second


def test_another_seed_gives_another_corpus(tiny_corpus, tmp_path):
    cfg, _ = tiny_corpus
    other = tiny_config(tmp_path / "other", seed=8, utterances={"train": 2, "val": 1, "test": 1})
    synthesize_corpus(other, progress=False)
    a = read_labels(Path(cfg.out) / "labels" / "synth_train.csv")
    b = read_labels(tmp_path / "other" / "labels" / "synth_train.csv")
    assert [r.text for r in a[:2]] != [r.text for r in b[:2]]


def test_layout_and_labels_follow_the_lrs3_convention(tiny_corpus):
    cfg, summary = tiny_corpus
    root = Path(cfg.out)
    for split in SPLITS:
        rows = read_labels(root / "labels" / f"synth_{split}.csv")
        assert len(rows) == cfg.utterances[split] == summary["splits"][split]["utterances"]
        for row in rows:
            assert row.dataset == "synth"
            parts = Path(row.rel_path).parts
            assert parts[0] == split and parts[2].endswith(".mp4") and len(parts) == 3
            assert row.audio_path(root).is_file() and row.video_path(root).with_suffix(".json").is_file()
            assert row.text == row.text.lower() and row.text.split()
    for name in ("babble", "white", "pink"):
        assert (root / "noise" / f"synth_{name}.wav").is_file()
    assert json.loads((root / "synth" / "corpus.json").read_text())["complete"] is True


def test_every_row_is_readable_and_durations_agree(tiny_corpus):
    cfg, _ = tiny_corpus
    root = Path(cfg.out)
    for split in SPLITS:
        report = validate_corpus(root, root / "labels" / f"synth_{split}.csv")
        assert report["problems"] == [] and report["ok"] == cfg.utterances[split]
        for row in read_labels(root / "labels" / f"synth_{split}.csv"):
            item = load_item(root, row)
            assert item.video.shape[1:] == (96, 96) and item.video.shape[0] == row.n_frames
            assert abs(item.video.shape[0] / 25 - item.audio.size / 16000) <= 0.04


def test_speakers_are_disjoint_between_splits(tiny_corpus):
    cfg, _ = tiny_corpus
    root = Path(cfg.out)
    by_split = {split: {Path(r.rel_path).parts[1] for r in read_labels(root / "labels" / f"synth_{split}.csv")}
                for split in SPLITS}
    assert {k: len(v) for k, v in by_split.items()} == cfg.speakers
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"])
    speakers = json.loads((root / "synth" / "corpus.json").read_text())["speakers"]
    voices = [(s["voice"]["name"], s["voice"]["variant"]) for s in speakers]
    assert len(voices) == len(set(voices))  # babble talkers are held out too


def test_lip_opening_follows_audio_energy(tiny_corpus):
    cfg, _ = tiny_corpus
    root = Path(cfg.out)
    rows = [r for s in SPLITS for r in read_labels(root / "labels" / f"synth_{s}.csv")]
    r = [lip_audio_correlation(load_item(root, row).video, load_item(root, row).audio) for row in rows]
    print(f"lip opening vs audio energy: mean r = {np.mean(r):.3f} over {len(r)} utterances, min {min(r):.3f}")
    assert np.mean(r) > 0.3 and min(r) > 0.0


def test_resume_restores_a_missing_utterance_and_refuses_other_settings(tmp_path):
    cfg = tiny_config(tmp_path, utterances={"train": 3, "val": 1, "test": 1})
    synthesize_corpus(cfg, progress=False)
    before = digest(tmp_path)
    victim = tmp_path / "synth" / "train"
    stem = sorted(victim.rglob("*.json"))[0].with_suffix("")
    for ext in (".json", ".mp4"):
        stem.with_suffix(ext).unlink()
    (stem.parent / ".junk.tmp123.wav").write_bytes(b"half")  # an interrupted write
    synthesize_corpus(cfg, progress=False)
    assert digest(tmp_path) == before
    with pytest.raises(SynthError, match="seed"):
        synthesize_corpus(tiny_config(tmp_path, seed=99, utterances=cfg.utterances), progress=False)
    assert digest(tmp_path) == before


def test_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "notes.txt").write_text("mine")
    with pytest.raises(SynthError, match="not made by avsr synth"):
        synthesize_corpus(tiny_config(tmp_path), progress=False)
