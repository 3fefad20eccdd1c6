"""Typed training configuration: dataclasses, YAML recipe files, `key.sub=value` overrides.

The resolved configuration is saved with every checkpoint, so evaluation and resumption
need nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from avsr.errors import AvsrError
from avsr.models.avsr_model import AVSRConfig


class ConfigError(AvsrError):
    """An unknown key or a value of the wrong type in a recipe or an override."""


@dataclass
class DataConfig:
    root: str = "data"
    corpus: str = "synth"
    train_split: str = "train"
    val_split: str = "val"
    noise: str | None = None  # babble wav for training noise; None = <root>/noise/<corpus>_babble.wav if present
    snrs: tuple = (-5, 0, 5, 10, 15, 20, None)  # None = clean
    max_frames: int = 1000  # video frames per batch (frame-budget batching)
    max_val_utterances: int = 64
    feature_cache_copies: int = 0  # >0: run the frozen encoders once for K augmented copies (CPU speed-up)
    feature_cache_dir: str | None = None  # keep those features on disk, shared by trainings with equal inputs
    workers: int = 0

    def labels(self, split: str) -> Path:
        return Path(self.root) / "labels" / f"{self.corpus}_{split}.csv"

    def noise_path(self) -> Path | None:
        if self.noise:
            return Path(self.noise)
        default = Path(self.root) / "noise" / f"{self.corpus}_babble.wav"
        return default if default.is_file() else None


@dataclass
class OptimConfig:
    lr: float = 1e-3
    betas: tuple = (0.9, 0.98)
    weight_decay: float = 0.1
    warmup_steps: int = 100
    max_steps: int = 2000
    grad_clip: float = 10.0


OBJECTIVES = ("cycle", "omni")


@dataclass
class TrainConfig:
    model: AVSRConfig = field(default_factory=AVSRConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out: str = "runs/avsr"
    seed: int = 42
    # "cycle": one task per step, in turn; with several rates, that task's Matryoshka loss over
    # all its rate pairs (Llama-MTSK). "omni": every task every step at one drawn audio rate and
    # one drawn video rate, losses weighted by task_weights and divided by the number of tasks
    # (Omni-AVSR).
    objective: str = "cycle"
    task_weights: dict = field(default_factory=lambda: {"asr": 1.0, "vsr": 1.5, "avsr": 1.0})
    accelerator: str = "auto"  # cpu, gpu, auto
    devices: Any = 1  # e.g. 8 GPUs
    strategy: str = "auto"  # ddp, fsdp, ...
    precision: str = "32-true"  # "bf16-true" / "bf16-mixed" on GPUs
    logger: str = "csv"  # csv, tensorboard, wandb
    log_every: int = 10
    val_every: int = 500  # steps
    checkpoint_every: int = 500  # steps

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose from {OBJECTIVES}")
        missing = [t for t in self.model.tasks if t not in self.task_weights]
        if self.objective == "omni" and missing:
            raise ValueError(f"task_weights has no weight for {missing}")

    def to_dict(self) -> dict:
        return asdict(self)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Turn YAML/CLI values into the field's type (tuples from lists, numbers from strings)."""
    origin = getattr(hint, "__origin__", None)
    if hint is tuple or origin is tuple:
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if hint in (int, float) and not isinstance(value, bool):
        try:  # YAML reads "5e-4" as a string
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if hint is int and not number.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return hint(number)
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str = ""):
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(prefix + k for k in unknown)}; known: {sorted(names)}")
    base = cls()
    values = {}
    for k, v in data.items():
        if dataclasses.is_dataclass(hints[k]):
            if not isinstance(v, dict):
                raise ConfigError(f"{prefix + k}: expected a mapping, got {v!r}")
            values[k] = _build(hints[k], {**asdict(getattr(base, k)), **v}, prefix + k + ".")
        else:
            values[k] = _coerce(v, hints[k], prefix + k)
    try:
        return dataclasses.replace(base, **values)
    except ValueError as err:  # a setting the dataclass itself rejects (e.g. an unknown lora_scheme)
        raise ConfigError(f"{prefix or 'config'}: {err}") from None


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def _merge(base: dict, top: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else in `top` replaces `base`."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's settings; `base: other.yaml` (relative to the recipe) is read first and
    overridden key by key, so a variant states only what it changes."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: recipes include each other in a loop")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    return _merge(read_recipe(path.parent / base, _seen + (path.resolve(),)), loaded)


def load_config(recipe: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults <- recipe YAML (and its `base`) <- overrides like `optim.lr=5e-4` or
    `model.tasks=[asr,avsr]`."""
    tree: dict = read_recipe(recipe) if recipe else {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set(tree, key.strip(), yaml.safe_load(raw))
    return _build(TrainConfig, tree)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
