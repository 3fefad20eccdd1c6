"""A whole raw corpus -> a prepared one (`avsr prepare-corpus`): every video preprocessed as `avsr
preprocess` does it (96x96 mouth ROIs at 25 fps + 16 kHz mono), the manifests of every split in the
three row formats, and a report.

Layouts of the source tree:

  lrs3    <split>/<speaker>/<id>.mp4 + <id>.txt whose `Text:` line is the transcript
  vox2    <split>/[mp4/]<speaker>/<video>/<clip>.mp4, no transcripts: --whisper FOLDER transcribes them
  folder  any video (<path>.mp4, .mkv, .webm, .mov, .avi, .m4v) with a sidecar <path>.txt; one split

Output (DST): `<corpus>/<split>/.../<id>.mp4 + .wav + .json` per utterance (the .json, written last,
marks it done: a rerun skips it), `labels/<corpus>_<split>.csv`, `<split>.tsv` + `.wrd`,
`<split>.jsonl`, and `prepare-report.json` (files done, files failed with the reason, frames, hours,
face-detection rate). A file that fails is listed and never stops the corpus. Files are processed in
groups (a task each) by an engine (avsr.preprocess.engines); whatever the engine, the number of
workers or the interruptions, the same source gives the same bytes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from avsr.data.manifests import FRAME_RATE, Utterance, manifest_texts
from avsr.errors import AvsrError
from avsr.io import RUN_MARKER, check_output_folder, claim_folder, write_text_atomic
from avsr.preprocess import engines
from avsr.preprocess.pipeline import preprocess_file, write_pair
from avsr.text import normalise

LAYOUTS = ("lrs3", "vox2", "folder")
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
REPORT = "prepare-report.json"
GROUP_SIZE = 8  # files per task: small enough to spread a corpus, large enough to load models once per task
SHAPES = {"lrs3": "<split>/<speaker>/<id>.mp4 with <id>.txt", "vox2": "<split>/[mp4/]<speaker>/<video>/<clip>.mp4",
          "folder": "videos with a sidecar .txt"}


@dataclass(frozen=True)
class Source:
    video: Path  # the raw recording
    split: str
    rel: str  # where its outputs go under <out>/<corpus>/, without suffix: <split>/<speaker>/<id>
    transcript: Path | None  # its .txt (None: none exists, Whisper must make one)


def find_sources(src: Path, layout: str, split: str = "train") -> list[Source]:
    """Every video of the tree in `layout`, sorted by output name. `split`: the folder layout's split."""
    def sidecar(video: Path) -> Path | None:
        return video.with_suffix(".txt") if video.with_suffix(".txt").is_file() else None

    found = []
    if layout == "lrs3":
        for video in src.glob("*/*/*.mp4"):
            rel = video.relative_to(src).with_suffix("").as_posix()
            found.append(Source(video, rel.split("/")[0], rel, sidecar(video)))
    elif layout == "vox2":
        for video in src.rglob("*.mp4"):
            parts = [p for p in video.relative_to(src).with_suffix("").parts if p != "mp4"]
            if len(parts) >= 3:
                found.append(Source(video, parts[0], "/".join(parts), sidecar(video)))
    elif layout == "folder":
        for video in src.rglob("*"):
            if video.suffix.lower() in VIDEO_SUFFIXES and video.is_file():
                found.append(Source(video, split, f"{split}/{video.relative_to(src).with_suffix('').as_posix()}",
                                    sidecar(video)))
    else:
        raise AvsrError(f"--layout {layout!r}: one of {', '.join(LAYOUTS)}")
    found.sort(key=lambda s: s.rel)
    clashes = sorted({a.rel for a, b in zip(found, found[1:]) if a.rel == b.rel})
    if clashes:
        raise AvsrError(f"{src}: several videos would be written as {', '.join(clashes[:3])} (same name, other "
                        "suffix); keep one of each")
    return found


