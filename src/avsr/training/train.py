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
import os
import signal
import sys
import threading
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
from avsr.data.manifests import detect_format
from avsr.data.shards import ShardStream
from avsr.data.media import read_audio
from avsr.data.transforms import AugmentConfig, EvalTransform, TrainTransform
from avsr.errors import Interrupted
from avsr.io import check_output_folder, check_removable, claim_folder, remove_written, write_text_atomic
from avsr.models.avsr_model import AVSRModel
from avsr.models.tasks import modalities_of
from avsr.models.loading import backbones, build_model, save_checkpoint
from avsr.paths import resume_file
from avsr.training.data_record import training_data
from avsr.training.config import ConfigError, TrainConfig, save_config
from avsr.training.feature_cache import FeatureCache, collate_features
from avsr.training.resume import ResumeError, ResumeState, read_state, write_state
from avsr.training.run_lock import LOCK, check_unlocked, first_rank, locked
from avsr.optimization import warmup_cosine, warmup_cosine_adamw  # noqa: F401 (warmup_cosine: public here too)


class ResumableLoader(DataLoader):
    """The training DataLoader, which keeps its own place in the data: the epoch, and the batches
    of it trained (counted by `AVSRLightning.training_step`, not by fetching, which runs a batch
    ahead).

    Every iteration Lightning starts goes on from there: the rest of this epoch, or the next epoch
    once this one is trained, with the dataset (augmentation, feature-cache copy) and the batch
    sampler set to it. Lightning's own epoch count plays no part, so a resumed run (which Lightning
    starts afresh) trains the batches of an uninterrupted one wherever it stopped, an epoch's last
    batch included. It has no length for Lightning, which then learns where a pass ends from the
    loader running out (its fetcher reads a batch ahead), so a resumed epoch's rest ends where it
    should, with the early step of an epoch's last accumulation window. A private `generator`
    keeps iterators from drawing on torch's global RNG.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epoch = 0
        self.batches = 0

    def __len__(self) -> int:
        raise TypeError("a ResumableLoader pass may be the rest of an epoch: it ends when the loader runs out")

    def __iter__(self):
        # the batch sampler (files) or the shard stream (shards: an iterable dataset, no sampler)
        # plans the epoch's batches and skips those already trained
        plan = self.batch_sampler if self.batch_sampler is not None else self.dataset
        if self.batches >= len(plan):  # this epoch is trained: the next one
            self.epoch, self.batches = self.epoch + 1, 0
        for obj in (self.batch_sampler, self.dataset):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(self.epoch)
        plan.resume_at = self.batches
        return super().__iter__()


class AVSRLightning(L.LightningModule):
    def __init__(self, model: AVSRModel, cfg: TrainConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.tasks = tuple(cfg.model.tasks)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.trainer.train_dataloader.batches += 1  # the place in the data the resume state records
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


DONE = "done.json"  # written last, when a run reached max_steps: the run is complete


class StopRequest:
    """Ctrl-C (SIGINT) during training: the first asks the run to stop at the end of the step
    under way (`SaveTrainable` saves it and stops, every rank at the same step), a second one
    interrupts at once. In force for a `with` block, in the main thread; DataLoader workers forked
    meanwhile inherit the handler and ignore the signal (their process decides)."""

    def __init__(self):
        self.requested = False
        self._previous = None
        self._pid = os.getpid()

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked worker
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if first_rank():
            print("\n[avsr train] Ctrl-C: stopping at the end of this step (Ctrl-C again stops at once)",
                  file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:  # also undoes Lightning's SIG_IGN after a KeyboardInterrupt
            signal.signal(signal.SIGINT, self._previous)


class SaveTrainable(L.Callback):
    """Saves the run, always at the end of a completed optimizer step, where weights, AdamW,
    schedule, place in the data and RNG belong together: every `checkpoint_every` steps the resume
    state (<out>/resume/state.safetensors) and <out>/checkpoints/last (trainable weights + config);
    at the end checkpoints/last and <out>/done.json. A resumed run gets its state back here
    (`on_train_start`). Ctrl-C (`StopRequest`) stops at the end of the step under way, which is
    saved; a KeyboardInterrupt raised anywhere else saves the last completed step if no weight
    has changed since (after the optimizer step it does not, and the last periodic save stands)."""

    def __init__(self, cfg: TrainConfig, resume: ResumeState | None, stop: StopRequest):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.resume = resume
        self.stop = stop
        self.boundary: dict = {}  # the end of the last completed step, as `_capture` takes it
        self.saved_step = resume.step if resume else None  # the resume state on disk
        self.interrupted = False

    def _capture(self, trainer: L.Trainer) -> dict:
        loader = trainer.train_dataloader
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        return {"step": trainer.global_step, "epoch": loader.epoch, "batches": loader.batches,
                "batches_total": trainer.fit_loop.epoch_loop.batch_progress.total.ready,
                "rng": {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if cuda else {})}}

    def on_train_start(self, trainer, module) -> None:
        if self.resume is not None:
            restore(trainer, self.resume, resume_file(self.out))
        self.boundary = self._capture(trainer)

    def _save(self, trainer: L.Trainer, module: AVSRLightning, with_state: bool) -> None:
        """Called on every rank (gathers under FSDP and DDP): the resume state of the last
        completed step if `with_state`, and checkpoints/last."""
        weights = trainable_weights(trainer, module)
        b = self.boundary
        if with_state:
            optimizer = trainer.strategy.optimizer_state(trainer.optimizers[0])  # full, on rank 0
            rng = gathered_rng(trainer, b["rng"])
            if trainer.is_global_zero:
                write_state(self.out, ResumeState(
                    step=b["step"], epoch=b["epoch"], batches=b["batches"], batches_total=b["batches_total"],
                    world_size=trainer.world_size, weights=weights, optimizer=optimizer, rng=rng,
                    scheduler=trainer.lr_scheduler_configs[0].scheduler.state_dict()))
            self.saved_step = b["step"]
        if trainer.is_global_zero:
            extra = {"train": self.cfg.to_dict(), "step": b["step"], "training_data": training_data(self.cfg)}
            save_checkpoint(_Trainable(module.model, weights), self.out / "checkpoints" / "last", extra)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.boundary["step"]:  # a batch of an accumulation: no step yet
            return
        self.boundary = self._capture(trainer)
        if trainer.global_step % self.cfg.checkpoint_every == 0:
            self._save(trainer, module, with_state=True)
        if trainer.strategy.reduce_boolean_decision(self.stop.requested, all=False):  # any rank's Ctrl-C
            raise KeyboardInterrupt

    def on_train_end(self, trainer, module) -> None:
        self.boundary = self._capture(trainer)
        self._save(trainer, module, with_state=False)
        if trainer.is_global_zero and trainer.global_step >= self.cfg.optim.max_steps:
            write_text_atomic(self.out / DONE, json.dumps({"steps": trainer.global_step,
                                                            "checkpoint": "checkpoints/last"}))

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        """Ctrl-C: keep the last completed step, so that the same command resumes from it."""
        if not isinstance(exception, KeyboardInterrupt):
            return
        self.interrupted = True
        step = trainer.global_step
        if step == self.boundary.get("step") and step > 0 and step != self.saved_step:
            self._save(trainer, module, with_state=True)


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
    if d.acoustics().active:  # (absent otherwise: the features of earlier runs keep their fingerprint)
        settings["acoustics"] = [d.reverb, list(d.speeds), d.band_limit]
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
    video encoder (model.video_lora_rank) they would never see the adapters, so refuse them; and
    they are read by utterance index, which a streamed shard set does not give."""
    if cfg.data.feature_cache_copies > 0 and cfg.model.video_lora_rank > 0:
        raise ConfigError(f"config: data.feature_cache_copies must be 0 when model.video_lora_rank is set "
                          f"(got {cfg.data.feature_cache_copies} and {cfg.model.video_lora_rank}): the video "
                          "encoder trains LoRA adapters, so its features cannot be computed once and cached")
    if cfg.data.feature_cache_copies > 0 and detect_format(cfg.data.labels(cfg.data.train_split)) == "shards":
        raise ConfigError("config: data.feature_cache_copies must be 0 with data.format shards (the feature "
                          "cache reads utterances by index; shards are streamed)")


