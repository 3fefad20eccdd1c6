"""How well a segment's confidence separates correct in-domain transcripts from made-up ones.

    python experiments/confidence.py CHECKPOINT [--cache DIR] [--out FILE.json] [--beams N] [--limit N]

Every input is transcribed by `avsr.transcription.Transcriber`, as `avsr transcribe` does, with
every task the checkpoint has that the input can feed, and each decoded segment's `confidence`
(avsr.transcription.trust) is read. The groups:

* in-domain: the val and test splits of the corpus the checkpoint was trained on (its first
  --limit utterances each); a segment is "correct" when its WER is 0. A threshold is chosen on
  val alone (the largest that flags at most 5 % of val's correct segments, over all tasks: the
  rule trust.THRESHOLD was set by), and test's correct segments are compared with the rest.
* real (out of domain for a model trained on the synthetic corpus): the real recordings of
  experiments/real_recordings.py (ASR), the real faces of experiments/real_faces.py (VSR, cut
  into 16 s segments), and AVSR on those recordings' audio under the first face's picture
  (real speech and a real face, not of the same person: the model has neither seen).
* made-up: --made-up inputs of each kind that hold no speech, as long as the first test
  utterances: the corpus babble, white and pink noise at -30 dBFS (ASR); a test utterance's
  lips played backwards, frames of random pixels (VSR); each such sound under each such
  picture (AVSR); and silence (digital zeros, a still picture; all three tasks), which
  avsr.transcription.evidence leaves empty before decoding.

Prints a table (per group and task: segments, left empty, mean confidence of the decoded ones,
share flagged `low_confidence` or `nothing_heard` (decoded, and nothing written) or left empty),
the repetition loops found (their score range against that of the correct test segments), and
the AUROC (the chance that a correct in-domain test segment has a higher confidence than a
decoded real or made-up one, ties counted half) of the confidence and, for comparison, of the
plain score (length-normalised log-probability).
Writes --out (JSON): the thresholds, the table, the loops, the AUROCs and every segment.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling experiments: their fetchers

from avsr.data.media import SAMPLE_RATE, SAMPLES_PER_FRAME, read_audio, read_video  # noqa: E402
from avsr.errors import AvsrError  # noqa: E402
from avsr.models.tasks import MODALITIES, TASKS  # noqa: E402
from avsr.preprocess.result import Preprocessed  # noqa: E402

FLAGGED_CORRECT = 0.05  # the threshold flags at most this share of correct in-domain (val) segments
SEED = 0


def recording(source: str, video: np.ndarray | None = None, audio: np.ndarray | None = None) -> Preprocessed:
    """A Preprocessed of equal-length streams (video (T, 96, 96) uint8, audio (T * 640,) float32)."""
    if video is not None and audio is not None:
        frames = min(len(video), len(audio) // SAMPLES_PER_FRAME)
        video, audio = video[:frames], audio[:frames * SAMPLES_PER_FRAME]
    seconds = len(video) / 25 if video is not None else len(audio) / SAMPLE_RATE
    return Preprocessed(source=Path(source), video=video, audio=audio, duration=seconds,
                        total_frames=0 if video is None else len(video), face_frames=0 if video is None else len(video))


def corpus_inputs(transcriber, limit: int) -> tuple[list[dict], Path]:
    """In-domain inputs: the val and test utterances of the checkpoint's corpus (and its root)."""
    from avsr.data.manifests import read_manifest
    from avsr.paths import labels_csv

    data = transcriber.opened.train_section.get("data", {})
    root = Path(transcriber.opened.locate("data.root", data.get("root", "data")))
    corpus = data.get("corpus", "synth")
    inputs = []
    for split in ("val", "test"):
        for row in read_manifest(labels_csv(root, corpus, split))[:limit]:
            mp4 = row.video
            inputs.append({"group": f"in-domain {split}", "input": recording(str(mp4), read_video(mp4),
                                                                                read_audio(row.audio)),
                           "reference": row.text})
    return inputs, root / "noise" / f"{corpus}_babble.wav"


