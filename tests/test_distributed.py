"""Multi-process training (DDP) through the CLI, on CPU with two processes (gloo).

The same code path as 8 GPUs with `strategy=ddp`, minus the GPUs: the launcher re-runs the
command per rank, the batch sampler shards the batches, and steps that leave parameters
without a gradient (one task per step here) must not stop DDP.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from avsr.data.batching import FrameBudgetBatchSampler, collate
from avsr.data.dataset import read_labels
from avsr.models.loading import WEIGHTS, build_model, read_checkpoint_config
from avsr.training.config import load_config
from avsr.training.train import AVSRLightning, make_loaders, resolve_strategy


@pytest.mark.parametrize("strategy, devices, expected", [
    ("ddp", 1, "ddp_find_unused_parameters_true"),
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
    assert resolve_strategy(strategy, devices) == expected


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


def test_two_process_ddp_training_through_the_cli(tiny_corpus, tiny_backbones, tmp_path):
    """Two ranks train on different batches, end with identical weights, and match one process
    doing the same global step (both ranks' batches, their gradients averaged)."""
    corpus_cfg, _ = tiny_corpus
    backbones = tiny_backbones
    out, record = tmp_path / "run", tmp_path / "record"
    record.mkdir()
    overrides = [f"model.llm={backbones['llm']}", f"model.audio_encoder={backbones['audio']}",
                 f"model.video_encoder={backbones['video']}", "model.projector_hidden=32", "model.lora_rank=4",
                 f"data.root={corpus_cfg.out}", "data.max_frames=150", "data.feature_cache_copies=0",
                 f"out={out}", "optim.max_steps=4", "optim.warmup_steps=1", "log_every=1", "val_every=0",
                 "checkpoint_every=4", "accelerator=cpu"]
    # `avsr train ...` through the CLI, each rank recording its batches and weights (tests/ddp_recorder.py)
    command = [sys.executable, str(Path(__file__).with_name("ddp_recorder.py")), str(record), "train", "--quiet",
               *overrides, "devices=2", "strategy=ddp"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 steps" in result.stdout and "2 processes" in result.stdout, result.stdout[-2000:]
    saved = read_checkpoint_config(out / "checkpoints" / "last")
    assert saved["step"] == 4 and saved["train"]["devices"] == 2
    ranks = [torch.load(record / f"rank{r}.pt") for r in (0, 1)]
    assert [rank["rank"] for rank in ranks] == [0, 1] and all(rank["world_size"] == 2 for rank in ranks)
    steps = [rank["steps"] for rank in ranks]
    assert [[s["step"] for s in rank] for rank in steps] == [[0, 1, 2, 3]] * 2

    # (a) Different batches: at every step the ranks' utterances are disjoint, each rank's batches
    # are its shard of the seeded order (rank r: batches r, r + 2, ...), and the first epoch
    # covers the training split between them.
    cfg = load_config(None, overrides)  # the same run on one device
    rows = read_labels(cfg.data.labels(cfg.data.train_split))
    for s0, s1 in zip(*steps):
        assert s0["epoch"] == s1["epoch"] and not set(s0["ids"]) & set(s1["ids"]), (s0, s1)
    for rank, trained in enumerate(steps):
        sampler = FrameBudgetBatchSampler([row.n_frames for row in rows], cfg.data.max_frames, seed=cfg.seed,
                                          num_replicas=2, rank=rank)
        assert 1 < len(sampler) < 4  # so 4 steps span an epoch boundary
        expected = []
        for epoch in range(4):
            sampler.set_epoch(epoch)
            expected += [(epoch, [rows[i].rel_path for i in batch]) for batch in sampler]
        assert [(s["epoch"], s["ids"]) for s in trained] == expected[:4]
    first_epoch = {i for rank in steps for s in rank if s["epoch"] == 0 for i in s["ids"]}
    assert first_epoch == {row.rel_path for row in rows}

    # (b) Identical weights: the same start (DDP broadcasts rank 0's), averaged gradients, the same
    # updates; bit for bit, and what the checkpoint holds.
    start, end = ranks[0]["start"], ranks[0]["end"]
    for name in start:
        assert torch.equal(ranks[1]["start"][name], start[name]) and torch.equal(ranks[1]["end"][name], end[name]), name
    assert sum(not torch.equal(start[k], end[k]) for k in start) > len(start) // 2  # training moved them
    checkpoint = load_file(str(out / "checkpoints" / "last" / WEIGHTS))
    assert checkpoint.keys() == end.keys() and all(torch.equal(checkpoint[k], end[k]) for k in end)

    # (c) One process, same global batch: from the same start, each step's loss on both ranks'
    # batches (that step's task and augmentation), their mean's gradient, the same clipping, AdamW
    # and schedule. Only float summation order differs (the all-reduce, thread counts): ~1e-7
    # relative, far below 1e-5; a lost or un-averaged rank gradient, or per-rank clipping, moves the
    # weights by ~lr = 1e-3 in the first step already.
    model = build_model(cfg.model)
    model.load_trainable_state_dict(start)
    data = make_loaders(cfg, model)[0].dataset
    index = {row.rel_path: i for i, row in enumerate(rows)}
    optim = AVSRLightning(model, cfg).configure_optimizers()
    opt, schedule = optim["optimizer"], optim["lr_scheduler"]["scheduler"]
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for s0, s1 in zip(*steps):
        task = cfg.model.tasks[s0["step"] % len(cfg.model.tasks)]
        data.set_epoch(s0["epoch"])
        losses = []
        for s in (s0, s1):
            loss, aux = model(collate([data[index[i]] for i in s["ids"]]), task)
            losses.append(loss + sum((v for k, v in aux.items() if k.endswith("_loss")), torch.zeros_like(loss)))
            assert losses[-1].item() == pytest.approx(s["loss"], abs=1e-5), (s["step"], task)  # as that rank
        opt.zero_grad(set_to_none=True)
        ((losses[0] + losses[1]) / 2).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        schedule.step()
    single = model.trainable_state_dict()
    worst = max((single[k] - end[k]).abs().max().item() for k in end)
    assert worst < 1e-5, worst
