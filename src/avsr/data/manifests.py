"""Manifests: the files that list a split's utterances, in the formats the field uses.

  csv      auto_avsr / Llama-AVSR label CSV: `dataset,rel_path,n_frames[,token_ids],text`, media at
           `<root>/<dataset>/<rel_path>` (.mp4) with the .wav beside it
  fairseq  AV-HuBERT `<split>.tsv` (first line: the media root; then `id, video, audio, n_video_frames,
           n_audio_samples`, tab-separated) with `<split>.wrd` (one transcript per line, same order)
  jsonl    one JSON object per line: `video` and/or `audio`, `text`, optional `id`, `frames`, `seconds`
  shards   `<split>/index.json` over WebDataset tar shards (avsr.data.shards): streamed by training,
           never listed row by row

`FORMATS` is the one table of them (name, file suffix, where a split's manifest lives, reader): the
`data.format` rule and the CLI's choices are made from it. The row formats are read into one row
type, `Utterance` (id, video path, audio path, length in 25 fps video frames, transcript), by
`read_manifest`; `load_manifest` then checks the media a split names (present, non-empty, length
known) and drops what `on_bad_file=skip` and `max_seconds` ask for, saying so in one line.
`write_manifests` writes a split in the three row formats (avsr prepare-corpus).
docs/data-formats.md describes the formats and the settings.
"""

from __future__ import annotations

import json
import math
import re
import sys
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import av
import soundfile as sf

from avsr.data.media import MediaError
from avsr.data.remote import DEFAULT_TIMEOUT, RemoteError, is_url, locate, read_bytes
from avsr.errors import AvsrError

BAD_FILE_POLICIES = ("stop", "skip")
FRAME_RATE = 25  # video frames per second: the unit of every utterance length here
SAMPLES_PER_FRAME = 640  # 16 kHz audio samples per video frame
SHOWN = 3  # names quoted in a warning about many files


class DataError(AvsrError):
    """A label file or a corpus item that is malformed or inconsistent."""


def warn(message: str) -> None:
    """One line on stderr, as every data warning is given (stdout stays the commands' output)."""
    print(f"[avsr data] warning: {message}", file=sys.stderr, flush=True)


# --- the row every format is read into -------------------------------------------------------------

@dataclass(frozen=True)
class Utterance:
    id: str  # csv: rel_path; fairseq: the id column; jsonl: `id`, else the video (or audio) path as written
    video: Path | None  # .mp4 (None: the manifest names no video)
    audio: Path | None  # 16 kHz .wav (None: the manifest names no audio)
    n_frames: int | None  # length in 25 fps video frames (audio only: samples / 640, rounded up);
    #                       None until read from the media header (load_manifest does)
    text: str
    source: str = field(default="", compare=False)  # "<manifest>:<line>", for messages

    def media(self) -> list[Path]:
        return [p for p in (self.video, self.audio) if p is not None]

    @property
    def seconds(self) -> float | None:
        return None if self.n_frames is None else self.n_frames / FRAME_RATE


# --- csv: auto_avsr / Llama-AVSR label files ---------------------------------------------------------

# Llama-AVSR's 4th of 5 columns: SentencePiece ids, space-separated (or none), then the transcript.
# A 4-column row whose transcript starts with "<digits>," would read as ids: transcripts spell numbers out.
_TOKEN_IDS = re.compile(r"^(?:\d+(?: \d+)*)?,")


def _text_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None


