"""Training with PyTorch Lightning: CPU here, GPUs / DDP / FSDP / bf16 by configuration.

The recipe follows the papers: AdamW (betas 0.9/0.98, weight decay 0.1), linear warm-up
then per-step cosine decay to zero, gradient clipping, babble noise at an SNR drawn from
{-5..20 dB, clean}, random 88x88 crops, adaptive time masking, frame-budget batches. The
task (ASR, VSR or AVSR) cycles from batch to batch so one model learns all three.
Checkpoints hold only the trainable weights plus the resolved config.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
import yaml
from torch.utils.data import DataLoader

from avsr.data.batching import FrameBudgetBatchSampler, SkipUnreadable, TransformedDataset, collate, frame_lengths
from avsr.data.dataset import AVDataset
from avsr.data.media import read_audio
from avsr.data.transforms import AugmentConfig, EvalTransform, TrainTransform
from avsr.errors import Interrupted
from avsr.io import claim_folder, remove_written, write_text_atomic
from avsr.models.avsr_model import AVSRModel
from avsr.models.tasks import modalities_of
from avsr.models.loading import build_model, save_checkpoint
from avsr.training.data_record import training_data
from avsr.training.config import ConfigError, TrainConfig, save_config
from avsr.training.feature_cache import FeatureCache, collate_features
from avsr.optimization import warmup_cosine, warmup_cosine_adamw  # noqa: F401 (warmup_cosine: public here too)


class ResumableLoader(DataLoader):
    """The training DataLoader, resumable mid-epoch.

    Lightning saves `state_dict()` in its checkpoint and calls `load_state_dict` before
    iterating again. The state is the epoch and the number of batches trained in it, counted
    by `AVSRLightning.training_step` (not by fetching, which runs a batch ahead); on loading,
    the dataset gets its epoch back (augmentation, feature-cache copy) and the batch sampler
    skips the batches already trained, so a resumed run sees the data of an uninterrupted one.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0
        self.trained_batches = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.trained_batches = epoch, 0
        for obj in (self.batch_sampler, self.dataset):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "trained_batches": self.trained_batches}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"])
        self.trained_batches = self.batch_sampler.resume_at = state["trained_batches"]


