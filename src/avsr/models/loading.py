"""Build a model from its config (local folders only) and save / load checkpoints.

A checkpoint is a folder with the trainable weights only (`trainable.safetensors`: LoRA,
projectors, new-token embeddings) and `config.json` holding the resolved model config
(and the training config, when saved by training), so `Checkpoint.open(folder).load()` needs no
other argument. Frozen backbones are referenced by path, never copied: config.json records each
one's place both absolute and relative to the checkpoint, so a run folder moved or copied with
its backbones still loads, from any working folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from avsr.errors import AvsrError
from avsr.io import atomic_folder
from avsr.models.avsr_model import AVSRConfig, AVSRModel
from avsr.models.encoders import ENCODERS
from avsr.models.tasks import modalities_of
from avsr.settings import ConfigError, SettingError, from_mapping

WEIGHTS = "trainable.safetensors"
CONFIG = "config.json"
HOW_TO_MAKE = {"llm": "make one with `avsr pretrain-lm`, or save a Hugging Face causal LM with save_pretrained",
               "audio_encoder": "make one with `avsr prepare whisper-base`",
               "video_encoder": "make one with `avsr pretrain-encoder --modality video`, or name an AV-HuBERT "
                                "fairseq .pt file (or its folder from `avsr prepare avhubert FILE.pt`)",
               "ctc_reader": "make one with `avsr pretrain-reader`"}


class CheckpointError(AvsrError):
    """A checkpoint folder that is missing, incomplete or does not fit its config."""


class BackboneError(AvsrError):
    """A backbone setting (model.llm, model.audio_encoder, model.video_encoder) that names no
    usable local model folder."""


def backbones(cfg: AVSRConfig) -> dict[str, str | None]:
    """{setting: path} of the backbones the config's tasks need (and the CTC reader's folder,
    which holds its token ids, for projector ctc)."""
    needs = modalities_of(cfg.tasks)
    reader = {"ctc_reader": cfg.ctc_reader} if cfg.projector == "ctc" else {}
    return {"llm": cfg.llm, **{f"{m}_encoder": getattr(cfg, f"{m}_encoder") for m in ("audio", "video") if m in needs},
            **reader}


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


def load_encoders(cfg: AVSRConfig) -> dict[str, torch.nn.Module]:
    """{modality: frozen encoder} of the modalities the config's tasks read (folders checked by
    the caller): what the model and the CTC reader's pre-training (which needs no LLM) load."""
    paths = backbones(cfg)
    encoders = {}
    for m, kind in ENCODERS.items():  # the encoder table: each modality's loader
        if f"{m}_encoder" in paths:
            with _loading(f"{m}_encoder", paths[f"{m}_encoder"]):
                encoders[m] = kind.load(paths[f"{m}_encoder"], cfg)
    return encoders


