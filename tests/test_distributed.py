"""Multi-process training (DDP) through the CLI, on CPU with two processes (gloo).

The same code path as 8 GPUs with `strategy=ddp`, minus the GPUs: the launcher re-runs the
command per rank, the batch sampler shards the batches, and steps that leave parameters
without a gradient (one task per step here) must not stop DDP.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from avsr.models.loading import read_checkpoint_config
from avsr.training.train import resolve_strategy


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


def test_two_process_ddp_training_through_the_cli(tiny_corpus, tiny_backbones, tmp_path):
    corpus_cfg, _ = tiny_corpus
    backbones = tiny_backbones
    out = tmp_path / "run"
    command = [sys.executable, "-m", "avsr", "train", "--quiet",
               f"model.llm={backbones['llm']}", f"model.audio_encoder={backbones['audio']}",
               f"model.video_encoder={backbones['video']}", "model.projector_hidden=32", "model.lora_rank=4",
               f"data.root={corpus_cfg.out}", "data.max_frames=150", "data.feature_cache_copies=0",
               f"out={out}", "optim.max_steps=4", "optim.warmup_steps=1", "log_every=1", "val_every=0",
               "checkpoint_every=4", "accelerator=cpu", "devices=2", "strategy=ddp"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "4 steps" in result.stdout and "2 processes" in result.stdout, result.stdout[-2000:]
    saved = read_checkpoint_config(out / "checkpoints" / "last")
    assert saved["step"] == 4 and saved["train"]["devices"] == 2
