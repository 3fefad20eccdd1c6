"""Typed training configuration: dataclasses, YAML recipe files, `key.sub=value` overrides.

The resolved configuration is saved with every checkpoint, so evaluation and resumption
need nothing else.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from avsr.data.noise import SNR_RANGE
from avsr.errors import AvsrError
from avsr.data.manifests import FORMAT_CHOICES, split_manifest
from avsr.io import read_utf8, write_text_atomic
from avsr.paths import noise_wav
from avsr.paths import recipe as find_recipe
from avsr.models.avsr_model import AVSRConfig
from avsr.models.tasks import TASKS
from avsr.settings import (COUNT, FLAG, NAME, NON_NEGATIVE, OPTIONAL_NAME, POSITIVE, POSITIVE_INT, ConfigError, Rule,
                           SettingError, check_settings, from_mapping, is_int, is_number, list_of, one_of, setting)


def _devices(v: Any) -> bool:
    """Lightning's forms: a count, -1 (all), "auto", "3", "0,1" or a list of device ids."""
    if is_int(v):
        return v >= 1 or v == -1
    if isinstance(v, (list, tuple)):
        return bool(v) and all(is_int(d) and d >= 0 for d in v) and len(set(v)) == len(v)
    if not isinstance(v, str):
        return False
    ids = [d.strip() for d in v.split(",") if d.strip()]
    if v.strip() in ("auto", "-1"):
        return True
    return bool(ids) and all(d.isdigit() for d in ids) and ("," in v or int(ids[0]) > 0)  # "0" is no device


def _strategy(v: Any) -> bool:
    if not isinstance(v, str):
        return False
    if v == "auto" or v.startswith(("ddp", "fsdp")):
        return True
    from lightning.pytorch.strategies import StrategyRegistry  # imported only for a rarer name

    return v in StrategyRegistry.available_strategies()


PRECISIONS = ("32-true", "bf16-true", "bf16-mixed", "16-mixed", "16-true", "64-true", "32", "16", "bf16", "64",
              "transformer-engine", "transformer-engine-float16")  # Lightning's names (32, 16, 64 also as numbers)
PRECISION = Rule(lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) and str(v) in PRECISIONS,
                 "one of " + ", ".join(PRECISIONS))
DEVICES = Rule(_devices, "a number of devices, -1 (all), auto, or a list of device ids")
STRATEGY = Rule(_strategy, "auto, ddp..., fsdp... or another Lightning strategy name")
BETAS = Rule(lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v),
             "two numbers in [0, 1)")
SNRS = list_of(Rule(lambda v: v is None or is_number(v) and SNR_RANGE[0] <= v <= SNR_RANGE[1], ""),
               f"a list of SNRs in dB from {SNR_RANGE[0]:g} to {SNR_RANGE[1]:g} (null for clean)", empty=True)
SEED = Rule(lambda v: is_int(v) and 0 <= v < 2**32, "an integer from 0 to 4294967295")
PROBABILITY = Rule(lambda v: is_number(v) and 0 <= v <= 1, "a probability from 0 to 1")
TASK_WEIGHTS = Rule(lambda v: isinstance(v, dict) and all(k in TASKS and NON_NEGATIVE.test(w) for k, w in v.items()),
                    f"a mapping from tasks ({', '.join(TASKS)}) to non-negative weights")