def build_model(cfg: AVSRConfig) -> AVSRModel:
    """Load the frozen backbones named in `cfg` (local folders, checked first) and wrap them
    into a fresh AVSR model."""
    check_backbones(cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    encoders = load_encoders(cfg)
    with _loading("llm", cfg.llm):
        llm = AutoModelForCausalLM.from_pretrained(cfg.llm, dtype=getattr(torch, cfg.llm_dtype), local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(cfg.llm, local_files_only=True)
    try:
        return AVSRModel(cfg, encoders.get("audio"), encoders.get("video"), llm, tokenizer)
    except SettingError as err:  # a LoRA setting the loaded layers refuse (when check_on_meta could not tell)
        raise BackboneError(f"model.{err}") from None


def _recorded_paths(values: dict[str, str | None], folder: Path) -> dict[str, dict[str, str]]:
    """{setting: {"absolute", "relative"}} of every path-valued setting given, "relative" being from
    the checkpoint folder: what lets a checkpoint find its backbones and corpus after its run
    folder moved (see `Checkpoint.locate`)."""
    places = {}
    for key, value in values.items():
        if value:
            absolute = Path(value).expanduser().resolve()
            places[key] = {"saved": value, "absolute": str(absolute),
                           "relative": os.path.relpath(absolute, folder.resolve())}
    return places


def save_checkpoint(model: AVSRModel, folder: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write trainable weights + config to `folder` atomically (temp folder, then rename). The
    config records where each backbone (and, given a training section, the corpus) lies, both
    absolute and relative to `folder`, so the checkpoint loads from any working folder and after
    its run folder (with the backbones in it) is moved or copied."""
    folder = Path(folder)
    extra = dict(extra or {})
    data = extra.get("train", {}).get("data", {}) if isinstance(extra.get("train"), dict) else {}
    paths = {f"data.{k}": data.get(k) for k in ("root", "noise")}
    with atomic_folder(folder) as tmp:
        write_checkpoint_files(tmp, folder, model.trainable_state_dict(), model.cfg, extra, paths)
    return folder


def write_checkpoint_files(tmp: Path, folder: Path, state: dict[str, torch.Tensor], cfg: AVSRConfig, extra: dict,
                           paths: dict[str, str | None] | None = None) -> None:
    """The checkpoint's two files, written into `tmp`, the temporary folder that becomes `folder`:
    the trainable weights and config.json (`cfg`, the `extra` sections, and where each backbone
    and the given `paths` lie, absolute and relative to `folder`)."""
    places = {f"model.{k}": v for k, v in backbones(cfg).items()} | (paths or {})
    save_file(state, str(tmp / WEIGHTS))
    saved = {"model": asdict(cfg), **extra, "paths": _recorded_paths(places, folder)}
    (tmp / CONFIG).write_text(json.dumps(saved, indent=1))


class Checkpoint:
    """A checkpoint folder opened once: config.json read and its model settings checked, the
    weights file's header checked, the backbones found; the weights are read by `load`.

    `config` is the model config with every backbone path replaced by where it was found
    (`locate`), so the model builds from any working folder. `saved` is config.json as written
    (its `train` section is checked by `avsr.training.config.read_run_checkpoint`)."""

    def __init__(self, folder: Path, saved: dict, config: AVSRConfig):
        self.folder, self.saved, self.config = folder, saved, config

    @classmethod
    def open(cls, folder: str | os.PathLike, find_backbones: bool = True) -> "Checkpoint":
        """CheckpointError naming what is wrong with the folder, before any model is built;
        BackboneError when a backbone is not found (unless `find_backbones` is False)."""
        folder = Path(folder)
        path, weights = folder / CONFIG, folder / WEIGHTS
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
        try:
            config = from_mapping(AVSRConfig, saved["model"], str(path), "model.")
        except ConfigError as err:
            raise CheckpointError(str(err)) from None
        try:
            with safe_open(str(weights), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{weights}: damaged or incomplete ({err})") from None
        checkpoint = cls(folder, saved, config)
        if find_backbones:
            checkpoint.config = replace(config, **{k: checkpoint.locate(f"model.{k}", v, HOW_TO_MAKE[k])
                                                   for k, v in backbones(config).items()})
            check_backbones(checkpoint.config, where=f"{path}: ")
        return checkpoint

    @property
    def step(self) -> int | None:
        """The training step the checkpoint was saved at (None when saved outside training)."""
        return self.saved.get("step")

    @property
    def decoding(self) -> dict:
        """Decoding settings saved with the checkpoint ({} when none: an imported checkpoint keeps
        the authors' beam width here, which `avsr eval` and `avsr transcribe` use by default)."""
        decoding = self.saved.get("decoding")
        return decoding if isinstance(decoding, dict) else {}

    @property
    def imported(self) -> dict | None:
        """What `avsr import` recorded (source file, sha256, layout, tasks, rates), or None."""
        imported = self.saved.get("imported")
        return imported if isinstance(imported, dict) else None

    @property
    def train_section(self) -> dict:
        """The saved training settings as written ({} when saved outside training)."""
        train = self.saved.get("train")
        return train if isinstance(train, dict) else {}

    def locate(self, key: str, value: str | None, hint: str = "") -> str | None:
        """Where the path setting `key` (e.g. model.llm, data.root) is now: the first that exists
        of its place relative to this checkpoint (the run folder moved or copied with it), its
        absolute place when saved, then the path as typed (from the working folder or, for a
        relative one, from any folder above the checkpoint: checkpoints of older avsr versions
        recorded nothing else; a path edited by hand in config.json is taken as it is).
        A path found nowhere: BackboneError for a backbone (`hint`: how to make one), else the
        value as saved (the caller names it when it needs it)."""
        if not value:
            return value
        recorded = self.saved.get("paths", {}).get(key, {}) if isinstance(self.saved.get("paths"), dict) else {}
        if recorded.get("saved") != value:  # the setting was edited by hand since: the edit counts
            recorded = {}
        candidates = [self.folder / recorded["relative"]] if recorded.get("relative") else []
        candidates += [Path(recorded["absolute"])] if recorded.get("absolute") else []
        given = Path(value).expanduser()
        candidates += [given] if given.is_absolute() else [given, *(up / given for up in self.folder.resolve().parents)]
        for candidate in candidates:
            if candidate.is_dir() or (key == "model.video_encoder" and candidate.suffix == ".pt" and candidate.is_file()):
                return str(candidate.resolve())
        if not key.startswith("model."):
            return value
        looked = ", ".join(dict.fromkeys(str(c) for c in candidates[:3]))
        raise BackboneError(f"{self.folder / CONFIG}: {key}: the backbone this checkpoint was trained with is not "
                            f"found (looked in {looked}). A checkpoint holds only the trained weights (LoRA, "
                            "projectors) and names its frozen backbones: move or copy the run folder together "
                            "with that backbone folder, keeping their places relative to each other"
                            + (f"; or make it again ({hint})" if hint else ""))

    def load(self, model: AVSRModel | None = None) -> AVSRModel:
        """The model rebuilt from `config` (or `model` filled) with the checkpoint's weights, which
        must all be finite (a NaN or infinite weight is named, not decoded into empty text)."""
        model = model or build_model(self.config)
        weights = self.folder / WEIGHTS
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{weights}: damaged or incomplete ({err})") from None
        params = dict(model.named_parameters())
        for name, tensor in state.items():
            if name in params and tensor.shape != params[name].shape:
                raise CheckpointError(f"{weights}: tensor {name} has shape {tuple(tensor.shape)}, but the model of "
                                      f"{CONFIG} needs {tuple(params[name].shape)}")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{weights}: tensor {name} holds NaN or infinite values: the training that "
                                      "wrote it diverged; use an earlier checkpoint or train again")
        try:
            model.load_trainable_state_dict(state)
        except ValueError as err:
            raise CheckpointError(f"{self.folder}: {err}") from None
        return model.eval()


def load_checkpoint(folder: str | os.PathLike, model: AVSRModel | None = None) -> AVSRModel:
    """`Checkpoint.open(folder).load(model)`: the model of a checkpoint folder, ready to decode."""
    return Checkpoint.open(folder, find_backbones=model is None).load(model)
