"""Loss curves of the reading profile as one PNG: the CTC reader's pre-training (per step, from its
folder's config.json) and the AVSR training's LLM loss (from the run's CSV log).

    python experiments/reading_curves.py READER_FOLDER RUN_FOLDER --out docs/reading_losses.png
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reader")
    parser.add_argument("run")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    history = json.loads((Path(args.reader) / "config.json").read_text())["report"]["loss_history"]
    steps, losses = [], []
    for log in sorted(Path(args.run).glob("logs/version_*/metrics.csv")):
        for row in csv.DictReader(log.open()):
            if row.get("train/loss"):
                steps.append(int(row["step"]))
                losses.append(float(row["train/loss"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(range(1, len(history) + 1), history, lw=0.8)
    a.set(title="CTC reader (no LLM): CTC loss", xlabel="step", ylabel="CTC loss per target token", yscale="log")
    b.plot(steps, losses, lw=0.8, marker="o")
    b.set(title="SmolLM2 + LoRA reading the reader's tokens", xlabel="step", ylabel="cross-entropy (nats/token)")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
