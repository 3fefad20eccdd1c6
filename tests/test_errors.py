"""Bad input gets a one-line message naming the culprit, a non-zero exit, and no half-written output."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avsr.data.dataset import DataError, load_item, read_manifest
from avsr.data.media import MediaError, write_audio, write_video


def avsr(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "avsr", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=300)


def small(out, *extra):
    return ("synth", "--out", str(out), "--train", "2", "--val", "1", "--test", "1", "--train-speakers", "1",
            "--val-speakers", "1", "--test-speakers", "1", "--noise-speakers", "1", "--noise-seconds", "1", "--workers", "1", "--quiet", *extra)


def assert_clean_failure(result, *needles):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_missing_espeak_library(tmp_path):
    r = avsr(*small(tmp_path / "c"), env={"AVSR_ESPEAK_LIBRARY": "/nonexistent/libespeak-ng.so.1"})
    assert_clean_failure(r, "cannot load the espeak-ng library", "Debian package 'espeak-ng'")
    assert not (tmp_path / "c" / "synth").exists()


@pytest.mark.parametrize("voices,variants,needles", [
    ("en-zz,en-us", "m1,m2", ("--voices en-zz: not an English voice", "choose from en,en-us,")),
    ("en-us,en", "m1,m99", ("unknown espeak-ng voice", "'m99'"))])
def test_unknown_voice_or_variant(tmp_path, voices, variants, needles):
    r = avsr(*small(tmp_path / "c", "--voices", voices, "--variants", variants))
    assert_clean_failure(r, *needles)


@pytest.mark.parametrize("content,needle", [
    ("", "empty"),
    ("\n\n", "empty"),
    ("set blue now\ncaf\u00e9 au lait\n", ":2: non-ASCII character"),
    ("one line\n\nthird line\n", ":2: empty sentence"),
    ("!!! ???\n", ":1: no words"),
])
def test_bad_text_files(tmp_path, content, needle):
    text = tmp_path / "sentences.txt"
    text.write_text(content, encoding="utf-8")
    r = avsr(*small(tmp_path / "c", "--text", str(text)))
    assert_clean_failure(r, needle, "sentences.txt")


def test_missing_text_file(tmp_path):
    assert_clean_failure(avsr(*small(tmp_path / "c", "--text", str(tmp_path / "nope.txt"))), "nope.txt")


def test_unwritable_output_folder(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_clean_failure(avsr(*small(blocker / "corpus")), "cannot write to output folder", "a_file")


def test_text_file_corpus_uses_the_sentences(tmp_path):
    text = tmp_path / "s.txt"
    text.write_text("Hello, World!\nthe cat sat on the mat\n")
    r = avsr(*small(tmp_path / "c", "--text", str(text)))
    assert r.returncode == 0, r.stderr
    texts = {row.text for s in ("train", "val", "test") for row in read_manifest(tmp_path / "c" / "labels" / f"synth_{s}.csv")}
    assert texts == {"hello world", "the cat sat on the mat"}


def test_rerun_with_another_seed_is_refused(tmp_path):
    assert avsr(*small(tmp_path / "c")).returncode == 0
    assert_clean_failure(avsr(*small(tmp_path / "c", "--seed", "5")), "refusing to mix", "seed")
    assert avsr(*small(tmp_path / "c", "--seed", "5", "--overwrite")).returncode == 0


def make_item(tmp_path, n_frames=10, n_samples=6400):
    root = tmp_path / "root"
    (root / "ds" / "test" / "spk").mkdir(parents=True)
    write_video(root / "ds" / "test" / "spk" / "u1.mp4", np.full((n_frames, 96, 96), 128, np.uint8))
    write_audio(root / "ds" / "test" / "spk" / "u1.wav", np.zeros(n_samples, np.float32))
    labels = tmp_path / "labels.csv"
    labels.write_text(f"ds,test/spk/u1.mp4,{n_frames},hello world\n")
    return root, read_manifest(labels, root=root)[0]


def test_loader_names_missing_and_corrupt_files(tmp_path):
    root, row = make_item(tmp_path)
    assert load_item(row).video.shape == (10, 96, 96)
    row.audio.unlink()
    with pytest.raises(MediaError, match="audio file not found: .*u1.wav"):
        load_item(row)
    row.video.write_bytes(b"not an mp4 at all")
    with pytest.raises(MediaError, match="cannot decode video .*u1.mp4"):
        load_item(row)


def test_loader_rejects_audio_video_duration_mismatch(tmp_path):
    root, row = make_item(tmp_path, n_frames=10, n_samples=6400 + 2 * 640)  # 80 ms longer
    with pytest.raises(DataError, match="more than one frame apart"):
        load_item(row)


def test_check_command_reports_problems(tmp_path):
    root, row = make_item(tmp_path)
    row.audio.unlink()
    r = avsr("check", "--root", str(root), "--labels", str(tmp_path / "labels.csv"))
    assert r.returncode == 1 and "u1.wav" in r.stderr and "0/1 items" in r.stdout


def test_label_formats(tmp_path):
    """Our 4-column rows and Llama-AVSR's 5-column rows (with SentencePiece ids) read alike."""
    labels = tmp_path / "l.csv"
    labels.write_text("lrs3,trainval/a/00001.mp4,51,12 7 900,hello there\nsynth,train/s0/00000.mp4,40,bin blue\n")
    rows = read_manifest(labels, root=tmp_path)
    assert [(r.video.relative_to(tmp_path).parts[0], r.n_frames, r.text) for r in rows] == \
        [("lrs3", 51, "hello there"), ("synth", 40, "bin blue")]
    labels.write_text("synth,train/x.mp4,forty,bin\n")
    with pytest.raises(DataError, match="l.csv:1: frame count"):
        read_manifest(labels)


def test_atomic_writes_leave_old_content_or_new_never_half(tmp_path):
    from avsr.io import atomic_folder, write_text_atomic

    target = tmp_path / "results.json"
    write_text_atomic(target, '{"wer": 0.1}')
    with pytest.raises(TypeError):
        write_text_atomic(target, None)  # fails while writing: the old file stays whole
    assert target.read_text() == '{"wer": 0.1}'
    write_text_atomic(target, '{"wer": 0.2}')
    assert target.read_text() == '{"wer": 0.2}'

    folder = tmp_path / "checkpoint"
    with atomic_folder(folder) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            (tmp / "weights").write_text("v2, half")
            raise RuntimeError("interrupted")
    assert (folder / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "results.json"]  # no temp leftovers
