"""Build a model from its config (local folders or hub ids) and save / load checkpoints.

A checkpoint is a folder with the trainable weights only (`trainable.safetensors`: LoRA,
projectors, new-token embeddings) and `config.json` holding the resolved model config
(and the training config, when saved by training), so `load_checkpoint(folder)` needs no
other argument. Frozen backbones are referenced by path, never copied.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from avsr.errors import AvsrError
from avsr.io import atomic_folder
from avsr.models.avsr_model import MODALITIES, AVSRConfig, AVSRModel

WEIGHTS = "trainable.safetensors"
CONFIG = "config.json"


class CheckpointError(AvsrError):
    """A checkpoint folder that is missing, incomplete or does not fit its config."""


def build_model(cfg: AVSRConfig) -> AVSRModel:
    """Load the frozen backbones named in `cfg` and wrap them into a fresh AVSR model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    needs = {m for t in cfg.tasks for m in MODALITIES[t]}
    audio = video = None
    if "audio" in needs:
        from avsr.models.audio_encoder import WhisperAudioEncoder

        audio = WhisperAudioEncoder.from_pretrained(cfg.audio_encoder, pad_to_30s=cfg.pad_audio_to_30s)
    if "video" in needs:
        from avsr.models.video_pretrain import load_video_encoder

        video = load_video_encoder(cfg.video_encoder)
    dtype = getattr(torch, cfg.llm_dtype)
    llm = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(cfg.llm)
    return AVSRModel(cfg, audio, video, llm, tokenizer)


def save_checkpoint(model: AVSRModel, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write trainable weights + config to `folder` atomically (temp folder, then rename)."""
    with atomic_folder(folder) as tmp:
        save_file(model.trainable_state_dict(), str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"model": asdict(model.cfg), **(extra or {})}, indent=1))
    return Path(folder)


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    path = Path(folder) / CONFIG
    if not path.is_file() or not (Path(folder) / WEIGHTS).is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder (needs {CONFIG} and {WEIGHTS})")
    return json.loads(path.read_text())


def load_checkpoint(folder: str | os.PathLike, model: AVSRModel | None = None) -> AVSRModel:
    """Rebuild the model from the checkpoint's own config (or fill `model`) and load its weights."""
    saved = read_checkpoint_config(folder)
    if model is None:
        model = build_model(AVSRConfig.from_dict(saved["model"]))
    try:
        model.load_trainable_state_dict(load_file(str(Path(folder) / WEIGHTS)))
    except ValueError as err:
        raise CheckpointError(f"{folder}: {err}") from None
    return model.eval()