def real_inputs(cache: Path) -> list[dict]:
    """Real speech (ASR), real faces (VSR) and the two together (AVSR)."""
    import real_faces
    import real_recordings

    from avsr.preprocess import preprocess_file

    clips, _ = real_recordings.load_clips(cache)
    faces = [preprocess_file(path) for path in real_faces.fetch(cache)]
    inputs = [{"group": "real", "input": recording(c["clip"], audio=c["audio"]), "tasks": ("asr",)} for c in clips]
    inputs += [{"group": "real", "input": face, "tasks": ("vsr",)} for face in faces]
    lips = faces[0].video
    for c in clips:
        frames = min(len(lips), len(c["audio"]) // SAMPLES_PER_FRAME)
        inputs.append({"group": "real", "input": recording(f"{c['clip']}+{faces[0].source.name}", lips[:frames],
                                                           c["audio"]), "tasks": ("avsr",)})
    return inputs


def made_up_inputs(babble_path: Path, lips: list[np.ndarray]) -> list[dict]:
    """Inputs that hold no speech, each as long as one of `lips` (test utterances' mouth crops):
    babble, white and pink noise (ASR); the lips played backwards, random pixels (VSR); every
    such sound under every such picture (AVSR: neither stream says anything); and silence
    (digital zeros, a still picture), which is left empty before decoding."""
    from avsr.data.noise import pink_noise, read_noise, white_noise

    rng = np.random.default_rng(SEED)
    babble = read_noise(babble_path)
    inputs = []

    def add(kind: str, source: str, task: str, video=None, audio=None) -> None:
        inputs.append({"group": "made-up", "kind": kind, "input": recording(source, video, audio), "tasks": (task,)})

    for k, clip in enumerate(lips):
        n = len(clip) * SAMPLES_PER_FRAME
        start = int(rng.integers(0, max(1, babble.size - n)))
        sounds = {"babble": babble[start:start + n],
                  "white noise": 0.0316 * white_noise(n, rng),  # -30 dBFS
                  "pink noise": 0.0316 * pink_noise(n, rng)}
        pictures = {"lips backwards": clip[::-1].copy(),
                    "random pixels": rng.integers(0, 256, clip.shape, dtype=np.uint8)}
        for name, sound in sounds.items():
            add(name, f"{name} {k}", "asr", audio=sound)
            for picture_name, picture in pictures.items():
                add(f"{name} + {picture_name}", f"{name} + {picture_name} {k}", "avsr", picture, sound)
        for name, picture in pictures.items():
            add(name, f"{name} {k}", "vsr", video=picture)
        still, zeros = np.repeat(clip[:1], len(clip), axis=0), np.zeros(n, np.float32)
        add("silence", f"silence {k}", "asr", audio=zeros)
        add("silence", f"still picture {k}", "vsr", video=still)
        add("silence", f"silence + still picture {k}", "avsr", still, zeros)
    return inputs


def transcribe_all(transcriber, inputs: list[dict]) -> list[dict]:
    """One row per segment: group, kind, task, source, span, text, score, confidence, flags,
    whether it was left empty (not decoded) and, in domain, whether it is correct (WER 0)."""
    from avsr.text import word_errors

    rows = []
    for task in transcriber.tasks:
        mine = [x for x in inputs if task in x.get("tasks", TASKS) and all(
            getattr(x["input"], m) is not None for m in MODALITIES[task])]
        if not mine:
            continue
        for x, t in zip(mine, transcriber.transcribe([x["input"] for x in mine], task=task, progress=False)):
            for s in t.segments:
                row = {"group": x["group"], "kind": x.get("kind", x["group"]), "task": task, "source": t.source,
                       "start": s.start, "end": s.end, "text": s.text, "left_empty": s.score is None,
                       "score": None if s.score is None else round(s.score, 4), "confidence": s.confidence,
                       "flags": s.flags}
                if "reference" in x:
                    row["correct"] = word_errors([x["reference"]], [s.text]).wer == 0
                rows.append(row)
    return rows


def auroc(negatives: list[float], positives: list[float]) -> float | None:
    """P(a negative scores higher than a positive), ties half: 1 is a perfect separation."""
    if not negatives or not positives:
        return None
    neg, pos = np.asarray(negatives)[:, None], np.asarray(positives)[None, :]
    return float(np.mean((neg > pos) + 0.5 * (neg == pos)))


def name_of(row: dict) -> str:
    """The row's group, in domain split by correct / wrong."""
    return row["group"] if "correct" not in row else f"{row['group']} {'correct' if row['correct'] else 'wrong'}"


def share(rows: list[dict], test) -> float | None:
    return round(float(np.mean([bool(test(r)) for r in rows])), 3) if rows else None


def summarise(rows: list[dict], threshold: float) -> dict:
    """The threshold chosen on val, a table per group and task, the loops, and the AUROCs."""
    decoded = [r for r in rows if not r["left_empty"]]
    correct_val = [r["confidence"] for r in decoded if name_of(r) == "in-domain val correct"]
    chosen = float(np.quantile(correct_val, FLAGGED_CORRECT, method="lower")) if correct_val else None
    by = defaultdict(list)
    for r in rows:
        by[(name_of(r), r["task"])].append(r)
        by[(name_of(r), "all")].append(r)
    table = {f"{name} | {task}": {
        "segments": len(rs), "left_empty": sum(r["left_empty"] for r in rs),
        "mean_confidence": (round(float(np.mean([r["confidence"] for r in rs if not r["left_empty"]])), 3)
                            if any(not r["left_empty"] for r in rs) else None),
        "flagged": share(rs, lambda r: r["left_empty"] or {"low_confidence", "nothing_heard"} & set(r["flags"])),
        "flagged_at_the_chosen": None if chosen is None else share(
            rs, lambda r: r["left_empty"] or r["confidence"] < chosen)}
        for (name, task), rs in sorted(by.items())}
    loops = [r for r in decoded if "loop" in r["flags"]]
    correct_test = [r for r in decoded if name_of(r) == "in-domain test correct"]
    loop_summary = {"segments": len(loops), "by_group": dict(sorted(Counter(r["group"] for r in loops).items())),
        "score_range": [min(r["score"] for r in loops), max(r["score"] for r in loops)] if loops else None,
        "confidence_max": max(r["confidence"] for r in loops) if loops else None,
        "correct_test_score_range": ([min(r["score"] for r in correct_test), max(r["score"] for r in correct_test)]
                                     if correct_test else None)}
    separation = {}
    for other in ("real", "made-up"):
        theirs = [r for r in decoded if r["group"] == other]
        for value in ("confidence", "score"):
            separation[f"{other} by {value}"] = auroc([r[value] for r in correct_test], [r[value] for r in theirs])
    return {"threshold_in_use": threshold, "threshold_chosen_on_val": chosen, "table": table, "loops": loop_summary,
            "auroc": separation}


def print_table(summary: dict) -> None:
    print(f"threshold in use (avsr.transcription.trust.THRESHOLD): {summary['threshold_in_use']:g}; chosen on "
          f"val here (flags {100 * FLAGGED_CORRECT:g} % of its correct segments): {summary['threshold_chosen_on_val']}")
    print("| group | task | segments | left empty | mean confidence | flagged or left empty |")
    print("|---|---|---|---|---|---|")
    for key, v in summary["table"].items():
        group, task = key.split(" | ")
        mean = "-" if v["mean_confidence"] is None else f"{v['mean_confidence']:.3f}"
        print(f"| {group} | {task} | {v['segments']} | {v['left_empty']} | {mean} | {100 * v['flagged']:.1f} % |")
    loops = summary["loops"]
    if loops["segments"]:
        correct = loops["correct_test_score_range"]  # None: no test segment was transcribed exactly
        print(f"\nloops: {loops['segments']} segments {loops['by_group']}, score {loops['score_range'][0]:.3f} to "
              f"{loops['score_range'][1]:.3f} (correct in-domain test: "
              f"{'none' if correct is None else f'{correct[0]:.3f} to {correct[1]:.3f}'}), "
              f"confidence at most {loops['confidence_max']}")
    print("\nAUROC, correct in-domain test segments against the decoded segments of:")
    for key, value in summary["auroc"].items():
        print(f"  {key}: {'-' if value is None else f'{value:.3f}'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="checkpoint folder (e.g. runs/quickstart/avsr/checkpoints/last)")
    parser.add_argument("--cache", default="~/.cache/avsr/real-media", help="where the real media are kept")
    parser.add_argument("--out", help="write everything here (JSON)")
    parser.add_argument("--beams", type=int, default=4, help="beam size (default %(default)s, as avsr transcribe)")
    parser.add_argument("--limit", type=int, default=100, help="utterances per in-domain split (default %(default)s)")
    parser.add_argument("--made-up", type=int, default=10, help="clips per kind of made-up input (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        from avsr.io import write_text_atomic
        from avsr.transcription import Transcriber
        from avsr.transcription.trust import THRESHOLD

        transcriber = Transcriber(Path(args.checkpoint), num_beams=args.beams)
        inputs, babble = corpus_inputs(transcriber, args.limit)
        lips = [x["input"].video for x in inputs if x["group"] == "in-domain test"][:args.made_up]
        inputs += real_inputs(Path(args.cache).expanduser()) + made_up_inputs(babble, lips)
        rows = transcribe_all(transcriber, inputs)
    except AvsrError as err:
        print(f"confidence: {err}", file=sys.stderr)
        return 1
    summary = summarise(rows, THRESHOLD)
    print_table(summary)
    if args.out:
        write_text_atomic(args.out, json.dumps({"checkpoint": str(Path(args.checkpoint).resolve()),
                                                "beams": args.beams, **summary, "segments": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
