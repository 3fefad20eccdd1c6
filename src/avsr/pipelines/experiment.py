"""Compare model variants on the embedded setting: same backbones, corpus, budget and seeds.

A variant is a recipe plus overrides. Every variant trains on the backbones and corpus of a
quickstart run folder (`<run>/models/{whisper-base,small-lm,video-encoder}`, `<run>/data`),
with the same number of steps and seed, reuses the run's on-disk cache of encoder features
(`<run>/features`, written by the quickstart), and is
evaluated on the same test utterances and noise. Finished trainings and evaluations are
reused, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path

from avsr.evaluation.decode import snr_label
from avsr.evaluation.report import write_report
from avsr.evaluation.score import evaluate
from avsr.models.tasks import TASKS
from avsr.paths import final_checkpoint, labels_csv, noise_wav
from avsr.paths import recipe as recipe_file


def backbone_overrides(run: Path, corpus: str = "synth") -> list[str]:
    """Overrides pointing a recipe at a quickstart run folder's backbones and corpus."""
    models = run / "models"
    needed = [models / "whisper-base", models / "small-lm", models / "video-encoder",
              *(labels_csv(run / "data", corpus, split) for split in ("train", "test"))]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise FileNotFoundError(f"{run} is not a finished quickstart run folder (missing {', '.join(missing)}); "
                                f"run `avsr quickstart --out {run}` first")
    return [f"model.audio_encoder={models / 'whisper-base'}", f"model.llm={models / 'small-lm'}",
            f"model.video_encoder={models / 'video-encoder'}", f"data.root={run / 'data'}", f"data.corpus={corpus}"]


def train_variant(name: str, recipe: str, overrides: list[str], run: Path, out: Path, steps: int,
                  progress: bool = True):
    """Train a variant into <out>/<name> unless its checkpoint exists; returns (model, config)."""
    from avsr.models.loading import load_checkpoint
    from avsr.training.config import load_config
    from avsr.training.train import train

    cfg = load_config(recipe_file(recipe), [*backbone_overrides(run), f"out={out / name}", f"optim.max_steps={steps}",
                                            f"data.feature_cache_dir={run / 'features'}", *overrides])
    checkpoint = final_checkpoint(out / name)
    if not checkpoint.is_dir():
        checkpoint = train(cfg, progress=progress)
    return load_checkpoint(checkpoint), cfg


def corpus_files(cfg) -> tuple[str, str, str]:
    """(corpus root, test label CSV, babble wav) of a training config's corpus."""
    root, corpus = cfg.data.root, cfg.data.corpus
    return str(root), str(labels_csv(root, corpus, "test")), str(noise_wav(root, corpus))


def run_variant(name: str, recipe: str, overrides: list[str], run: Path, out: Path, steps: int, limit: int | None,
                snrs: tuple, beams: int, tasks: tuple[str, ...] = TASKS,
                progress: bool = True) -> dict:
    """Train (unless done) and evaluate one variant; returns its row of results."""
    result_file = out / name / "eval" / "results.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    model, cfg = train_variant(name, recipe, overrides, run, out, steps, progress)
    root, labels, noise = corpus_files(cfg)
    report = evaluate(model, root, labels, tasks, snrs, noise, num_beams=beams, limit=limit, progress=progress)
    report.update(variant=name, recipe=recipe, overrides=overrides, steps=steps,
                  parameters=model.parameter_counts())
    write_report(report, out / name / "eval", title=f"{name} ({recipe} {' '.join(overrides)})")
    return report


def comparison_table(rows: list[dict], snrs: tuple) -> str:
    """Markdown: one line per variant, WER per task and condition, parameter counts."""
    tasks = list(rows[0]["results"])
    conditions = [snr_label(s) for s in snrs]
    head = ["variant", "trainable", "projector", "projector active / token"]
    head += [f"{t.upper()} {c}" for t in tasks for c in (conditions if t != "vsr" else conditions[:1])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        p = r["parameters"]
        cells = [r["variant"], f"{p['trainable'] / 1e6:.2f}M", f"{p['projector'] / 1e6:.2f}M",
                 f"{p['projector_active'] / 1e6:.2f}M"]
        for t in tasks:
            for c in (conditions if t != "vsr" else conditions[:1]):
                cells.append(f"{100 * r['results'][t][c]['wer']:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nWER in %. VSR does not hear the audio, so it has one column."
