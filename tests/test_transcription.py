"""`avsr transcribe` and the transcription API on the tiny trained checkpoint (its outputs are
garbage but deterministic): the same hypotheses as evaluation, task choice, long inputs cut and
joined, scores, output formats, and every bad input refused before the model loads."""

import json
import math
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
from avsr.transcription.trust import THRESHOLD, cut_loop

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
    gives for that item, task and beams, a repetition loop kept once; without --task the pair is
    decoded as avsr."""
    from avsr.evaluation.decode import decode

    data, paths = test_items
    model = transcriber.model
    for task in ("asr", "vsr", "avsr"):
        expected = decode(model, data, task, model.default_pair(task), num_beams=BEAMS, max_new_tokens=TOKENS,
                          progress=False)
        by_id = {u["id"]: cut_loop(u["hypothesis"])[0] for u in expected.utterances}  # decoding order: longest first
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
    assert alone.segments[0].confidence == pytest.approx(together[1].segments[0].confidence, abs=1e-4)
    assert all(np.isfinite(t.segments[0].score) and t.segments[0].score <= 0 for t in together)
    for s in (t.segments[0] for t in together):  # the mean token probability: at least the geometric mean
        assert 0 <= s.confidence <= 1 and ("loop" in s.flags or s.confidence >= math.exp(s.score) - 1e-4)  # 4 places
        assert ("low_confidence" in s.flags) == (s.confidence < THRESHOLD)


# ------------------------------------------------------------------ formats
def test_json_and_srt(transcriber, test_items):
    (got,) = transcriber.transcribe([long_recording(test_items[1][:2])], task="asr")
    doc = json.loads(render([got], "json", {"checkpoint": "x"}))
    (entry,) = doc["files"]
    assert doc["checkpoint"] == "x" and entry["task"] == "asr" and entry["text"] == got.text
    assert set(entry["segments"][0]) == {"start", "end", "text", "score", "confidence", "flags"}
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


# ------------------------------------------------------------------ nothing to transcribe (issue 23, item 3)
def still_frames(frames: int, seed: int = 0) -> np.ndarray:
    """A frozen picture: one random mouth crop held for `frames` frames (T, 96, 96) uint8."""
    return np.repeat(np.random.default_rng(seed).integers(0, 255, (1, 96, 96), dtype=np.uint8), frames, axis=0)


def test_silence_a_one_frame_video_and_a_still_mouth_give_an_empty_transcript_with_a_warning(
        transcriber, test_items, capsys):
    mp4 = test_items[1][0]
    speech, lips = read_audio(mp4.with_suffix(".wav")), read_video(mp4)
    cases = [  # (recording, task, flag)
        (recording(None, np.zeros(2 * SAMPLE_RATE, np.float32), source="silent.wav"), "asr", "silent"),
        (recording(None, np.full(SAMPLE_RATE, 1e-4, np.float32), source="hiss.wav"), "asr", "silent"),  # -80 dBFS
        (recording(lips[:1], None, source="one-frame.mp4"), "vsr", "too_short"),
        (recording(lips[:1], speech[:SAMPLES_PER_FRAME], source="one-frame-av.mp4"), "avsr", "too_short"),
        (recording(still_frames(50), None, source="photo.mp4"), "vsr", "still_mouth"),
        (recording(still_frames(50), np.zeros(50 * SAMPLES_PER_FRAME, np.float32), source="muted.mp4"), "avsr",
         "silent"),
    ]
    for pre, task, flag in cases:
        (got,) = transcriber.transcribe([pre], task=task)
        assert got.text == "" and [s.flags for s in got.segments] == [[flag]], (pre.source, got.segments)
        assert got.segments[0].score is None and got.segments[0].confidence is None
        assert any("left empty" in w for w in got.warnings)
        assert f"{pre.source}: 0.00-" in capsys.readouterr().err
    # Speech, a moving mouth, or either of them for avsr: decoded as before.
    for pre, task in ((recording(None, speech), "asr"), (recording(lips, None), "vsr"),
                      (recording(lips, np.zeros(len(lips) * SAMPLES_PER_FRAME, np.float32)), "avsr"),
                      (recording(still_frames(len(lips)), speech[:len(lips) * SAMPLES_PER_FRAME]), "avsr")):
        (got,) = transcriber.transcribe([pre], task=task)
        assert got.segments[0].score is not None and not {"silent", "too_short", "still_mouth"} & set(
            got.segments[0].flags), task


def test_a_silent_file_through_the_cli_prints_an_empty_line_and_says_why(checkpoint, tmp_path):
    wav = tmp_path / "silence.wav"
    sf.write(wav, np.zeros(3 * SAMPLE_RATE, np.float32), SAMPLE_RATE)
    code, out, err = run_cli("transcribe", wav, "--checkpoint", checkpoint, "--beams", BEAMS, "--quiet")
    assert code == 0 and out == "\n", err
    assert f"{wav}: 0.00-3.00 s: silent (no sound above -50 dBFS): left empty" in err


def test_audio_and_picture_of_different_lengths_are_warned_about_and_cut_to_what_both_cover(
        transcriber, test_items, tmp_path, capsys):
    """The audio 10 s longer than the picture: preprocessing says so and extends the picture
    (last frame held); avsr transcribes only the 2 s both cover and says what it left out; asr
    reads the whole audio."""
    from avsr.demo.examples import mux
    from avsr.preprocess import preprocess_file

    mp4 = test_items[1][0]
    lips, speech = read_video(mp4), read_audio(mp4.with_suffix(".wav"))
    long_wav = tmp_path / "long.wav"
    sf.write(long_wav, np.concatenate([speech, np.tile(speech, 5)])[:len(lips) * SAMPLES_PER_FRAME + 10 * SAMPLE_RATE],
             SAMPLE_RATE)
    clip = tmp_path / "talk.mp4"
    mux(mp4, long_wav, clip)
    pre = preprocess_file(clip)
    picture = len(lips) / 25
    assert pre.own_seconds("video") == pytest.approx(picture) and pre.own_seconds("audio") == pytest.approx(
        picture + 10, abs=0.05)
    assert len(pre.video) * SAMPLES_PER_FRAME == len(pre.audio)  # extended to one length
    assert any("differ by 10.0" in w and "the audio runs on alone (the last frame held)" in w for w in pre.warnings)
    (avsr,) = transcriber.transcribe([pre], task="avsr")
    assert avsr.segments[-1].end == pytest.approx(picture)
    assert any(f"transcribed the first {picture:.2f} s" in w and "the last 10.0" in w and "--task asr" in w
               for w in avsr.warnings)
    assert "--task asr reads it" in capsys.readouterr().err
    (asr,) = transcriber.transcribe([pre], task="asr")
    assert asr.segments[-1].end == pytest.approx(picture + 10, abs=0.05)
    assert not any("not transcribed" in w for w in asr.warnings)
    # Within the tolerance (a frame or two, as containers differ): no warning, nothing left out.
    (close,) = transcriber.transcribe([recording(lips, speech[:-SAMPLES_PER_FRAME])], task="avsr")
    assert not any("differ" in w or "not transcribed" in w for w in close.warnings)
    assert close.segments[-1].end == pytest.approx(picture, abs=0.05)


# ------------------------------------------------------------------ what the output can be trusted for (item 6)
def test_loops_are_cut_once_and_flagged():
    from avsr.transcription.transcriber import Piece, judged

    assert cut_loop("set white at b one set white at b one set white at b one set white") == \
        ("set white at b one", "set white at b one", 3)
    assert cut_loop("bin blue zero zero zero zero zero please") == ("bin blue zero please", "zero", 5)
    for natural in ("no no no", "bin blue at f two now", "very very good", "i know that i know that"):
        assert cut_loop(natural) == (natural, None, 1)
    piece = Piece("0#0", 50, 0.0, 2.0, np.zeros(1), None)
    hypothesis = "set white at b one " * 6
    segment, said = judged(piece, None, {"hypothesis": hypothesis.strip(), "score": -0.07,
                                         "token_logp": [-0.05] * 40}, limit=40)
    assert segment.text == "set white at b one" and {"loop", "token_limit", "low_confidence"} <= set(segment.flags)
    assert segment.confidence == 0.0 and any('repeated "set white at b one" 6 times' in w for w in said)


def test_the_confidence_is_the_mean_token_probability_and_flags_what_is_under_the_threshold():
    from avsr.transcription.transcriber import Piece, judged

    piece = Piece("0#0", 50, 4.0, 6.0, np.zeros(1), None)
    probabilities = {"sure": [0.99, 0.97, 0.95, 0.99, 0.9, 0.98, 0.99], "unsure": [0.9, 0.4, 0.95, 0.7, 0.9, 0.8, 0.99]}
    for name, ps in probabilities.items():
        logp = [math.log(x) for x in ps]
        segment, said = judged(piece, None, {"hypothesis": "bin blue at f two now", "score": sum(logp) / len(logp),
                                             "token_logp": logp}, limit=25)
        assert segment.confidence == pytest.approx(sum(ps) / len(ps), abs=1e-4)
        assert segment.text == "bin blue at f two now"
        if name == "sure":
            assert segment.flags == [] and said == []
        else:
            assert segment.flags == ["low_confidence"] and segment.confidence < THRESHOLD
            assert said == [f'4.00-6.00 s: low confidence {segment.confidence:.2f} (under {THRESHOLD:g}): '
                            '"bin blue at f two now" may be made up']


def test_the_token_limit_follows_the_duration(transcriber, test_items, monkeypatch):
    """Each segment's limit is FLOOR + MARGIN x the training's fastest tokens per second x its
    seconds (at most --max-new-tokens), passed to the decoding per segment."""
    import avsr.evaluation.decode as decoding
    from avsr.transcription.trust import FLOOR_TOKENS, MARGIN, token_limit

    rate = transcriber.training_data["tokens_per_second"]["max"]
    assert transcriber.tokens_per_second == rate
    seen = {}
    real = decoding.decode

    def spy(model, data, task, pair, **options):
        seen.update({row.id: (row.end - row.start, options["caps"][row.id]) for row in data.rows})
        return real(model, data, task, pair, **options)

    monkeypatch.setattr(decoding, "decode", spy)
    audio = read_audio(test_items[1][0].with_suffix(".wav"))
    short, long = recording(None, audio[:SAMPLE_RATE // 2]), recording(None, np.tile(audio, 3))
    unlimited = Transcriber(transcriber.checkpoint, num_beams=BEAMS)
    unlimited.transcribe([short, long], task="asr")
    limits = sorted(seen.values())
    assert [cap for _, cap in limits] == [FLOOR_TOKENS + math.ceil(MARGIN * rate * s) for s, _ in limits]
    assert limits[0][1] < limits[-1][1]
    assert token_limit(10.0, rate, most=TOKENS) == TOKENS


def test_segments_follow_the_longest_training_utterance(transcriber, tiny_corpus):
    """A model decodes segments of at most half again its longest training utterance (an LLM
    trained on short sentences stops early on long ones); a record saved before the seconds were
    recorded gets them from the corpus."""
    from avsr.data.manifests import FRAME_RATE, read_manifest
    from avsr.data.segments import MAX_SECONDS
    from avsr.training.data_record import checkpoint_training_data
    from avsr.transcription.trust import longest_segment

    cfg, _ = tiny_corpus
    rows = read_manifest(Path(cfg.out) / "labels" / "synth_train.csv")
    longest = max(r.n_frames for r in rows) / FRAME_RATE
    assert transcriber.training_data["seconds"]["max"] == round(longest, 2)
    assert transcriber.max_seconds == round(1.5 * round(longest, 2), 2) < MAX_SECONDS
    assert transcriber.about()["max_seconds"] == transcriber.max_seconds
    assert longest_segment(None, MAX_SECONDS) == longest_segment({"seconds": None}, MAX_SECONDS) == MAX_SECONDS
    assert longest_segment({"seconds": {"max": 30.0}}, MAX_SECONDS) == MAX_SECONDS
    opened = transcriber.opened
    saved = opened.saved["training_data"]
    try:
        opened.saved["training_data"] = {k: v for k, v in saved.items() if k != "seconds"}
        assert checkpoint_training_data(opened)["seconds"] == saved["seconds"]
    finally:
        opened.saved["training_data"] = saved
    assert Transcriber(transcriber.checkpoint, max_seconds=2.0).max_seconds == 2.0
