"""Multi-process training (DDP, FSDP) through the CLI, on CPU with two processes (gloo).

The same code path as 8 GPUs with `strategy=ddp` or `strategy=fsdp`, minus the GPUs: the
launcher re-runs the command per rank, the batch sampler shards the batches, and steps that
leave parameters without a gradient (one task per step here) must not stop DDP. FSDP runs on
CPU through tests/ddp_recorder.py's CPUFSDPStrategy (Lightning and torch refuse it there; see
docs/scaling.md). Also here: gradient accumulation and bf16-true in one process.
"""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from avsr.data.batching import FrameBudgetBatchSampler, collate
from avsr.data.manifests import read_manifest
from avsr.models.loading import WEIGHTS, Checkpoint, build_model
from avsr.training.config import load_config
from avsr.training.run_lock import LOCK
from avsr.training.train import AVSRLightning, build_strategy, make_loaders, resolve_strategy, train
from conftest import tiny_model, tiny_train_args


@pytest.mark.parametrize("strategy, devices, expected", [
    ("ddp", 1, "ddp_find_unused_parameters_true"),
    ("auto", (1, 2), "ddp_find_unused_parameters_true"),  # (devices, nodes): 2 nodes of 1
    ("ddp", 8, "ddp_find_unused_parameters_true"),
    ("auto", 8, "ddp_find_unused_parameters_true"),
    ("auto", "0,1", "ddp_find_unused_parameters_true"),
    ("auto", [0, 1], "ddp_find_unused_parameters_true"),
    ("auto", 1, "auto"),
    ("auto", "auto", "auto"),
    ("ddp_find_unused_parameters_false", 8, "ddp_find_unused_parameters_false"),
    ("fsdp", 8, "fsdp"),
])
def test_ddp_detects_unused_parameters_unless_told_otherwise(strategy, devices, expected):
    devices, nodes = devices if isinstance(devices, tuple) else (devices, 1)
    assert resolve_strategy(strategy, devices, nodes) == expected


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_sampler_gives_each_rank_its_own_batches(replicas, drop_last):
    lengths = np.random.default_rng(0).integers(20, 120, size=40).tolist()  # 11 batches
    samplers = [FrameBudgetBatchSampler(lengths, 300, seed=5, num_replicas=replicas, rank=r, drop_last=drop_last)
                for r in range(replicas)]
    n_batches = len(samplers[0].batches)
    assert n_batches % replicas and len({len(s) for s in samplers}) == 1  # uneven split, equal lengths
    orders = []
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        shards = [list(s) for s in samplers]
        orders.append(shards)
        assert all(len(shard) == len(samplers[0]) for shard in shards)  # the ranks step together
        for step in zip(*shards):  # at every step each rank has its own batch
            assert len({tuple(b) for b in step}) == replicas
            assert all(sum(lengths[i] for i in b) <= 300 or len(b) == 1 for b in step)
        seen = [i for shard in shards for b in shard for i in b]
        if drop_last:  # nothing twice, only the remainder's batches left out
            assert len(seen) == len(set(seen)) and len(shards[0]) == n_batches // replicas
        else:  # every utterance in the epoch; the last step's missing batches repeat earlier ones
            assert set(seen) == set(range(len(lengths)))
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch, the same way on every rank


RECORDER = Path(__file__).with_name("ddp_recorder.py")


