"""The synthetic corpus: determinism, layout, splits, resume, read-back."""

import hashlib
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avsr.data.dataset import load_item, read_manifest, validate_corpus
from avsr.synth.corpus import SPLITS, SynthError, synthesize_corpus
from avsr.synth.analysis import lip_audio_correlation
from avsr.synth.espeak import EspeakError, Voice, engine
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


def test_every_synthesis_starts_from_the_same_engine_state():
    """espeak-ng carries state from one synthesis to the next; the server forks per request, so
    what was said before does not change the next utterance."""
    eng = engine()
    first = eng.synthesize("bin blue at f two now", Voice("en-us")).audio
    eng.synthesize("please set the green one again soon", Voice("en-gb-x-rp", "m3", rate=200))
    assert np.array_equal(eng.synthesize("bin blue at f two now", Voice("en-us")).audio, first)


def test_a_dead_server_is_reported_and_replaced():
    eng = engine()
    eng._server.kill()
    with pytest.raises(EspeakError, match="espeak-ng server exited"):
        eng.synthesize("bin blue", Voice("en-us"))
    again = engine()
    assert again is not eng and again.synthesize("bin blue", Voice("en-us")).audio.size > 0


def test_a_server_whose_client_is_gone_ends_without_a_word():
    """A client interrupted between starting its server and reading the greeting (Ctrl-C at that
    moment; seen once in CI) leaves a server whose replies have no reader: it ends, status 0,
    nothing on stderr (the interrupted command reports, once)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    root = str(Path(__file__).resolve().parents[1] / "src")
    server = subprocess.Popen([sys.executable, "-m", "avsr.synth.espeak"], stdin=subprocess.PIPE, stdout=write_end,
                              stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": root})
    os.close(write_end)
    try:
        _, err = server.communicate(timeout=60)
    finally:  # nothing left running, whatever happened
        server.kill()
        server.wait()
    assert (server.returncode, err) == (0, b"")


def _server_pid(_) -> int:
    return engine()._server.pid


def test_a_forked_worker_starts_its_own_server():
    """A server answers one client over its pipes: a worker forked from a process that already
    has one must not share it."""
    mine = _server_pid(None)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        theirs = pool.map(_server_pid, [0])[0]
    assert theirs != mine and _server_pid(None) == mine


def test_another_seed_gives_another_corpus(tiny_corpus, tmp_path):
    cfg, _ = tiny_corpus
    other = tiny_config(tmp_path / "other", seed=8, utterances={"train": 2, "val": 1, "test": 1})
    synthesize_corpus(other, progress=False)
    a = read_manifest(Path(cfg.out) / "labels" / "synth_train.csv")
    b = read_manifest(tmp_path / "other" / "labels" / "synth_train.csv")
    assert [r.text for r in a[:2]] != [r.text for r in b[:2]]


def test_layout_and_labels_follow_the_lrs3_convention(tiny_corpus):
    cfg, summary = tiny_corpus
    root = Path(cfg.out)
    for split in SPLITS:
        rows = read_manifest(root / "labels" / f"synth_{split}.csv")
        assert len(rows) == cfg.utterances[split] == summary["splits"][split]["utterances"]
        for row in rows:
            assert row.video == root / "synth" / row.id  # the dataset column: the media folder
            parts = Path(row.id).parts
            assert parts[0] == split and parts[2].endswith(".mp4") and len(parts) == 3
            assert row.audio.is_file() and row.video.with_suffix(".json").is_file()
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
        for row in read_manifest(root / "labels" / f"synth_{split}.csv"):
            item = load_item(row)
            assert item.video.shape[1:] == (96, 96) and item.video.shape[0] == row.n_frames
            assert abs(item.video.shape[0] / 25 - item.audio.size / 16000) <= 0.04


def test_speakers_are_disjoint_between_splits(tiny_corpus):
    cfg, _ = tiny_corpus
    root = Path(cfg.out)
    by_split = {split: {Path(r.id).parts[1] for r in read_manifest(root / "labels" / f"synth_{split}.csv")}
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
    rows = [r for s in SPLITS for r in read_manifest(root / "labels" / f"synth_{s}.csv")]
    r = [lip_audio_correlation(load_item(row).video, load_item(row).audio) for row in rows]
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


def test_overwrite_replaces_our_corpus_and_its_noise_and_nothing_else(tmp_path):
    """--overwrite deletes the corpus folder, its labels and its noise (a stale babble of other
    settings must not survive), never a user's file beside them; `..` is resolved first."""
    from avsr.data.media import read_audio

    small = dict(utterances={"train": 2, "val": 1, "test": 1}, speakers={"train": 1, "val": 1, "test": 1},
                 noise_speakers=1, workers=1)
    root = tmp_path / "data"
    synthesize_corpus(tiny_config(root, noise_seconds=1.0, **small), progress=False)
    mine = {root / "notes.txt": "mine", root / "labels" / "lrs3_train.csv": "lrs3,a/1.mp4,9,hello\n",
            root / "noise" / "lrs3_babble.wav": "not ours", root / "lrs3" / "a" / "1.txt": "mine"}
    for path, text in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "synth" / "train" / ".00000.json.99.tmp").write_text("{")  # an interrupted write of ours
    via_dots = tmp_path / "elsewhere" / ".." / "data"
    synthesize_corpus(tiny_config(via_dots, seed=3, noise_seconds=2.0, **small), overwrite=True, progress=False)
    assert {path: path.read_text() for path in mine} == mine
    manifest = json.loads((root / "synth" / "corpus.json").read_text())
    assert manifest["complete"] and manifest["identity"]["seed"] == 3 and manifest["written_by"] == "avsr synth"
    for kind in ("babble", "white", "pink"):
        assert read_audio(root / "noise" / f"synth_{kind}.wav").size == 2 * 16000
    assert not list((root / "synth").rglob(".*"))
    assert validate_corpus(root, root / "labels" / "synth_train.csv")["ok"] == 2