@dataclass
class DataConfig:
    root: str = setting("data", NAME)
    corpus: str = setting("synth", NAME)
    train_split: str = setting("train", NAME)
    val_split: str = setting("val", NAME)
    # babble wav for training noise; None = <root>/noise/<corpus>_babble.wav if present
    noise: str | None = setting(None, OPTIONAL_NAME)
    snrs: tuple = setting((-5, 0, 5, 10, 15, 20, None), SNRS)  # None = clean
    # Llama-AVSR's time masks (spans set to zero) on the training audio / video
    audio_time_mask: bool = setting(True, FLAG)
    video_time_mask: bool = setting(True, FLAG)
    # synthetic-to-real audio augmentation (avsr.data.acoustics): probability of a synthesised room
    # (reverberation), speed factors drawn with 1.0 (tempo and pitch), probability of a band limit
    reverb: float = setting(0.0, PROBABILITY)
    speeds: tuple = setting((), list_of(Rule(lambda v: is_number(v) and 0.5 <= v <= 2, ""),
                                        "a list of speed factors from 0.5 to 2", empty=True))
    band_limit: float = setting(0.0, PROBABILITY)
    max_frames: int = setting(1000, POSITIVE_INT)  # video frames per batch (frame-budget batching)
    max_val_utterances: int = setting(64, POSITIVE_INT)
    # >0: run the frozen encoders once for K augmented copies (CPU speed-up)
    feature_cache_copies: int = setting(0, COUNT)
    # keep those features on disk, shared by trainings with equal inputs
    feature_cache_dir: str | None = setting(None, OPTIONAL_NAME)
    workers: int = setting(0, COUNT)
    # the manifest format of every split (docs/data-formats.md): auto = the one found at its path
    # (csv <root>/labels/<corpus>_<split>.csv, fairseq <root>/<split>.tsv + .wrd, jsonl <root>/<split>.jsonl,
    # shards <root>/<split>/index.json, where root may be a URL or pipe:COMMAND)
    format: str = setting("auto", one_of(*FORMAT_CHOICES))
    # false: the batches in their packed order every epoch (longest first), no shuffle buffer
    shuffle: bool = setting(True, FLAG)
    # shards: utterances in the shuffle buffer, each window of this many sorted and packed together
    shuffle_buffer: int = setting(1000, POSITIVE_INT)
    # shards from a URL: seconds to wait for a server to connect or answer before the run stops
    url_timeout: float = setting(60.0, POSITIVE)
    # media missing, empty or undecodable: "skip" drops the utterance with a warning naming it,
    # "stop" ends the run with an error naming it
    on_bad_file: str = setting("skip", one_of("skip", "stop"))
    # longer utterances are dropped when a training split is loaded (null: keep all)
    max_utterance_seconds: float | None = setting(16.0, Rule(lambda v: v is None or POSITIVE.test(v),
                                                             "a positive number of seconds or null (no limit)"))

    def __post_init__(self) -> None:
        check_settings(self)

    def labels(self, split: str) -> str | Path:
        """The split's manifest (avsr.data.manifests.split_manifest) in data.format: a path, or for
        shards under a URL root the index's URL."""
        return split_manifest(self.root, self.corpus, split, self.format)

    def acoustics(self):
        """The synthetic-to-real augmentation these settings ask for (avsr.data.acoustics)."""
        from avsr.data.acoustics import Acoustics

        return Acoustics(reverb=self.reverb, speeds=tuple(self.speeds), band=self.band_limit)

    def noise_path(self) -> Path | None:
        if self.noise:
            return Path(self.noise)
        default = noise_wav(self.root, self.corpus)
        return default if default.is_file() else None


@dataclass
class OptimConfig:
    lr: float = setting(1e-3, POSITIVE)
    betas: tuple = setting((0.9, 0.98), BETAS)
    weight_decay: float = setting(0.1, NON_NEGATIVE)
    warmup_steps: int = setting(100, COUNT)
    max_steps: int = setting(2000, POSITIVE_INT)
    grad_clip: float = setting(10.0, POSITIVE)

    def __post_init__(self) -> None:
        check_settings(self)


OBJECTIVES = ("cycle", "omni")
LOGGERS = {"csv": None, "tensorboard": "tensorboard", "wandb": "wandb"}  # name: the package it needs


