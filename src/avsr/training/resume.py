"""The resume state of a training run, and the file that holds it.

Everything a stopped run needs to go on as if it had never stopped, taken at the end of a
completed optimizer step: the trainable weights, AdamW's state, the LR schedule's state, the
place in the data (epoch and batches of it trained, by every rank alike), Lightning's batch
count (the validation cadence) and every rank's torch RNG state (CPU, and its CUDA device).
numpy's and Python's global generators are not saved: the training draws nothing from them
(augmentation and the batch order use generators seeded per item and per epoch).

One file, `<run>/resume/state.safetensors`, replaced atomically: the tensors, and the rest as
JSON in its header. Reading it runs no code of the file (no pickle); older avsr versions wrote
a pickled Lightning checkpoint (`resume/last.ckpt`), which is refused, never loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from avsr.errors import AvsrError
from avsr.io import atomic_file
from avsr.paths import resume_file

OLD_STATE = "last.ckpt"  # beside the state file: avsr before this format, a pickle, never loaded
FORMAT = "avsr-resume/1"


class ResumeError(AvsrError):
    """The run folder's resume file cannot be used (named, with what to do)."""


@dataclass
class ResumeState:
    step: int  # optimizer steps done
    epoch: int  # the place in the data: the epoch, and the batches of it each rank trained
    batches: int
    batches_total: int  # batches each rank trained in all (Lightning's count: validation every N)
    world_size: int  # the processes that trained (each its own batches and RNG)
    weights: dict[str, torch.Tensor]  # the trainable weights, full (gathered under FSDP)
    optimizer: dict  # torch's optimizer state_dict, parameters by position, full
    scheduler: dict  # the LR scheduler's state_dict
    rng: dict[str, torch.Tensor]  # "cpu.<rank>", "cuda.<rank>": uint8 states


def write_state(run: Path, state: ResumeState) -> Path:
    """<run>/resume/state.safetensors, through a temporary file and a rename: a kill -9 while
    writing leaves the previous state whole."""
    tensors = {f"weights.{k}": v for k, v in state.weights.items()}
    tensors.update({f"rng.{k}": v for k, v in state.rng.items()})
    values: dict[str, dict] = {}  # per-parameter optimizer values that are not tensors
    for index, per_param in state.optimizer["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                values.setdefault(str(index), {})[name] = value
    header = {"format": FORMAT, "step": state.step, "epoch": state.epoch, "batches": state.batches,
              "batches_total": state.batches_total, "world_size": state.world_size,
              "param_groups": state.optimizer["param_groups"], "optimizer_values": values, "scheduler": state.scheduler}
    path = resume_file(run)
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"avsr": json.dumps(header)})
    return path


def read_state(run: Path) -> ResumeState | None:
    """The run's resume state; None when it has none. A damaged file or an older avsr's pickled
    checkpoint is refused with the file named (before any model is built)."""
    path = resume_file(run)
    old = path.with_name(OLD_STATE)
    if not path.is_file():
        if old.is_file():
            raise ResumeError(f"{old}: a resume file of an older avsr, a pickle, which avsr does not load (it "
                              "could run code); start this run over with --fresh, or choose another out=")
        return None
    try:
        with safe_open(str(path), "pt") as f:
            header = json.loads((f.metadata() or {})["avsr"])
        tensors = load_file(str(path))
        if header["format"] != FORMAT:
            raise ValueError(f"format {header['format']!r}, expected {FORMAT!r}")
        optimizer: dict = {"state": {}, "param_groups": header["param_groups"]}
        for group in optimizer["param_groups"]:
            if "betas" in group:  # JSON has no tuples; AdamW's betas are one
                group["betas"] = tuple(group["betas"])
        for index, values in header["optimizer_values"].items():
            optimizer["state"].setdefault(int(index), {}).update(values)
        by_kind: dict[str, dict[str, torch.Tensor]] = {"weights": {}, "rng": {}, "optimizer": {}}
        for key, value in tensors.items():
            kind, name = key.split(".", 1)
            by_kind[kind][name] = value
        for name, value in by_kind["optimizer"].items():
            index, what = name.split(".", 1)
            optimizer["state"].setdefault(int(index), {})[what] = value
        return ResumeState(step=int(header["step"]), epoch=int(header["epoch"]), batches=int(header["batches"]),
                           batches_total=int(header["batches_total"]), world_size=int(header["world_size"]),
                           weights=by_kind["weights"], optimizer=optimizer, scheduler=header["scheduler"],
                           rng=by_kind["rng"])
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        why = " ".join(f"{type(err).__name__}: {err}".split())
        raise ResumeError(f"{path}: damaged or incomplete resume file ({why}); "
                          "start this run over with --fresh, or choose another out=") from None
