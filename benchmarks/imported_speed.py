"""Speed of an imported model at full size on this machine: Llama-AVSR 1B (Whisper-medium.en encoder,
AV-HuBERT Large, Llama 3.2-1B, audio rate 4 / video rate 2, projector LayerNorm: the layout of the
Dr-SHAP-AV release) with random weights, transcribing one 60 s clip with AVSR and the authors'
beam (15) in float32, bfloat16 and dynamic int8.

    python benchmarks/imported_speed.py [--seconds 60] [--settings float32 bfloat16 int8]
                                        [--max-new-tokens 32] [--work DIR] [--out FILE.json]

Steps: a file in the authors' layout is written at full size in bfloat16 (tests/authors_fixtures.py,
Llama 3.2-1B's vocabulary with a stand-in tokenizer: no real weights or tokenizer exist offline),
`avsr import`ed, and a 60 s clip of 96x96 mouth crops with its audio (random pixels, noise bursts
separated by pauses) is transcribed by `avsr.transcription.Transcriber`, each setting in its own
process on the torch threads given (default 2), so each peak memory is its own (the float32 load
comes first in every setting, so it sets the peak). The machine's 1-minute load average before and
after each setting is recorded: other work slows the measurement down. A random LLM never
writes EOS: every segment decodes `--max-new-tokens` (the authors' 32). Prints a table, writes the
JSON (--out), and ends with the line `imported 1B AVSR real-time factor: <x>` (the best setting:
transcription wall time, preprocessing included, over the clip's duration).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("float32", "bfloat16", "int8")


def make_clip(folder: Path, seconds: float) -> Path:
    """<folder>/clip.mp4 (96x96 mouth crops, 25 fps) + clip.wav: 2.5 s noise bursts, 0.5 s pauses."""
    import numpy as np

    from avsr.data.media import SAMPLE_RATE, VIDEO_FPS, write_audio, write_video

    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    audio = (0.1 * rng.standard_normal(n)).astype(np.float32)
    audio[(np.arange(n) % (3 * SAMPLE_RATE)) >= 2.5 * SAMPLE_RATE] = 0.0
    write_audio(folder / "clip.wav", audio)
    write_video(folder / "clip.mp4", rng.integers(0, 256, (int(seconds * VIDEO_FPS), 96, 96), dtype=np.uint8))
    return folder / "clip.mp4"


def prepare(work: Path, seconds: float) -> tuple[Path, Path, dict]:
    """The full-size file, its import and the clip; seconds spent on each."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from authors_fixtures import FULL, build

    from avsr.backbones.released import import_checkpoint

    timings = {}
    start = time.perf_counter()
    fx = build("llama-avsr-1b-ln", work / "release", dtype=torch.bfloat16, sizes=FULL)
    timings["write_file_s"] = time.perf_counter() - start
    del fx
    start = time.perf_counter()
    ckpt, _ = import_checkpoint(next((work / "release").glob("*.pth")), work / "release" / "base-llm", work / "ckpt")
    timings["import_s"] = time.perf_counter() - start
    return ckpt, make_clip(work, seconds), timings


def one(setting: str, checkpoint: str, clip: str, threads: int, max_new_tokens: int) -> dict:
    """Load, convert to `setting`, transcribe once; run in a fresh process."""
    import torch
    from torch import nn

    from avsr.transcription import Transcriber

    torch.set_num_threads(threads)
    load_before = os.getloadavg()[0]  # other work on the machine slows this one down: say how much
    transcriber = Transcriber(checkpoint, max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    model = transcriber.model
    if setting == "bfloat16":
        model.to(torch.bfloat16)
    elif setting == "int8":
        torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    transcript = transcriber.transcribe([clip], task="avsr")[0]
    wall = time.perf_counter() - start
    return {"setting": setting, "load_s": round(load_s, 1), "wall_s": round(wall, 1),
            "duration_s": transcript.duration_s, "rtf": round(wall / transcript.duration_s, 3),
            "decode_rtf": round(transcript.real_time_factors["decode"], 3), "segments": len(transcript.segments),
            "num_beams": transcriber.num_beams, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                                                                    / 2 ** 20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--work", help="folder for the file, the checkpoint and the clip (default: a temporary one)")
    parser.add_argument("--out", default="imported_speed.json")
    parser.add_argument("--one", nargs=2, metavar=("CHECKPOINT", "CLIP"), help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # the child process of one setting
        print(json.dumps(one(args.setting, *args.one, args.threads, args.max_new_tokens)))
        return
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        ckpt, clip, timings = prepare(work, args.seconds)
        print(f"full-size file written in {timings['write_file_s']:.0f} s, imported in {timings['import_s']:.0f} s",
              flush=True)
        results = []
        for setting in args.settings:
            done = subprocess.run([sys.executable, __file__, "--one", str(ckpt), str(clip), "--setting", setting,
                                   "--threads", str(args.threads), "--max-new-tokens", str(args.max_new_tokens)],
                                  capture_output=True, text=True)
            if done.returncode:
                results.append({"setting": setting, "error": done.stderr.strip().splitlines()[-1]})
            else:
                results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
    report = {"what": f"imported Llama-AVSR 1B layout, AVSR, {args.seconds:g} s clip, random weights", **timings,
              "threads": args.threads, "max_new_tokens": args.max_new_tokens, "results": results}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    ok = [r for r in results if "rtf" in r]
    print("\n| setting | RTF | decoding RTF | load s | peak RSS GB |\n|---|---|---|---|---|")
    for r in ok:
        print(f"| {r['setting']} | {r['rtf']} | {r['decode_rtf']} | {r['load_s']} | {r['peak_rss_gb']} |")
    if ok:
        best = min(ok, key=lambda r: r["rtf"])
        base = next((r for r in ok if r["setting"] == "float32"), best)
        print(f"{best['setting']} vs float32: {base['rtf'] / best['rtf']:.2f}x faster")
        print(f"imported 1B AVSR real-time factor: {best['rtf']} ({best['setting']}, peak memory {best['peak_rss_gb']} GB)")


if __name__ == "__main__":
    main()
