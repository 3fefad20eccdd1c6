"""Llama-MTSK and Omni-AVSR on the synthetic corpus.

    python experiments/matryoshka_synthetic.py --run runs/quickstart [--steps 1000] [--limit 100]
                                               [--beams 2] [--out runs/matryoshka-synthetic]

On the backbones and corpus of a quickstart run folder, with one budget and seed (42):
- one MTSK AVSR model per LoRA scheme (MS, SS, MSS), audio rates {4, 16} x video rates {2, 5},
  each evaluated at all four pairs from its single checkpoint;
- four single-rate AVSR models, one per pair, trained separately;
- one Omni model (ST LoRA) for ASR, VSR and AVSR, evaluated at every pair of every task.
Clean and babble at 0 dB (seed 0), first `--limit` test utterances. Writes
<out>/<variant>/eval/rate_grid.{md,json} and <out>/matryoshka_table.md + matryoshka_results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from avsr.evaluation.decode import snr_label
from avsr.evaluation.elastic import rate_grid
from avsr.evaluation.report import grid_table, write_rate_grid
from avsr.io import write_text_atomic
from avsr.models.tasks import scale_name
from avsr.pipelines.experiment import corpus_files, train_variant

PAIRS = [(4, 2), (4, 5), (16, 2), (16, 5)]
SNRS = (None, 0)
VARIANTS = {
    **{f"mtsk-{s}": ("quickstart_mtsk.yaml", [f"model.lora_scheme={s}"]) for s in ("ms", "ss", "mss")},
    **{f"single-a{a}v{v}": ("quickstart.yaml", ["model.tasks=[avsr]", f"model.audio_rates=[{a}]",
                                               f"model.video_rates=[{v}]"]) for a, v in PAIRS},
    "omni-st": ("quickstart_omni.yaml", []),
}


def train_and_grid(name: str, recipe: str, overrides: list[str], args) -> dict:
    """Train (unless done), then evaluate every trained pair: {task: {scale: report}}."""
    out = Path(args.out)
    grid_file = out / name / "eval" / "rate_grid.json"
    if grid_file.is_file():
        return json.loads(grid_file.read_text())
    model, cfg = train_variant(name, recipe, overrides, Path(args.run), out, args.steps)
    root, labels, noise = corpus_files(cfg)
    grid = rate_grid(model, root, labels, tuple(cfg.model.tasks), SNRS, noise, num_beams=args.beams,
                     limit=args.limit or None)
    write_rate_grid(grid, out / name / "eval", name)  # its rate_grid.json marks the variant done
    return grid


def tables(grids: dict) -> str:
    conditions = [snr_label(s) for s in SNRS]
    cols = [f"{scale_name('avsr', p)} {c}" for p in PAIRS for c in conditions]
    lines = ["AVSR WER (%) per rate pair (audio a / video v):", "",
             "| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]

    def wer(grid, task, scale, c):
        return f"{100 * grid[task][scale]['results'][task][c]['wer']:.1f}"

    for name, grid in grids.items():
        if name.startswith("single-"):
            continue
        lines.append(f"| {name} | " + " | ".join(wer(grid, "avsr", scale_name("avsr", p), c)
                                                for p in PAIRS for c in conditions) + " |")
    singles = [wer(grids[f"single-{scale_name('avsr', p)}"], "avsr", scale_name("avsr", p), c)
               for p in PAIRS for c in conditions if f"single-{scale_name('avsr', p)}" in grids]
    if len(singles) == len(cols):
        lines.append("| single-rate models (one per pair) | " + " | ".join(singles) + " |")
    if "omni-st" in grids:
        lines += ["", "Omni ST, one model (WER %):", "", grid_table(grids["omni-st"])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/quickstart")
    parser.add_argument("--out", default="runs/matryoshka-synthetic")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--beams", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()

    grids = {}
    for name in args.variants:
        print(f"\n== {name}", flush=True)
        grids[name] = train_and_grid(name, *VARIANTS[name], args)
    text = tables(grids)
    out = Path(args.out)
    write_text_atomic(out / "matryoshka_table.md", text + "\n")
    write_text_atomic(out / "matryoshka_results.json", json.dumps(
        {name: {task: {scale: r["results"][task] for scale, r in by.items()} for task, by in g.items()}
         for name, g in grids.items()}, indent=1) + "\n")
    print("\n" + text)


if __name__ == "__main__":
    main()
