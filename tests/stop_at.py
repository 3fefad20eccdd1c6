"""`python tests/stop_at.py RECORD [HOOK STEP ACTION] train [avsr train arguments]`: the `avsr` CLI
with a Lightning callback that records every step and can stop the process at a known point.

Recorded (RECORD, JSON, written when training ends): per step the utterances of its batch, the
loader's epoch, the learning rate, and a number drawn from torch's global RNG (as a dropout layer
would draw: a resumed run must draw what an uninterrupted one draws); at the end the learning
rate and the schedule's step. With HOOK STEP ACTION, at Lightning hook `on_<HOOK>` (train_batch_start,
before_optimizer_step: inside the step after backward, train_batch_end: after the step and its
periodic save) when trainer.global_step == STEP, the process sends itself SIGINT (`sigint`, Ctrl-C),
SIGKILL (`sigkill`, kill -9: nothing of it runs after), or writes RECORD.waiting and sleeps until
it is killed (`wait`). A test-only path (not collected by pytest: no test_ prefix).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
import torch


class StopAt(L.Callback):
    def __init__(self, record: Path, hook: str | None, step: int, action: str | None):
        self.record, self.hook, self.step, self.action = record, hook, step, action
        self.steps: list[dict] = []

    def _at(self, trainer, hook: str) -> None:
        if hook != self.hook or trainer.global_step != self.step or self.action is None:
            return
        action, self.action = self.action, None  # once (the batches of a window share a step)
        if action == "wait":
            Path(f"{self.record}.waiting").write_text(str(os.getpid()))
            time.sleep(300)
        os.kill(os.getpid(), signal.SIGINT if action == "sigint" else signal.SIGKILL)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "epoch": trainer.train_dataloader.epoch,
                           "ids": list(batch["ids"]), "lr": trainer.optimizers[0].param_groups[0]["lr"],
                           "draw": torch.rand((), dtype=torch.float64).item()})
        self._at(trainer, "train_batch_start")

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self._at(trainer, "before_optimizer_step")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._at(trainer, "train_batch_end")

    def on_train_end(self, trainer, module) -> None:
        scheduler = trainer.lr_scheduler_configs[0].scheduler
        self.record.write_text(json.dumps({"steps": self.steps, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                                           "scheduler_step": scheduler.last_epoch}))


def main() -> int:
    record, argv = Path(sys.argv[1]), sys.argv[2:]
    hook, step, action = (argv[0], int(argv[1]), argv[2]) if argv[0] != "train" else (None, -1, None)
    argv = argv[3:] if hook else argv
    import avsr.training.train as training

    run = training.train

    def train_and_record(cfg, *args, callbacks=(), **kwargs):
        return run(cfg, *args, callbacks=[*callbacks, StopAt(record, hook, step, action)], **kwargs)

    training.train = train_and_record  # `avsr train` imports it from the module when it runs
    from avsr.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
