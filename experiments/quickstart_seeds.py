"""The quickstart's spread over training seeds: the mean, spread and range of every number.

    python experiments/quickstart_seeds.py [--seeds 0 1 2] [--out runs/seeds]
    python experiments/quickstart_seeds.py --vary avsr --base runs/seeds/seed-0 [--seeds 1 2]

`--vary all` (default): one whole quickstart per seed, each in its own fresh run folder
<out>/seed-N (`avsr quickstart --seed N`: small LM, lip encoder, augmentation draws and AVSR
training all follow N; the corpus seed stays 0). `--vary avsr`: only the AVSR stage (its
augmentation draws, initialisation and batch order) on the backbones, corpus and features
of a finished quickstart run folder `--base`; comparing the two spreads tells whether the
backbones' pre-training or the AVSR training makes it. Finished runs are reused. Writes
<out>/seeds.json and prints one table: per number, every seed's value, mean, sample standard
deviation and max - min, and every run's minutes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from avsr.evaluation.decode import snr_label
from avsr.io import write_text_atomic
from avsr.pipelines.quickstart import SNRS


def quickstart_run(seed: int, out: Path, quiet: bool) -> dict:
    """One whole quickstart (`avsr quickstart --seed N --out <out>/seed-N`) in a process of its
    own, as a user runs it (one process for all would carry the memory of the runs before into
    the next); its results.json."""
    folder = out / f"seed-{seed}"
    if not (folder / "results.json").is_file():
        command = [sys.executable, "-m", "avsr", "quickstart", "--out", str(folder), "--seed", str(seed)]
        if subprocess.run(command + (["--quiet"] if quiet else [])).returncode != 0:
            raise SystemExit(f"quickstart for seed {seed} failed")
    return json.loads((folder / "results.json").read_text())


def avsr_stage_run(seed: int, base: Path, out: Path, quiet: bool) -> dict:
    """The AVSR stage alone, training seed N, on `base`'s backbones, corpus and feature cache
    (the base run's own seed: its results)."""
    from avsr.pipelines.experiment import run_variant

    base_result = json.loads((base / "results.json").read_text())
    if base_result.get("seed") == seed:
        return base_result
    overrides = [f"seed={seed}"]
    steps = json.loads((base / "avsr" / "done.json").read_text())["steps"]
    return run_variant(f"avsr-seed-{seed}", "quickstart", overrides, base, out, steps, None, SNRS, beams=4,
                       progress=not quiet)


def numbers(result: dict) -> dict[str, float]:
    """{"ASR clean": WER %, ...}; VSR once (it does not hear the noise)."""
    out = {}
    for task, conditions in result["results"].items():
        for c in ([snr_label(None)] if task == "vsr" else [snr_label(s) for s in SNRS]):
            out[f"{task.upper()} {c}"] = 100 * conditions[c]["wer"]
    out["AVSR vs ASR at -5 dB (relative gain)"] = 100 * (1 - out["AVSR -5 dB"] / out["ASR -5 dB"])
    return out


def table(seeds: list[int], rows: list[dict[str, float]], minutes: list[float | None]) -> str:
    head = ["number", *(f"seed {s}" for s in seeds), "mean", "std", "max - min"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for key in rows[0]:
        values = [r[key] for r in rows]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append("| " + " | ".join([key, *(f"{v:.1f}" for v in values), f"{statistics.mean(values):.1f}",
                                        f"{std:.1f}", f"{max(values) - min(values):.1f}"]) + " |")
    if any(m is not None for m in minutes):
        lines.append("| minutes | " + " | ".join("-" if m is None else f"{m:.1f}" for m in minutes) + " | | | |")
    return "\n".join(lines) + "\n\nWER in %; the gain row: 100 x (1 - AVSR / ASR) at -5 dB babble."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--vary", choices=["all", "avsr"], default="all")
    p.add_argument("--base", type=Path, help="--vary avsr: a finished quickstart run folder")
    p.add_argument("--out", type=Path, default=Path("runs/seeds"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.vary == "avsr" and (args.base is None or not (args.base / "results.json").is_file()):
        p.error("--vary avsr needs --base, a finished quickstart run folder (with results.json)")
    results = [quickstart_run(s, args.out, args.quiet) if args.vary == "all"
               else avsr_stage_run(s, args.base, args.out, args.quiet) for s in args.seeds]
    rows = [numbers(r) for r in results]
    minutes = [r["total_seconds"] / 60 if args.vary == "all" else None for r in results]
    text = table(args.seeds, rows, minutes)
    write_text_atomic(args.out / f"seeds-{args.vary}.json",
                      json.dumps({"vary": args.vary, "seeds": args.seeds, "base": str(args.base or ""),
                                  "numbers": rows, "minutes": minutes,
                                  "stage_seconds": [r["timings_seconds"] for r in results] if args.vary == "all" else None}, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
