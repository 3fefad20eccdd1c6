"""What an ASR checkpoint writes when there is no speech: silence, babble or white noise only.

    python experiments/no_speech.py CHECKPOINT [--root ROOT] [--limit 50] [--beams 4] [--out FILE.json]

An LLM recogniser tends to write a fluent sentence whatever it hears. For the first --limit test
utterances of the checkpoint's corpus, the audio is decoded as it is ("speech") and replaced,
at the same length, by silence (zeros), the corpus babble at the speech's level, and white
noise at that level. Per condition: how often the output is a sentence (3 words or more), the
mean words, the hypothesis score (generate(return_scores=True): mean log-probability per token),
and, for a model with the CTC reader (projector ctc), how many tokens the reader heard and their
confidence. "flagged": the share of outputs whose score (or reader confidence) falls below the
5th percentile of the speech condition's, i.e. what a threshold that keeps 95% of real
transcripts would catch. Prints a Markdown table; --out writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

CONDITIONS = ("speech", "silence", "babble", "white")


def replace_audio(audio: torch.Tensor, condition: str, babble: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """(N,) speech -> (N,) of the condition, at the speech's RMS level (silence: zeros)."""
    if condition == "speech":
        return audio
    if condition == "silence":
        return torch.zeros_like(audio)
    rms = float(audio.pow(2).mean().sqrt())
    if condition == "babble":
        start = int(rng.integers(0, babble.size - audio.numel()))
        noise = babble[start:start + audio.numel()].astype(np.float32)
    else:
        noise = rng.standard_normal(audio.numel()).astype(np.float32)
    noise = torch.from_numpy(noise)
    return noise * (rms / float(noise.pow(2).mean().sqrt().clamp(min=1e-9)))


def main(argv: list[str] | None = None) -> int:
    from avsr.data.batching import TransformedDataset, collate
    from avsr.data.noise import read_noise
    from avsr.data.transforms import EvalTransform
    from avsr.evaluation.decode import labelled_split
    from avsr.io import write_text_atomic
    from avsr.models.loading import Checkpoint
    from avsr.paths import labels_csv, noise_wav

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--root", help="corpus root (default: the checkpoint's)")
    parser.add_argument("--corpus", default="synth")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.out and os.path.lexists(args.out):  # checked before the long work; nothing is replaced
        parser.error(f"--out {args.out}: something is there already; name a new file")
    checkpoint = Checkpoint.open(args.checkpoint)
    root = args.root or checkpoint.locate("data.root", checkpoint.train_section.get("data", {}).get("root"))
    model = checkpoint.load()
    data = TransformedDataset(labelled_split(root, labels_csv(root, args.corpus, "test"), args.limit), EvalTransform())
    babble = read_noise(noise_wav(root, args.corpus))
    results = {}
    for condition in CONDITIONS:
        rng = np.random.default_rng(0)
        rows = []
        for start in range(0, len(data), args.batch):
            items = [data[i] for i in range(start, min(start + args.batch, len(data)))]
            for item in items:
                item["audio"] = replace_audio(item["audio"], condition, babble, rng)
            batch = collate(items)
            texts, aux = model.generate(batch, "asr", num_beams=args.beams, return_scores=True)
            for j, text in enumerate(texts):
                row = {"id": batch["ids"][j], "hypothesis": text, "words": len(text.split()),
                       "score": float(aux["scores"][j])}
                if "reader/tokens" in aux:
                    row.update(reader_tokens=int(aux["reader/tokens"][j]),
                               reader_confidence=float(aux["reader/confidence"][j]))
                rows.append(row)
        results[condition] = rows
    speech = results["speech"]
    floor = {k: float(np.percentile([r[k] for r in speech], 5)) for k in ("score", "reader_confidence") if k in speech[0]}
    summary = {}
    for condition, rows in results.items():
        s = {"utterances": len(rows), "sentences": float(np.mean([r["words"] >= 3 for r in rows])),
             "empty": float(np.mean([r["words"] == 0 for r in rows])),
             "mean_words": float(np.mean([r["words"] for r in rows])),
             "mean_score": float(np.mean([r["score"] for r in rows])),
             "flagged_by_score": float(np.mean([r["score"] < floor["score"] for r in rows]))}
        if "reader_confidence" in floor:
            s.update(mean_reader_tokens=float(np.mean([r["reader_tokens"] for r in rows])),
                     mean_reader_confidence=float(np.mean([r["reader_confidence"] for r in rows])),
                     flagged_by_reader=float(np.mean([r["reader_confidence"] < floor["reader_confidence"]
                                                      for r in rows])))
        summary[condition] = s
    keys = list(summary["speech"])
    print(f"`{args.checkpoint}`, first {len(data)} test utterances, beam {args.beams}; flag thresholds (5th "
          f"percentile of speech): " + ", ".join(f"{k} {v:.3f}" for k, v in floor.items()) + "\n")
    print("| condition | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for condition, s in summary.items():
        print(f"| {condition} | " + " | ".join(f"{s[k]:.3g}" for k in keys) + " |")
    for condition in CONDITIONS[1:]:
        print(f"{condition}: " + " / ".join(r["hypothesis"] or "(empty)" for r in results[condition][:3]))
    if args.out:
        write_text_atomic(args.out, json.dumps({"summary": summary, "thresholds": floor, "rows": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
