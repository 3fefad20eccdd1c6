"""Decoding speed: the reference setting against ours, on the same checkpoint and utterances.

    python benchmarks/decode.py CHECKPOINT --root CORPUS_ROOT [--limit 40] [--beams 15] [--task avsr]
                                [--out benchmarks/results/decode.json]

Reference (as the papers' code decodes): one utterance per batch, audio padded to 30 s for the
Whisper encoder, transformers' `generate` beam search (`search="transformers"`). Ours: batched
(frame-budget batches sorted by length) on trimmed audio, with our beam search (`search="avsr"`:
the prefix runs once per utterance, not once per beam). Both at the same beam width, through the
same `avsr.evaluation.decode`; the script reports utterances per second, real-time factor and WER
of both (the hypotheses must agree: decoding is batch-invariant and both searches give the same
hypotheses; ours is also run on the padded audio, where it must give the reference's hypotheses
exactly: any other difference comes from Whisper's input, not from the search or batching), then
the Whisper encoder alone, trimmed vs padded to 30 s (one utterance at a time).
Ratios come from one run, so a busy machine slows both sides alike.
Writes JSON; the last line is `batched/reference decode speed-up: <x>`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from avsr.evaluation.decode import decode, labelled_split
from avsr.io import write_text_atomic
from avsr.models.loading import load_checkpoint, quiet_loading
from avsr.data.manifests import split_manifest
from avsr.text import word_errors


def decode_side(model, dataset, task: str, beams: int, padded: bool, max_frames: int, search: str) -> dict:
    """One setting's decoding of every utterance: hypotheses, wall time, WER."""
    model.encoders["audio"].pad_to_30s = padded
    start = time.perf_counter()
    out = decode(model, dataset, task, model.default_pair(task), num_beams=beams, max_frames=max_frames,
                 progress=False, search=search)
    seconds = time.perf_counter() - start
    refs = [u["reference"] for u in out.utterances]
    hyps = [u["hypothesis"] for u in out.utterances]
    return {"seconds": round(seconds, 2), "utterances_per_s": round(len(hyps) / seconds, 3),
            "rtf": round(seconds / out.audio_seconds, 4), "wer": round(100 * word_errors(refs, hyps).wer, 2),
            "hypotheses": dict(zip([u["id"] for u in out.utterances], hyps))}


@torch.no_grad()
def encoder_seconds(model, dataset, padded: bool) -> float:
    """The Whisper encoder alone over every utterance, one at a time."""
    encoder = model.encoders["audio"]
    encoder.pad_to_30s = padded
    start = time.perf_counter()
    for i in range(len(dataset)):
        audio = torch.as_tensor(dataset[i]["audio"])[None]  # (1, S) 16 kHz
        encoder(audio, torch.tensor([audio.shape[1]]))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--root", required=True, help="the checkpoint's corpus root")
    p.add_argument("--corpus", default="synth")
    p.add_argument("--limit", type=int, default=40, help="test utterances (default: %(default)s)")
    p.add_argument("--beams", type=int, default=15, help="beam width on both sides (default: %(default)s)")
    p.add_argument("--task", default="avsr", choices=["asr", "avsr"], help="a task that reads audio")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/decode.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with quiet_loading(True):
        model = load_checkpoint(args.checkpoint).eval()
    dataset = labelled_split(args.root, split_manifest(args.root, args.corpus, "test", "auto"), args.limit)
    reference = decode_side(model, dataset, args.task, args.beams, padded=True, max_frames=1,  # 1 per batch
                            search="transformers")
    ours = decode_side(model, dataset, args.task, args.beams, padded=False, max_frames=1000, search="avsr")
    agree = sum(reference["hypotheses"][k] == h for k, h in ours["hypotheses"].items())
    # Where the two sides' hypotheses differ, is it the search and batching or Whisper's input? Ours
    # on the reference's padded audio must give the reference's hypotheses exactly.
    ours_padded = decode_side(model, dataset, args.task, args.beams, padded=True, max_frames=1000, search="avsr")
    agree_padded = sum(reference["hypotheses"][k] == h for k, h in ours_padded["hypotheses"].items())
    enc_padded, enc_trimmed = encoder_seconds(model, dataset, True), encoder_seconds(model, dataset, False)
    speedup = reference["seconds"] / ours["seconds"]
    result = {"checkpoint": str(args.checkpoint), "task": args.task, "utterances": len(dataset),
              "beams": args.beams, "threads": torch.get_num_threads(),
              "reference": {k: v for k, v in reference.items() if k != "hypotheses"},
              "batched": {k: v for k, v in ours.items() if k != "hypotheses"},
              "identical_hypotheses": agree, "speedup": round(speedup, 2),
              "batched_padded": {k: v for k, v in ours_padded.items() if k != "hypotheses"},
              "identical_hypotheses_padded": agree_padded,
              "whisper_encoder_s": {"padded_30s": round(enc_padded, 2), "trimmed": round(enc_trimmed, 2),
                                    "speedup": round(enc_padded / enc_trimmed, 2)}}
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    for side in ("reference", "batched"):
        r = result[side]
        print(f"{side:9s}: {r['seconds']:7.2f} s  {r['utterances_per_s']:.2f} utt/s  RTF {r['rtf']:.4f}  "
              f"WER {r['wer']:.2f}%")
    print(f"identical hypotheses: {agree}/{len(dataset)} (Whisper input trimmed vs padded); ours on padded audio: "
          f"{agree_padded}/{len(dataset)} identical to the reference, WER {ours_padded['wer']:.2f}%")
    print(f"Whisper encoder alone: padded to 30 s {enc_padded:.2f} s, trimmed {enc_trimmed:.2f} s "
          f"({enc_padded / enc_trimmed:.1f}x)")
    print(f"batched/reference decode speed-up: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
