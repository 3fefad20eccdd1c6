"""`avsr transcribe` and the transcription API on the tiny trained checkpoint (its outputs are
garbage but deterministic): the same hypotheses as evaluation, task choice, long inputs cut and
joined, scores, output formats, and every bad input refused before the model loads."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli

from avsr.data.media import SAMPLE_RATE, SAMPLES_PER_FRAME, read_audio, read_video
from avsr.errors import AvsrError
from avsr.preprocess.result import Preprocessed
from avsr.transcription import Transcriber, choose_task, render
from avsr.transcription.transcriber import cut

BEAMS, TOKENS = 2, 10  # small, to keep the tests fast; the same for evaluation and transcription


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    return tiny_run / "checkpoints" / "last"


@pytest.fixture(scope="module")
def transcriber(checkpoint) -> Transcriber:
    return Transcriber(checkpoint, num_beams=BEAMS, max_new_tokens=TOKENS)


@pytest.fixture(scope="module")
def test_items(tiny_corpus):
    """The first three test utterances of the tiny corpus: (dataset of them, [mp4 paths])."""
    from avsr.evaluation.decode import labelled_split

    root = Path(tiny_corpus[0].out)
    data = labelled_split(root, root / "labels" / "synth_test.csv", limit=3)
    return data, [row.video for row in data.rows]


def recording(video=None, audio=None, total_frames=None, source="clip.mp4") -> Preprocessed:
    """A Preprocessed built by hand (no preprocessing run)."""
    n = len(video) if video is not None else 0
    duration = n / 25 if video is not None else (len(audio) / SAMPLE_RATE if audio is not None else 0.0)
    return Preprocessed(source=Path(source), video=video, audio=audio, duration=duration,
                        total_frames=n if total_frames is None else total_frames, face_frames=n)


def corpus_recording(mp4: Path) -> Preprocessed:
    return recording(read_video(mp4), read_audio(mp4.with_suffix(".wav")), source=str(mp4))


# ------------------------------------------------------------------ the acceptance criterion
def test_same_hypotheses_as_evaluation(transcriber, test_items):
    """Each corpus item's mp4 (+ its wav beside it) transcribes to what `avsr eval`'s decoding
    gives for that item, task and beams; without --task the pair is decoded as avsr."""
    from avsr.evaluation.decode import decode

    data, paths = test_items
    model = transcriber.model
    for task in ("asr", "vsr", "avsr"):
        expected = decode(model, data, task, model.default_pair(task), num_beams=BEAMS, max_new_tokens=TOKENS,
                          progress=False)
        by_id = {u["id"]: u["hypothesis"] for u in expected.utterances}  # decoding order: longest first
        got = transcriber.transcribe(paths, task=task)
        assert [t.text for t in got] == [by_id[row.id] for row in data.rows], task
        assert all(t.task == task and len(t.segments) == 1 for t in got)
    assert {t.task for t in transcriber.transcribe(paths)} == {"avsr"}


# ------------------------------------------------------------------ task choice
def test_task_choice_rules():
    video, audio = np.zeros((50, 96, 96), np.uint8), np.zeros(32000, np.float32)
    every = ("asr", "vsr", "avsr")
    assert choose_task(recording(video, audio), every) == ("avsr", [])
    assert choose_task(recording(video, None), every) == ("vsr", [])
    assert choose_task(recording(None, audio), every) == ("asr", [])  # an audio file: nothing to warn about
    task, notes = choose_task(recording(None, audio, total_frames=50), every)  # a video without a face
    assert task == "asr" and "no face found" in notes[0]
    task, notes = choose_task(recording(video, audio), ("asr", "vsr"))  # the checkpoint picks what it has
    assert task == "asr" and "video not used" in notes[0]
    assert choose_task(recording(video, audio), every, task="vsr") == ("vsr", [])
    with pytest.raises(AvsrError, match="neither audio nor a face"):
        choose_task(recording(None, None, total_frames=50), every)
    with pytest.raises(AvsrError, match="task vsr reads video, but the recording has audio only"):
        choose_task(recording(None, audio), every, task="vsr")
    with pytest.raises(AvsrError, match="trained for asr only"):
        choose_task(recording(video, audio), ("asr",), task="avsr")
    with pytest.raises(AvsrError, match="suits vsr; the checkpoint was trained for asr only"):
        choose_task(recording(video, None), ("asr",))


def test_no_face_falls_back_to_asr_with_a_printed_warning(transcriber, test_items, capsys):
    audio = read_audio(test_items[1][0].with_suffix(".wav"))
    (got,) = transcriber.transcribe([recording(None, audio, total_frames=40)])
    assert got.task == "asr" and any("no face found" in w for w in got.warnings)
    assert "no face found" in capsys.readouterr().err


# ------------------------------------------------------------------ long inputs
def long_recording(paths: list[Path], pause: float = 0.4) -> Preprocessed:
    """The corpus clips one after another with `pause` seconds of silence (and black frames) between."""
    gap = round(pause * 25)
    videos, audios = [], []
    for mp4 in paths:
        videos += [read_video(mp4), np.zeros((gap, 96, 96), np.uint8)]
        audio = read_audio(mp4.with_suffix(".wav"))
        audios += [np.pad(audio, (0, len(videos[-2]) * SAMPLES_PER_FRAME - len(audio))),
                   np.zeros(gap * SAMPLES_PER_FRAME, np.float32)]
    return recording(np.concatenate(videos), np.concatenate(audios), source="long.mp4")


def test_cut_at_pauses_within_the_limit(test_items):
    long = long_recording(test_items[1])
    for pre, task in ((long, "avsr"), (recording(None, long.audio), "asr"), (recording(long.video, None), "vsr")):
        pieces = cut(pre, task, "x", max_seconds=2.0)
        assert len(pieces) > 1
        assert pieces[0].start == 0 and pieces[-1].end == pytest.approx(pre.duration)
        assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))  # no gap, no overlap
        assert all(0 < p.end - p.start <= 2.0 for p in pieces)
        if task != "asr":  # frame-aligned, both streams in step
            assert all(len(p.video if p.video is not None else []) in (0, p.n_frames) for p in pieces)
            assert all(len(p.audio) == p.n_frames * SAMPLES_PER_FRAME for p in pieces[:-1])
    sizes = [p.n_frames for p in cut(recording(long.video, None), "vsr", "x", max_seconds=2.0)]
    assert max(sizes) - min(sizes) <= 1  # video alone: equal parts


def test_long_input_is_decoded_in_segments_and_joined(checkpoint, test_items):
    short = Transcriber(checkpoint, num_beams=BEAMS, max_new_tokens=TOKENS, max_seconds=2.0)
    (got,) = short.transcribe([long_recording(test_items[1])], task="asr")
    starts = [s.start for s in got.segments]
    assert len(starts) > 1 and starts == sorted(set(starts))
    assert got.text == " ".join(s.text for s in got.segments if s.text)
    assert got.timings["decode_s"] > 0 and got.real_time_factors["decode"] > 0


# ------------------------------------------------------------------ scores
@pytest.mark.parametrize("beams", [1, BEAMS])
def test_scores_do_not_depend_on_the_batch(checkpoint, test_items, beams):
    one = Transcriber(checkpoint, num_beams=beams, max_new_tokens=TOKENS)
    items = [corpus_recording(p) for p in test_items[1]]
    together = one.transcribe(items, task="avsr")
    alone = one.transcribe(items[1:2], task="avsr")[0]
    assert alone.text == together[1].text
    assert alone.segments[0].score == pytest.approx(together[1].segments[0].score, abs=1e-4)
    assert all(np.isfinite(t.segments[0].score) and t.segments[0].score <= 0 for t in together)


# ------------------------------------------------------------------ formats
def test_json_and_srt(transcriber, test_items):
    (got,) = transcriber.transcribe([long_recording(test_items[1][:2])], task="asr")
    doc = json.loads(render([got], "json", {"checkpoint": "x"}))
    (entry,) = doc["files"]
    assert doc["checkpoint"] == "x" and entry["task"] == "asr" and entry["text"] == got.text
    assert set(entry["segments"][0]) == {"start", "end", "text", "score"}
    assert set(entry["timings"]) == {"preprocess_s", "decode_s"} and entry["duration_s"] == pytest.approx(got.duration_s)
    assert set(entry["real_time_factors"]) == {"preprocess", "decode"}
    got.segments = [type(s)(s.start + 3725.5, s.end + 3725.5, s.text or "word", s.score) for s in got.segments]
    cues = render([got], "srt").split("\n\n")
    assert cues[-1] == "" and len(cues) - 1 == len(got.segments)
    stamp = r"\d\d:\d\d:\d\d,\d\d\d"
    for n, cue in enumerate(cues[:-1], 1):
        number, times, text = cue.split("\n")
        assert number == str(n) and re.fullmatch(f"{stamp} --> {stamp}", times) and text
    assert cues[0].split("\n")[1].startswith("01:02:05,500 --> ")


# ------------------------------------------------------------------ the CLI and the API
def test_cli_formats_and_api(checkpoint, test_items, tmp_path):
    import avsr

    mp4 = test_items[1][0]
    code, out, err = run_cli("transcribe", mp4, "--checkpoint", checkpoint, "--beams", BEAMS,
                             "--max-new-tokens", TOKENS, "--quiet")
    assert code == 0, err
    api = avsr.transcribe(mp4, checkpoint=checkpoint, num_beams=BEAMS, max_new_tokens=TOKENS)
    assert out == api.text + "\n" and api.task == "avsr"
    assert [t.text for t in avsr.transcribe([mp4], checkpoint=checkpoint, num_beams=BEAMS,
                                            max_new_tokens=TOKENS, task="asr")] == \
           [Transcriber(checkpoint, num_beams=BEAMS, max_new_tokens=TOKENS).transcribe([mp4], task="asr")[0].text]
    target = tmp_path / "out" / "t.json"
    code, out, err = run_cli("transcribe", mp4, mp4.with_suffix(".wav"), "--checkpoint", checkpoint, "--beams",
                             BEAMS, "--max-new-tokens", TOKENS, "--format", "json", "--out", target, "--quiet")
    assert code == 0 and out == "", err
    files = json.loads(target.read_text())["files"]
    assert [f["task"] for f in files] == ["avsr", "asr"] and files[0]["rates"] == "a4v2"
    code, out, err = run_cli("transcribe", mp4, mp4.with_suffix(".wav"), "--checkpoint", checkpoint, "--beams",
                             BEAMS, "--max-new-tokens", TOKENS, "--quiet")  # text of several files: each named
    assert code == 0 and out == "".join(f"{f['source']}\t{f['text']}\n" for f in files), err


def bad_inputs(tmp: Path, good: Path, corpus_root: Path, backbones: dict, run: Path) -> list[tuple[list, str]]:
    """(arguments, what the message says) for every input `avsr transcribe` refuses before the
    model loads."""
    garbage = tmp / "garbage.mp4"
    garbage.write_bytes(b"not a media file at all" * 40)
    empty_wav = tmp / "empty.wav"
    sf.write(empty_wav, np.zeros(0, np.float32), SAMPLE_RATE)
    text = tmp / "notes.txt"
    text.write_text("hello\n")
    (tmp / "empty").mkdir()
    ckpt = ["--checkpoint", run / "checkpoints" / "last"]
    return [([tmp / "missing.mp4", *ckpt], "missing.mp4"),
            ([garbage, *ckpt], "garbage.mp4"),
            ([text, *ckpt], "notes.txt"),
            ([empty_wav, *ckpt], "empty.wav"),
            ([tmp, *ckpt], "is a folder"),
            ([good, good, *ckpt, "--format", "srt"], "one recording"),
            ([good, "--checkpoint", tmp / "empty"], "it is empty"),
            ([good, "--checkpoint", run], "run folder"),
            ([good, "--checkpoint", corpus_root], "corpus root"),
            ([good, "--checkpoint", backbones["llm"]], "not a trained avsr checkpoint"),
            ([good, "--checkpoint", good], "is a file"),
            ([good, "--checkpoint", tmp / "nowhere"], "no such folder")]


def test_cli_refuses_bad_input_before_loading(tiny_run, tiny_corpus, tiny_backbones, test_items, tmp_path,
                                              monkeypatch):
    import avsr.models.loading as loading

    good = test_items[1][0]
    monkeypatch.setattr(loading, "load_checkpoint", lambda *a, **k: pytest.fail("the model was loaded"))
    for args, message in bad_inputs(tmp_path, good, Path(tiny_corpus[0].out), tiny_backbones, tiny_run):
        code, out, err = run_cli("transcribe", *args, "--quiet")
        assert code == 2 and out == "", (args, err)
        assert err.count("\n") == 1 and message in err and err.startswith("avsr transcribe: error: "), (args, err)
    monkeypatch.undo()
    code, out, err = run_cli("transcribe", good, "--checkpoint", tiny_run / "checkpoints" / "last", "--task", "avsr",
                             "--rates", "3,3", "--quiet")
    assert code == 2 and "not trained at rates" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_scores_leave_the_texts_alone(beams):
    """return_scores adds a score per hypothesis: same texts as without, same score alone or batched."""
    import torch
    from conftest import make_batch, take, tiny_model

    model, batch = tiny_model(), make_batch([30, 18, 25])
    plain = model.generate(batch, "avsr", num_beams=beams, max_new_tokens=8)
    texts, aux = model.generate(batch, "avsr", num_beams=beams, max_new_tokens=8, return_scores=True)
    alone = torch.cat([model.generate(take(batch, i), "avsr", num_beams=beams, max_new_tokens=8,
                                      return_scores=True)[1]["scores"] for i in range(3)])
    assert texts == plain and aux["scores"].shape == (3,)
    torch.testing.assert_close(aux["scores"], alone, rtol=0, atol=1e-4)


def test_budget_chooses_the_rates(transcriber, test_items):
    mp4 = test_items[1][0]
    assert transcriber.transcribe([mp4], task="asr", budget_tokens=100)[0].rates == "a4"
    with pytest.raises(AvsrError, match="no trained asr rate pair fits <= 1 tokens/s"):
        transcriber.transcribe([mp4], task="asr", budget_tokens=1)