@dataclass
class TrainConfig:
    model: AVSRConfig = field(default_factory=AVSRConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    out: str = setting("runs/avsr", NAME)
    seed: int = setting(42, SEED)
    # "cycle": one task per step, in turn; with several rates, that task's Matryoshka loss over
    # all its rate pairs (Llama-MTSK). "omni": every task every step at one drawn audio rate and
    # one drawn video rate, losses weighted by task_weights and divided by the number of tasks
    # (Omni-AVSR).
    objective: str = setting("cycle", one_of(*OBJECTIVES))
    task_weights: dict = setting({"asr": 1.0, "vsr": 1.5, "avsr": 1.0}, TASK_WEIGHTS)
    accelerator: str = setting("auto", one_of("auto", "cpu", "gpu", "cuda", "mps"))
    devices: Any = setting(1, DEVICES)  # e.g. 8 GPUs (per node)
    num_nodes: int = setting(1, POSITIVE_INT)  # machines, each with `devices` (SLURM, torchrun: docs/scaling.md)
    strategy: str = setting("auto", STRATEGY)  # ddp, fsdp, fsdp_cpu_offload, ... (docs/scaling.md)
    precision: str = setting("32-true", PRECISION)  # "bf16-true" / "bf16-mixed" on GPUs
    # batches (per process) whose gradients add up to one optimizer step; data.max_frames is per
    # process, so one step sees max_frames x processes x accumulate_grad_batches frames at most
    accumulate_grad_batches: int = setting(1, POSITIVE_INT)
    logger: str = setting("csv", one_of(*LOGGERS))
    log_every: int = setting(10, POSITIVE_INT)
    val_every: int = setting(500, COUNT)  # steps; 0 = no validation
    checkpoint_every: int = setting(500, POSITIVE_INT)  # steps

    def __post_init__(self) -> None:
        check_settings(self)
        missing = [t for t in self.model.tasks if t not in self.task_weights]
        if self.objective == "omni" and missing:
            raise SettingError("task_weights", f"has no weight for {missing} (objective omni weights every task)")

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_dict(tree: dict, where: str = "config", prefix: str = "") -> TrainConfig:
    """A configuration saved as a mapping (a checkpoint's `train` section), checked like a recipe."""
    return from_mapping(TrainConfig, tree, where, prefix)


def check_inputs(cfg: TrainConfig) -> None:
    """What a valid config names outside itself: backbone folders, the logger's package, a GPU,
    the label and noise files. Checked before a run folder is made or a model is loaded."""
    from avsr.data.manifests import detect_format, read_manifest
    from avsr.data.noise import read_noise
    from avsr.data.shards import check_shards
    from avsr.models.loading import check_backbones

    check_backbones(cfg.model)
    check_environment(cfg)
    d = cfg.data
    for split in dict.fromkeys((d.train_split, d.val_split)):
        path = d.labels(split)
        if detect_format(path) == "shards":  # the index, and every shard's size against it
            check_shards(path, d.url_timeout)
        else:
            read_manifest(path, d.format, d.root)
    if d.noise_path() is not None:
        read_noise(d.noise_path())


def check_environment(cfg: TrainConfig) -> None:
    """What this machine must offer the config: the logger's package, a GPU when one is asked for."""
    import torch

    package = LOGGERS[cfg.logger]
    if package and importlib.util.find_spec(package) is None and not (
            package == "tensorboard" and importlib.util.find_spec("tensorboardX")):
        raise ConfigError(f"config: logger {cfg.logger} needs the {package} package (pip install {package}), "
                          "or choose logger=csv")
    if cfg.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config: accelerator {cfg.accelerator}, but no CUDA GPU is available here; "
                          "choose accelerator=cpu or auto")


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for i, k in enumerate(keys[:-1]):
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {'.'.join(keys[:i + 1])} is a value, not a section of settings")
    node[keys[-1]] = value


def _merge(base: dict, top: dict) -> dict:
    """Deep merge: mappings merge key by key, anything else in `top` replaces `base`."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A recipe's settings (a file, or the name of a recipe shipped with avsr); `base: other.yaml`
    (relative to the recipe) is read first and overridden key by key, so a variant states only
    what it changes."""
    try:
        path = find_recipe(path) if not _seen else Path(path)
    except AvsrError as err:
        raise ConfigError(str(err)) from None
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: recipes include each other in a loop")
    text = read_utf8(path, "a recipe is a YAML text file", ConfigError)
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:  # one line: the place and the problem
        mark = getattr(err, "problem_mark", None)
        raise ConfigError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML "
                          f"({getattr(err, 'problem', None) or ' '.join(str(err).split())})") from None
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
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
        _set(tree, key.strip(), value)
    return from_mapping(TrainConfig, tree)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Atomically: a full disk leaves no half config.yaml (that resuming would then compare)."""
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_run_checkpoint(folder: str | Path):
    """(Checkpoint, its training section checked as a recipe would be, or None when it was saved
    outside training): a checkpoint folder opened once (avsr.models.loading.Checkpoint)."""
    from avsr.models.loading import CONFIG, Checkpoint, CheckpointError

    checkpoint = Checkpoint.open(folder)
    if "train" not in checkpoint.saved:
        return checkpoint, None
    train = checkpoint.saved["train"]
    try:
        return checkpoint, config_from_dict({**train, "model": checkpoint.saved["model"]} if isinstance(train, dict)
                                            else train, where=str(Path(folder) / CONFIG), prefix="train.")
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