def read_csv(path: str | Path, root: str | Path | None = None) -> list[Utterance]:
    """A label CSV (4 or 5 columns; the transcript may hold commas) with its media under `root`
    (default: the folder above the CSV's, as in `<root>/labels/<corpus>_<split>.csv`)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent.parent
    rows = []
    for lineno, line in enumerate(_text_lines(path, "label file"), 1):
        if not line.strip():
            continue
        parts = line.split(",", 3)
        if len(parts) < 4:
            raise DataError(f"{path}:{lineno}: expected dataset,rel_path,n_frames[,token_ids],transcript; "
                            f"got {line!r}")
        dataset, rel_path, n_frames, rest = parts
        if _TOKEN_IDS.match(rest):
            rest = rest.split(",", 1)[1]
        if not n_frames.strip().isdigit():
            raise DataError(f"{path}:{lineno}: frame count {n_frames!r} is not a number")
        if not rest.strip():  # it would count as a reference of 0 words and distort the WER
            raise DataError(f"{path}:{lineno}: empty transcript")
        video = root / dataset.strip() / rel_path.strip()
        rows.append(Utterance(rel_path.strip(), video, video.with_suffix(".wav"), int(n_frames), rest.strip(),
                              f"{path}:{lineno}"))
    if not rows:
        raise DataError(f"label file is empty: {path}")
    return rows


# --- fairseq: AV-HuBERT .tsv + .wrd ------------------------------------------------------------------

_ABSENT = {"", "none", "null", "-"}  # how VSR-only / ASR-only manifests leave a modality out


def _count(value: str, what: str, where: str) -> int | None:
    value = value.strip()
    if value.lower() in _ABSENT:
        return None
    if not value.isdigit():
        raise DataError(f"{where}: {what} {value!r} is not a number")
    return int(value)


def read_fairseq(path: str | Path, root: str | Path | None = None) -> list[Utterance]:
    """`<split>.tsv` and the `<split>.wrd` beside it. Relative media paths are relative to the root
    on the first line; a relative root is relative to the manifest's folder (`root` is not used)."""
    path = Path(path)
    words = path.with_suffix(".wrd")
    lines = _text_lines(path, "manifest")
    if not lines or not lines[0].strip():
        raise DataError(f"{path}:1: the first line must be the media root folder")
    root = Path(lines[0].strip())
    root = root if root.is_absolute() else path.parent / root
    entries = [(n, line) for n, line in enumerate(lines[1:], 2) if line.strip()]
    texts = _text_lines(words, "transcript file")
    while texts and not texts[-1].strip():  # a trailing blank line is not an utterance
        texts.pop()
    if len(texts) != len(entries):
        raise DataError(f"{path} lists {len(entries)} utterances but {words} has {len(texts)} transcripts "
                        "(one line per utterance, same order)")
    rows = []
    for (lineno, line), (text_no, text) in zip(entries, enumerate(texts, 1)):
        where = f"{path}:{lineno}"
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 5:
            raise DataError(f"{where}: expected 5 tab-separated fields (id, video, audio, n_video_frames, "
                            f"n_audio_samples), got {len(fields)}: {line!r}")
        uid, video, audio = (f.strip() for f in fields[:3])
        if not uid:
            raise DataError(f"{where}: empty id")
        video_p = None if video.lower() in _ABSENT else root / video  # an absolute path stays itself
        audio_p = None if audio.lower() in _ABSENT else root / audio
        if video_p is None and audio_p is None:
            raise DataError(f"{where}: names neither a video nor an audio file")
        frames = _count(fields[3], "video frame count", where)
        samples = _count(fields[4], "audio sample count", where)
        n = None  # unknown: read from the media header at load
        if video_p is not None and frames:
            n = frames
        elif audio_p is not None and samples:
            n = math.ceil(samples / SAMPLES_PER_FRAME)
        if not text.strip():
            raise DataError(f"{words}:{text_no}: empty transcript")
        rows.append(Utterance(uid, video_p, audio_p, n, text.strip(), where))
    if not rows:
        raise DataError(f"manifest is empty: {path}")
    return rows


# --- jsonl --------------------------------------------------------------------------------------------

def _positive(value, what: str, where: str, integer: bool) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
        raise DataError(f"{where}: {what} must be a positive {'integer' if integer else 'number'}, got {value!r}")
    return value


