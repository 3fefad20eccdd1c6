"""Interruptions: Ctrl-C keeps the last completed step and exits 130; a run stopped anywhere (Ctrl-C,
kill -9; at, across, between epoch boundaries; before and after a save) and resumed ends with the
weights and learning rate of an uninterrupted one; the resume file runs no code; one process at a
time writes a run folder; a finished run is not trained again; a changed configuration is refused."""

import csv
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from avsr.errors import Interrupted
from avsr.io import RUN_MARKER, claim_folder
from avsr.models.loading import Checkpoint
from avsr.pipelines.quickstart import ENTRIES as QUICKSTART_ENTRIES
from avsr.training.config import ConfigError, load_config, save_config
from avsr.training.run_lock import LOCK
from avsr.training.train import RUN_ENTRIES, train
from conftest import run_cli, tiny_model, tiny_train_args

STOP_AT = Path(__file__).with_name("stop_at.py")


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
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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


def test_fresh_starts_over_in_the_run_folder_of_an_avsr_before_the_lock(tiny_corpus, tmp_path, capsys):
    cfg = config(tiny_corpus, tmp_path / "run", steps=2)
    run(cfg)
    capsys.readouterr()
    marker = tmp_path / "run" / RUN_MARKER  # as avsr wrote it before the lock: no lock file, not listed
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "entries": [e for e in RUN_ENTRIES if e != LOCK]}))
    (tmp_path / "run" / LOCK).unlink()
    train(cfg, model=tiny_model(seed=11), progress=False, fresh=True)  # deleted while locked, then trained
    assert "already finished" not in capsys.readouterr().out
    assert Checkpoint.open(tmp_path / "run" / "checkpoints" / "last", find_backbones=False).step == 2
    assert LOCK in json.loads(marker.read_text())["entries"]


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
    assert step > 0 and (out / "resume" / "state.safetensors").is_file() and f"step {step} saved" in lines[0]


# Four utterances of the tiny corpus (39 to 50 frames) and the batches of an epoch they make.
LAYOUTS = {"one batch per epoch": (1, "data.max_utterance_seconds=2", "data.max_frames=200"),
           "two batches per epoch": (2, "data.max_utterance_seconds=2", "data.max_frames=100"),
           # one utterance a batch, three batches a step: steps of 3 and 1 batches (an epoch's end)
           "four batches per epoch, accumulated by 3": (4, "data.max_utterance_seconds=2", "data.max_frames=50",
                                                        "accumulate_grad_batches=3")}
STEPS, EVERY = 8, 3  # resume states saved at steps 3 and 6


def stop_at_command(tiny_corpus, tiny_backbones, out: Path, record: Path, layout: str, *stop: str) -> list[str]:
    return [sys.executable, str(STOP_AT), str(record), *stop, "train", "--quiet",
            *tiny_train_args(tiny_corpus[0].out, tiny_backbones, out, STEPS, f"checkpoint_every={EVERY}",
                             *LAYOUTS[layout][1:])]


def logged_rows(run: Path, first_step: int) -> list[tuple[str, str, str]]:
    """(step, epoch, learning rate) of the last training's logged rows from `first_step` on."""
    rows = csv.DictReader(open(sorted(run.glob("logs/version_*/metrics.csv"))[-1]))
    return [(r["step"], r["epoch"], r["train/lr"]) for r in rows if r.get("train/lr") and int(r["step"]) >= first_step]


@pytest.fixture(scope="module")
def straight_runs(tiny_corpus, tiny_backbones, tmp_path_factory):
    """Per layout (run on first use): the record and run folder of a run never stopped."""
    runs = {}

    def get(layout: str) -> tuple[dict, Path]:
        if layout not in runs:
            folder = tmp_path_factory.mktemp("straight")
            done = subprocess.run(stop_at_command(tiny_corpus, tiny_backbones, folder / "run", folder / "record.json",
                                                  layout), capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-3000:]
            runs[layout] = json.loads((folder / "record.json").read_text()), folder / "run"
        return runs[layout]
    return get


