"""Evaluate a trained checkpoint on a corpus split: what `avsr eval` does after parsing its arguments.

Every input is checked (checkpoint, tasks, backbones, labels, noise, output folder) before the
model is loaded, so a mistake costs seconds, not a model load and a decoding; a report folder
this call created is removed again if it fails.
"""

from __future__ import annotations

from pathlib import Path

from avsr.data.manifests import FORMATS, read_manifest, split_manifest
from avsr.data.noise import read_noise
from avsr.errors import AvsrError
from avsr.evaluation.decode import labelled_split
from avsr.evaluation.elastic import pick_pairs, rate_grid
from avsr.evaluation.report import default_eval_folder, output_folder, write_rate_grid, write_report
from avsr.evaluation.score import evaluate
from avsr.models.loading import quiet_loading
from avsr.paths import noise_wav
from avsr.training.config import read_run_checkpoint


def evaluate_checkpoint(checkpoint: str | Path, snrs: tuple, root: str | None = None, corpus: str | None = None,
                        split: str = "test", tasks: tuple[str, ...] | None = None, noise: str | None = None,
                        out: str | Path | None = None, num_beams: int | None = None, max_new_tokens: int = 32,
                        limit: int | None = None, rates: tuple | None = None, grid: bool = False,
                        budget_tokens: float | None = None, max_rtf: float | None = None, calibration: int = 16,
                        quiet: bool = False, overwrite: bool = False, fmt: str | None = None) -> tuple[Path, dict]:
    """(report folder, report), the report written there; with `grid`, (folder, rate grid of
    every trained pair) instead. `snrs`: dB, None for clean. Defaults: `root`/`corpus` those the
    checkpoint was trained on, `tasks` its tasks, `noise` the corpus babble (read only for noisy
    `snrs`), `out` `default_eval_folder`. Rates: `rates` (AUDIO, VIDEO), else the most LLM tokens
    within `budget_tokens` per second and/or a real-time factor `max_rtf` measured on the first
    `calibration` validation utterances, else the first trained pair. An earlier report in `out`
    is replaced only with `overwrite` (in the default folder: always, it is this command's own).
    `fmt`: the manifest format (default: the one the checkpoint was trained from; a shard set is
    read by training only). `num_beams` None: the checkpoint's saved decoding setting, else 4."""
    checkpoint = Path(checkpoint)
    opened, _ = read_run_checkpoint(checkpoint)  # read once; backbones found and checked
    num_beams = num_beams or int(opened.decoding.get("num_beams", 4))  # an imported model's: the authors' 15
    trained = opened.config
    tasks = tuple(tasks or trained.tasks)
    if set(tasks) - set(trained.tasks):
        raise AvsrError(f"--tasks {' '.join(t for t in tasks if t not in trained.tasks)}: checkpoint {checkpoint} "
                        f"was trained for {', '.join(trained.tasks)} only")
    data = opened.train_section.get("data", {})
    root = root or opened.locate("data.root", data.get("root", "data"))
    corpus = corpus or data.get("corpus", "synth")
    fmt = fmt or data.get("format", "auto")  # the manifest format the checkpoint was trained from
    if fmt in FORMATS and FORMATS[fmt].streamed:
        raise AvsrError(f"{checkpoint} was trained from {fmt} ({root}), which avsr eval does not read: pass "
                        "--root and --format of the corpus they were made from (avsr prepare-corpus writes csv, "
                        "fairseq and jsonl)")
    labels, val = str(split_manifest(root, corpus, split, fmt)), str(split_manifest(root, corpus, "val", fmt))
    for path in (labels, val) if max_rtf else (labels,):
        read_manifest(path, fmt, root)
    noisy = any(snr is not None for snr in snrs)  # a clean-only evaluation needs no noise file
    noise = (noise or str(noise_wav(root, corpus))) if noisy else None
    if noise:
        read_noise(noise)
    replace = overwrite or not out  # re-running into the default folder replaces its own earlier report
    out = Path(out) if out else default_eval_folder(checkpoint)
    inputs = (checkpoint, labels, val if max_rtf else None, noise, Path(root) / corpus)
    with output_folder(out, "eval", inputs, replace), quiet_loading(quiet):
        model = opened.load()
        decoding = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, progress=not quiet)
        if grid:
            result = rate_grid(model, root, labels, tasks, snrs, noise, limit=limit, **decoding)
            write_rate_grid(result, out, f"rate grid: {checkpoint}")
            return out, result
        try:
            pairs, reasons = pick_pairs(model, tasks, rates, budget_tokens, max_rtf,
                                        labelled_split(root, val, calibration) if max_rtf else None, **decoding)
        except ValueError as err:
            raise AvsrError(str(err)) from None
        for task, reason in reasons.items():
            print(f"[avsr eval] {task} rates {reason}")
        report = evaluate(model, root, labels, tasks, snrs, noise, pairs=pairs, limit=limit, **decoding)
        for task, reason in reasons.items():
            report["rates"][task]["chosen_by"] = reason
        report["checkpoint"] = str(checkpoint)
        write_report(report, out)
    return out, report