def read_transcript(path: Path) -> str:
    """The normalised transcript of a .txt: its `Text:` line (LRS3), else its whole text."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise AvsrError(f"cannot read transcript {path}: {err}") from None
    lines = [line.split(":", 1)[1] for line in text.splitlines() if line.startswith("Text:")]
    words = normalise(lines[0] if lines else text)
    if not words:
        raise AvsrError(f"{path}: empty transcript")
    return words


def prepare_file(source: Source, out: Path, corpus: str, whisper: str | None) -> dict:
    """One video -> its mp4 + wav + .json (written last) under <out>/<corpus>/<rel>, or the reason
    it failed. A video whose .json exists is done: its record is returned as it is."""
    marker = out / corpus / f"{source.rel}.json"
    if marker.is_file():
        return {**json.loads(marker.read_text("utf-8")), "status": "skipped"}
    try:
        if source.transcript is None and whisper is None:
            raise AvsrError(f"no transcript: {source.video.with_suffix('.txt')} is missing")
        text = read_transcript(source.transcript) if source.transcript else None
        result = preprocess_file(source.video)
        if result.video is None:
            raise AvsrError(f"no face found in {source.video} ({result.total_frames} frames)")
        if result.audio is None:
            raise AvsrError(f"no audio stream in {source.video}: an utterance needs its speech")
        if text is None:
            from avsr.preprocess.whisper import transcribe

            text = transcribe(whisper, result.audio)
            if not text:
                raise AvsrError(f"Whisper heard no words in {source.video}")
        write_pair(result, marker.parent)
        record = {"id": f"{source.rel}.mp4", "split": source.split, "source": str(source.video), "text": text,
                  "frames": len(result.video), "face_frames": result.face_frames,
                  "transcript": "txt" if source.transcript else "whisper"}
        write_text_atomic(marker, json.dumps(record, sort_keys=True) + "\n")
        return {**record, "status": "done"}
    except Exception as err:  # noqa: BLE001 - any file's failure is listed; the corpus goes on
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if not isinstance(err, AvsrError):
            reason = f"{type(err).__name__}: {reason}"
        return {"id": f"{source.rel}.mp4", "split": source.split, "source": str(source.video), "status": "failed",
                "reason": reason}


def prepare_group(sources: list[Source], out: Path, corpus: str, whisper: str | None) -> list[dict]:
    """A task: the group's files one after the other."""
    return [prepare_file(s, out, corpus, whisper) for s in sources]


def _failed_group(group: tuple, reason: str) -> list[dict]:
    sources = group[0]
    return [{"id": f"{s.rel}.mp4", "split": s.split, "source": str(s.video), "status": "failed",
             "reason": reason} for s in sources]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' (0 <= i < n): this job's part of a scheduler's job array."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise AvsrError(f"--shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/8 for the first of 8 jobs") from None
    return i, n


