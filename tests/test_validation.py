"""What the input checks must let through: valid settings, checkpoints and evaluations keep working
(the refusals themselves are in test_bad_input.py)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avsr.data.media import MediaError, write_audio
from avsr.data.noise import read_noise
from avsr.evaluation.report import default_eval_folder
from avsr.models.avsr_model import AVSRConfig
from avsr.models.loading import Checkpoint, quiet_loading
from avsr.settings import SettingError
from avsr.training.config import ConfigError, load_config
from conftest import run_cli


@pytest.mark.parametrize("overrides", [
    ["precision=32"], ["precision=bf16-mixed"], ["precision=16-mixed"], ["devices=-1"], ["devices=auto"],
    ["devices=[0,1]"], ["devices=0,1"], ["devices=8", "strategy=ddp"], ["strategy=fsdp"],
    ["strategy=ddp_find_unused_parameters_false"], ["strategy=deepspeed_stage_2"], ["data.snrs=[]"],
    ["data.snrs=[-5.5, 0, null]"], ["model.tasks=[vsr]"], ["task_weights={asr: 0, vsr: 2}"],
    ["objective=omni", "model.tasks=[asr,avsr]", "task_weights={asr: 1, avsr: 1}"], ["val_every=0"],
    ["optim.warmup_steps=0"], ["optim.lr=5e-4"], ["optim.max_steps=1e3"], ["logger=tensorboard"], ["logger=wandb"],
    ["accelerator=gpu"], ["model.projector=smop", "model.smop_experts=2", "model.smop_top_k=2"],
    ["model.pair_weights=[1, 0.5, 1, 2]", "model.audio_rates=[4,16]", "model.video_rates=[2,5]"],
    ["data.noise=babble.wav"], ["model.lora_dropout=0.1"], ["seed=0"],
])
def test_valid_settings_are_accepted(overrides):
    """Valid values pass (packages, GPUs and files are checked only when a training starts)."""
    load_config(None, overrides)


def test_a_setting_names_its_section_and_the_model_config_its_field():
    with pytest.raises(ConfigError, match=r"^config: optim.max_steps must be a positive integer, got -5$"):
        load_config(None, ["optim.max_steps=-5"])
    with pytest.raises(SettingError, match="lora_rank must be a positive integer, got 0") as err:
        AVSRConfig(lora_rank=0)
    assert isinstance(err.value, ValueError) and err.value.key == "lora_rank"


def test_the_trained_checkpoint_config_passes_its_own_checks(tiny_run):
    saved = Checkpoint.open(tiny_run / "checkpoints" / "last", find_backbones=False).saved
    assert saved["step"] == 2 and saved["train"]["optim"]["max_steps"] == 2


def test_noise_files_must_hold_sound(tmp_path):
    write_audio(tmp_path / "ok.wav", np.full(800, 0.1, np.float32))
    assert read_noise(tmp_path / "ok.wav").size == 800
    write_audio(tmp_path / "empty.wav", np.zeros(0, np.float32))
    with pytest.raises(MediaError, match="empty.wav has no samples"):
        read_noise(tmp_path / "empty.wav")


def test_default_eval_folder_is_outside_the_checkpoint(tmp_path):
    assert default_eval_folder(Path("runs/x/checkpoints/last")) == Path("runs/x/eval/last")
    assert default_eval_folder(Path("models/best")) == Path("models/best-eval")
    assert default_eval_folder(Path("ckpt/")) == Path("ckpt-eval")


def test_quiet_loading_hides_the_progress_bars_only_while_quiet(tiny_backbones, capfd):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    AutoModelForCausalLM.from_pretrained(tiny_backbones["llm"])
    assert "Loading weights" in capfd.readouterr().err  # what --quiet has to hide
    with quiet_loading(True):
        AutoModelForCausalLM.from_pretrained(tiny_backbones["llm"])
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # restored: nothing changes when not quiet


def test_clean_eval_needs_no_noise_writes_every_hypothesis_beside_the_checkpoint(tiny_corpus, tiny_run, tmp_path):
    """A clean-only evaluation of a corpus without its babble file: the report goes to
    <run>/eval/last (not into the checkpoint, which the next training replaces), holds every
    utterance's hypothesis, and --quiet shows no "Loading weights" bar."""
    corpus = Path(tiny_corpus[0].out)
    root = tmp_path / "corpus"  # the corpus without noise/
    root.mkdir()
    for name in ("labels", "synth"):
        (root / name).symlink_to(corpus / name)
    checkpoint = tmp_path / "run" / "checkpoints" / "last"
    shutil.copytree(tiny_run / "checkpoints" / "last", checkpoint)
    before = sorted(p.name for p in checkpoint.iterdir())
    code, out, err = run_cli("eval", checkpoint, "--root", root, "--snrs", "clean", "--limit", "3", "--beams", "1",
                             "--max-new-tokens", "4", "--quiet")
    assert code == 0, err
    assert "Loading weights" not in out + err
    assert sorted(p.name for p in checkpoint.iterdir()) == before
    report = json.loads((tmp_path / "run" / "eval" / "last" / "results.json").read_text())
    assert set(report["hypotheses"]) == {"asr", "vsr", "avsr"}
    for task, by_condition in report["hypotheses"].items():
        rows = by_condition["clean"]
        assert len(rows) == 3 == report["results"][task]["clean"]["utterances"]
        assert all(set(r) == {"id", "reference", "hypothesis"} and r["reference"] for r in rows)
    assert report["noise"]["file"] is None
