"""The CTC reader alone (greedy CTC, no LLM) on a split of a corpus: what the LLM is given to read.

    python experiments/reader_alone.py RUN_FOLDER [--split test] [--limit 100] [--dropout P --seed S]
    python experiments/reader_alone.py RUN_FOLDER --whisper [--beams 4]   # Whisper base's own decoder instead

RUN_FOLDER is a `avsr quickstart --profile reading` run folder (its models/ctc-reader, Whisper
and SmolLM2 folders and its corpus under data/). Prints WER and CER of the reader's own
transcripts (its LLM pieces joined) and the first examples; with --out, writes them as JSON.
Compare with `avsr eval RUN/avsr/checkpoints/last --tasks asr --snrs clean` on the same split.
With --split train --dropout P: what the LLM reads in training with `model.ctc_train_dropout=P`.
With --whisper: the same utterances transcribed by Whisper base's own decoder (English, beam
--beams, 30-s padded input as Whisper was trained), the encoder both read, with the decoder
trained on 680,000 hours: how hard the split's speech is for a model that never heard it.
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
    parser.add_argument("--whisper", action="store_true", help="Whisper base's own decoder instead of the reader")
    parser.add_argument("--beams", type=int, default=4, help="beam width of --whisper")
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
    if args.whisper:
        refs, hyps = whisper_read(cfg.model.audio_encoder, data, args.beams)
    else:
        refs, hyps = read_split(head, load_encoders(cfg.model)["audio"], TransformedDataset(data, EvalTransform()),
                                pieces, config["rate"], config["compression"], dropout=args.dropout)
    who = f"Whisper base's own decoder (beam {args.beams})" if args.whisper else "CTC reader alone"
    result = {"split": args.split, "reader": who, "dropout": args.dropout, "utterances": len(refs),
              "wer": word_errors(refs, hyps).wer, "cer": character_error_rate(refs, hyps),
              "examples": [{"ref": r, "hyp": h} for r, h in zip(refs, hyps)]}
    print(f"{who}, {args.split} ({len(refs)} utterances, dropout {args.dropout:g}): "
          f"WER {100 * result['wer']:.1f}%  CER {100 * result['cer']:.1f}%")
    for example in result["examples"][:5]:
        print(f"  ref: {example['ref']}\n  hyp: {example['hyp']}")
    if args.out:
        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0


def whisper_read(folder: str, data, num_beams: int) -> tuple[list[str], list[str]]:
    """(references, Whisper's own transcripts) of a dataset's utterances, one at a time."""
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from avsr.data.media import SAMPLE_RATE
    from avsr.text import normalise

    processor = WhisperProcessor.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    refs, hyps = [], []
    for i in range(len(data)):
        item = data[i]
        if not isinstance(item, dict):  # media that cannot be read (data.on_bad_file: skip), as read_split does
            continue
        features = processor([item["audio"].numpy()], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        with torch.no_grad():
            ids = model.generate(features, language="en", task="transcribe", num_beams=num_beams, do_sample=False,
                                 max_new_tokens=96)
        refs.append(normalise(item["text"]))
        hyps.append(normalise(processor.batch_decode(ids, skip_special_tokens=True)[0]))
    return refs, hyps


if __name__ == "__main__":
    sys.exit(main())
