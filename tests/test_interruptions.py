"""Interruptions: Ctrl-C keeps the last completed step and exits 130; a resumed run ends where an
uninterrupted one ends; a finished run is not trained again; a changed configuration is refused."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from avsr.errors import Interrupted
from avsr.models.loading import Checkpoint
from avsr.training.config import ConfigError, load_config
from avsr.training.train import train
from conftest import tiny_model, tiny_train_args


class CtrlCAt(L.Callback):
    """Raises KeyboardInterrupt inside step `step` (after the backward pass, before the
    optimizer step), as a Ctrl-C at the worst moment would."""

    def __init__(self, step: int):
        self.step = step

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


def config(tiny_corpus, out: Path, steps: int = 10, *extra: str):
    return load_config(None, [f"data.root={tiny_corpus[0].out}", f"out={out}", f"optim.max_steps={steps}",
                              "optim.warmup_steps=2", "optim.lr=6e-3", "data.max_frames=200", "log_every=1",
                              "val_every=0", "checkpoint_every=100", "data.feature_cache_copies=2", *extra])


def weights(checkpoint: Path) -> dict:
    return load_file(str(checkpoint / "trainable.safetensors"))


def run(cfg, callbacks=()):
    model = tiny_model(seed=11)
    return train(cfg, model=model, progress=False, callbacks=callbacks)


def test_ctrl_c_mid_step_then_resume_ends_with_the_uninterrupted_weights(tiny_corpus, tmp_path):
    straight = run(config(tiny_corpus, tmp_path / "straight"))
    cfg = config(tiny_corpus, tmp_path / "run")
    with pytest.raises(Interrupted, match="step 6 saved"):
        run(cfg, callbacks=[CtrlCAt(6)])  # mid-epoch (4 batches per epoch) and mid-step
    assert Checkpoint.open(tmp_path / "run" / "checkpoints" / "last", find_backbones=False).step == 6
    assert not (tmp_path / "run" / "done.json").exists()
    resumed = run(cfg)
    assert (tmp_path / "run" / "done.json").is_file()
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_finished_run_is_not_trained_again_and_a_changed_one_is_refused(tiny_corpus, tmp_path, capsys):
    cfg = config(tiny_corpus, tmp_path / "run", steps=3)
    checkpoint = run(cfg)
    before = weights(checkpoint)
    assert run(cfg) == checkpoint and "already finished its 3 steps" in capsys.readouterr().out
    assert all(torch.equal(before[k], v) for k, v in weights(checkpoint).items())
    for override, key in (("optim.max_steps=2", "optim.max_steps"), ("model.lora_rank=8", "model.lora_rank")):
        with pytest.raises(ConfigError, match=key):
            run(config(tiny_corpus, tmp_path / "run", 3, override))
    assert all(torch.equal(before[k], v) for k, v in weights(checkpoint).items())


def test_ctrl_c_through_the_cli_exits_130_with_one_line_and_a_checkpoint(tiny_corpus, tiny_backbones, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "avsr", "train", "--quiet",
               *tiny_train_args(tiny_corpus[0].out, tiny_backbones, out, 100000, "checkpoint_every=100000")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "logs").is_dir() and time.monotonic() < deadline:  # the trainer has started
            time.sleep(0.2)
        time.sleep(5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    lines = [line for line in stderr.splitlines() if line.startswith("avsr train:")]
    assert len(lines) == 1 and "interrupted" in lines[0] and "resume" in lines[0], stderr[-2000:]
    step = Checkpoint.open(out / "checkpoints" / "last", find_backbones=False).step
    assert step > 0 and (out / "resume" / "last.ckpt").is_file() and f"step {step} saved" in lines[0]


def test_kill_9_during_training_then_the_same_command_ends_with_the_straight_runs_weights(
        tiny_corpus, tiny_backbones, tmp_path):
    def command(out):
        return [sys.executable, "-m", "avsr", "train", "--quiet",
                *tiny_train_args(tiny_corpus[0].out, tiny_backbones, out, 40, "checkpoint_every=4")]

    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / "run"
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "resume" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs
    proc.wait()
    killed_at = Checkpoint.open(out / "checkpoints" / "last", find_backbones=False).step
    assert 0 < killed_at < 40 and not (out / "done.json").exists()
    resumed = subprocess.run(command(out), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "straight" / "checkpoints" / "last"), weights(out / "checkpoints" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a), f"killed at step {killed_at}"


@pytest.mark.parametrize("after", [0.6, 1.5])
def test_ctrl_c_while_starting_up_exits_130_without_a_traceback(tmp_path, after):
    proc = subprocess.Popen([sys.executable, "-m", "avsr", "train", f"out={tmp_path / 'run'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)  # importing torch, lightning, transformers
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stdout + stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("avsr")