def train_transform(cfg: TrainConfig) -> TrainTransform:
    """The training augmentation of `cfg.data`: rooms / speeds / band limits when set, babble at a
    drawn SNR, time masks."""
    d = cfg.data
    noise_path = d.noise_path()
    augment = AugmentConfig(snrs=tuple(d.snrs), audio_time_mask=d.audio_time_mask, video_time_mask=d.video_time_mask,
                            acoustics=d.acoustics())
    return TrainTransform(augment, noise=read_audio(noise_path) if noise_path else None)


def eval_transform(cfg: TrainConfig) -> EvalTransform:
    """What validation does to its items (no augmentation drawn; `cfg.data`'s settings for the rest)."""
    d = cfg.data
    return EvalTransform(AugmentConfig(snrs=tuple(d.snrs), audio_time_mask=d.audio_time_mask,
                                       video_time_mask=d.video_time_mask))


def train_items(cfg: TrainConfig, encoders: dict[str, torch.nn.Module], progress: bool = True):
    """The training split as training sees it: (its AVDataset, the augmented items or, with
    data.feature_cache_copies, the cached encoder features of them, and their collate function).
    The CTC reader's pre-training (avsr.training.ctc_reader) takes the same items, so both
    share one feature cache."""
    d = cfg.data
    # the media are checked here (missing, empty: data.on_bad_file), over-long utterances dropped
    train_set = AVDataset(d.root, d.labels(d.train_split), d.format, d.on_bad_file, d.max_utterance_seconds)
    train = TransformedDataset(train_set, train_transform(cfg), seed=cfg.seed)
    if d.feature_cache_copies == 0:
        return train_set, train, collate
    needed = modalities_of(cfg.model.tasks)
    key = feature_fingerprint(cfg, sorted(needed))
    store = Path(d.feature_cache_dir) / f"features-{key[:16]}.pt" if d.feature_cache_dir else None
    cache = FeatureCache(torch.nn.ModuleDict({m: e for m, e in encoders.items() if m in needed}), train,
                         d.feature_cache_copies, progress=progress, store=store, fingerprint=key)
    return train_set, cache, collate_features