class AVSRLightning(L.LightningModule):
    def __init__(self, model: AVSRModel, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.tasks = tuple(cfg.model.tasks)
        self.strict_loading = False  # resume checkpoints hold the trainable weights only

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.trainer.train_dataloader.trained_batches += 1  # the position a checkpoint records
        self.step_started = self.global_step
        bs = len(batch["text"])
        if self.cfg.objective == "omni":
            loss, aux = self.omni_loss(batch)
        else:
            task = self.tasks[self.global_step % len(self.tasks)]
            loss, aux = self.model(batch, task)
            self.log(f"train/loss_{task}", loss, batch_size=bs)
        total = loss + sum((v for k, v in aux.items() if k.endswith("_loss")), torch.zeros_like(loss))
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bs)
        for key, value in aux.items():
            if key.startswith("loss/"):  # per rate pair (Matryoshka) or per task (Omni)
                self.log(f"train/{key}", value, batch_size=bs)
            elif key.startswith("smop/"):  # unweighted router losses
                self.log(f"train/{key}", value, batch_size=bs)
            elif key.startswith("usage/") and key.endswith("/routed"):  # fraction of tokens per expert
                tokens = float(aux[key.replace("/routed", "/tokens")])
                for e, count in enumerate(value.tolist()):
                    self.log(f"train/{key}_e{e}", count / max(tokens, 1.0), batch_size=bs)
        return total

    def omni_loss(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """Omni-AVSR: one audio and one video rate drawn for the step (seeded by the step, so a
        resumed run draws the same), every task at them, sum_t w_t L_t / number of tasks."""
        m = self.model
        draw = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.global_step)
        pair = tuple(rates[int(torch.randint(len(rates), (1,), generator=draw))]
                     for rates in (m.rates["audio"], m.rates["video"]))
        total, aux = 0.0, {}
        for task in self.tasks:
            loss, extra = m(batch, task, m.check_pair(task, pair))
            total = total + self.cfg.task_weights[task] * loss
            aux[f"loss/{task}"] = loss.detach()
            for k, v in extra.items():  # projector losses: averaged over the tasks, like the LLM's
                aux[k] = aux.get(k, 0) + v / len(self.tasks) if k.endswith("_loss") else v
        return total / len(self.tasks), aux

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        for task in self.tasks:
            loss, _ = self.model(batch, task)
            self.log(f"val/loss_{task}", loss, batch_size=len(batch["text"]), sync_dist=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        # Every trainable parameter decays (the papers' recipe); cosine down to 0 at max_steps.
        opt, sched = warmup_cosine_adamw(self.model.named_parameters(), o.lr, o.weight_decay, o.warmup_steps,
                                         o.max_steps, betas=tuple(o.betas), exempt_vectors=False)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Under FSDP each rank holds a shard of every gradient: the norm is FSDP's, over all shards
        (Lightning's own norm clipping refuses FSDP). Elsewhere Lightning clips as usual."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.strategy.model
        if gradient_clip_val and isinstance(wrapped, FullyShardedDataParallel):
            wrapped.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the resume checkpoint small: drop the frozen backbones' weights."""
        trainable = {f"model.{k}" for k in trainable_names(self.model)}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def on_train_epoch_start(self) -> None:  # not called when a run resumes mid-epoch
        self.trainer.train_dataloader.set_epoch(self.current_epoch)


DONE = "done.json"  # written last, when a run reached max_steps: the run is complete


class SaveTrainable(L.Callback):
    """Every N steps and at the end: <out>/checkpoints/{step-N,last} with trainable weights + config;
    <out>/done.json once max_steps are reached; on Ctrl-C, a resume checkpoint of the last
    completed step."""

    def __init__(self, cfg: TrainConfig, resume_file: Path):
        self.cfg = cfg
        self.folder = Path(cfg.out) / "checkpoints"
        self.resume_file = resume_file
        self.interrupted_at: int | None = None
        self.saved_step: int | None = None

    def _save(self, trainer: L.Trainer, module: AVSRLightning, name: str) -> None:
        """Called on every rank: under FSDP the weights are gathered from all of them."""
        weights = trainable_weights(trainer, module)
        if trainer.is_global_zero:
            extra = {"train": self.cfg.to_dict(), "step": trainer.global_step, "training_data": training_data(self.cfg)}
            save_checkpoint(_Trainable(module.model, weights), self.folder / name, extra)
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # the same for every batch of an accumulation: saved once
        if step and step % self.cfg.checkpoint_every == 0 and step != self.saved_step:
            self._save(trainer, module, "last")

    def on_train_end(self, trainer, module) -> None:
        self._save(trainer, module, "last")
        if trainer.is_global_zero and trainer.global_step >= self.cfg.optim.max_steps:
            write_text_atomic(Path(self.cfg.out) / DONE, json.dumps({"steps": trainer.global_step,
                                                                     "checkpoint": "checkpoints/last"}))

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        """Ctrl-C: keep the last completed step, so that the same command resumes from it."""
        if not isinstance(exception, KeyboardInterrupt):
            return
        loader = trainer.train_dataloader
        if getattr(module, "step_started", None) == trainer.global_step and loader is not None:
            loader.trained_batches -= 1  # the interrupted batch's step did not complete
        if trainer.global_step > 0:
            trainer.save_checkpoint(self.resume_file)
            self._save(trainer, module, "last")
        self.interrupted_at = trainer.global_step


def feature_fingerprint(cfg: TrainConfig, modalities: list[str]) -> str:
    """What decides the cached encoder features: encoders, training labels and noise (by
    content), augmentation settings, number of copies and the seed."""
    d, m = cfg.data, cfg.model
    h = hashlib.sha256()
    settings = dict(version=1, modalities=modalities, snrs=list(d.snrs), copies=d.feature_cache_copies,
                    time_masks=[d.audio_time_mask, d.video_time_mask],
                    seed=cfg.seed, pad_audio_to_30s=m.pad_audio_to_30s, root=str(Path(d.root).resolve()),
                    encoders={k: str(Path(v).resolve()) if v and Path(v).exists() else v
                              for k, v in (("audio", m.audio_encoder), ("video", m.video_encoder))
                              if k in modalities})
    h.update(json.dumps(settings, sort_keys=True).encode())
    for path in (d.labels(d.train_split), d.noise_path()):
        if path is not None and Path(path).is_file():
            h.update(Path(path).read_bytes())
    for name in settings["encoders"].values():  # weights may be retrained in place
        path = Path(name) if name else None  # a folder's weight files, or a weights file itself (.pt)
        files = sorted(path.glob("*.safetensors")) if path and path.is_dir() else [path] if path and path.is_file() else []
        for f in files:
            h.update(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    return h.hexdigest()


def check_feature_cache(cfg: TrainConfig) -> None:
    """Cached encoder features are computed once by the frozen encoders: with LoRA inside the
    video encoder (model.video_lora_rank) they would never see the adapters, so refuse them."""
    if cfg.data.feature_cache_copies > 0 and cfg.model.video_lora_rank > 0:
        raise ConfigError(f"config: data.feature_cache_copies must be 0 when model.video_lora_rank is set "
                          f"(got {cfg.data.feature_cache_copies} and {cfg.model.video_lora_rank}): the video "
                          "encoder trains LoRA adapters, so its features cannot be computed once and cached")


def make_loaders(cfg: TrainConfig, model: AVSRModel, world_size: int = 1, rank: int = 0,
                 progress: bool = True) -> tuple[DataLoader, DataLoader]:
    check_feature_cache(cfg)
    d = cfg.data
    noise_path = d.noise_path()
    noise = read_audio(noise_path) if noise_path else None
    augment = AugmentConfig(snrs=tuple(d.snrs), audio_time_mask=d.audio_time_mask, video_time_mask=d.video_time_mask)
    # the media are checked here (missing, empty: data.on_bad_file), over-long utterances dropped
    train_set = AVDataset(d.root, d.labels(d.train_split), d.format, d.on_bad_file, d.max_utterance_seconds)
    train = TransformedDataset(train_set, TrainTransform(augment, noise=noise), seed=cfg.seed)
    train_collate = collate
    if d.feature_cache_copies > 0:
        needed = modalities_of(cfg.model.tasks)
        encoders = torch.nn.ModuleDict({m: e for m, e in model.encoders.items() if m in needed})
        key = feature_fingerprint(cfg, sorted(needed))
        store = Path(d.feature_cache_dir) / f"features-{key[:16]}.pt" if d.feature_cache_dir else None
        train = FeatureCache(encoders, train, d.feature_cache_copies, progress=progress, store=store, fingerprint=key)
        train_collate = collate_features
    sampler = FrameBudgetBatchSampler(frame_lengths(train_set), d.max_frames, shuffle=True, seed=cfg.seed,
                                      num_replicas=world_size, rank=rank)
    val_set = AVDataset(d.root, d.labels(d.val_split), d.format, d.on_bad_file, d.max_utterance_seconds)
    val_set.rows = val_set.rows[: d.max_val_utterances]
    val = TransformedDataset(val_set, EvalTransform(augment), seed=cfg.seed)
    val_sampler = FrameBudgetBatchSampler(frame_lengths(val_set), d.max_frames, shuffle=False,
                                          num_replicas=world_size, rank=rank)
    # an item that fails to decode: on_bad_file=stop raises (naming the file) in the dataset; skip
    # drops it from its batch, and a batch left empty is refilled, so that every rank takes its step
    return (ResumableLoader(train, batch_sampler=sampler, collate_fn=SkipUnreadable(train_collate, train),
                            num_workers=d.workers),
            DataLoader(val, batch_sampler=val_sampler, collate_fn=SkipUnreadable(collate, val), num_workers=d.workers))


def make_logger(cfg: TrainConfig):
    if cfg.logger == "tensorboard":
        return L.pytorch.loggers.TensorBoardLogger(cfg.out, name="logs")
    if cfg.logger == "wandb":
        return L.pytorch.loggers.WandbLogger(save_dir=cfg.out)
    return L.pytorch.loggers.CSVLogger(cfg.out, name="logs")


def resolve_strategy(strategy: str, devices, num_nodes: int = 1) -> str:
    """DDP as these models need it: with unused-parameter detection.

    A step routinely leaves trainable parameters without a gradient: the "cycle" objective
    trains one task per step (the other modality's projector, the other tasks' adapters idle),
    Omni draws one rate pair (the other rates' projectors idle), and a sparse mixture may route
    no token to an expert. Plain DDP then stops with "Expected to have finished reduction", so
    `ddp`, and `auto` on several devices or nodes, become `ddp_find_unused_parameters_true`. Name another
    strategy (e.g. `ddp_find_unused_parameters_false`) to choose otherwise.
    """
    if isinstance(devices, str):  # "8", "-1" (all), "0,1" (ids) or "auto"
        ids = [d for d in devices.split(",") if d.strip()]
        devices = ids if len(ids) > 1 else int(devices) if devices.strip().lstrip("-").isdigit() else 1
    several = len(devices) > 1 if isinstance(devices, (list, tuple)) else devices > 1 or devices == -1
    several = several or num_nodes > 1
    if strategy == "ddp" or (strategy == "auto" and several):
        return "ddp_find_unused_parameters_true"
    return strategy


FSDP_PREFIX = "_fsdp_wrapped_module."  # what FSDP's wrappers add to the names of the parameters inside


def trainable_names(model: torch.nn.Module) -> list[str]:
    """The trainable parameters' names, as in `trainable_state_dict`, also when FSDP wrapped layers."""
    return [k.replace(FSDP_PREFIX, "") for k, p in model.named_parameters() if p.requires_grad]


class _Trainable:
    """The model as `save_checkpoint` sees it, with trainable weights given (under FSDP:
    gathered from the ranks; the model's own parameters there are shards)."""

    def __init__(self, model: AVSRModel, weights: dict[str, torch.Tensor]):
        self._model, self._weights = model, weights

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self._weights


def trainable_weights(trainer: L.Trainer, module: AVSRLightning) -> dict[str, torch.Tensor] | None:
    """The full trainable weights on rank 0 (None on the other ranks).

    Under FSDP every rank holds a shard of each parameter: all ranks must call this, and the
    full weights are gathered layer by layer onto rank 0 (Lightning's state_dict_type "full":
    the frozen backbones are gathered too, then dropped here). Elsewhere the module's own."""
    from lightning.pytorch.strategies import FSDPStrategy

    if not isinstance(trainer.strategy, FSDPStrategy):
        return module.model.trainable_state_dict() if trainer.is_global_zero else None
    full = trainer.strategy.lightning_module_state_dict()  # collective; empty off rank 0
    if not trainer.is_global_zero:
        return None
    return {k: full[f"model.{k}"].detach().cpu().contiguous() for k in trainable_names(module.model)}


def fsdp_wrap_classes(model: AVSRModel) -> set[type[torch.nn.Module]]:
    """The layer classes FSDP shards as units: the LLM's decoder layers and the encoders'
    transformer layers (Hugging Face models name theirs in `_no_split_modules`, e.g.
    LlamaDecoderLayer, WhisperEncoderLayer; the AV-HuBERT port's is its EncoderLayer). What is
    left (embeddings, projectors, the new-token table, convolutions) is the root unit."""
    from avsr.models.video_encoder import EncoderLayer

    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    classes = {type(m) for m in model.modules() if type(m).__name__ in names or isinstance(m, EncoderLayer)}
    if not any(isinstance(m, tuple(classes)) for m in model.llm.modules()):
        raise ConfigError(f"strategy fsdp: the LLM ({type(model.llm).__name__}) names no decoder layer class "
                          "in _no_split_modules, so FSDP would not shard it; choose strategy=ddp")
    return classes


def build_strategy(cfg: TrainConfig, model: AVSRModel):
    """The Trainer's strategy: a name (resolve_strategy), or for `fsdp` / `fsdp_cpu_offload` an
    FSDPStrategy set up for a frozen LLM with small trainable parts (docs/scaling.md):

    - each decoder layer (and encoder layer) is its own FSDP unit, so the frozen LLM is sharded
      and gathered one layer at a time;
    - `use_orig_params=True`: LoRA adapters share their units with frozen weights, and the
      optimizer (configure_optimizers, after wrapping) sees the original, named parameters, of
      which it takes the trainable ones only;
    - state_dict_type "full": checkpoints gather full tensors onto rank 0 (ours are small).
    Precision comes from the Trainer's `precision` (Lightning's FSDP mixed-precision settings),
    except for bf16-true / 16-true: there the whole model is already in that dtype, and FSDP's
    default of running BatchNorm (the lip encoder's ResNet) in float32 would feed those layers
    float32 inputs against their bfloat16 weights, so no layer class is exempted."""
    name = resolve_strategy(cfg.strategy, cfg.devices, cfg.num_nodes)
    if name not in ("fsdp", "fsdp_cpu_offload"):
        return name
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import MixedPrecision

    mixed = None
    if str(cfg.precision) in ("bf16-true", "16-true"):
        dtype = torch.bfloat16 if str(cfg.precision).startswith("bf16") else torch.float16
        mixed = MixedPrecision(param_dtype=dtype, reduce_dtype=dtype, buffer_dtype=dtype, _module_classes_to_ignore=())
    return FSDPStrategy(auto_wrap_policy=fsdp_wrap_classes(model), use_orig_params=True, state_dict_type="full",
                        sharding_strategy="FULL_SHARD", cpu_offload=name == "fsdp_cpu_offload", mixed_precision=mixed)


RUN_ENTRIES = ("config.yaml", "checkpoints", "resume", "logs", DONE, "eval")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume(cfg: TrainConfig) -> Path | None:
    """Before any work: a run folder that already holds a run must hold this configuration's
    (else the differing keys are named); returns the final checkpoint of a finished run."""
    out = Path(cfg.out)
    saved_file = out / "config.yaml"
    if not saved_file.is_file():
        return None
    try:
        saved = _flat(yaml.safe_load(saved_file.read_text()) or {})
    except yaml.YAMLError as err:
        raise ConfigError(f"{saved_file}: not valid YAML ({err}); start fresh with --fresh") from None
    now = _flat(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    # A key an older avsr did not save yet counts as its default (a newer setting left as it was).
    saved = {**{k: v for k, v in _flat(yaml.safe_load(yaml.safe_dump(type(cfg)().to_dict()))).items()
                if k not in saved}, **saved}
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k != "out")  # runs may move
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:8])
        raise ConfigError(f"{out} holds a run with another configuration ({shown}"
                          f"{', ...' if len(differ) > 8 else ''}); resume it with the same settings, "
                          "choose another out=, or pass --fresh to start over")
    return out / "checkpoints" / "last" if (out / DONE).is_file() else None


def train(cfg: TrainConfig, model: AVSRModel | None = None, progress: bool = True,
          callbacks: Sequence[L.Callback] = (), fresh: bool = False) -> Path:
    """Train (resuming from <out>/resume/last.ckpt if present); returns the final checkpoint folder.

    A run folder holds one configuration: resuming with another is refused (`fresh=True`
    deletes the earlier run first), and a finished run is not trained again. Ctrl-C saves
    the last completed step and raises `Interrupted`. `callbacks`: extra Lightning callbacks."""
    out = Path(cfg.out)
    check_feature_cache(cfg)  # before a run folder is claimed
    if fresh and out.exists():
        remove_written(out)
    finished = check_resume(cfg)
    if finished is not None:
        print(f"[avsr train] {out} already finished its {cfg.optim.max_steps} steps: {finished}", flush=True)
        return finished
    claim_folder(out, "train", RUN_ENTRIES)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = model or build_model(cfg.model)
    save_config(cfg, out / "config.yaml")
    counts = model.parameter_counts()
    print(f"[avsr train] trainable parameters: {counts['trainable']:,} "
          f"(frozen: {counts['frozen']:,}); tasks {', '.join(cfg.model.tasks)}", flush=True)
    module = AVSRLightning(model, cfg)
    last = out / "resume" / "last.ckpt"
    saver = SaveTrainable(cfg, last)
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=build_strategy(cfg, model),
        precision=cfg.precision, max_steps=cfg.optim.max_steps, gradient_clip_val=cfg.optim.grad_clip,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        logger=make_logger(cfg), log_every_n_steps=cfg.log_every, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=None,
        val_check_interval=cfg.val_every if cfg.val_every > 0 else None,
        limit_val_batches=None if cfg.val_every > 0 else 0,
        callbacks=[saver, L.pytorch.callbacks.ModelCheckpoint(
            dirpath=last.parent, save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every), *callbacks],
        use_distributed_sampler=False)
    train_loader, val_loader = make_loaders(cfg, model, trainer.world_size, trainer.global_rank, progress)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Both are by design: frozen encoders and LLM stay in eval mode (AVSRModel.train), and
        # validation is off when val_every is 0.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
        # FSDP: LoRA adapters share their decoder layer's unit with its frozen weights (by design)
        warnings.filterwarnings("ignore", message=r".*has both parameters with requires_grad=True and False")
        try:
            trainer.fit(module, train_loader, val_loader if cfg.val_every > 0 else None,
                        ckpt_path=str(last) if last.is_file() else None)
        except SystemExit:  # Lightning's answer to Ctrl-C, after our on_exception saved the step
            if saver.interrupted_at is None:
                raise
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Lightning ignores it from here on
            kept = f"step {saver.interrupted_at} saved in {last}" if saver.interrupted_at else "no step completed"
            raise Interrupted(f"training stopped at {kept}; run the same command again to resume") from None
    print(f"[avsr train] {trainer.global_step} steps in {time.perf_counter() - start:.0f} s "
          f"({trainer.world_size} process{'es' if trainer.world_size > 1 else ''})", flush=True)
    return out / "checkpoints" / "last"
