"""Build a model from its config (local folders only) and save / load checkpoints.

A checkpoint is a folder with the trainable weights only (`trainable.safetensors`: LoRA,
projectors, new-token embeddings) and `config.json` holding the resolved model config
(and the training config, when saved by training), so `load_checkpoint(folder)` needs no
other argument. Frozen backbones are referenced by path, never copied.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from avsr.errors import AvsrError
from avsr.io import atomic_folder
from avsr.models.avsr_model import AVSRConfig, AVSRModel
from avsr.models.tasks import modalities_of
from avsr.settings import SettingError

WEIGHTS = "trainable.safetensors"
CONFIG = "config.json"
HOW_TO_MAKE = {"llm": "make one with `avsr pretrain-lm`, or save a Hugging Face causal LM with save_pretrained",
               "audio_encoder": "make one with `avsr prepare whisper-base`",
               "video_encoder": "make one with `avsr pretrain-encoder --modality video`, or name an AV-HuBERT "
                                "fairseq .pt file (or its folder from `avsr prepare avhubert FILE.pt`)"}


class CheckpointError(AvsrError):
    """A checkpoint folder that is missing, incomplete or does not fit its config."""


class BackboneError(AvsrError):
    """A backbone setting (model.llm, model.audio_encoder, model.video_encoder) that names no
    usable local model folder."""


def backbones(cfg: AVSRConfig) -> dict[str, str | None]:
    """{setting: path} of the backbones the config's tasks need."""
    needs = modalities_of(cfg.tasks)
    return {"llm": cfg.llm, **{f"{m}_encoder": getattr(cfg, f"{m}_encoder") for m in ("audio", "video") if m in needs}}


def check_backbones(cfg: AVSRConfig, where: str = "") -> None:
    """Every backbone the tasks need must be an existing local folder: avsr never reaches a
    model hub (a hub id would start a download, or fail after long retries offline).
    `where` prefixes the message (a checkpoint's config.json). The video encoder may also be an
    AV-HuBERT fairseq `.pt` file, which `load_video_encoder` converts in memory."""
    for key, path in backbones(cfg).items():
        if key == "video_encoder" and path and path.endswith(".pt") and Path(path).is_file():
            continue
        if not path or not Path(path).is_dir():
            problem = f"no such folder {path!r}" if path else "not set"
            raise BackboneError(f"{where}model.{key}: {problem} (avsr loads models from local folders only; "
                                f"{HOW_TO_MAKE[key]})")
        if not (Path(path) / "config.json").is_file():  # every backbone folder we read has one
            raise BackboneError(f"{where}model.{key}: {path} holds no config.json, so it is not a saved model "
                                f"folder ({HOW_TO_MAKE[key]})")
    from avsr.models.dry_run import check_on_meta

    try:  # the backbones' config.json files and the LoRA settings against them, before any weights load
        check_on_meta(cfg)
    except (AvsrError, SettingError) as err:
        raise BackboneError(f"{where}{'model.' if isinstance(err, SettingError) else ''}{err}") from None


@contextlib.contextmanager
def _loading(key: str, path: str) -> Iterator[None]:
    """A folder that exists but holds no loadable model: name the setting and the folder (and the
    config.json key transformers' typed configs name)."""
    from huggingface_hub.errors import StrictDataclassError

    try:
        yield
    except (OSError, ValueError, TypeError, KeyError, SafetensorError, StrictDataclassError) as err:
        message = " ".join(str(err).split()) if isinstance(err, StrictDataclassError) else (
            str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
        raise BackboneError(f"model.{key}: cannot load a model from {path}: {message}") from None


@contextlib.contextmanager
def quiet_loading(quiet: bool = True) -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights") while quiet; the global switch is
    restored afterwards, so nothing changes otherwise."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was_enabled:
            hf_logging.enable_progress_bar()


def build_model(cfg: AVSRConfig) -> AVSRModel:
    """Load the frozen backbones named in `cfg` (local folders, checked first) and wrap them
    into a fresh AVSR model."""
    check_backbones(cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = backbones(cfg)
    audio = video = None
    if "audio_encoder" in paths:
        from avsr.models.audio_encoder import WhisperAudioEncoder

        with _loading("audio_encoder", cfg.audio_encoder):  # a folder: transformers reads it locally
            audio = WhisperAudioEncoder.from_pretrained(cfg.audio_encoder, pad_to_30s=cfg.pad_audio_to_30s)
    if "video_encoder" in paths:
        from avsr.models.video_encoder import load_video_encoder

        with _loading("video_encoder", cfg.video_encoder):
            video = load_video_encoder(cfg.video_encoder)
    with _loading("llm", cfg.llm):
        llm = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=getattr(torch, cfg.llm_dtype), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(cfg.llm, local_files_only=True)
    try:
        return AVSRModel(cfg, audio, video, llm, tokenizer)
    except SettingError as err:  # a LoRA setting the loaded layers refuse (when check_on_meta could not tell)
        raise BackboneError(f"model.{err}") from None


def save_checkpoint(model: AVSRModel, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write trainable weights + config to `folder` atomically (temp folder, then rename)."""
    with atomic_folder(folder) as tmp:
        save_file(model.trainable_state_dict(), str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps({"model": asdict(model.cfg), **(extra or {})}, indent=1))
    return Path(folder)


def read_checkpoint_config(folder: str | os.PathLike) -> dict:
    """The checkpoint's config.json with its model settings checked, after a look at the weights
    file's header: a damaged checkpoint is named here, before any model is built (the training
    section is checked by `avsr.training.config.read_run_checkpoint`)."""
    path, weights = Path(folder) / CONFIG, Path(folder) / WEIGHTS
    if not path.is_file() or not weights.is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder (needs {CONFIG} and {WEIGHTS})")
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable ({err})") from None
    if not text.strip():
        raise CheckpointError(f"{path}: empty file")
    try:
        saved = json.loads(text)
    except ValueError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise CheckpointError(f"{path}: expected a JSON object with a \"model\" section of settings")
    checkpoint_model_config(saved, path)
    try:
        with safe_open(str(weights), "pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: damaged or incomplete ({err})") from None
    return saved


def checkpoint_model_config(saved: dict, path: str | os.PathLike) -> AVSRConfig:
    """The model settings of a checkpoint's config (read from `path`), checked."""
    try:
        return AVSRConfig.from_dict(saved["model"])
    except SettingError as err:
        raise CheckpointError(f"{path}: model.{err}") from None
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_checkpoint(folder: str | os.PathLike, model: AVSRModel | None = None) -> AVSRModel:
    """Rebuild the model from the checkpoint's own config (or fill `model`) and load its weights."""
    saved = read_checkpoint_config(folder)
    if model is None:
        cfg = checkpoint_model_config(saved, Path(folder) / CONFIG)
        check_backbones(cfg, where=f"{Path(folder) / CONFIG}: ")
        model = build_model(cfg)
    weights = Path(folder) / WEIGHTS
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: damaged or incomplete ({err})") from None
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        if name in params and tensor.shape != params[name].shape:
            raise CheckpointError(f"{weights}: tensor {name} has shape {tuple(tensor.shape)}, but the model of "
                                  f"{CONFIG} needs {tuple(params[name].shape)}")
    try:
        model.load_trainable_state_dict(state)
    except ValueError as err:
        raise CheckpointError(f"{folder}: {err}") from None
    return model.eval()
