"""Resume exactness with one batch per epoch (issue 23's step-87/89 scenario, on the tiny fixtures).

    PYTHONPATH=src:tests python experiments/resume_exactness.py --out runs/resume-exactness [--steps 40]

A run never stopped, then three runs stopped and resumed with the same command (in-process,
`avsr.training.train.train`): a KeyboardInterrupt inside step 28 (after backward, as Ctrl-C
mid-step), one right after step 29 completed (Ctrl-C between steps), and an exception at the
start of step 32 that saves nothing (as kill -9: the run resumes from the periodic save of step
28; checkpoint_every 4). Four utterances of a tiny synthetic corpus make one batch, so every
step ends an epoch. Prints and writes <out>/resume_exactness.json: per stop the largest absolute
difference of the final trainable weights, the number of tensors that differ, the first step whose
batch, learning rate (the optimizer's) or logged learning rate (metrics.csv) differs, and the final
learning rates. To measure another revision, put its src/ first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import load_file

from avsr.errors import Interrupted
from avsr.io import remove_written
from avsr.synth.corpus import synthesize_corpus
from avsr.training.config import load_config
from avsr.training.train import train
from conftest import tiny_config, tiny_model  # tests/: the tiny corpus and model of the test suite

STOPS = {"ctrl-c inside step 28": ("before_optimizer_step", 27, KeyboardInterrupt),
         "ctrl-c after step 29": ("train_batch_end", 29, KeyboardInterrupt),
         "kill at the start of step 32": ("train_batch_start", 31, RuntimeError)}


class Probe(L.Callback):
    """Records each step's batch (data epoch, utterances) and learning rate; raises `error` at
    hook `at` of step `step`."""

    def __init__(self, at: str | None = None, step: int = -1, error: type[Exception] = RuntimeError):
        self.at, self.step, self.error = at, step, error
        self.steps: dict[int, dict] = {}

    def _maybe_stop(self, trainer, hook: str) -> None:
        if hook == self.at and trainer.global_step == self.step:
            raise self.error("stopped by the experiment")

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        epoch = trainer.train_dataloader.epoch  # the data's: it decides the augmentation
        self.steps[trainer.global_step] = {"batch": [epoch, *batch["ids"]],
                                           "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        self._maybe_stop(trainer, "train_batch_start")

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self._maybe_stop(trainer, "before_optimizer_step")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._maybe_stop(trainer, "train_batch_end")


def logged_lr(run: Path) -> dict[int, float]:
    rows = {}
    for version in sorted(run.glob("logs/version_*/metrics.csv")):  # the resumed run's rows last
        rows.update({int(r["step"]): float(r["train/lr"]) for r in csv.DictReader(open(version)) if r.get("train/lr")})
    return rows


def first_difference(a: dict, b: dict):
    differ = sorted(k for k in b if a.get(k) != b[k])
    return None if not differ else {"step": differ[0], "straight": a.get(differ[0]), "resumed": b[differ[0]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    corpus = args.out / "corpus"
    if not (corpus / "labels").is_dir():
        synthesize_corpus(tiny_config(corpus, utterances={"train": 4, "val": 2, "test": 2},
                                      speakers={"train": 2, "val": 1, "test": 1}), progress=False)

    def run(out: Path, probe: Probe) -> Path:
        cfg = load_config(None, [f"data.root={corpus}", f"out={out}", f"optim.max_steps={args.steps}",
                                 "optim.warmup_steps=3", "optim.lr=6e-3", "data.max_frames=5000", "log_every=1",
                                 "val_every=0", "checkpoint_every=4", "data.feature_cache_copies=0"])
        return train(cfg, model=tiny_model(seed=11), progress=False, callbacks=[probe])

    for old in args.out.glob("run-*"):  # an earlier measurement's runs
        remove_written(old)
    straight_probe = Probe()
    straight = load_file(str(run(args.out / "run-straight", straight_probe) / "trainable.safetensors"))
    results = {}
    for i, (name, (hook, step, error)) in enumerate(STOPS.items()):
        out = args.out / f"run-{i}"
        try:
            run(out, Probe(hook, step, error))
        except (Interrupted, RuntimeError):
            pass
        probe = Probe()
        resumed = load_file(str(run(out, probe) / "trainable.safetensors"))
        results[name] = {
            "resumed_at": min(probe.steps),
            "max_abs_weight_difference": max((straight[k] - resumed[k]).abs().max().item() for k in straight),
            "tensors_that_differ": sum(not torch.equal(straight[k], resumed[k]) for k in straight),
            "tensors": len(straight),
            "first_other_batch": first_difference({s: v["batch"] for s, v in straight_probe.steps.items()},
                                                  {s: v["batch"] for s, v in probe.steps.items()}),
            "first_other_lr": first_difference({s: v["lr"] for s, v in straight_probe.steps.items()},
                                               {s: v["lr"] for s, v in probe.steps.items()}),
            "first_other_logged_lr": first_difference(logged_lr(args.out / "run-straight"), logged_lr(out)),
            "final_lr": {"straight": straight_probe.steps[args.steps - 1]["lr"],
                         "resumed": probe.steps[args.steps - 1]["lr"]}}
        print(name, json.dumps(results[name]), flush=True)
    (args.out / "resume_exactness.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
