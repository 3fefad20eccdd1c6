"""What avsr may replace, through the CLI (avsr.io's rule): an earlier output of the same command,
only with the explicit flag (eval's own default folder without it); tests/test_bad_input.py has
every refusal."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from avsr.data.media import read_audio, read_video, write_audio, write_video


def again(*argv) -> tuple[int, int, int, str]:
    """Exit codes of: the command, the same again, the same with --overwrite; the second's message."""
    first, _, err = run_cli(*argv)
    assert first == 0, err
    second, _, message = run_cli(*argv)
    third, _, err = run_cli(*argv, "--overwrite")
    assert third == 0, err
    return first, second, third, message


def test_transcribe_replaces_its_own_file_with_overwrite_only(tiny_run, tiny_corpus, tmp_path):
    wav = sorted((Path(tiny_corpus[0].out) / "synth" / "test").glob("*/*.wav"))[0]
    out = tmp_path / "transcripts" / "t.txt"
    _, second, _, message = again("transcribe", wav, "--checkpoint", tiny_run / "checkpoints" / "last", "--beams", 1,
                                  "--max-new-tokens", 4, "--out", out, "--quiet")
    assert second == 2 and message == f"avsr transcribe: error: {out} exists (an earlier output of avsr transcribe); " \
                                      "pass --overwrite to replace it\n"


def test_contact_sheet_replaces_its_own_sheet_with_overwrite_only(tmp_path):
    out = tmp_path / "sheets" / "s.png"
    _, second, _, message = again("contact-sheet", "--out", out)
    assert second == 2 and "pass --overwrite" in message and out.read_bytes()[:4] == b"\x89PNG"


def test_preprocess_replaces_its_own_pair_with_overwrite_only(tmp_path):
    clip = tmp_path / "rec" / "talk.mp4"  # already a 96x96 mouth crop: no face detection needed
    clip.parent.mkdir()
    frames = np.random.default_rng(0).integers(0, 255, (10, 96, 96), dtype=np.uint8)
    write_video(clip, frames)
    write_audio(clip.with_suffix(".wav"), np.zeros(6400, np.float32))
    _, second, _, message = again("preprocess", clip, "--out", tmp_path / "crops", "--quiet")
    assert second == 2 and f"{tmp_path / 'crops' / 'talk.mp4'} exists" in message
    assert read_video(tmp_path / "crops" / "talk.mp4").shape == (10, 96, 96)
    assert read_audio(tmp_path / "crops" / "talk.wav").size == 6400


def test_eval_rerun_replaces_its_default_report_but_an_explicit_out_needs_overwrite(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = ("eval", run / "checkpoints" / "last", "--limit", 1, "--snrs", "clean", "--beams", 1, "--quiet")
    for _ in range(2):  # the default folder <run>/eval/last is this command's own
        code, out, err = run_cli(*argv)
        assert code == 0 and f"report: {run / 'eval' / 'last'}/report.md" in out, err
    _, second, _, message = again(*argv, "--out", tmp_path / "evals" / "mine")
    assert second == 2 and "pass --overwrite" in message


@pytest.mark.parametrize("flag", ["", "--overwrite"])
def test_eval_never_replaces_the_quickstarts_report(tiny_run, tmp_path, flag):
    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / ".avsr-run").write_text('{"written_by": "avsr quickstart", "entries": ["report.md", "results.json"]}')
    (quick / "report.md").write_text("the full quickstart report")
    code, _, err = run_cli("eval", tiny_run / "checkpoints" / "last", "--limit", 1, "--snrs", "clean", "--out", quick,
                           "--quiet", *([flag] if flag else []))
    assert code == 2 and "avsr quickstart wrote it" in err
    assert (quick / "report.md").read_text() == "the full quickstart report"
