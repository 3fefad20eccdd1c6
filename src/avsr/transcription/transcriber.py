"""Transcribe recordings of any length with a trained checkpoint: preprocessing, task choice,
cutting at pauses, batched decoding through `avsr.evaluation.decode`, and per-file results.

Why it sits on `decode`: a transcription must give the same hypothesis as `avsr eval` gives
for the same clip, task and beams, so both go through the one decoding (evaluation transform,
frame-budget batches sorted by length, `AVSRModel.generate`).

Task per input (the papers' three tasks): audio and a face -> avsr; a face and no audio ->
vsr; audio and no face (audio file, no video stream, or no face found) -> asr. A checkpoint
trained for some tasks only takes the first it has of avsr, asr, vsr that the input can feed.

Cutting (the models are trained on utterances of at most 16 s): with audio, at pauses
(`avsr.data.segments`), the cuts moved to the nearest video frame when there is video so both
streams stay in step; video without audio has no pauses to find, so it is cut into equal parts
of at most the limit (equal rather than full-length parts plus a short remnant, which a
recogniser decodes badly). Each segment keeps its start and end time. A task that reads audio
and picture reads only the part both cover (a recording whose audio runs on beyond its picture,
or the reverse, is warned about).

Honest output (docs/transcribe.md): a segment with nothing to transcribe (too short, silent, a
still picture: `avsr.transcription.evidence`) is left empty, not decoded; the others are decoded
with a token limit that follows their duration, a repetition loop is kept once, and each gets a
confidence, flagged when low (`avsr.transcription.trust`); the checkpoint's training data says
what the model can write at all (`avsr.training.data_record`).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from avsr.data.media import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, finite_audio
from avsr.data.segments import MAX_SECONDS, segment_spans
from avsr.data.transforms import AVHUBERT_CROP_SIZE
from avsr.errors import AvsrError
from avsr.models.loading import CONFIG, WEIGHTS, Checkpoint, CheckpointError
from avsr.models.tasks import MODALITIES, TASKS, RatePair, scale_name
from avsr.preprocess.result import Preprocessed
from avsr.training.data_record import checkpoint_training_data, knowledge_note
from avsr.transcription.evidence import nothing_to_transcribe
from avsr.transcription.trust import (FLOOR_TOKENS, MARGIN, THRESHOLD, confidence, cut_loop, longest_segment,
                                      token_limit, token_rate)

PREFERENCE = ("avsr", "asr", "vsr")  # the automatic choice: both streams first, then audio (lower WER than lips)


@dataclass
class Segment:
    start: float  # seconds from the start of the recording
    end: float
    text: str
    score: float | None  # length-normalised log-probability of `text` (<= 0); None: not decoded (see flags)
    confidence: float | None = None  # in [0, 1] (avsr.transcription.trust); None: not decoded
    # too_short, silent, still_mouth: nothing to transcribe, not decoded (text ""); loop: a repetition
    # cut; token_limit: the hypothesis reached its token limit; low_confidence: below trust.THRESHOLD;
    # nothing_heard: decoded, and the model wrote nothing (e.g. its CTC reader heard no speech token)
    flags: list[str] = field(default_factory=list)


@dataclass
class Transcript:
    """One recording's transcription: the segments' texts joined, and how it was made."""
    source: str
    task: str
    rates: str  # the scale decoded, e.g. "a4v2" (see avsr.models.tasks.scale_name)
    text: str
    segments: list[Segment]
    duration_s: float
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # preprocess_s, decode_s

    @property
    def real_time_factors(self) -> dict[str, float]:
        """Seconds of work per second of recording, for preprocessing and for decoding."""
        return {k.removesuffix("_s"): v / self.duration_s for k, v in self.timings.items()}

    def to_dict(self) -> dict:
        return {**asdict(self), "real_time_factors": self.real_time_factors}


def describe_folder(path: Path) -> str:
    """What a folder that is not a checkpoint holds instead, so the message can point the way."""
    if not any(path.iterdir()):
        return "it is empty"
    if (path / "checkpoints").is_dir():
        return f"it looks like a run folder: its checkpoints are in {path / 'checkpoints'} (e.g. checkpoints/last)"
    if (path / "labels").is_dir():
        return "it looks like a corpus root (it holds labels/)"
    if (path / CONFIG).is_file():
        return f"it holds a {CONFIG} but no {WEIGHTS}: a backbone or model folder, not a trained avsr checkpoint"
    return f"it holds no {CONFIG} and no {WEIGHTS}"


def check_checkpoint(checkpoint: str | os.PathLike) -> Checkpoint:
    """The checkpoint opened, its backbones found; an AvsrError naming the path and what it is
    instead (a file, an empty, run, corpus or model folder) before any work."""
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such folder")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a file, not a checkpoint folder ({CONFIG} + {WEIGHTS})")
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise CheckpointError(f"{path} is not an avsr checkpoint folder (needs {CONFIG} and {WEIGHTS}): "
                              f"{describe_folder(path)}")
    return Checkpoint.open(path)


def streams(pre: Preprocessed) -> dict[str, bool]:
    """Which modalities the recording can feed: audio samples, and mouth frames."""
    return {"audio": pre.audio is not None and pre.audio.size > 0,
            "video": pre.video is not None and len(pre.video) > 0}


def _has(pre: Preprocessed) -> str:
    have = streams(pre)
    if have["audio"] and have["video"]:
        return "audio and a face"
    if have["video"]:
        return "a face but no audio"
    if have["audio"]:
        return "audio but no face" if pre.total_frames else "audio only (no video stream)"
    return "neither audio nor a face"


def choose_task(pre: Preprocessed, trained: tuple[str, ...], task: str | None = None) -> tuple[str, list[str]]:
    """(task, warnings) for one recording (rules in the module docstring); `task` forces one.
    AvsrError when the recording cannot feed it, the checkpoint was not trained for it, or the
    recording has nothing usable."""
    have = streams(pre)
    if task is not None:
        if task not in TASKS:
            raise AvsrError(f"task {task!r}: choose one of {', '.join(TASKS)}")
        if task not in trained:
            raise AvsrError(f"task {task}: the checkpoint was trained for {', '.join(trained)} only")
        if not all(have[m] for m in MODALITIES[task]):
            raise AvsrError(f"{pre.source}: task {task} reads {' and '.join(MODALITIES[task])}, but the "
                            f"recording has {_has(pre)}")
        return task, []
    if not any(have.values()):
        raise AvsrError(f"{pre.source}: nothing to transcribe: it has {_has(pre)}")
    feedable = [t for t in PREFERENCE if all(have[m] for m in MODALITIES[t])]
    usable = [t for t in feedable if t in trained]
    if not usable:
        raise AvsrError(f"{pre.source} has {_has(pre)}, which suits {', '.join(feedable)}; the checkpoint was "
                        f"trained for {', '.join(trained)} only")
    chosen, notes = usable[0], []
    if chosen != feedable[0]:
        unused = set(MODALITIES[feedable[0]]) - set(MODALITIES[chosen])
        notes.append(f"the checkpoint has no {feedable[0]}: transcribed with {chosen}, the {' and '.join(unused)} "
                     f"not used")
    if pre.total_frames and not have["video"]:
        notes.append(f"no face found in {Path(pre.source).name}: transcribed from the audio alone ({chosen})")
    return chosen, notes


@dataclass
class Piece:
    """One segment as `decode` reads it (a row with an id and a frame count, and its media)."""
    id: str
    n_frames: int  # 25 fps frames: the decoding batches' budget unit
    start: float  # seconds
    end: float
    audio: np.ndarray  # (N,) float32 16 kHz; zeros for a task without audio
    video: np.ndarray | None  # (T, H, W) uint8; None: blank frames for a task without video


class Pieces:
    """Segments as `avsr.evaluation.decode.decode` reads a dataset: `rows` with `n_frames`, and
    items {audio, video, text, id}. A modality the task does not read is given as blank
    frames or silence of the right length (the model never looks at it)."""

    def __init__(self, rows: list[Piece]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        blank = np.zeros((row.n_frames, AVHUBERT_CROP_SIZE, AVHUBERT_CROP_SIZE), np.uint8)  # (T, 88, 88)
        return {"audio": row.audio, "video": blank if row.video is None else row.video, "text": "", "id": row.id}


def frame_bounds(spans: list[tuple[int, int]], frames: int) -> list[int]:
    """Sample spans -> frame boundaries [0, ..., frames], each cut at its nearest frame, empty parts dropped."""
    cuts = [round(a / SAMPLES_PER_FRAME) for a, _ in spans[1:]]
    return sorted({0, frames, *(c for c in cuts if 0 < c < frames)})


def covered_frames(pre: Preprocessed, task: str) -> int:
    """The video frames `task` reads: as long as the shortest of its streams really is (audio and
    picture of different lengths: only the part both cover, not the held frame or the padding)."""
    have = streams(pre)
    seconds = min(pre.own_seconds(m) for m in MODALITIES[task] if have[m])
    return max(1, min(len(pre.video), math.ceil(seconds * VIDEO_FPS - 1e-6)))


def cut(pre: Preprocessed, task: str, key: str, max_seconds: float = MAX_SECONDS) -> list[Piece]:
    """The recording's segments of at most `max_seconds` for `task` (see the module docstring),
    over the part of the recording all its streams cover (`covered_frames`)."""
    have = streams(pre)
    audio = pre.audio if have["audio"] else None
    if not have["video"]:  # audio only: sample-exact cuts, the frame count rounded up
        spans = segment_spans(audio, SAMPLE_RATE, max_seconds)
        return [Piece(f"{key}#{k}", max(1, math.ceil((b - a) / SAMPLES_PER_FRAME)), a / SAMPLE_RATE, b / SAMPLE_RATE,
                      audio[a:b], None) for k, (a, b) in enumerate(spans)]
    frames, limit = covered_frames(pre, task), int(max_seconds * VIDEO_FPS)
    if audio is not None:
        audio = audio[:frames * SAMPLES_PER_FRAME]
    if frames <= limit:
        bounds = [0, frames]
    elif audio is not None:  # a limit one frame short, so that moving a cut to a frame never exceeds it
        bounds = frame_bounds(segment_spans(audio, SAMPLE_RATE, (limit - 1) / VIDEO_FPS), frames)
    else:
        parts = math.ceil(frames / limit)
        bounds = [round(k * frames / parts) for k in range(parts + 1)]
    pieces = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        sound = (audio[a * SAMPLES_PER_FRAME:b * SAMPLES_PER_FRAME] if "audio" in MODALITIES[task]
                 else np.zeros((b - a) * SAMPLES_PER_FRAME, np.float32))
        pieces.append(Piece(f"{key}#{k}", b - a, a / VIDEO_FPS, b / VIDEO_FPS, sound,
                            pre.video[a:b] if "video" in MODALITIES[task] else None))
    return pieces


def with_sidecar_audio(pre: Preprocessed) -> Preprocessed:
    """A video without an audio track beside a .wav of the same stem (the corpus layout of `avsr
    synth`, LRS3-style preprocessed trees) gets that audio: the pair is one audio-visual clip."""
    from avsr.preprocess import aligned, preprocess_file

    wav = Path(pre.source).with_suffix(".wav")
    if pre.audio is not None or pre.video is None or Path(pre.source).suffix.lower() == ".wav" or not wav.is_file():
        return pre
    sound = preprocess_file(wav)
    pre.audio = sound.audio
    pre.warnings = [w for w in pre.warnings if not w.startswith("no audio")] + sound.warnings
    return aligned(pre)


def check_paths(paths: list[Path]) -> None:
    """Every input exists, is a readable file and holds a stream (probed, not decoded): a mistake
    costs a second, before any preprocessing or model load."""
    from avsr.preprocess import probe

    for path in paths:
        if path.is_dir():
            raise AvsrError(f"{path} is a folder, not a media file")
        if path.exists() and not os.access(path, os.R_OK):
            raise AvsrError(f"{path}: not readable (permission denied)")
        probe(path)  # missing, unreadable, no stream, zero length: a PreprocessError naming the file


def warn(source: str, message: str) -> None:
    print(f"[avsr transcribe] warning: {source}: {message}", file=sys.stderr, flush=True)


class Transcriber:
    """A checkpoint, checked at once and loaded on first use (`model`), that transcribes files
    or `Preprocessed` recordings. Decoding is deterministic beam search (`num_beams`; 1: greedy)."""

    def __init__(self, checkpoint: str | os.PathLike, num_beams: int | None = None, max_new_tokens: int | None = None,
                 device: str = "cpu", max_seconds: float | None = None, max_frames: int = 1000,
                 quiet: bool = True):
        if ((num_beams is not None and num_beams < 1) or (max_new_tokens is not None and max_new_tokens < 1)
                or max_frames < 1 or (max_seconds is not None and max_seconds <= 0)):
            raise AvsrError("num_beams, max_new_tokens, max_frames and max_seconds must be positive")
        self.checkpoint = Path(checkpoint)
        self.opened = check_checkpoint(self.checkpoint)
        # None: the checkpoint's own beam width (an imported model: the authors' 15), else 4
        num_beams = num_beams or int(self.opened.decoding.get("num_beams", 4))
        self.config = self.opened.config
        self.tasks = tuple(self.config.tasks)
        # What the model was trained on, and what that means for its output (None: nothing to say).
        self.training_data = checkpoint_training_data(self.opened)
        self.knowledge = knowledge_note(self.training_data)
        self.tokens_per_second = token_rate(self.training_data)  # a segment's token limit follows its duration
        self.num_beams, self.max_new_tokens, self.device = num_beams, max_new_tokens, device  # max: None = no cap
        # None: segments no longer than the longest training utterance (avsr.transcription.trust)
        self.max_seconds = max_seconds or longest_segment(self.training_data, MAX_SECONDS)
        self.max_frames, self.quiet = max_frames, quiet
        self.load_s: float | None = None
        self._model = None

    def about(self) -> dict:
        """What heads the JSON output: the checkpoint (an imported model's source file, layout, tasks
        and rates: `avsr import`), the decoding settings, and the training data."""
        about = {"checkpoint": str(self.checkpoint), "num_beams": self.num_beams, "max_seconds": self.max_seconds,
                 "max_new_tokens": self.max_new_tokens, "token_limit": {
                     "floor": FLOOR_TOKENS, "tokens_per_second": round(MARGIN * self.tokens_per_second, 2)},
                 "load_s": self.load_s, "training_data": {**(self.training_data or {"known": False}),
                                                          "note": self.knowledge}}
        if (imported := self.opened.imported) is not None:
            about["imported"] = {k: imported.get(k) for k in ("file", "sha256", "layout", "variant", "tasks", "rates",
                                                               "authors_decoding")}
        return about

    @property
    def model(self):
        """The AVSRModel, loaded (once) on first use."""
        if self._model is None:
            from avsr.models.loading import quiet_loading

            start = time.perf_counter()
            with quiet_loading(self.quiet):
                self._model = self.opened.load().to(self.device).eval()
            self.load_s = time.perf_counter() - start
        return self._model

    def prepare(self, inputs, progress: bool = False) -> list[tuple[Preprocessed, float]]:
        """[(recording, seconds of preprocessing)]: paths are all checked first, then read one by
        one; a Preprocessed is taken as it is, with the time its own `timings` recorded."""
        from tqdm import tqdm

        items = [x if isinstance(x, Preprocessed) else Path(x) for x in inputs]
        check_paths([x for x in items if isinstance(x, Path)])
        prepared = []
        for item in tqdm(items, desc="preprocess", unit="file", disable=not progress, leave=False):
            if isinstance(item, Preprocessed):
                if item.audio is not None:
                    finite_audio(item.audio, item.source)
                prepared.append((item, sum(item.timings.values())))
                continue
            from avsr.preprocess import preprocess_file

            start = time.perf_counter()
            pre = with_sidecar_audio(preprocess_file(item, progress=progress))
            prepared.append((pre, time.perf_counter() - start))
        return prepared

    def transcribe(self, inputs, task: str | None = None, rates: RatePair | tuple | None = None,
                   budget_tokens: float | None = None, progress: bool = False) -> list[Transcript]:
        """One Transcript per input (paths or Preprocessed), in order. `task`: force one (else
        chosen per input); `rates` (audio, video) or `budget_tokens` (LLM input tokens per second
        of speech: the trained pair with the most within it): elastic checkpoints only, else the
        first trained pair. Every input is checked and its task chosen before the model loads."""
        from avsr.evaluation.decode import decode
        from avsr.evaluation.elastic import pick_pairs

        if isinstance(inputs, (str, os.PathLike, Preprocessed)):
            raise TypeError("transcribe takes a list of inputs (avsr.transcribe takes a single one)")
        if rates is not None and budget_tokens is not None:
            raise AvsrError("give rates or budget_tokens, not both")
        inputs = list(inputs)
        if not inputs:
            return []
        prepared, seconds = zip(*self.prepare(inputs, progress))
        chosen = []
        for pre in prepared:
            if pre.duration <= 0:
                raise AvsrError(f"{pre.source}: zero-length clip: nothing to transcribe")
            chosen.append(choose_task(pre, self.tasks, task))
        pieces = [cut(pre, t, str(i), self.max_seconds) for i, (pre, (t, _)) in enumerate(zip(prepared, chosen))]
        empty = {p.id: nothing_to_transcribe(t, p.end - p.start, p.audio, p.video)
                 for ps, (t, _) in zip(pieces, chosen) for p in ps}
        notes = [[*n, *uncovered(pre, t), *(f"{span(p)}: {empty[p.id][1]}: left empty" for p in ps if empty[p.id])]
                 for pre, ps, (t, n) in zip(prepared, pieces, chosen)]
        for pre, mine in zip(prepared, notes):  # said now, before the long part
            for note in mine:
                warn(str(pre.source), note)
        model = self.model
        try:
            pairs, reasons = pick_pairs(model, tuple(dict.fromkeys(t for t, _ in chosen)), rates, budget_tokens)
        except ValueError as err:
            raise AvsrError(str(err)) from None
        for t, why in reasons.items() if progress else ():
            print(f"[avsr transcribe] {t} rates {why}", file=sys.stderr, flush=True)
        limits = {p.id: token_limit(p.end - p.start, self.tokens_per_second, self.max_new_tokens)
                  for ps in pieces for p in ps}
        decoded, share = {}, [0.0] * len(prepared)  # id -> utterance; seconds of decoding per input
        for t, pair in pairs.items():
            group = [i for i, (ti, _) in enumerate(chosen) if ti == t]
            rows = [p for i in group for p in pieces[i] if not empty[p.id]]
            if not rows:
                continue
            out = decode(model, Pieces(rows), t, pair, num_beams=self.num_beams, max_frames=self.max_frames,
                         progress=progress, scores=True, caps=limits)
            decoded.update({u["id"]: u for u in out.utterances})
            frames = sum(p.n_frames for p in rows)
            for i in group:  # batches mix inputs: each gets its share of the time by frames
                share[i] = out.seconds * sum(p.n_frames for p in pieces[i] if not empty[p.id]) / frames
        transcripts = []
        for i, (pre, (t, _)) in enumerate(zip(prepared, chosen)):
            segments = []
            for p in pieces[i]:
                segment, said = judged(p, empty[p.id], decoded.get(p.id), limits[p.id])
                segments.append(segment)
                for note in said:
                    warn(str(pre.source), note)
                notes[i] += said
            transcripts.append(Transcript(
                source=str(pre.source), task=t, rates=scale_name(t, pairs[t]),
                text=" ".join(s.text for s in segments if s.text), segments=segments, duration_s=pre.duration,
                warnings=[*pre.warnings, *notes[i]],
                timings={"preprocess_s": seconds[i], "decode_s": share[i]}))
        return transcripts


def span(piece: Piece) -> str:
    """A segment's place in a message: "12.00-16.00 s"."""
    return f"{piece.start:.2f}-{piece.end:.2f} s"