def prepare_corpus(src: str | Path, layout: str, out: str | Path, corpus: str | None = None, engine: str = "local",
                   workers: int = 1, ray_address: str | None = None, shard: tuple[int, int] | None = None,
                   whisper: str | Path | None = None, split: str = "train", group_size: int = GROUP_SIZE,
                   progress: bool = True) -> dict:
    """Prepare the corpus at `src` (in `layout`) into `out`; returns the report (see the module doc)
    with this run's counts under "run" (not written: the report's bytes do not depend on the run).
    `shard` (i, n): only every n-th file from the i-th, for one job of a job array; such a run
    writes no manifests (run once more without it: every finished file is skipped)."""
    src, out = Path(src), Path(out)
    corpus = corpus or layout
    if not src.is_dir():
        raise AvsrError(f"source corpus folder not found: {src}")
    if engine not in engines.ENGINES:
        raise AvsrError(f"--engine {engine!r}: one of {', '.join(engines.ENGINES)}")
    if whisper is not None:
        from avsr.preprocess.whisper import check_whisper

        whisper = str(check_whisper(whisper).resolve())
    sources = find_sources(src, layout, split)
    if not sources:
        raise AvsrError(f"no videos in {src} in the {layout} layout ({SHAPES[layout]})")
    if whisper is None and not any(s.transcript for s in sources):
        raise AvsrError(f"missing transcripts: none of the {len(sources)} videos in {src} has a .txt beside it "
                        f"({'VoxCeleb2 has none; ' if layout == 'vox2' else ''}pass --whisper FOLDER to transcribe "
                        "them with a local Whisper model)")
    address = engines.ray_address(ray_address) if engine == "ray" else None
    splits = sorted({s.split for s in sources})
    entries = (corpus, "labels", REPORT, *(f"{s}.{ext}" for s in splits for ext in ("tsv", "wrd", "jsonl")))
    # the one output rule, before any work: a new, empty or our own folder (a rerun continues it)
    check_output_folder(out, "prepare-corpus", entries, inputs=(src, whisper), replace=True)
    marked_now = not (out / RUN_MARKER).exists()
    claim_folder(out, "prepare-corpus", entries)  # before the work: a rerun after Ctrl-C continues it
    mine = sources[shard[0]::shard[1]] if shard else sources
    groups = [(mine[k:k + group_size], out.resolve(), corpus, whisper) for k in range(0, len(mine), group_size)]
    start = time.perf_counter()
    if engine == "ray":
        runs = engines.run_ray(prepare_group, groups, address, src.resolve(), out.resolve(), _failed_group)
    else:
        runs = engines.run_local(prepare_group, groups, workers)
    results: list[list[dict]] = [[] for _ in groups]
    try:
        with tqdm(total=len(mine), unit="file", desc="prepare-corpus", disable=not progress,
                  dynamic_ncols=True) as bar:
            for k, done in runs:
                results[k] = done
                bar.update(len(done))
    finally:
        runs.close()  # stops the pool or leaves the cluster, also on Ctrl-C
    seconds = time.perf_counter() - start
    records = [r for group in results for r in group]
    report = _report(records, layout, corpus)
    if records and not report["done"]:
        if marked_now:  # nothing was prepared: leave nothing that looks like a prepared corpus
            (out / RUN_MARKER).unlink(missing_ok=True)
        raise AvsrError(f"none of the {len(records)} videos could be prepared; the first: {records[0]['source']}: "
                        f"{records[0]['reason']}")
    new = [r for r in records if r["status"] == "done"]
    report["run"] = {"engine": engine, "workers": workers if engine == "local" else None, "seconds": round(seconds, 2),
                     "processed": len(new), "skipped": sum(r["status"] == "skipped" for r in records),
                     "frames_processed": sum(r["frames"] for r in new)}
    if shard:
        return report
    for name in splits:
        rows = [Utterance(r["id"], out / corpus / r["id"], (out / corpus / r["id"]).with_suffix(".wav"), r["frames"],
                          r["text"]) for r in records if r["status"] != "failed" and r["split"] == name]
        if rows:
            for path, text in manifest_texts(rows, out, corpus, name).items():
                write_text_atomic(path, text)
    write_text_atomic(out / REPORT, json.dumps({k: v for k, v in report.items() if k != "run"}, indent=1) + "\n")
    return report


def _report(records: list[dict], layout: str, corpus: str) -> dict:
    ok = [r for r in records if r["status"] != "failed"]
    frames = sum(r["frames"] for r in ok)
    splits = {}
    for r in ok:
        s = splits.setdefault(r["split"], {"utterances": 0, "frames": 0})
        s["utterances"] += 1
        s["frames"] += r["frames"]
    for s in splits.values():
        s["hours"] = round(s["frames"] / FRAME_RATE / 3600, 4)
    return {"layout": layout, "corpus": corpus, "files": len(records), "done": len(ok),
            "failed": [{"file": r["source"], "reason": r["reason"]} for r in records if r["status"] == "failed"],
            "frames": frames, "hours": round(frames / FRAME_RATE / 3600, 4),
            "face_detection_rate": round(sum(r["face_frames"] for r in ok) / frames, 4) if frames else 0.0,
            "transcribed_by_whisper": sum(r["transcript"] == "whisper" for r in ok),
            "splits": dict(sorted(splits.items()))}
