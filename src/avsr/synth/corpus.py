"""`avsr synth`: generate the offline synthetic audio-visual speech corpus.

Layout (the auto_avsr / Llama-AVSR preprocessed-LRS3 convention, so one loader reads both):

    <root>/<corpus>/<split>/<speaker>/<utt>.mp4   96x96 grayscale mouth ROI, 25 fps, H.264
    <root>/<corpus>/<split>/<speaker>/<utt>.wav   16 kHz mono, exactly 640 samples per video frame
    <root>/<corpus>/<split>/<speaker>/<utt>.json  phoneme/viseme alignment, mouth parameters
    <root>/<corpus>/corpus.json                   settings, speakers, summary, completion flag
    <root>/labels/<corpus>_<split>.csv            dataset,rel_path,n_video_frames,transcript
    <root>/noise/<corpus>_{babble,white,pink}.wav noise for robustness training and tests

Every utterance is a pure function of (seed, split, index), so the corpus is identical for
any number of workers, and an interrupted run resumes where it stopped.

--overwrite replaces only a corpus that avsr synth wrote (its corpus.json says so): the corpus
folder, which must hold nothing but the files above, and its label and noise files. Anything
else there is refused, never deleted; so is an --out that is /, the home or the working
folder, or a parent of one.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import re
import shutil
import signal
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from avsr.data.media import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, write_audio, write_video
from avsr.data.noise import pink_noise, white_noise
from avsr.errors import AvsrError
from avsr.paths import NOISE_KINDS, SPLITS, labels_csv, noise_wav
from avsr.io import UnsafeRemoval, check_target, claim_folder, refuse_guarded, write_text_atomic
from avsr.synth.espeak import Voice, engine
from avsr.synth.neural import PREFIX, NeuralVoice, NeuralVoiceError, is_neural
from avsr.synth.neural import check_voice as check_neural_voice
from avsr.synth.neural import synthesize as synthesize_neural
from avsr.synth.lips import Appearance, head_motion, render_mouth
from avsr.synth.text import grid_sentence, read_text_file
from avsr.synth.visemes import PARAMS, VOICES, VisemeError, mouth_trajectory, viseme_segments

CORPUS_FORMAT = 2  # 2: full-range luma in the mp4 files (avsr.data.media)
DEFAULT_VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
DEFAULT_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
BABBLE_TALKERS = 6  # simultaneous talkers in the babble noise
MAX_NOISE_SECONDS = 3600.0  # 6 talkers x 1 h of float32 audio in memory: already ~1.4 GB
# Utterances in one corpus (train + val + test): more than LRS3's 150k, about 35 GB of files at
# ~170 kB each, and what the corpus keeps in memory while it runs (a task and a summary row per
# utterance, ~1.5 kB) stays near 300 MB. A larger request is refused before anything is made.
MAX_UTTERANCES = 200_000
WRITTEN_BY = "avsr synth"  # in corpus.json: only such a corpus may be replaced by --overwrite
FACES = "faces"  # <corpus>/faces/<split>/: talking-face videos of a split (avsr.synth.face, avsr synth-faces)


class SynthError(AvsrError):
    """Bad settings or an output folder we must not write into."""


@dataclass
class SynthConfig:
    out: str = "data"
    corpus: str = "synth"
    seed: int = 0
    utterances: dict[str, int] = field(default_factory=lambda: {"train": 1600, "val": 200, "test": 200})
    speakers: dict[str, int] = field(default_factory=lambda: {"train": 20, "val": 4, "test": 6})
    text_file: str | None = None  # one sentence per line; None = GRID grammar
    voices: tuple[str, ...] = DEFAULT_VOICES
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    noise_speakers: int = 8  # held out from every split; they make the babble
    # A neural voice (avsr.synth.neural) re-speaking the split's sentences: `neural_utterances`
    # more utterances per split, dealt to `neural_speakers` speakers of their own, each the voice at
    # a drawn speaking rate (one voice: they differ in rate and face, not timbre).
    neural_utterances: dict[str, int] = field(default_factory=dict)
    neural_speakers: dict[str, int] = field(default_factory=dict)
    neural_voice: str = f"{PREFIX}joe"
    noise_seconds: float = 60.0
    workers: int = 2

    def __post_init__(self) -> None:
        """Refuse impossible settings when they are made, before any work or any file (the
        messages name the `avsr synth` options, the usual way in)."""
        n = {s: self.utterances.get(s, 0) for s in SPLITS}
        k = {s: self.speakers.get(s, 0) for s in SPLITS}
        nn_, nk = ({s: given.get(s, 0) for s in SPLITS} for given in (self.neural_utterances, self.neural_speakers))
        wanted, pool = sum(k.values()) + self.noise_speakers, len(self.voices) * len(self.variants)
        problems = [
            (not str(self.out).strip(), "--out is empty: name the corpus root folder"),
            (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.corpus) or self.corpus in ("labels", "noise"),
             f"--corpus {self.corpus!r} is not a plain folder name (letters, digits, '_', '-', '.'; "
             "not 'labels' or 'noise')"),
            (self.seed < 0, f"--seed {self.seed} is negative: seeds are whole numbers >= 0"),
            (self.workers < 1, f"--workers {self.workers}: at least 1 process is needed"),
            (not 1 <= self.noise_seconds <= MAX_NOISE_SECONDS,
             f"--noise-seconds {self.noise_seconds}: must be a length from 1 to {MAX_NOISE_SECONDS:.0f} seconds"),
            (min([*n.values(), *k.values(), self.noise_speakers]) < 0, "utterance and speaker counts must be >= 0"),
            (sum(n.values()) == 0, "no utterances requested: --train, --val and --test are all 0"),
            (sum(n.values()) + sum(nn_.values()) > MAX_UTTERANCES,
             f"{sum(n.values()) + sum(nn_.values())} utterances requested (--train {n['train']}, --val {n['val']}, "
             f"--test {n['test']}{f', the neural voice {sum(nn_.values())}' if any(nn_.values()) else ''}): "
             f"a corpus holds at most {MAX_UTTERANCES:,} (about 35 GB)"),
            (any(v not in VOICES for v in self.voices),
             f"--voices {','.join(v for v in self.voices if v not in VOICES)}: not an English voice whose phonemes "
             f"the lip renderer knows; choose from {','.join(VOICES)}"),
            *((bool(n[s]) != bool(k[s]), f"--{s} {n[s]} with --{s}-speakers {k[s]}: a split needs both "
               "utterances and speakers, or neither") for s in SPLITS),
            ((set(self.neural_utterances) | set(self.neural_speakers)) - set(SPLITS)
             or min([*nn_.values(), *nk.values()]) < 0,
             f"neural utterances {self.neural_utterances}, speakers {self.neural_speakers}: counts >= 0 for the "
             f"splits {', '.join(SPLITS)}"),
            *((bool(nn_[s]) != bool(nk[s]), f"--{s}-neural {nn_[s]} with --{s}-neural-speakers {nk[s]}: the neural "
               "voice needs both utterances and speakers, or neither") for s in SPLITS),
            *((nn_[s] > 0 and not n[s], f"--{s}-neural {nn_[s]} with --{s} 0: the neural voice re-speaks the "
               f"split's sentences, and the {s} split has none") for s in SPLITS),
            (not is_neural(self.neural_voice), f"--neural-voice {self.neural_voice!r}: a neural voice is "
             f"{PREFIX}NAME (a packaged voice: {PREFIX}joe) or {PREFIX}PATH.onnx"),
            (self.noise_speakers < 1, "--noise-speakers 0: the babble noise needs at least one held-out talker"),
            (wanted > pool, f"{wanted} speakers requested (train + val + test + noise) but only {pool} voice/variant "
                            f"pairs are available ({len(self.voices)} voices x {len(self.variants)} variants)"),
        ]
        for bad, message in problems:
            if bad:
                raise SynthError(message)

    def identity(self) -> dict:
        """What determines the corpus content (not where it goes or how fast it is made)."""
        ident = asdict(self)
        for key in ("out", "workers"):
            ident.pop(key)
        ident["format"] = CORPUS_FORMAT  # a corpus of an older format is refused, not extended
        ident["voices"], ident["variants"] = list(self.voices), list(self.variants)
        if not any(self.neural_utterances.values()):  # a corpus without one reads as before neural voices
            for key in ("neural_utterances", "neural_speakers", "neural_voice"):
                ident.pop(key)
        if self.text_file:  # the content matters, not the path
            ident["text_file"] = {"name": Path(self.text_file).name, "lines": read_text_file(self.text_file)}
        return ident


@dataclass(frozen=True)
class Speaker:
    id: str
    split: str  # train / val / test / noise
    voice: Voice | NeuralVoice
    look: Appearance

    def to_dict(self) -> dict:
        return {"id": self.id, "split": self.split, "voice": asdict(self.voice), "appearance": self.look.to_dict()}


@dataclass(frozen=True)
class UtteranceTask:
    """Everything a worker needs to render one utterance."""

    root: str
    corpus: str
    split: str
    index: int
    speaker: Speaker
    text: str
    seed: int

    @property
    def rel_path(self) -> str:  # relative to <root>/<corpus>, as in the label CSV
        return f"{self.split}/{self.speaker.id}/{self.index:05d}.mp4"

    @property
    def stem(self) -> Path:
        return Path(self.root) / self.corpus / self.rel_path[: -len(".mp4")]


def default_workers() -> int:
    """Two processes per core: a worker waits while its espeak-ng server speaks (300 utterances on
    2 cores: 2 workers 20.4-21.1 s, 4 workers 17.5-18.7 s, 6 workers 18.3 s; docs/corpus.md)."""
    return 2 * (os.cpu_count() or 1)


def make_speakers(cfg: SynthConfig) -> list[Speaker]:
    """Distinct (voice, variant) pairs, dealt to train, val, test and the babble talkers (the
    counts were checked by SynthConfig)."""
    pool = [(v, var) for v in cfg.voices for var in cfg.variants]
    wanted = {**cfg.speakers, "noise": cfg.noise_speakers}
    rng = np.random.default_rng([cfg.seed, 1])
    order = rng.permutation(len(pool))
    speakers, k = [], 0
    for split, count in wanted.items():
        for _ in range(count):
            name, variant = pool[order[k]]
            voice = Voice(name, variant, rate=int(rng.integers(135, 215)), pitch=int(rng.integers(25, 76)),
                          pitch_range=int(rng.integers(20, 81)))
            speakers.append(Speaker(f"s{k:03d}", split, voice, Appearance.sample(rng)))
            k += 1
    rng = np.random.default_rng([cfg.seed, 7])  # its own stream: the espeak-ng speakers stay as they were
    for split in SPLITS:
        for _ in range(cfg.neural_speakers.get(split, 0)):
            voice = NeuralVoice(cfg.neural_voice[len(PREFIX):], round(float(rng.uniform(0.85, 1.2)), 3))
            speakers.append(Speaker(f"s{k:03d}", split, voice, Appearance.sample(rng)))
            k += 1
    return speakers


def make_tasks(cfg: SynthConfig, speakers: list[Speaker]) -> list[UtteranceTask]:
    lines = read_text_file(cfg.text_file) if cfg.text_file else None
    if lines:
        lines = [lines[i] for i in np.random.default_rng([cfg.seed, 2]).permutation(len(lines))]
    tasks, k = [], 0
    for split_id, split in enumerate(SPLITS):
        mine = [s for s in speakers if s.split == split and not isinstance(s.voice, NeuralVoice)]
        neural = [s for s in speakers if s.split == split and isinstance(s.voice, NeuralVoice)]
        n, first = cfg.utterances.get(split, 0), len(tasks)
        for i in range(n + cfg.neural_utterances.get(split, 0)):
            seed = int(np.random.SeedSequence([cfg.seed, 3, split_id, i]).generate_state(1)[0])
            if i >= n:  # the neural voice re-speaks the split's sentences, in order
                j = i - n
                tasks.append(replace(tasks[first + j % n], index=i, speaker=neural[j % len(neural)], seed=seed))
                continue
            text = lines[k % len(lines)] if lines else grid_sentence(np.random.default_rng(seed))
            tasks.append(UtteranceTask(cfg.out, cfg.corpus, split, i, mine[i % len(mine)], text, seed))
            k += 1
    return tasks


def speak(text: str, voice: Voice | NeuralVoice,
          rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """16 kHz float32 audio padded to whole video frames, and timed phonemes (ipa, start, end)."""
    speech = synthesize_neural(text, voice) if isinstance(voice, NeuralVoice) else engine().synthesize(text, voice)
    audio = resample_poly(speech.audio.astype(np.float32) / 32768.0, SAMPLE_RATE, speech.sample_rate)
    lead, tail = rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3)
    n_frames = int(np.ceil((lead + audio.size / SAMPLE_RATE + tail) * VIDEO_FPS))
    out = np.zeros(n_frames * SAMPLES_PER_FRAME, np.float32)
    start = int(round(lead * SAMPLE_RATE))
    out[start:start + audio.size] = audio
    peak = np.abs(out).max()
    if peak > 0:
        out *= rng.uniform(0.4, 0.9) / peak
    end_of_speech = lead + audio.size / SAMPLE_RATE
    times = [t + lead for _, t in speech.phonemes] + [end_of_speech]
    phonemes = [(name, times[i], max(times[i + 1], times[i])) for i, (name, _) in enumerate(speech.phonemes)]
    return out, phonemes


def summary_row(meta: dict) -> dict:
    """What the labels and the summary need of an utterance's .json (its mouth trajectory and
    phoneme times stay on disk: a corpus of many utterances would hold gigabytes of them)."""
    return {**{k: meta[k] for k in ("rel_path", "n_frames", "text", "speaker", "duration")},
            "visemes": [v["viseme"] for v in meta["visemes"]]}


def render_utterance(task: UtteranceTask) -> dict:
    """Write one utterance's .wav, .mp4 and .json (the .json last: it marks completion); returns
    its summary row."""
    sidecar = task.stem.with_suffix(".json")
    if sidecar.exists():  # done in an earlier run
        return summary_row(json.loads(sidecar.read_text()))
    rng = np.random.default_rng(task.seed)
    audio, phonemes = speak(task.text, task.speaker.voice, rng)
    n_frames = audio.size // SAMPLES_PER_FRAME
    try:
        segments = viseme_segments(phonemes)
    except VisemeError as err:
        raise SynthError(f"{task.rel_path} ({task.speaker.voice.spec}, {task.text!r}): {err}") from None
    mouth = mouth_trajectory(segments, n_frames)  # (T, P)
    frames = render_mouth(mouth, task.speaker.look, head_motion(n_frames, rng), rng)  # (T, 96, 96)
    task.stem.parent.mkdir(parents=True, exist_ok=True)
    write_audio(task.stem.with_suffix(".wav"), audio)
    write_video(task.stem.with_suffix(".mp4"), frames)
    meta = {
        "id": f"{task.split}/{task.speaker.id}/{task.index:05d}",
        "rel_path": task.rel_path,
        "text": task.text,
        "speaker": task.speaker.id,
        "voice": task.speaker.voice.spec,
        "n_frames": n_frames,
        "duration": round(audio.size / SAMPLE_RATE, 4),
        "phonemes": [{"ipa": p, "start": round(s, 4), "end": round(e, 4)} for p, s, e in phonemes],
        "visemes": [{"viseme": s.viseme, "start": round(s.start, 4), "end": round(s.end, 4)} for s in segments],
        "mouth": {name: np.round(mouth[:, i], 4).tolist() for i, name in enumerate(PARAMS)},
    }
    write_text_atomic(sidecar, json.dumps(meta))
    return summary_row(meta)


def babble_stream(args: tuple[list[Speaker], list[str], int, int]) -> np.ndarray:
    """One talker's track for the babble: held-out utterances back to back, unit RMS."""
    talkers, texts, n_samples, seed = args
    rng = np.random.default_rng(seed)
    offset = int(rng.integers(0, 2 * SAMPLE_RATE))  # talkers must not all start (silent) together
    pieces, total = [], 0
    while total < offset + n_samples:
        speaker = talkers[rng.integers(len(talkers))]
        audio, _ = speak(texts[rng.integers(len(texts))], speaker.voice, rng)
        pieces.append(audio)
        total += audio.size
    track = np.concatenate(pieces)[offset:offset + n_samples]
    return track / (np.sqrt(np.mean(track**2)) + 1e-9)