def val_items(cfg: TrainConfig) -> TransformedDataset:
    """The validation split as validation sees it (its first data.max_val_utterances, clean),
    for the AVSR training and the CTC reader's report alike."""
    d = cfg.data
    val_set = AVDataset(d.root, d.labels(d.val_split), d.format, d.on_bad_file, d.max_utterance_seconds)
    val_set.rows = val_set.rows[: d.max_val_utterances]
    return TransformedDataset(val_set, eval_transform(cfg), seed=cfg.seed)


def make_loaders(cfg: TrainConfig, model: AVSRModel, world_size: int = 1, rank: int = 0,
                 progress: bool = True) -> tuple[DataLoader, DataLoader]:
    check_feature_cache(cfg)
    d = cfg.data
    if detect_format(d.labels(d.train_split)) == "shards":
        return _shard_loaders(cfg, train_transform(cfg), eval_transform(cfg), world_size, rank)
    encoders = {} if model is None else dict(model.encoders.items())  # read only by the feature cache
    train_set, train, train_collate = train_items(cfg, encoders, progress)
    sampler = FrameBudgetBatchSampler(frame_lengths(train_set), d.max_frames, shuffle=d.shuffle, seed=cfg.seed,
                                      num_replicas=world_size, rank=rank)
    val = val_items(cfg)
    val_set = val.dataset
    val_sampler = FrameBudgetBatchSampler(frame_lengths(val_set), d.max_frames, shuffle=False,
                                          num_replicas=world_size, rank=rank)
    # an item that fails to decode: on_bad_file=stop raises (naming the file) in the dataset; skip
    # drops it from its batch, and a batch left empty is refilled, so that every rank takes its step.
    # Private generators: starting an iterator (every epoch, every validation) draws a seed, which
    # would otherwise come from torch's global RNG, the dropout's, and move with the epoch boundaries.
    return (ResumableLoader(train, batch_sampler=sampler, collate_fn=SkipUnreadable(train_collate, train),
                            num_workers=d.workers, generator=torch.Generator().manual_seed(cfg.seed)),
            DataLoader(val, batch_sampler=val_sampler, collate_fn=SkipUnreadable(collate, val), num_workers=d.workers,
                       generator=torch.Generator().manual_seed(cfg.seed)))


def _shard_loaders(cfg: TrainConfig, train_transform, eval_transform, world_size: int,
                   rank: int) -> tuple[DataLoader, DataLoader]:
    """data.format shards: each split streamed from its shard set (avsr.data.shards); the stream
    packs and collates its batches itself, in the DataLoader's workers."""
    d = cfg.data
    common = dict(num_replicas=world_size, rank=rank, workers=d.workers, on_bad_file=d.on_bad_file,
                  timeout=d.url_timeout)
    train = ShardStream(d.labels(d.train_split), d.max_frames, train_transform, cfg.seed, shuffle=d.shuffle,
                        buffer=d.shuffle_buffer, max_seconds=d.max_utterance_seconds, **common)
    val = ShardStream(d.labels(d.val_split), d.max_frames, eval_transform, cfg.seed, shuffle=False,
                      max_seconds=d.max_utterance_seconds, limit=d.max_val_utterances, **common)
    return (ResumableLoader(train, batch_size=None, num_workers=d.workers,
                            generator=torch.Generator().manual_seed(cfg.seed)),
            DataLoader(val, batch_size=None, num_workers=d.workers, generator=torch.Generator().manual_seed(cfg.seed)))


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


