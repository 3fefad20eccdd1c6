"""Transcribing drawn talking faces against evaluating the same corpus items.

    python experiments/talking_faces.py CHECKPOINT --root CORPUS_ROOT [--limit N] [--beams B] [--out FILE.json]

For the first N test items of the checkpoint's synthetic corpus, `avsr synth-faces` draws a full
face whose mouth moves as in the item (with the item's audio). Each face video goes through the
whole path a user's video takes (face mesh, alignment, mouth crop, cutting, decoding); each corpus
item (its 96x96 mp4 + wav) goes through the same decoding without preprocessing. For ASR, VSR and
AVSR the script reports how many hypotheses are identical, the WER of both against the
references, the offset between the crop centre and the rendered mouth centre (ROI pixels), and
real-time factors of preprocessing and decoding, measured separately. Writes JSON; prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from avsr.errors import AvsrError
from avsr.io import write_text_atomic
from avsr.models.tasks import TASKS
from avsr.preprocess import preprocess_file
from avsr.preprocess.roi import apply
from avsr.synth.face import synthesize_faces
from avsr.text import word_errors
from avsr.transcription import Transcriber


def mouth_offsets(pre, meta: dict) -> np.ndarray:
    """(T,) distance in ROI pixels between the crop centre and the rendered mouth centre."""
    rendered = np.asarray(meta["mouth_centres"], np.float32)  # (T, 2) frame pixels
    n = min(len(rendered), len(pre.transforms))
    in_roi = apply(pre.transforms[:n], rendered[:n])  # (T, 2) ROI px
    return np.linalg.norm(in_roi - 48.0, axis=1)


def run(args: argparse.Namespace) -> dict:
    transcriber = Transcriber(args.checkpoint, num_beams=args.beams)
    root = Path(args.root)
    faces = synthesize_faces(root, args.corpus, "test", args.limit)
    metas = [json.loads(p.with_suffix(".json").read_text()) for p in faces]
    references = [m["text"] for m in metas]
    speech = sum(m["n_frames"] for m in metas) / 25.0

    start = time.perf_counter()
    face_inputs = [preprocess_file(p) for p in faces]
    preprocess_s = time.perf_counter() - start
    corpus_inputs = [pre for pre, _ in transcriber.prepare([root / args.corpus / m["source"] for m in metas])]
    offsets = np.concatenate([mouth_offsets(pre, m) for pre, m in zip(face_inputs, metas)])
    frames = sum(pre.total_frames for pre in face_inputs)
    # What the lip encoder sees differently: the centre 88x88 of each face ROI against the corpus frame.
    pixel_diff = np.concatenate([np.abs(f.video[:len(c.video), 4:92, 4:92].astype(np.float32)
                                        - c.video[:len(f.video), 4:92, 4:92]).mean(axis=(1, 2))
                                 for f, c in zip(face_inputs, corpus_inputs)])  # (T,) gray levels per frame
    detected = sum(pre.face_frames for pre in face_inputs)

    transcriber.model  # loaded before timing
    result = {"checkpoint": str(args.checkpoint), "items": len(faces), "speech_s": round(speech, 2),
              "beams": args.beams, "face_frames": f"{detected}/{frames}",
              "mouth_offset_px": {"mean": round(float(offsets.mean()), 2), "max": round(float(offsets.max()), 2)},
              "roi_mean_abs_diff": round(float(pixel_diff.mean()), 2),
              "preprocess_s": round(preprocess_s, 2), "preprocess_rtf": round(preprocess_s / speech, 3),
              "detect_ms_per_frame": round(1000 * sum(p.timings["detect"] for p in face_inputs) / frames, 2),
              "tasks": {}}
    for task in (t for t in TASKS if t in transcriber.tasks):
        start = time.perf_counter()
        from_faces = transcriber.transcribe(face_inputs, task=task)
        decode_s = time.perf_counter() - start
        from_corpus = transcriber.transcribe(corpus_inputs, task=task)
        differing = [{"id": m["source"], "reference": r, "face": f.text, "corpus": c.text}
                     for m, r, f, c in zip(metas, references, from_faces, from_corpus) if f.text != c.text]
        result["tasks"][task] = {
            "identical": len(faces) - len(differing),
            "wer_face": round(100 * word_errors(references, [t.text for t in from_faces]).wer, 1),
            "wer_corpus": round(100 * word_errors(references, [t.text for t in from_corpus]).wer, 1),
            "decode_s": round(decode_s, 2), "decode_rtf": round(decode_s / speech, 3), "differing": differing}
    return result


def table(result: dict) -> str:
    lines = [f"{result['items']} test items, {result['speech_s']} s of speech, beam {result['beams']}; "
             f"faces found in {result['face_frames']} frames; mouth offset {result['mouth_offset_px']['mean']} px "
             f"mean, {result['mouth_offset_px']['max']} px max; preprocessing RTF {result['preprocess_rtf']} "
             f"({result['detect_ms_per_frame']} ms/frame face mesh); face ROI vs corpus frame: "
             f"{result['roi_mean_abs_diff']} gray levels mean absolute difference",
             "| task | identical | WER faces | WER corpus items | decoding RTF |", "|---|---|---|---|---|"]
    for task, r in result["tasks"].items():
        lines.append(f"| {task.upper()} | {r['identical']}/{result['items']} | {r['wer_face']} | {r['wer_corpus']} "
                     f"| {r['decode_rtf']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--root", required=True, help="the checkpoint's corpus root (holds <corpus>/corpus.json)")
    p.add_argument("--corpus", default="synth")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("talking_faces.json"))
    args = p.parse_args(argv)
    try:
        result = run(args)
    except AvsrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"details: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
