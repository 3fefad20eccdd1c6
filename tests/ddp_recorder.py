"""`python tests/ddp_recorder.py RECORD_DIR train [avsr train arguments]`: the `avsr` CLI with a
Lightning callback that writes RECORD_DIR/rank<r>.pt in every training process.

Lightning's launcher starts the other ranks with this same command line, so each rank
records: per step, the ids of the utterances in its batch, its epoch and its loss; its
trainable weights before the first step and after the last (under FSDP: gathered, on rank 0
only); how many trainable values it holds itself (under FSDP: its shards). With
AVSR_RECORD_STOP_AT=N in the environment every rank raises KeyboardInterrupt inside step N
(as Ctrl-C would) and writes RECORD_DIR/rank<r>-interrupted.pt instead.

`strategy=fsdp accelerator=cpu` runs here on CPU processes (gloo) through `CPUFSDPStrategy`.
A test-only path, for tests/test_distributed.py (not collected by pytest: no test_ prefix).
"""

import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy


def _copy(state: dict) -> dict:
    # trainable_state_dict shares storage with the parameters on CPU: copy, or training changes it
    return {k: v.detach().clone() for k, v in state.items()}


def _full_state_dicts(model):
    """FSDP's full state dicts on rank 0, without offload_to_cpu: on CPU tensors its `.cpu()` copies
    nothing, and the model's crashes the process while the optimizer's returns every state
    tensor of a parameter as one reused buffer (exp_avg saved as exp_avg_sq)."""
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    return FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
                                FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True))


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy, as `avsr.training.train.build_strategy` sets it up, on CPU.

    The stock one stops three times on CPU: Lightning refuses FSDP without a CUDA accelerator
    (a check on the exact class, so a subclass passes); torch's FSDP runs on CPU only when given
    device_id=cpu (Lightning passes the device's index, None); and gathering full state dicts
    with offload_to_cpu=True (Lightning's setting) goes wrong on CPU tensors (`_full_state_dicts`).
    Everything else (wrapping, sharding, reduce-scatter, clipping, loading) is Lightning's and
    torch's own code.
    """

    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                        **self.kwargs)

    def lightning_module_state_dict(self) -> dict:
        with _full_state_dicts(self.model):
            return self.model.state_dict()

    def optimizer_state(self, optimizer) -> dict:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp import OptimStateKeyType

        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's
        with _full_state_dicts(self.model):
            state = FSDP.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # keyed by position, as Lightning stores it
                state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state


class RecordRank(L.Callback):
    def __init__(self, folder: str, stop_at: int | None = None):
        self.folder = Path(folder)
        self.stop_at = stop_at
        self.steps: list[dict] = []
        self.start: dict | None = None
        self.local = 0

    def _weights(self, trainer, module) -> dict | None:
        if isinstance(trainer.strategy, FSDPStrategy):  # gathered (every rank takes part), on rank 0
            from avsr.training.train import trainable_weights

            return trainable_weights(trainer, module)
        return _copy(module.model.trainable_state_dict())

    def on_train_start(self, trainer, module) -> None:
        self.start = self._weights(trainer, module)
        self.local = sum(p.numel() for p in module.model.parameters() if p.requires_grad)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "ids": list(batch["ids"])})

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.global_step == self.stop_at:
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps[-1]["loss"] = float(outputs["loss"])

    def _record(self, trainer, name: str, **more) -> None:
        torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size,
                    "strategy": type(trainer.strategy).__name__, "steps": [s for s in self.steps if "loss" in s],
                    "start": self.start, "local_trainable": self.local, **more}, self.folder / name)

    def on_train_end(self, trainer, module) -> None:
        self._record(trainer, f"rank{trainer.global_rank}.pt", end=self._weights(trainer, module))

    def on_exception(self, trainer, module, exception) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self._record(trainer, f"rank{trainer.global_rank}-interrupted.pt")


def main() -> int:
    folder, argv = sys.argv[1], sys.argv[2:]
    stop_at = int(os.environ["AVSR_RECORD_STOP_AT"]) if os.environ.get("AVSR_RECORD_STOP_AT") else None
    import avsr.training.train as training

    run, build = training.train, training.build_strategy

    def train_and_record(cfg, *args, callbacks=(), **kwargs):
        return run(cfg, *args, callbacks=[*callbacks, RecordRank(folder, stop_at)], **kwargs)

    def build_on_cpu(cfg, model):
        strategy = build(cfg, model)
        if isinstance(strategy, FSDPStrategy) and cfg.accelerator == "cpu":
            strategy.__class__ = CPUFSDPStrategy  # the same settings, the three CPU differences
        return strategy

    training.train = train_and_record  # `avsr train` imports it from the module when it runs
    training.build_strategy = build_on_cpu  # train() looks it up in the module when it runs
    from avsr.cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