def gathered_rng(trainer: L.Trainer, rng: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every rank's RNG states ("cpu.<rank>", "cuda.<rank>") from each rank's own (collective)."""
    if trainer.world_size == 1:
        return {f"{kind}.0": state for kind, state in rng.items()}
    out = {}
    for kind, state in sorted(rng.items()):
        states = trainer.strategy.all_gather(state.to(trainer.strategy.root_device)).cpu()  # (ranks, n)
        out.update({f"{kind}.{rank}": states[rank] for rank in range(trainer.world_size)})
    return out


def load_optimizer_state(trainer: L.Trainer, state: dict) -> None:
    """A full optimizer state_dict (parameters by position) into the run's optimizer; under FSDP
    each rank takes its shards of it, as Lightning's own FSDP loading does."""
    from lightning.pytorch.strategies import FSDPStrategy

    optimizer = trainer.optimizers[0]
    if not isinstance(trainer.strategy, FSDPStrategy):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, OptimStateKeyType, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    model = trainer.strategy.model
    with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(rank0_only=False),
                              FullOptimStateDictConfig(rank0_only=False)):
        state = FSDP.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_NAME, model)
        optimizer.load_state_dict(FSDP.optim_state_dict_to_load(model=model, optim=optimizer, optim_state_dict=state))


def restore(trainer: L.Trainer, state: ResumeState, file: Path) -> None:
    """At the start of a resumed run (its weights and place in the data set before `fit`): AdamW,
    the schedule, Lightning's counts of steps and batches, which it starts from zero in every run
    (the step also numbers the logged rows), and this rank's RNG, last."""
    if state.world_size != trainer.world_size:
        raise ResumeError(f"{file}: saved by a run of {state.world_size} processes, resumed by {trainer.world_size} "
                          "(each has its own batches and RNG); resume with the same devices and nodes")
    load_optimizer_state(trainer, state.optimizer)
    trainer.lr_scheduler_configs[0].scheduler.load_state_dict(state.scheduler)
    loop = trainer.fit_loop.epoch_loop
    steps = loop.automatic_optimization.optim_progress.optimizer.step.total
    steps.ready = steps.completed = state.step  # trainer.global_step
    total = loop.batch_progress.total
    total.ready = total.started = total.processed = total.completed = state.batches_total
    loop._batches_that_stepped = state.step  # the step the loggers write
    for epochs in (trainer.fit_loop.epoch_progress.current, trainer.fit_loop.epoch_progress.total):
        # the loader's epoch (set before `fit`, moved on when its epoch was trained): the logged epoch
        epochs.ready = epochs.started = epochs.processed = epochs.completed = trainer.train_dataloader.epoch
    rank = trainer.global_rank
    torch.set_rng_state(state.rng[f"cpu.{rank}"])
    if f"cuda.{rank}" in state.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.rng[f"cuda.{rank}"])


def fsdp_wrap_classes(model: AVSRModel) -> set[type[torch.nn.Module]]:
    """The layer classes FSDP shards as units: the LLM's decoder layers (Hugging Face models name
    theirs in `_no_split_modules`, e.g. LlamaDecoderLayer) and the encoders' transformer layers
    (the encoder table, avsr.models.encoders). What is left (embeddings, projectors, the
    new-token table, convolutions) is the root unit."""
    from avsr.models.encoders import ENCODERS

    names = set(getattr(model.llm, "_no_split_modules", None) or ())
    layers = tuple(ENCODERS[m].layer() for m in model.encoders)
    classes = {type(m) for m in model.modules() if type(m).__name__ in names or isinstance(m, layers)}
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


