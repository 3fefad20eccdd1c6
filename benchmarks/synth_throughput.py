"""Corpus generation throughput: utterances per second and disk bytes per utterance.

    python benchmarks/synth_throughput.py [--utterances 200] [--workers 2] [--seed 0]

Generates a fresh corpus in a temporary folder (train/val/test in 80/10/10 proportions,
plus the noise files), times it, and writes the numbers as JSON (default:
benchmarks/results/synth_throughput.json). It also reports the mean correlation between
the lip opening seen in the videos and the audio energy, over the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from avsr.data.dataset import load_item, read_manifest
from avsr.io import write_text_atomic
from avsr.synth.analysis import lip_audio_correlation
from avsr.synth.corpus import SynthConfig, synthesize_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/synth_throughput.json")
    args = parser.parse_args()

    n = args.utterances
    split = {"train": n - 2 * (n // 10), "val": n // 10, "test": n // 10}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(out=tmp, seed=args.seed, utterances=split, workers=args.workers, noise_seconds=60.0)
        start = time.perf_counter()
        summary = synthesize_corpus(cfg, progress=False)
        seconds = time.perf_counter() - start
        rows = read_manifest(Path(tmp) / "labels" / "synth_test.csv")
        items = [load_item(row) for row in rows]
        corr = [lip_audio_correlation(item.video, item.audio) for item in items]
    audio_hours = sum(s["hours"] for s in summary["splits"].values())
    result = {
        "utterances": n,
        "workers": args.workers,
        "seed": args.seed,
        "seconds": round(seconds, 2),
        "utterances_per_second": round(n / seconds, 2),
        "bytes_per_utterance": summary["bytes_per_utterance"],
        "audio_hours": audio_hours,
        "speech_seconds_per_wall_second": round(audio_hours * 3600 / seconds, 1),
        "projected_seconds_for_2000": round(2000 / (n / seconds), 1),
        "lip_energy_correlation_mean": round(float(np.mean(corr)), 3),
        "lip_energy_correlation_min": round(float(np.min(corr)), 3),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }
    write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"{result['utterances_per_second']} utterances/s with {args.workers} workers; "
          f"{result['bytes_per_utterance'] / 1e3:.1f} kB/utterance; 2,000 utterances in ~{result['projected_seconds_for_2000']:.0f} s")


if __name__ == "__main__":
    main()