def launch(record: Path, overrides: list[str], *extra: str, stop_at: int | None = None) -> subprocess.CompletedProcess:
    """`avsr train ...` through the CLI on 2 CPU processes, each rank recording into `record`
    (tests/ddp_recorder.py); `stop_at`: Ctrl-C inside that step on every rank."""
    env = {**os.environ, "AVSR_RECORD_STOP_AT": "" if stop_at is None else str(stop_at)}
    command = [sys.executable, str(RECORDER), str(record), "train", "--quiet", *overrides, "devices=2", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def two_rank_run(tiny_corpus, tiny_backbones, tmp_path) -> tuple[list[str], Path, Path]:
    out, record = tmp_path / "run", tmp_path / "record"
    record.mkdir()
    # 4 steps, one task each (asr, vsr, avsr, asr), 2-3 batches per rank and epoch
    return tiny_train_args(tiny_corpus[0].out, tiny_backbones, out, 4), out, record


def expected_batches(cfg, rows, rank: int, steps: int = 4) -> list[tuple[int, list[str]]]:
    """(epoch, utterance ids) of rank `rank`'s first `steps` batches: its shard of the seeded order
    (rank r: batches r, r + 2, ...), epoch after epoch."""
    sampler = FrameBudgetBatchSampler([row.n_frames for row in rows], cfg.data.max_frames, seed=cfg.seed,
                                      num_replicas=2, rank=rank)
    assert 1 < len(sampler) < steps  # so the steps span an epoch boundary
    expected = []
    for epoch in range(steps):
        sampler.set_epoch(epoch)
        expected += [(epoch, [rows[i].id for i in batch]) for batch in sampler]
    return expected[:steps]


def check_sharded_batches(cfg, rows, steps: list[list[dict]]) -> None:
    """At every step the two ranks' utterances are disjoint, each rank's batches are its shard of
    the seeded order, and the first epoch covers the training split between them."""
    for s0, s1 in zip(*steps):
        assert s0["step"] == s1["step"] and s0["epoch"] == s1["epoch"] and not set(s0["ids"]) & set(s1["ids"])
    for rank, trained in enumerate(steps):
        assert [(s["epoch"], s["ids"]) for s in trained] == expected_batches(cfg, rows, rank, len(trained))
    first_epoch = {i for rank in steps for s in rank if s["epoch"] == 0 for i in s["ids"]}
    assert first_epoch == {row.id for row in rows}


def replay(cfg, rows, start: dict, steps: list[list[dict]], accumulate: int = 1, model=None,
           idle_grads_zero: bool = False) -> dict:
    """One process doing what the ranks did together: from the same start, each optimizer step's
    loss on every rank's batch (that step's task and augmentation), the mean's gradient (each
    rank's per-token mean counts once; with accumulation, each micro-batch too), the same
    clipping, AdamW and schedule. steps[r]: rank r's batches in order, with "step", "epoch",
    "ids" and, where recorded, "loss" (checked). `model`: the run's (default: built from cfg).
    Trainable parameters the step leaves idle (the other modality's projector) keep no gradient,
    so AdamW leaves them alone, as in one process and under DDP; `idle_grads_zero`: they get
    zeros instead, as under FSDP (AdamW then moves them on their momentum and decays them).
    Returns the trainable weights."""
    model = model or build_model(cfg.model)
    model.load_trainable_state_dict(start)
    data = make_loaders(cfg, model)[0].dataset
    index = {row.id: i for i, row in enumerate(rows)}
    optim = AVSRLightning(model, cfg).configure_optimizers()
    opt, schedule = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    by_step: dict[int, list[dict]] = {}
    for rank in steps:
        for s in rank:
            by_step.setdefault(s["step"], []).append(s)
    for step in sorted(by_step):
        task = cfg.model.tasks[step % len(cfg.model.tasks)]  # one task per optimizer step
        opt.zero_grad(set_to_none=True)
        for s in by_step[step]:
            data.set_epoch(s["epoch"])
            loss, aux = model(collate([data[index[i]] for i in s["ids"]]), task)
            loss = loss + sum((v for k, v in aux.items() if k.endswith("_loss")), torch.zeros_like(loss))
            if "loss" in s:
                assert loss.item() == pytest.approx(s["loss"], abs=1e-5), (step, task)  # as that rank
            (loss / (len(steps) * accumulate)).backward()  # an epoch's last window may be short
        for p in params if idle_grads_zero else ():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        schedule.step()
    return model.trainable_state_dict()


def worst_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_two_process_ddp_training_through_the_cli(tiny_corpus, tiny_backbones, tmp_path):
    """Two ranks train on different batches, end with identical weights, and match one process
    doing the same global step (both ranks' batches, their gradients averaged)."""
    overrides, out, record = two_rank_run(tiny_corpus, tiny_backbones, tmp_path)
    result = launch(record, overrides, "strategy=ddp", "--fresh")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # --fresh is rank 0's: rank 1, which the launcher starts once rank 0 has begun the run (and
    # locked its folder), deletes nothing of it
    assert (out / LOCK).is_file()
    assert "4 steps" in result.stdout and "2 processes" in result.stdout, result.stdout[-2000:]
    saved = Checkpoint.open(out / "checkpoints" / "last", find_backbones=False).saved
    assert saved["step"] == 4 and saved["train"]["devices"] == 2
    ranks = [torch.load(record / f"rank{r}.pt") for r in (0, 1)]
    assert [rank["rank"] for rank in ranks] == [0, 1] and all(rank["world_size"] == 2 for rank in ranks)
    steps = [rank["steps"] for rank in ranks]
    assert [[s["step"] for s in rank] for rank in steps] == [[0, 1, 2, 3]] * 2

    # (a) Different batches: each rank its own shard of the seeded order.
    cfg = load_config(None, overrides)  # the same run on one device
    rows = read_manifest(cfg.data.labels(cfg.data.train_split))
    check_sharded_batches(cfg, rows, steps)

    # (b) Identical weights: the same start (DDP broadcasts rank 0's), averaged gradients, the same
    # updates; bit for bit, and what the checkpoint holds.
    start, end = ranks[0]["start"], ranks[0]["end"]
    for name in start:
        assert torch.equal(ranks[1]["start"][name], start[name]) and torch.equal(ranks[1]["end"][name], end[name]), name
    assert sum(not torch.equal(start[k], end[k]) for k in start) > len(start) // 2  # training moved them
    checkpoint = load_file(str(out / "checkpoints" / "last" / WEIGHTS))
    assert checkpoint.keys() == end.keys() and all(torch.equal(checkpoint[k], end[k]) for k in end)

    # (c) One process, same global batch. Only float summation order differs (the all-reduce,
    # thread counts): ~1e-7 relative, far below 1e-5; a lost or un-averaged rank gradient, or
    # per-rank clipping, moves the weights by ~lr = 1e-3 in the first step already.
    worst = worst_difference(replay(cfg, rows, start, steps), end)
    assert worst < 1e-5, worst


def test_two_process_fsdp_training_interrupted_and_resumed_through_the_cli(tiny_corpus, tiny_backbones, tmp_path):
    """FSDP: each rank holds a shard of the trainable weights; Ctrl-C inside step 2 saves the
    gathered weights and a resume checkpoint; the same command resumes (weights, AdamW state,
    schedule, data position) and ends where one process doing the same 4 global steps ends
    (with FSDP's zero gradients for idle parameters)."""
    overrides, out, record = two_rank_run(tiny_corpus, tiny_backbones, tmp_path)
    stopped = launch(record, overrides, "strategy=fsdp", stop_at=2)
    assert stopped.returncode == 130 and "step 2 saved" in stopped.stderr, \
        stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert Checkpoint.open(out / "checkpoints" / "last", find_backbones=False).step == 2
    saved_at_2 = load_file(str(out / "checkpoints" / "last" / WEIGHTS))
    first = torch.load(record / "rank0-interrupted.pt")
    assert first["strategy"] == "CPUFSDPStrategy" and [s["step"] for s in first["steps"]] == [0, 1]

    resumed = launch(record, overrides, "strategy=fsdp")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "4 steps" in resumed.stdout and "2 processes" in resumed.stdout, resumed.stdout[-2000:]
    ranks = [torch.load(record / f"rank{r}.pt") for r in (0, 1)]
    assert [[s["step"] for s in rank["steps"]] for rank in ranks] == [[2, 3]] * 2
    start, end = first["start"], ranks[0]["end"]
    assert ranks[1]["start"] is None and ranks[1]["end"] is None  # gathered onto rank 0 only

    # Sharded: each rank holds part of the trainable values, together all of them.
    total = sum(v.numel() for v in start.values())
    local = [rank["local_trainable"] for rank in ranks]
    assert all(0 < n < total for n in local) and sum(local) >= total, (local, total)

    # The resumed run started from the weights saved at the interruption; the final checkpoint
    # holds the gathered, full tensors.
    assert worst_difference(ranks[0]["start"], saved_at_2) == 0
    checkpoint = load_file(str(out / "checkpoints" / "last" / WEIGHTS))
    assert worst_difference(checkpoint, end) == 0 and worst_difference(start, end) > 1e-4

    # Each rank's batches, across the interruption, are its shard of the seeded order (rank 1's
    # record of the interrupted run may be cut short: the launcher ends it).
    cfg = load_config(None, overrides)
    rows = read_manifest(cfg.data.labels(cfg.data.train_split))
    rank1_before = [{"step": s, "epoch": e, "ids": ids}
                    for s, (e, ids) in enumerate(expected_batches(cfg, rows, 1)[:2])]
    steps = [first["steps"] + ranks[0]["steps"], rank1_before + ranks[1]["steps"]]
    check_sharded_batches(cfg, rows, steps)

    # One process, the same 4 global steps from the same start: a resume that lost AdamW's
    # moments, the schedule or the data position, or a wrong gather, misses by ~lr = 1e-3. FSDP
    # gives the parameters a step leaves idle zero gradients, not none (torch's FSDP1 fills its
    # flat gradient): AdamW moves them on (docs/scaling.md), unlike one process and DDP.
    worst = worst_difference(replay(cfg, rows, start, steps, idle_grads_zero=True), end)
    assert worst < 1e-5, worst
    unrecorded = [[{k: v for k, v in s.items() if k != "loss"} for s in rank] for rank in steps]
    assert worst_difference(replay(cfg, rows, start, unrecorded), end) > 1e-4


class Record(L.Callback):
    """In-process: the weights before training and the batches of every step."""

    def __init__(self):
        self.start, self.steps = {}, []

    def on_train_start(self, trainer, module) -> None:
        self.start = {k: v.clone() for k, v in module.model.trainable_state_dict().items()}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.steps.append({"step": trainer.global_step, "epoch": trainer.current_epoch, "ids": list(batch["ids"])})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.steps[-1]["loss"] = float(outputs["loss"]) * trainer.accumulate_grad_batches  # Lightning's is / k


def test_gradient_accumulation_adds_up_batches_into_one_step(tiny_corpus, tmp_path):
    """accumulate_grad_batches=2: two batches per optimizer step, one task for both, their mean
    loss's gradient, one clipping and one AdamW step; the checkpoint is written once per step."""
    cfg = load_config(None, [f"data.root={tiny_corpus[0].out}", f"out={tmp_path / 'run'}", "optim.max_steps=2",
                             "optim.warmup_steps=1", "data.max_frames=200", "log_every=1", "val_every=0",
                             "checkpoint_every=1", "data.feature_cache_copies=0", "accelerator=cpu",
                             "accumulate_grad_batches=2"])
    record = Record()
    folder = train(cfg, model=tiny_model(seed=11), progress=False, callbacks=[record])
    assert [s["step"] for s in record.steps] == [0, 0, 1, 1]
    assert Checkpoint.open(folder, find_backbones=False).step == 2
    rows = read_manifest(cfg.data.labels(cfg.data.train_split))
    worst = worst_difference(replay(cfg, rows, record.start, [record.steps], accumulate=2, model=tiny_model(seed=11)),
                             load_file(str(folder / WEIGHTS)))
    assert worst < 1e-5, worst


@pytest.mark.parametrize("tasks", [
    "[vsr]",
    "[asr]",  # the log-mel runs in float32 (the CPU FFT has no bfloat16 kernel)
])
def test_bf16_true_trains_and_saves_a_loadable_checkpoint(tiny_corpus, tmp_path, tasks):
    cfg = load_config(None, [f"data.root={tiny_corpus[0].out}", f"out={tmp_path / 'run'}", "optim.max_steps=1",
                             "optim.warmup_steps=0", "data.max_frames=100", "val_every=0", "checkpoint_every=1",
                             "data.feature_cache_copies=0", "accelerator=cpu", "precision=bf16-true",
                             f"model.tasks={tasks}"])
    start = tiny_model(seed=11, tasks=list(cfg.model.tasks)).trainable_state_dict()
    folder = train(cfg, model=tiny_model(seed=11, tasks=list(cfg.model.tasks)), progress=False)
    saved = load_file(str(folder / WEIGHTS))
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}  # trained in bf16, as the papers do
    model = tiny_model(seed=0, tasks=list(cfg.model.tasks))  # float32, other weights
    model.load_trainable_state_dict(saved)
    loaded = model.trainable_state_dict()
    assert all(loaded[k].dtype == torch.float32 and torch.equal(loaded[k], saved[k].float()) for k in saved)
    assert worst_difference(start, loaded) > 1e-4  # the step moved them


