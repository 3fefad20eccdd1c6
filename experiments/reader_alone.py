"""The CTC reader alone (greedy CTC, no LLM) on a split of a corpus: what the LLM is given to read.

    python experiments/reader_alone.py RUN_FOLDER [--split test] [--limit 100] [--dropout P --seed S]

RUN_FOLDER is a `avsr quickstart --profile reading` run folder (its models/ctc-reader, Whisper
and SmolLM2 folders and its corpus under data/). Prints WER and CER of the reader's own
transcripts (its LLM pieces joined) and the first examples; with --out, writes them as JSON.
Compare with `avsr eval RUN/avsr/checkpoints/last --tasks asr --snrs clean` on the same split.
With --split train --dropout P: what the LLM reads in training with `model.ctc_train_dropout=P`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a quickstart run folder of the reading profile")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--dropout", type=float, default=0.0, help="on the head's input frames")
    parser.add_argument("--seed", type=int, default=0, help="of the dropout")
    parser.add_argument("--out", help="write the results here (JSON)")
    args = parser.parse_args()
    if args.out and os.path.lexists(args.out):  # checked before the long work; nothing is replaced
        parser.error(f"--out {args.out}: something is there already; name a new file")

    import torch
    from transformers import AutoTokenizer

    from avsr.data.batching import TransformedDataset
    from avsr.data.dataset import AVDataset
    from avsr.data.transforms import EvalTransform
    from avsr.io import write_text_atomic
    from avsr.models.loading import load_encoders
    from avsr.models.projectors.ctc import load_reader
    from avsr.text import character_error_rate, word_errors
    from avsr.training.config import load_config
    from avsr.training.ctc_reader import Pieces, read_split

    run = Path(args.run)
    models = run / "models"
    cfg = load_config("quickstart_reading", [f"model.llm={models / 'smollm2-135m'}",
                                             f"model.audio_encoder={models / 'whisper-base'}",
                                             f"model.ctc_reader={models / 'ctc-reader'}", f"data.root={run / 'data'}"])
    head, config = load_reader(cfg.model.ctc_reader)
    pieces = Pieces(AutoTokenizer.from_pretrained(cfg.model.llm, local_files_only=True), config["merges"])
    d = cfg.data
    data = AVDataset(d.root, d.labels(args.split), d.format, d.on_bad_file, d.max_utterance_seconds)
    data.rows = data.rows[: args.limit]
    torch.manual_seed(args.seed)
    refs, hyps = read_split(head, load_encoders(cfg.model)["audio"], TransformedDataset(data, EvalTransform()),
                            pieces, config["rate"], config["compression"], dropout=args.dropout)
    result = {"split": args.split, "dropout": args.dropout, "utterances": len(refs),
              "wer": word_errors(refs, hyps).wer, "cer": character_error_rate(refs, hyps),
              "examples": [{"ref": r, "hyp": h} for r, h in zip(refs, hyps)]}
    print(f"CTC reader alone, {args.split} ({len(refs)} utterances, dropout {args.dropout:g}): "
          f"WER {100 * result['wer']:.1f}%  CER {100 * result['cer']:.1f}%")
    for example in result["examples"][:5]:
        print(f"  ref: {example['ref']}\n  hyp: {example['hyp']}")
    if args.out:
        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