@pytest.mark.parametrize("settings,needle", [
    (dict(noise_seconds=float("nan")), "--noise-seconds nan"),
    (dict(seed=-1), "--seed -1"),
    (dict(workers=0), "--workers 0"),
    (dict(utterances={"train": 0, "val": 0, "test": 0}), "no utterances"),
    (dict(speakers={"train": 4, "val": 0, "test": 3}), "--val-speakers 0"),
    (dict(out=""), "--out is empty"),
    (dict(corpus="a/b"), "--corpus 'a/b'"),
])
def test_settings_are_checked_when_made(tmp_path, settings, needle):
    with pytest.raises(SynthError, match=re.escape(needle)):
        tiny_config(settings.pop("out", tmp_path), **settings)
    assert list(tmp_path.iterdir()) == []


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            state, _, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):  # not a process, or it ended meanwhile
            continue
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_during_synthesis_is_one_line_exit_130_and_no_process_left(tmp_path, workers):
    """Ctrl-C reaches the whole process group: the command, its pool workers, their espeak-ng
    servers and the servers' forked children. avsr says it once and exits 130; none of the
    others prints anything (no KeyboardInterrupt traceback) and none is left running."""
    args = ["synth", "--out", str(tmp_path / "c"), "--train", "300", "--val", "2", "--test", "2", "--train-speakers",
            "2", "--val-speakers", "1", "--test-speakers", "1", "--noise-speakers", "1", "--noise-seconds", "1",
            "--workers", str(workers), "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "avsr", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "c" / "synth" / "train").glob("*/*.json")):  # synthesis has begun
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        deadline = time.monotonic() + 10
        while process_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process_group(proc.pid) == []
    finally:
        if process_group(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 130 and err == "avsr synth: interrupted\n" and out == "", err
