"""Which words of a GRID sentence a checkpoint gets wrong: errors per slot of the grammar.

    python experiments/grid_slots.py CHECKPOINT --root CORPUS_ROOT [--task asr] [--beams 4] [--limit 100]

A GRID sentence is command, colour, preposition, letter, digit, adverb. For every test utterance
whose hypothesis has six words too, each slot's word is compared with the reference's; the script
prints the substitutions per slot, the most frequent confusions and how many hypotheses had
another length (their errors are not assigned to a slot). The quickstart's ASR errors sit almost
all in the letter slot (docs/quickstart.md).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from avsr.evaluation.decode import decode, labelled_split
from avsr.models.loading import load_checkpoint, quiet_loading
from avsr.data.manifests import split_manifest

SLOTS = ("command", "colour", "preposition", "letter", "digit", "adverb")


def slot_errors(utterances: list[dict]) -> tuple[collections.Counter, collections.Counter, int]:
    """(errors per slot, (reference, hypothesis) confusions, utterances of another length)."""
    per_slot, confusions, other_length = collections.Counter(), collections.Counter(), 0
    for u in utterances:
        ref, hyp = u["reference"].split(), u["hypothesis"].split()
        if len(ref) != len(SLOTS) or len(hyp) != len(ref):
            other_length += 1
            continue
        for slot, r, h in zip(SLOTS, ref, hyp):
            if r != h:
                per_slot[slot] += 1
                confusions[(r, h)] += 1
    return per_slot, confusions, other_length


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--root", required=True, help="the checkpoint's corpus root")
    p.add_argument("--corpus", default="synth")
    p.add_argument("--task", default="asr", choices=["asr", "vsr", "avsr"])
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--limit", type=int, default=100)
    args = p.parse_args(argv)
    with quiet_loading(True):
        model = load_checkpoint(args.checkpoint).eval()
    dataset = labelled_split(args.root, split_manifest(args.root, args.corpus, "test", "auto"), args.limit)
    out = decode(model, dataset, args.task, model.default_pair(args.task), num_beams=args.beams, progress=False)
    per_slot, confusions, other_length = slot_errors(out.utterances)
    print(f"{args.task} errors per slot ({len(out.utterances)} utterances): "
          + ", ".join(f"{s} {per_slot[s]}" for s in SLOTS) + f"; other length {other_length}")
    print("most frequent: " + ", ".join(f"{r}->{h} {n}" for (r, h), n in confusions.most_common(10)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