RUN_ENTRIES = ("config.yaml", "checkpoints", "resume", "logs", DONE, "eval", LOCK)


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
    """Train (resuming from <out>/resume/state.safetensors if present); returns the final checkpoint folder.

    A run folder holds one configuration: resuming with another is refused (`fresh=True`
    deletes the earlier run first), and a finished run is not trained again. One process at a
    time writes it (`run_lock`). Ctrl-C stops at the end of the step under way, saves it and
    raises `Interrupted`. `callbacks`: extra Lightning callbacks."""
    out = Path(cfg.out)
    d = cfg.data  # what the run reads: never inside (nor replaced with) its run folder (avsr.io's rule)
    inputs = (d.labels(d.train_split), d.labels(d.val_split), d.noise_path(), Path(d.root) / d.corpus,
              *backbones(cfg.model).values())
    check_output_folder(out, "train", RUN_ENTRIES, inputs=inputs, replace=True)  # its own entries: resumed
    check_feature_cache(cfg)  # before a run folder is claimed
    check_unlocked(out)  # another process writing it: refused before anything else
    if fresh and out.exists() and first_rank():  # the launcher starts the other ranks once rank 0 has begun
        check_removable(out, inputs)  # refused before anything is written in it
        with locked(claim_folder(out, "train", RUN_ENTRIES)):  # (an older run's marker gains the lock file)
            remove_written(out, inputs)  # no other run starts in it meanwhile
    finished = check_resume(cfg)
    if finished is not None:
        print(f"[avsr train] {out} already finished its {cfg.optim.max_steps} steps: {finished}", flush=True)
        return finished
    resume = read_state(out)  # a damaged file, or an older avsr's pickle: refused before the model loads
    claim_folder(out, "train", RUN_ENTRIES)
    with locked(out):
        return _train(cfg, model, progress, callbacks, resume)


def _train(cfg: TrainConfig, model: AVSRModel | None, progress: bool, callbacks: Sequence[L.Callback],
           resume: ResumeState | None) -> Path:
    out = Path(cfg.out)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = model or build_model(cfg.model)
    if resume is not None:
        try:
            model.load_trainable_state_dict(resume.weights)
        except (ValueError, RuntimeError) as err:
            raise ResumeError(f"{resume_file(out)}: does not fit this model ({err})") from None
    save_config(cfg, out / "config.yaml")
    counts = model.parameter_counts()
    print(f"[avsr train] trainable parameters: {counts['trainable']:,} "
          f"(frozen: {counts['frozen']:,}); tasks {', '.join(cfg.model.tasks)}", flush=True)
    module = AVSRLightning(model, cfg)
    stop = StopRequest()
    saver = SaveTrainable(cfg, resume, stop)
    trainer = L.Trainer(
        accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes, strategy=build_strategy(cfg, model),
        precision=cfg.precision, max_steps=cfg.optim.max_steps, gradient_clip_val=cfg.optim.grad_clip,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        logger=make_logger(cfg), log_every_n_steps=cfg.log_every, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, check_val_every_n_epoch=None,
        val_check_interval=cfg.val_every if cfg.val_every > 0 else None,
        limit_val_batches=None if cfg.val_every > 0 else 0,
        enable_checkpointing=False,  # SaveTrainable saves: no pickled Lightning checkpoints
        callbacks=[saver, *callbacks], use_distributed_sampler=False)
    train_loader, val_loader = make_loaders(cfg, model, trainer.world_size, trainer.global_rank, progress)
    if resume is not None:
        train_loader.epoch, train_loader.batches = resume.epoch, resume.batches
    start = time.perf_counter()
    with warnings.catch_warnings(), stop:
        # Both are by design: frozen encoders and LLM stay in eval mode (AVSRModel.train), and
        # validation is off when val_every is 0.
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")
        warnings.filterwarnings("ignore", message=r"You defined a `validation_step` but have no `val_dataloader`")
        # FSDP: LoRA adapters share their decoder layer's unit with its frozen weights (by design)
        warnings.filterwarnings("ignore", message=r".*has both parameters with requires_grad=True and False")
        # shards: the stream deals its shards to the workers itself, and its length is exact
        warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")
        try:
            trainer.fit(module, train_loader, val_loader if cfg.val_every > 0 else None)
        except SystemExit:  # Lightning's answer to Ctrl-C, after our on_exception saved the step
            if not saver.interrupted:
                raise
            kept = f"step {saver.saved_step} saved in {resume_file(out)}" if saver.saved_step else "no step completed"
            raise Interrupted(f"training stopped at {kept}; run the same command again to resume") from None
    print(f"[avsr train] {trainer.global_step} steps in {time.perf_counter() - start:.0f} s "
          f"({trainer.world_size} process{'es' if trainer.world_size > 1 else ''})", flush=True)
    return out / "checkpoints" / "last"
