"""Checkpoints: opened once, portable (any working folder, a run folder moved or copied with its
backbones), old ones still loading, damaged weights named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import avsr
from avsr.models.loading import CONFIG, WEIGHTS, BackboneError, Checkpoint, CheckpointError
from conftest import run_cli, tiny_train_args


@pytest.fixture(scope="module")
def moved_run(tiny_corpus, tiny_backbones, tmp_path_factory) -> Path:
    """A run trained from a working folder with relative paths, its backbones inside the run
    folder (the quickstart's layout), then moved elsewhere: (new place of the run folder)."""
    import os

    work = tmp_path_factory.mktemp("work")
    for key, path in tiny_backbones.items():
        shutil.copytree(path, work / "run" / "models" / key)
    here = Path.cwd()
    os.chdir(work)
    try:
        args = tiny_train_args(tiny_corpus[0].out, {k: f"run/models/{k}" for k in tiny_backbones}, "run/avsr")
        code, _, err = run_cli("train", "--quiet", *args)
    finally:
        os.chdir(here)
    assert code == 0, err
    saved = json.loads((work / "run" / "avsr" / "checkpoints" / "last" / CONFIG).read_text())
    assert saved["model"]["llm"] == "run/models/llm"  # saved as typed, relative to that working folder
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "run"
    shutil.move(work / "run", elsewhere)
    return elsewhere


def a_wav(tiny_corpus) -> Path:
    return next(Path(tiny_corpus[0].out).glob("synth/test/*/*.wav"))


def test_a_moved_run_transcribes_from_another_working_folder(moved_run, tiny_corpus, tmp_path, monkeypatch):
    checkpoint = moved_run / "avsr" / "checkpoints" / "last"
    monkeypatch.chdir(tmp_path)
    opened = Checkpoint.open(checkpoint)
    assert opened.config.llm == str((moved_run / "models" / "llm").resolve())  # found beside the checkpoint
    code, out, err = run_cli("transcribe", a_wav(tiny_corpus), "--checkpoint", checkpoint, "--quiet",
                             "--format", "json")
    assert code == 0, err
    assert json.loads(out)["files"][0]["task"] == "asr"
    assert avsr.transcribe(a_wav(tiny_corpus), checkpoint=checkpoint).task == "asr"


def test_a_checkpoint_of_an_older_avsr_finds_its_relative_backbones_from_above(moved_run, tmp_path, monkeypatch):
    """Older checkpoints have no `paths` section: their relative backbone paths are tried from the
    working folder and from every folder above the checkpoint (the run's working folder was one)."""
    old = tmp_path / "copy"
    shutil.copytree(moved_run.parent, old)  # <old>/run/{models,avsr}
    config = old / "run" / "avsr" / "checkpoints" / "last" / CONFIG
    saved = json.loads(config.read_text())
    del saved["paths"]
    config.write_text(json.dumps(saved))
    monkeypatch.chdir(tmp_path)
    opened = Checkpoint.open(config.parent)
    assert opened.config.llm == str((old / "run" / "models" / "llm").resolve())
    assert opened.load().cfg.llm == opened.config.llm


def test_a_checkpoint_moved_without_its_backbones_says_so(moved_run, tmp_path):
    lonely = tmp_path / "last"
    shutil.copytree(moved_run / "avsr" / "checkpoints" / "last", lonely)
    saved = json.loads((lonely / CONFIG).read_text())
    saved["paths"]["model.llm"]["absolute"] = str(tmp_path / "gone")  # the original place is gone too
    (lonely / CONFIG).write_text(json.dumps(saved))
    with pytest.raises(BackboneError, match="the backbone this checkpoint was trained with is not found"):
        Checkpoint.open(lonely)


def test_nan_weights_are_named_not_decoded(moved_run, tmp_path, tiny_corpus):
    bad = tmp_path / "run"
    shutil.copytree(moved_run, bad)
    weights = bad / "avsr" / "checkpoints" / "last" / WEIGHTS
    state = load_file(str(weights))
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=f"tensor {name} holds NaN or infinite values"):
        Checkpoint.open(weights.parent).load()
    code, _, err = run_cli("transcribe", a_wav(tiny_corpus), "--checkpoint", weights.parent, "--quiet")
    assert code == 2 and "NaN or infinite" in err and "Traceback" not in err