def _labels_csv(rows: list[dict], corpus: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    for meta in sorted(rows, key=lambda m: m["rel_path"]):
        writer.writerow([corpus, meta["rel_path"], meta["n_frames"], meta["text"]])
    return buf.getvalue()


def _side_files(root: Path, corpus: str) -> list[Path]:
    """A corpus's files outside its folder: label CSVs and noise."""
    return [labels_csv(root, corpus, split) for split in SPLITS] + [noise_wav(root, corpus, kind) for kind in NOISE_KINDS]


def _our_manifest(corpus_dir: Path) -> dict | None:
    """corpus.json if avsr synth wrote it (older ones predate `written_by` but hold these keys)."""
    try:
        manifest = json.loads((corpus_dir / "corpus.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(manifest, dict) and (manifest.get("written_by") == WRITTEN_BY
                                           or {"format", "identity", "speakers"} <= manifest.keys())
    return manifest if ours else None


def _is_temp(name: str) -> bool:
    """Our hidden temporary files (atomic writes, write probes): safe to delete."""
    return name.startswith(".") and (".tmp" in name or name.startswith(".write-test"))


def _foreign(corpus_dir: Path) -> list[Path]:
    """What avsr synth never writes in a corpus folder: anything but corpus.json, split folders of
    speaker folders of .mp4/.wav/.json files, and our temporary files (links count as foreign)."""
    if corpus_dir.is_symlink():
        return [corpus_dir]
    foreign = []
    for folder, dirs, files in os.walk(corpus_dir):
        depth = len(Path(folder).relative_to(corpus_dir).parts)
        for name in dirs + files:
            path = Path(folder, name)
            link = path.is_symlink()
            is_dir, is_file = not link and path.is_dir(), not link and path.is_file()
            expected = ((is_file and name == "corpus.json") or (is_dir and name in (*SPLITS, FACES)), is_dir,
                        is_file and path.suffix in (".mp4", ".wav", ".json"))[min(depth, 2)]
            if not (expected or is_file and _is_temp(name)):
                foreign.append(path)
        dirs[:] = [d for d in dirs if Path(folder, d) not in foreign]
    return foreign


def _remove_corpus(root: Path, corpus_dir: Path, side: list[Path]) -> None:
    """--overwrite: delete this corpus's own files and nothing else, or refuse naming the reason."""
    refuse_guarded(root)
    foreign = (_foreign(corpus_dir) if os.path.lexists(corpus_dir) else []) + [
        p for p in side if p.is_symlink() or not p.is_file()]
    if foreign:
        raise UnsafeRemoval(f"--overwrite refused: avsr synth did not write {', '.join(map(str, foreign[:5]))}; "
                            "move that away or choose another --out or --corpus")
    for path in side:
        path.unlink()
    if corpus_dir.exists():  # corpus.json last: until then it proves the rest is ours
        for child in sorted(corpus_dir.iterdir(), key=lambda p: p.name == "corpus.json"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        corpus_dir.rmdir()


def _prepare_output(cfg: SynthConfig, identity: dict, overwrite: bool) -> Path:
    """Check the output before any work: resume our corpus, replace it (--overwrite), or start
    a new one; refuse a corpus of other settings or anything avsr synth did not write."""
    root = Path(cfg.out)
    corpus_dir = root / cfg.corpus
    manifest = corpus_dir / "corpus.json"
    try:
        old = _our_manifest(corpus_dir)
        side = [p for p in _side_files(root, cfg.corpus) if os.path.lexists(p)]
        used = os.path.lexists(corpus_dir) and (not corpus_dir.is_dir() or any(
            not p.name.startswith(".") for p in corpus_dir.iterdir()))
        taken = [corpus_dir] * used + side
        if old is None and taken:
            raise SynthError(f"not made by avsr synth (no corpus.json of avsr synth in {corpus_dir}): "
                             f"{', '.join(map(str, taken[:5]))}; choose another --out or --corpus, or move that away")
        if overwrite:
            _remove_corpus(root, corpus_dir, side)
        elif old is not None and old.get("identity") != identity:
            diff = sorted(k for k in set(identity) | set(old.get("identity", {}))
                          if identity.get(k) != old.get("identity", {}).get(k))
            raise SynthError(f"{corpus_dir} holds a corpus made with other settings ({', '.join(diff)} differ); "
                             "refusing to mix them: choose another --out or --corpus, or pass --overwrite")
    except OSError as err:
        raise SynthError(f"cannot use the output folder {err.filename or root}: {err.strerror or err}") from None
    check_target(root, error=SynthError)  # avsr.io's rule: not the root, home or working folder, no checkpoint
    claim_folder(root, "synth", entries=("labels", "noise", cfg.corpus))
    try:
        for folder in (corpus_dir, root / "labels", root / "noise"):
            folder.mkdir(exist_ok=True)
        probe = corpus_dir / f".write-test{os.getpid()}"
        probe.write_text("")
        probe.unlink()
        for stale in corpus_dir.rglob(".*"):  # pieces of an interrupted run
            if stale.is_file() and _is_temp(stale.name):
                stale.unlink()
    except OSError as err:
        raise SynthError(f"cannot write to output folder {root}: {err.strerror or err}") from None
    return manifest


def synthesize_corpus(cfg: SynthConfig, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate (or resume) the corpus described by `cfg`; returns its summary. Every check
    (settings, text file, voices, output folder) comes before any long work."""
    cfg = replace(cfg, out=str(Path(cfg.out).expanduser().resolve()))  # `..` and links resolved before checks
    identity = cfg.identity()
    speakers = make_speakers(cfg)
    eng = engine()  # fail early, in this process, on a missing library or an unknown voice
    for voice in {s.voice.spec: s.voice for s in speakers}.values():
        if isinstance(voice, NeuralVoice):
            try:
                check_neural_voice(voice)
            except NeuralVoiceError as err:
                raise SynthError(str(err)) from None
        else:
            eng.check_voice(voice)
    tasks = make_tasks(cfg, speakers)
    manifest = _prepare_output(cfg, identity, overwrite)
    state = {"written_by": WRITTEN_BY, "format": CORPUS_FORMAT, "identity": identity, "complete": False,
             "speakers": [s.to_dict() for s in speakers]}
    write_text_atomic(manifest, json.dumps(state, indent=1))

    root = Path(cfg.out)
    noise_jobs = []
    babble_path = noise_wav(root, cfg.corpus)
    if not babble_path.exists():
        talkers = [s for s in speakers if s.split == "noise"]
        texts = read_text_file(cfg.text_file) if cfg.text_file else [
            grid_sentence(np.random.default_rng([cfg.seed, 4, i])) for i in range(200)]
        n = int(cfg.noise_seconds * SAMPLE_RATE)
        noise_jobs = [(talkers, texts, n, int(np.random.SeedSequence([cfg.seed, 5, k]).generate_state(1)[0]))
                      for k in range(BABBLE_TALKERS)]

    rows = []
    bar = tqdm(total=len(tasks) + len(noise_jobs), desc=f"synth {cfg.corpus}", unit="utt",
               disable=not progress, dynamic_ncols=True)
    if cfg.workers > 1:
        # The workers leave Ctrl-C to this process, which stops them (Pool's exit) and reports it once.
        with multiprocessing.get_context("fork").Pool(cfg.workers, initializer=signal.signal,
                                                      initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
            streams = pool.map_async(babble_stream, noise_jobs) if noise_jobs else None
            for meta in pool.imap_unordered(render_utterance, tasks, chunksize=4):
                rows.append(meta)
                bar.update()
            streams = streams.get() if streams else []
    else:
        for task in tasks:
            rows.append(render_utterance(task))
            bar.update()
        streams = [babble_stream(job) for job in noise_jobs]
    bar.update(len(noise_jobs))
    bar.close()

    if streams:
        babble = np.sum(streams, axis=0)
        write_audio(babble_path, 0.9 * babble / np.abs(babble).max())
    for name, make in (("white", white_noise), ("pink", pink_noise)):
        path = noise_wav(root, cfg.corpus, name)
        if not path.exists():
            sig = make(int(cfg.noise_seconds * SAMPLE_RATE), np.random.default_rng([cfg.seed, 6]))
            write_audio(path, 0.25 * sig / np.abs(sig).max())
    for split in SPLITS:
        mine = [m for m in rows if m["rel_path"].startswith(split + "/")]
        write_text_atomic(labels_csv(root, cfg.corpus, split), _labels_csv(mine, cfg.corpus))

    state["summary"] = summarize(rows, speakers, root, cfg.corpus)
    state["complete"] = True
    write_text_atomic(manifest, json.dumps(state, indent=1))
    return state["summary"]


def summarize(rows: list[dict], speakers: list[Speaker], root: Path, corpus: str) -> dict:
    per_split = {}
    for split in SPLITS:
        mine = [m for m in rows if m["rel_path"].startswith(split + "/")]
        seconds = sum(m["duration"] for m in mine)
        per_split[split] = {
            "utterances": len(mine),
            "speakers": len({m["speaker"] for m in mine}),
            "hours": round(seconds / 3600, 3),
            "mean_seconds": round(seconds / max(len(mine), 1), 2),
            "words": sum(len(m["text"].split()) for m in mine),
        }
    visemes = Counter(v for m in rows for v in m["visemes"])
    disk = sum(p.stat().st_size for p in (root / corpus).rglob("*") if p.is_file())
    return {
        "corpus": corpus,
        "root": str(root),
        "splits": per_split,
        "vocabulary": len({w for m in rows for w in m["text"].split()}),
        "babble_talkers": sum(s.split == "noise" for s in speakers),
        "viseme_share": {k: round(v / max(sum(visemes.values()), 1), 3) for k, v in visemes.most_common()},
        "disk_bytes": disk,
        "bytes_per_utterance": disk // max(len(rows), 1),
    }


def format_summary(summary: dict) -> str:
    lines = [f"corpus {summary['corpus']} in {summary['root']}",
             f"{'split':<6} {'utts':>6} {'spk':>4} {'hours':>7} {'mean s':>7} {'words':>7}"]
    for split, s in summary["splits"].items():
        lines.append(f"{split:<6} {s['utterances']:>6} {s['speakers']:>4} {s['hours']:>7.3f} "
                     f"{s['mean_seconds']:>7.2f} {s['words']:>7}")
    top = ", ".join(f"{k} {v:.0%}" for k, v in list(summary["viseme_share"].items())[:6])
    lines += [f"vocabulary {summary['vocabulary']} words; babble from {summary['babble_talkers']} held-out talkers",
              f"visemes: {top}, ...",
              f"disk: {summary['disk_bytes'] / 1e6:.1f} MB ({summary['bytes_per_utterance'] / 1e3:.1f} kB per utterance)"]
    return "\n".join(lines)
