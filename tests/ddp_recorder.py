"""`python tests/ddp_recorder.py RECORD_DIR train [avsr train arguments]`: the `avsr` CLI with a
Lightning callback that writes RECORD_DIR/rank<r>.pt in every training process.

Lightning's DDP launcher starts the other ranks with this same command line, so each rank
records: per step, the ids of the utterances in its batch, its epoch and its loss; and its
trainable weights before the first step and after the last. A test-only path, for
tests/test_distributed.py (not collected by pytest: no test_ prefix).
"""

import sys
from pathlib import Path

import lightning as L
import torch


def _copy(state: dict) -> dict:
    # trainable_state_dict shares storage with the parameters on CPU: copy, or training changes it
    return {k: v.detach().clone() for k, v in state.items()}


class RecordRank(L.Callback):
    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.steps: list[dict] = []
        self.start: dict = {}

    def on_train_start(self, trainer, module) -> None:
        self.start = _copy(module.model.trainable_state_dict())

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "ids": list(batch["ids"])})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps[-1]["loss"] = float(outputs["loss"])

    def on_train_end(self, trainer, module) -> None:
        torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "steps": self.steps,
                    "start": self.start, "end": _copy(module.model.trainable_state_dict())},
                   self.folder / f"rank{trainer.global_rank}.pt")


def main() -> int:
    folder, argv = sys.argv[1], sys.argv[2:]
    import avsr.training.train as training

    run = training.train

    def train_and_record(cfg, *args, callbacks=(), **kwargs):
        return run(cfg, *args, callbacks=[*callbacks, RecordRank(folder)], **kwargs)

    training.train = train_and_record  # `avsr train` imports it from the module when it runs
    from avsr.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