@pytest.mark.parametrize("layout, hook, step, action, resumes_at", [
    # Ctrl-C inside step 5: the run stops at the end of step 5, an epoch boundary
    ("one batch per epoch", "before_optimizer_step", 4, "sigint", 5),
    # kill -9 right after the resume state of step 6 was saved, at an epoch boundary
    ("one batch per epoch", "train_batch_end", 6, "sigkill", 6),
    # kill -9 inside step 6, right before its save: back to step 3, across three epoch boundaries
    ("one batch per epoch", "before_optimizer_step", 5, "sigkill", 3),
    # Ctrl-C inside step 4: stops at its end, the end of epoch 1
    ("two batches per epoch", "before_optimizer_step", 3, "sigint", 4),
    # Ctrl-C right after step 2 and its batch (the request is seen at the end of step 3, mid-epoch)
    ("two batches per epoch", "train_batch_end", 2, "sigint", 3),
    # kill -9 right after the save of step 6 (the end of epoch 2)
    ("two batches per epoch", "train_batch_end", 6, "sigkill", 6),
    # kill -9 inside step 6, before its save: back to step 3 (mid-epoch), across two epoch boundaries
    ("two batches per epoch", "before_optimizer_step", 5, "sigkill", 3),
    # Ctrl-C in the first batch of step 5's window: the window is finished, then the run stops
    ("four batches per epoch, accumulated by 3", "train_batch_start", 4, "sigint", 5),
    # kill -9 inside step 6 (the short window at the end of epoch 2): back to step 3, mid-epoch 1
    ("four batches per epoch, accumulated by 3", "before_optimizer_step", 5, "sigkill", 3),
])
def test_a_run_stopped_anywhere_resumes_to_the_uninterrupted_weights_and_learning_rate(
        tiny_corpus, tiny_backbones, straight_runs, tmp_path, layout, hook, step, action, resumes_at):
    straight, straight_run = straight_runs(layout)
    epochs = [s["epoch"] for s in straight["steps"]]  # one entry per batch
    assert epochs == sorted(epochs) and set(Counter(epochs).values()) == {LAYOUTS[layout][0]}  # the layout holds
    out = tmp_path / "run"
    stopped = subprocess.run(stop_at_command(tiny_corpus, tiny_backbones, out, tmp_path / "stopped.json", layout,
                                             hook, str(step), action), capture_output=True, text=True, timeout=600)
    if action == "sigint":
        assert stopped.returncode == 130 and f"step {resumes_at} saved" in stopped.stderr, stopped.stderr[-3000:]
    else:
        assert stopped.returncode == -signal.SIGKILL, stopped.stderr[-3000:]
    assert not (out / "done.json").exists()
    resumed = subprocess.run(stop_at_command(tiny_corpus, tiny_backbones, out, tmp_path / "resumed.json", layout),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    record = json.loads((tmp_path / "resumed.json").read_text())
    # the resumed run starts after the saved step, and from there every batch is the uninterrupted
    # run's (same utterances, epoch), with its learning rate and global-RNG draw
    assert record["steps"][0]["step"] == resumes_at
    assert record["steps"] == [s for s in straight["steps"] if s["step"] >= resumes_at]
    assert (record["lr"], record["scheduler_step"]) == (straight["lr"], straight["scheduler_step"]) == \
        (straight["lr"], STEPS)
    final, expected = weights(out / "checkpoints" / "last"), weights(straight_run / "checkpoints" / "last")
    assert final.keys() == expected.keys()
    assert [k for k in final if not torch.equal(final[k], expected[k])] == []  # bit for bit
    # the logged rows go on with the uninterrupted run's step numbers, epochs and learning rates
    assert logged_rows(out, resumes_at) == logged_rows(straight_run, resumes_at) != []


class RunsCode:
    """Unpickling this creates a file: what reading a resume file must never do."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (self.path,)


@pytest.mark.parametrize("name", ["last.ckpt", "state.safetensors"])  # an older avsr's pickle; ours, forged
def test_a_resume_file_that_would_run_code_is_refused_without_running_it(tiny_corpus, tiny_backbones, tmp_path, name):
    control, ran = tmp_path / "control", tmp_path / "ran"
    torch.save(RunsCode(control), tmp_path / "control.ckpt")
    torch.load(tmp_path / "control.ckpt", weights_only=False)
    assert control.is_file()  # such a file does run code when unpickled
    out = tmp_path / "run"
    args = tiny_train_args(tiny_corpus[0].out, tiny_backbones, out, 4)
    claim_folder(out, "train", RUN_ENTRIES)  # an interrupted run's folder, as train() begins it
    save_config(load_config(None, args), out / "config.yaml")
    bad = out / "resume" / name
    bad.parent.mkdir()
    torch.save(RunsCode(ran), bad)
    before = bad.read_bytes()
    code, stdout, stderr = run_cli("train", "--quiet", *args)
    assert code == 2 and not ran.exists()
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"avsr train: error: {bad}: ") and "--fresh" in lines[0], stderr
    assert "Traceback" not in stdout + stderr and bad.read_bytes() == before
    assert not (out / "checkpoints").exists()  # refused before any training


def test_a_second_run_on_a_folder_in_use_is_refused_at_once_and_kill_9_frees_it(tiny_corpus, tiny_backbones, tmp_path):
    out, record = tmp_path / "run", tmp_path / "first.json"
    args = tiny_train_args(tiny_corpus[0].out, tiny_backbones, out, 3, "checkpoint_every=1")
    first = subprocess.Popen([sys.executable, str(STOP_AT), str(record), "train_batch_end", "1", "wait",
                              "train", "--quiet", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not Path(f"{record}.waiting").is_file():  # step 1 trained and saved; the run goes on
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:]
            time.sleep(0.1)
        for command in (["train", "--quiet", *args], ["train", "--fresh", "--quiet", *args]):
            started = time.monotonic()
            code, stdout, stderr = run_cli(*command)
            lines = stderr.strip().splitlines()
            assert code == 2 and len(lines) == 1 and "Traceback" not in stdout + stderr, stderr
            assert f"{out} is in use by another avsr run (process {first.pid} on " in lines[0], lines[0]
            assert time.monotonic() - started < 30  # at once: no model is built
        assert Checkpoint.open(out / "checkpoints" / "last", find_backbones=False).step == 1  # --fresh deleted nothing
    finally:
        first.kill()  # kill -9: the lock goes with the process
        first.wait()
    code, stdout, stderr = run_cli("train", "--quiet", *args)
    assert code == 0, stderr[-3000:]
    assert Checkpoint.open(out / "checkpoints" / "last", find_backbones=False).step == 3


def test_a_quickstart_whose_training_runs_elsewhere_is_not_overwritten(tmp_path):
    out = tmp_path / "qs"
    claim_folder(out, "quickstart", QUICKSTART_ENTRIES)
    claim_folder(out / "avsr", "train", RUN_ENTRIES)
    (out / "report.md").write_text("an earlier report")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from avsr.training.run_lock import locked\n"
                               "with locked(sys.argv[1]):\n    print('locked', flush=True); time.sleep(300)",
                               str(out / "avsr")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # a training holds its run folder
        # (a subprocess with a time limit: a quickstart that deleted the folder would go on for minutes)
        done = subprocess.run([sys.executable, "-m", "avsr", "quickstart", "--out", str(out), "--overwrite", "--quiet"],
                              capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stdout + done.stderr, done.stderr
    assert f"{out / 'avsr'} is in use by another avsr run (process {holder.pid} on " in lines[0], lines[0]
    assert (out / "report.md").read_text() == "an earlier report" and (out / "avsr" / LOCK).is_file()


@pytest.mark.parametrize("after", [0.6, 1.5])
def test_ctrl_c_while_starting_up_exits_130_without_a_traceback(tmp_path, after):
    proc = subprocess.Popen([sys.executable, "-m", "avsr", "train", f"out={tmp_path / 'run'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after)  # importing torch, lightning, transformers
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stdout + stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("avsr")
