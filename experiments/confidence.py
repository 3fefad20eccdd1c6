"""How well a segment's confidence separates correct in-domain transcripts from made-up ones.

    python experiments/confidence.py CHECKPOINT [--cache DIR] [--out FILE.json] [--beams N] [--limit N]

Every input is transcribed by `avsr.transcription.Transcriber`, as `avsr transcribe` does, with
every task the checkpoint has that the input can feed, and each decoded segment's `confidence`
(avsr.transcription.trust) is read. The groups:

* in-domain: the val and test splits of the corpus the checkpoint was trained on (its first
  --limit utterances each); a segment is "correct" when its WER is 0. The threshold is chosen on
  val alone (the largest that flags at most 5 % of val's correct segments, over all tasks), then
  applied to everything else.
* real (out of domain for a model trained on the synthetic corpus): the real recordings of
  experiments/real_recordings.py (ASR), the real faces of experiments/real_faces.py (VSR, cut
  into 16 s segments), and AVSR on those recordings' audio under the first face's picture
  (real speech and a real face, not of the same person: the model has neither seen).
* made-up: what holds no speech: the corpus babble alone, white and pink noise at -30 dBFS
  (ASR, and AVSR under a test utterance's lips), a test utterance's lips played backwards and
  frames of random pixels (VSR, and AVSR with babble).

Silence, too-short clips and still pictures are left empty before decoding
(avsr.transcription.evidence) and never reach the confidence: not counted here.

Prints a table (per group and task: segments, mean confidence, share flagged) and the AUROC
(the chance that a correct in-domain segment has a higher confidence than an out-of-domain or
made-up one, ties counted half) of the confidence and, for comparison, of the plain score
(length-normalised log-probability) alone. Writes --out (JSON): the threshold, the table, the
AUROCs and every segment.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
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
    from avsr.data.dataset import read_labels
    from avsr.paths import labels_csv

    data = transcriber.opened.train_section.get("data", {})
    root = Path(transcriber.opened.locate("data.root", data.get("root", "data")))
    corpus = data.get("corpus", "synth")
    inputs = []
    for split in ("val", "test"):
        for row in read_labels(labels_csv(root, corpus, split))[:limit]:
            mp4 = root / corpus / row.rel_path
            inputs.append({"group": f"in-domain {split}", "input": recording(str(mp4), read_video(mp4),
                                                                                read_audio(mp4.with_suffix(".wav"))),
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
    """No speech at all: babble, white and pink noise; lips backwards, random pixels."""
    from avsr.data.noise import pink_noise, read_noise, white_noise

    rng = np.random.default_rng(SEED)
    babble = read_noise(babble_path)
    inputs = []
    for k, clip in enumerate(lips):
        seconds = len(clip) / 25
        n = len(clip) * SAMPLES_PER_FRAME
        start = int(rng.integers(0, max(1, babble.size - n)))
        sounds = {"babble": babble[start:start + n],
                  "white noise": 0.0316 * white_noise(n, rng),  # -30 dBFS
                  "pink noise": 0.0316 * pink_noise(n, rng)}
        pictures = {"lips backwards": clip[::-1].copy(),
                    "random pixels": rng.integers(0, 256, clip.shape, dtype=np.uint8)}
        for name, sound in sounds.items():
            inputs.append({"group": "made-up", "kind": name, "input": recording(f"{name} {k} ({seconds:.1f} s)",
                                                                                audio=sound), "tasks": ("asr",)})
            inputs.append({"group": "made-up", "kind": name, "input": recording(f"{name} {k} + lips", clip, sound),
                           "tasks": ("avsr",)})
        for name, picture in pictures.items():
            inputs.append({"group": "made-up", "kind": name, "input": recording(f"{name} {k}", picture),
                           "tasks": ("vsr",)})
            inputs.append({"group": "made-up", "kind": name, "input": recording(f"{name} {k} + babble", picture,
                                                                                sounds["babble"]), "tasks": ("avsr",)})
    return inputs


def transcribe_all(transcriber, inputs: list[dict]) -> list[dict]:
    """One row per decoded segment: group, task, source, text, score, confidence, flags, correct."""
    from avsr.text import word_errors

    rows = []
    for task in transcriber.tasks:
        mine = [x for x in inputs if task in x.get("tasks", TASKS) and all(
            getattr(x["input"], m) is not None for m in MODALITIES[task])]
        if not mine:
            continue
        for x, t in zip(mine, transcriber.transcribe([x["input"] for x in mine], task=task, progress=False)):
            for s in t.segments:
                if s.score is None:  # left empty: nothing to transcribe
                    continue
                row = {"group": x["group"], "kind": x.get("kind", x["group"]), "task": task, "source": t.source,
                       "start": s.start, "end": s.end, "text": s.text, "score": round(s.score, 4),
                       "confidence": s.confidence, "flags": s.flags}
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


def summarise(rows: list[dict]) -> dict:
    correct_val = [r["confidence"] for r in rows if r["group"] == "in-domain val" and r.get("correct")]
    threshold = float(np.quantile(correct_val, FLAGGED_CORRECT, method="lower")) if correct_val else None
    by = defaultdict(list)
    for r in rows:
        name = r["group"] if "correct" not in r else f"{r['group']} {'correct' if r['correct'] else 'wrong'}"
        by[(name, r["task"])].append(r)
        by[(name, "all")].append(r)
    table = {f"{name} | {task}": {"segments": len(rs), "mean_confidence": round(float(np.mean(
        [r["confidence"] for r in rs])), 3), "flagged_by_the_flag": round(float(np.mean(
            ["low_confidence" in r["flags"] for r in rs])), 3), "flagged_at_the_chosen": None if threshold is None
        else round(float(np.mean([r["confidence"] < threshold for r in rs])), 3)}
        for (name, task), rs in sorted(by.items())}
    test_correct = [r for r in rows if r["group"] == "in-domain test" and r.get("correct")]
    separation = {}
    for other in ("real", "made-up"):
        theirs = [r for r in rows if r["group"] == other]
        for value in ("confidence", "score"):
            separation[f"{other} by {value}"] = auroc([r[value] for r in test_correct], [r[value] for r in theirs])
    return {"threshold_chosen_on_val": threshold, "table": table, "auroc": separation}


def print_table(summary: dict, threshold_in_use: float) -> None:
    print(f"threshold in use (avsr.transcription.trust.THRESHOLD): {threshold_in_use:g}; chosen on val here: "
          f"{summary['threshold_chosen_on_val']}")
    print("| group | task | segments | mean confidence | flagged (low_confidence) |")
    print("|---|---|---|---|---|")
    for key, v in summary["table"].items():
        group, task = key.split(" | ")
        print(f"| {group} | {task} | {v['segments']} | {v['mean_confidence']:.3f} | {100 * v['flagged_by_the_flag']:.1f} % |")
    print("\nAUROC, correct in-domain test segments against:")
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
    summary = summarise(rows)
    print_table(summary, THRESHOLD)
    if args.out:
        write_text_atomic(args.out, json.dumps({"checkpoint": str(Path(args.checkpoint).resolve()),
                                                "beams": args.beams, "threshold_in_use": THRESHOLD, **summary,
                                                "segments": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