def read_jsonl(path: str | Path, root: str | Path | None = None) -> list[Utterance]:
    """One JSON object per line; relative media paths are relative to the manifest's folder (`root`
    is not used). Without `frames` or `seconds` the length is read from the media header at load."""
    path = Path(path)
    rows = []
    for lineno, line in enumerate(_text_lines(path, "manifest"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        paths = {}
        for key in ("video", "audio"):
            value = obj.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DataError(f"{where}: {key} must be a path, got {value!r}")
            paths[key] = path.parent / value if value else None
        if paths["video"] is None and paths["audio"] is None:
            raise DataError(f"{where}: names neither a video nor an audio file")
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(f"{where}: text must be a string, got {text!r}")
        if not text.strip():
            raise DataError(f"{where}: empty transcript")
        uid = obj.get("id", obj.get("video") or obj.get("audio"))
        if not isinstance(uid, (str, int)) or isinstance(uid, bool) or not str(uid).strip():
            raise DataError(f"{where}: id must be a non-empty string, got {uid!r}")
        frames = _positive(obj.get("frames"), "frames", where, integer=True)
        seconds = _positive(obj.get("seconds"), "seconds", where, integer=False)
        n = frames  # None: read from the media header at load
        if n is None and seconds is not None:
            n = max(1, round(seconds * FRAME_RATE))
        rows.append(Utterance(str(uid), paths["video"], paths["audio"], n, text.strip(), where))
    if not rows:
        raise DataError(f"manifest is empty: {path}")
    return rows


# --- shards: the index over a split's tar shards (avsr.data.shards writes and streams them) -------------

SHARD_INDEX_FORMAT = "avsr-shards/1"


@dataclass(frozen=True)
class ShardEntry:
    name: str  # the tar file's name, beside the index
    count: int  # utterances in it
    frames: int  # their 25 fps video frames, summed
    bytes: int  # the file's size
    lengths: tuple[int, ...]  # each utterance's frames, in the shard's order (what batching plans from)


@dataclass(frozen=True)
class ShardIndex:
    location: str  # where the index was read (a path or URL); the shards lie beside it
    split: str
    shards: tuple[ShardEntry, ...]

    @property
    def utterances(self) -> int:
        return sum(s.count for s in self.shards)

    def shard_location(self, k: int) -> str:
        return self.location[: -len("index.json")] + self.shards[k].name


def read_shard_index(location: str | Path, root: str | Path | None = None,
                     timeout: float = DEFAULT_TIMEOUT) -> ShardIndex:
    """`<split>/index.json` of a shard set, from a folder, a URL or a `pipe:` command (`root` is not
    used). Only the index is read: per shard its name, size, count and the utterances' lengths."""
    where = str(location)
    try:
        tree = json.loads(read_bytes(location, timeout))
    except RemoteError as err:
        raise DataError(str(err)) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise DataError(f"{where}: not a shard index (not valid JSON: {err})") from None
    if not isinstance(tree, dict) or tree.get("format") != SHARD_INDEX_FORMAT:
        raise DataError(f"{where}: not a shard index of avsr shard (format {SHARD_INDEX_FORMAT} expected)")
    try:
        shards = tuple(ShardEntry(s["name"], int(s["count"]), int(s["frames"]), int(s["bytes"]),
                                  tuple(int(n) for n in s["lengths"])) for s in tree["shards"])
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{where}: damaged shard index ({type(err).__name__}: {err})") from None
    if not shards or any(s.count != len(s.lengths) or s.frames != sum(s.lengths) for s in shards):
        raise DataError(f"{where}: damaged shard index (no shard, or counts that do not add up)")
    return ShardIndex(where, str(tree.get("split", "")), shards)


# --- the table of formats ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ManifestFormat:
    name: str  # the value of data.format
    suffix: str  # how a manifest's file name ends (a file given on its own is recognised by it)
    layout: str  # where a split's manifest lives under the corpus root ({corpus}, {split})
    read: Callable  # (manifest, root=None) -> its rows; for a streamed format, its index
    streamed: bool = False  # items come by streaming (training reads them in order), not by row


FORMATS = {f.name: f for f in (
    ManifestFormat("csv", ".csv", "labels/{corpus}_{split}.csv", read_csv),
    ManifestFormat("fairseq", ".tsv", "{split}.tsv", read_fairseq),
    ManifestFormat("jsonl", ".jsonl", "{split}.jsonl", read_jsonl),
    ManifestFormat("shards", "index.json", "{split}/index.json", read_shard_index, streamed=True),
)}
FORMAT_CHOICES = ("auto", *FORMATS)  # data.format
ROW_FORMATS = tuple(name for name, f in FORMATS.items() if not f.streamed)  # read row by row


def _check_format(fmt: str, choices: tuple[str, ...] = FORMAT_CHOICES) -> None:
    if fmt not in choices:
        raise DataError(f"unknown manifest format {fmt!r}: one of {', '.join(choices)}")


def split_manifest(root: str | Path, corpus: str, split: str, fmt: str = "auto") -> str | Path:
    """Where a split's manifest lives under `root` in format `fmt` (the table's layout: csv
    `<root>/labels/<corpus>_<split>.csv`, fairseq `<root>/<split>.tsv` (+ .wrd), jsonl
    `<root>/<split>.jsonl`, shards `<root>/<split>/index.json`). `auto`: the one that exists (the
    label CSV's path when none does, so that is the file named missing; a URL root: shards, the only
    format read from URLs); two or more are refused, as the choice would be a guess."""
    _check_format(fmt)
    if fmt != "auto":
        return locate(root, FORMATS[fmt].layout.format(corpus=corpus, split=split))
    if is_url(root):
        return split_manifest(root, corpus, split, "shards")
    candidates = [split_manifest(root, corpus, split, name) for name in FORMATS]
    found = [path for path in candidates if Path(path).is_file()]
    if len(found) > 1:
        raise DataError(f"split {split} has manifests in several formats ({', '.join(map(str, found))}); "
                        f"choose one with data.format={', '.join(FORMATS)}")
    return found[0] if found else candidates[0]


def detect_format(path: str | Path) -> str:
    """The format a manifest's name says (the table's suffixes: .csv, .tsv, .jsonl, index.json)."""
    for name, f in FORMATS.items():
        if str(path).lower().endswith(f.suffix):
            return name
    raise DataError(f"{path}: cannot tell the manifest format from the name "
                    f"({', '.join(f.suffix for f in FORMATS.values())}); set data.format to {', '.join(FORMATS)}")


def read_manifest(path: str | Path, fmt: str = "auto", root: str | Path | None = None) -> list[Utterance]:
    """A manifest's rows, unchecked against the media: the one reader of every row format. `root`:
    the media root of a label CSV (default: the folder above its labels/ folder); fairseq and jsonl
    manifests locate their media themselves. A shard index has no rows to read: training streams it."""
    _check_format(fmt)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if FORMATS[fmt].streamed:
        raise DataError(f"{path}: a shard index is streamed by training (data.format=shards), not read row by "
                        f"row; use the manifest the shards were made from ({', '.join(ROW_FORMATS)})")
    return FORMATS[fmt].read(path, root)


# --- writing a split in every row format (avsr prepare-corpus) ------------------------------------------

def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def manifest_texts(rows: list[Utterance], root: str | Path, corpus: str, split: str) -> dict[Path, str]:
    """A split's manifests in the three row formats, as {file: text}, for utterances whose media lie
    under `<root>/<corpus>/` (each video an .mp4 with its .wav beside it, audio of 640 samples a
    frame): the label CSV, the .tsv + .wrd and the .jsonl at the table's places. Every path in them
    is relative (to the corpus root, the .tsv's and the .jsonl's folders), so a corpus can move, and
    the same rows give the same bytes. The id of an utterance is its path under `<root>/<corpus>`,
    as a label CSV names it, in all three."""
    root = Path(root)
    media = root / corpus
    places = {name: Path(split_manifest(root, corpus, split, name)) for name in ROW_FORMATS}
    csv, tsv, wrd, jsonl = [], [_relative(media, places["fairseq"].parent)], [], []
    for row in rows:
        rel = _relative(row.video, media)
        csv.append(f"{corpus},{rel},{row.n_frames},{row.text}")
        tsv.append("\t".join([rel, rel, _relative(row.audio, media), str(row.n_frames),
                              str(row.n_frames * SAMPLES_PER_FRAME)]))
        wrd.append(row.text)
        jsonl.append(json.dumps({"id": rel, "video": _relative(row.video, places["jsonl"].parent),
                                 "audio": _relative(row.audio, places["jsonl"].parent), "text": row.text,
                                 "frames": row.n_frames}))
    lines = {places["csv"]: csv, places["fairseq"]: tsv, places["fairseq"].with_suffix(".wrd"): wrd,
             places["jsonl"]: jsonl}
    return {path: "".join(line + "\n" for line in text) for path, text in lines.items()}


def probe_frames(row: Utterance) -> int:
    """An utterance's length from its media header, without decoding: the video's frame count
    (from its duration if the container does not store it), else the audio's samples / 640."""
    if row.video is not None:
        try:
            with av.open(str(row.video)) as container:
                if not container.streams.video:
                    raise MediaError(f"no video stream in {row.video}")
                stream = container.streams.video[0]
                if stream.frames:
                    return int(stream.frames)
                seconds = (float(stream.duration * stream.time_base) if stream.duration and stream.time_base
                           else container.duration / av.time_base if container.duration else 0.0)
        except (av.error.FFmpegError, ValueError) as err:
            raise MediaError(f"cannot read the header of video {row.video}: {err}") from None
        if seconds <= 0:
            raise MediaError(f"video {row.video} states no length (add frames or seconds to the manifest)")
        return max(1, round(seconds * FRAME_RATE))
    try:
        samples = sf.info(str(row.audio)).frames
    except (sf.LibsndfileError, RuntimeError) as err:
        raise MediaError(f"cannot read the header of audio {row.audio}: {err}") from None
    if samples <= 0:
        raise MediaError(f"audio {row.audio} has no samples")
    return math.ceil(samples / SAMPLES_PER_FRAME)


def _problem(row: Utterance, modalities: tuple[str, ...]) -> tuple[str, str] | None:
    """(short name, message) when an utterance cannot be read: it names no file of a modality, or
    the file is missing or empty. Both name the file."""
    for m in modalities:
        file = getattr(row, m)
        if file is None:
            return f"{row.id} (no {m})", f"names no {m} file (avsr reads audio-visual pairs)"
        try:
            size = file.stat().st_size
        except OSError:
            return f"{file} (missing)", f"{m} file not found: {file}"
        if size == 0:
            return f"{file} (empty)", f"{m} file is empty: {file}"
    return None


def load_manifest(path: str | Path, fmt: str = "auto", root: str | Path | None = None, on_bad_file: str = "stop",
                  max_seconds: float | None = None,
                  modalities: tuple[str, ...] = ("video", "audio")) -> list[Utterance]:
    """A split's utterances, checked against the media before any is decoded.

    Each must name a file of every one of `modalities`, and those files must exist and not be
    empty; a length the manifest does not give is read from the media header. A failing
    utterance raises DataError naming the file and the manifest line (`on_bad_file="stop"`) or
    is dropped (`"skip"`: one warning line with the count and the first few names). Utterances
    longer than `max_seconds` are dropped, with a count. None left is an error."""
    if on_bad_file not in BAD_FILE_POLICIES:
        raise DataError(f"unknown on_bad_file {on_bad_file!r}: one of {', '.join(BAD_FILE_POLICIES)}")
    if max_seconds is not None and not max_seconds > 0:
        raise DataError(f"max_seconds must be positive, got {max_seconds!r}")
    rows = read_manifest(path, fmt, root)
    kept, bad = [], []
    for row in rows:
        problem = _problem(row, modalities)
        if problem is None and row.n_frames is None:
            try:
                row = replace(row, n_frames=probe_frames(row))
            except MediaError as err:
                problem = f"{row.video or row.audio} (unreadable)", str(err)
        if problem is None:
            kept.append(row)
        elif on_bad_file == "stop":
            raise DataError(f"{row.source}: {problem[1]}")
        else:
            bad.append(problem[0])
    if bad:
        warn(f"{path}: skipped {len(bad)} of {len(rows)} utterances whose media are missing, empty or "
             f"unreadable: {_first(bad)}")
    long = []
    if max_seconds is not None:
        long = [r for r in kept if r.n_frames > max_seconds * FRAME_RATE]
        if long:
            kept = [r for r in kept if r.n_frames <= max_seconds * FRAME_RATE]
            warn(f"{path}: dropped {len(long)} of {len(rows)} utterances longer than {max_seconds:g} s "
                 f"(data.max_utterance_seconds): {_first([f'{r.id} ({r.seconds:.1f} s)' for r in long])}")
    if not kept:
        raise DataError(f"{path}: no utterance left to read ({len(bad)} with bad media, {len(long)} too long)")
    return kept


def _first(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f", ... ({len(names) - SHOWN} more)" if len(names) > SHOWN else "")