def uncovered(pre: Preprocessed, task: str) -> list[str]:
    """A warning when `task` reads audio and picture and one runs on alone beyond the other for
    more than AV_TOLERANCE_S: that part is not transcribed (`covered_frames`)."""
    from avsr.preprocess.pipeline import AV_TOLERANCE_S

    have = streams(pre)
    if not (have["audio"] and have["video"] and set(MODALITIES[task]) == {"audio", "video"}):
        return []
    lengths = {m: pre.own_seconds(m) for m in ("audio", "video")}
    longer = max(lengths, key=lengths.get)
    extra = lengths[longer] - min(lengths.values())
    if extra <= AV_TOLERANCE_S:
        return []
    alone = {"audio": "audio alone (--task asr reads it)", "video": "picture alone (--task vsr reads it)"}[longer]
    return [f"{task} reads audio and picture together: transcribed the first {min(lengths.values()):.2f} s, which "
            f"both cover; the last {extra:.2f} s of {alone} not transcribed"]


def judged(piece: Piece, empty: tuple[str, str] | None, decoded: dict | None, limit: int) -> tuple[Segment, list[str]]:
    """A segment's transcript and flags, and the warnings to give about it: left empty (nothing
    to transcribe), a loop cut, the token limit reached, a low confidence."""
    if empty:
        return Segment(piece.start, piece.end, "", None, None, [empty[0]]), []
    if not decoded["hypothesis"]:  # e.g. a CTC reader that heard no speech token (avsr_model.generate)
        sure = round(confidence(decoded["token_logp"]), 4)  # 0 when no token was kept
        return Segment(piece.start, piece.end, "", decoded["score"], sure, ["nothing_heard"]), [
            f"{span(piece)}: the model wrote nothing (it heard no speech): left empty"]
    text, repeated, times = cut_loop(decoded["hypothesis"])
    flags, said = [], []
    if repeated:
        flags.append("loop")
        said.append(f"{span(piece)}: the model repeated \"{repeated}\" {times} times (a decoding loop): kept once")
    if len(decoded["token_logp"]) >= limit:
        flags.append("token_limit")
    sure = confidence(decoded["token_logp"], bool(repeated))
    if sure < THRESHOLD:
        flags.append("low_confidence")
        said.append(f"{span(piece)}: low confidence {sure:.2f} (under {THRESHOLD:g}): \"{text}\" may be made up")
    return Segment(piece.start, piece.end, text, decoded["score"], round(sure, 4), flags), said


def transcribe(path_or_paths, checkpoint: str | os.PathLike, task: str | None = None,
               rates: RatePair | tuple | None = None, budget_tokens: float | None = None, progress: bool = False,
               **settings) -> Transcript | list[Transcript]:
    """`avsr.transcribe`: one input (path or Preprocessed) -> its Transcript; a list -> a list.
    `settings` go to Transcriber (num_beams, max_new_tokens, device, max_seconds, max_frames)."""
    single = isinstance(path_or_paths, (str, os.PathLike, Preprocessed))
    inputs = [path_or_paths] if single else list(path_or_paths)
    result = Transcriber(checkpoint, **settings).transcribe(inputs, task, rates, budget_tokens, progress)
    return result[0] if single else result