def test_the_fsdp_strategy_shards_the_llm_by_decoder_layer_and_gathers_full_checkpoints():
    """What `strategy=fsdp` gives the Trainer, without launching it."""
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer
    from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

    from avsr.models.video_encoder import EncoderLayer

    model = tiny_model()
    for name, offload, precision in (("fsdp", False, "32-true"), ("fsdp_cpu_offload", True, "bf16-true")):
        cfg = load_config(None, [f"strategy={name}", "devices=8", f"precision={precision}"])
        strategy = build_strategy(cfg, model)
        assert type(strategy) is FSDPStrategy
        assert strategy.kwargs["use_orig_params"] is True
        assert strategy._state_dict_type == "full" and strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
        assert strategy.kwargs["auto_wrap_policy"]._module_classes == {LlamaDecoderLayer, WhisperEncoderLayer,
                                                                      EncoderLayer}
        assert bool(strategy.cpu_offload and strategy.cpu_offload.offload_params) is offload
        if precision == "bf16-true":  # everything in bf16, BatchNorm included
            mixed = strategy.mixed_precision
            assert {mixed.param_dtype, mixed.reduce_dtype, mixed.buffer_dtype} == {torch.bfloat16}
            assert tuple(mixed._module_classes_to_ignore) == ()
        else:  # Lightning's, from the Trainer's precision
            assert strategy.mixed_precision is None
    assert build_strategy(load_config(None, ["strategy=ddp", "devices=8"]), model) == "ddp_find_unused_parameters_true"
