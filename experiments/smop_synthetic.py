"""Llama-SMoP on the synthetic corpus: MLP projector vs JEJR vs JEDR vs DEDR.

    python experiments/smop_synthetic.py --run runs/quickstart [--steps 1000] [--limit 100]
                                         [--beams 2] [--out runs/smop-synthetic]

Same backbones (those of the quickstart run folder), corpus, training budget and seed (42,
from recipes/quickstart.yaml) for all four; the encoder features are computed once and shared.
Evaluated on the first `--limit` test utterances, clean and in babble at 0 and -5 dB (seed 0).
Writes <out>/<variant>/eval/{report.md,results.json,wer_vs_snr.png,expert_usage.png} and
<out>/smop_table.md + smop_results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from avsr.pipelines.experiment import comparison_table, run_variant
from avsr.io import write_text_atomic

VARIANTS = {
    "mlp": ("quickstart.yaml", []),
    "jejr": ("quickstart_smop.yaml", ["model.smop_topology=jejr"]),
    "jedr": ("quickstart_smop.yaml", ["model.smop_topology=jedr"]),
    "dedr": ("quickstart_smop.yaml", ["model.smop_topology=dedr"]),
}
SNRS = (None, 0, -5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart", help="quickstart run folder (backbones + corpus)")
    parser.add_argument("--out", default="runs/smop-synthetic")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=100, help="test utterances (0 = all)")
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    out = Path(args.out)
    rows = []
    for name in args.variants:
        recipe, overrides = VARIANTS[name]
        print(f"\n== {name}", flush=True)
        rows.append(run_variant(name, recipe, overrides, Path(args.run), out, args.steps, args.limit or None,
                                SNRS, args.beams))
    table = comparison_table(rows, SNRS)
    write_text_atomic(out / "smop_table.md", table + "\n")
    write_text_atomic(out / "smop_results.json", json.dumps(
        [{k: r[k] for k in ("variant", "recipe", "overrides", "steps", "parameters", "results", "expert_usage")
          if k in r} for r in rows], indent=1) + "\n")
    print("\n" + table)


if __name__ == "__main__":
    main()
