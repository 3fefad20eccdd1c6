"""Frozen-encoder outputs computed once, for K augmented copies of every training utterance.

The encoders are frozen (and run in eval mode), so their output for a given augmented input
never changes. On a CPU the encoders cost most of a training step; computing them once for
K differently augmented copies (noise at a drawn SNR, crop, time masks) and cycling through
the copies epoch by epoch trades a little augmentation diversity for a many-fold speed-up.
With `data.feature_cache_copies: 0` (the default) every step runs the encoders, as on GPUs.

With a `store` file the features are also kept on disk under a fingerprint of everything
that decides them (encoders, labels, noise, augmentation, copies, seed), so trainings that
share those (an experiment comparing projectors, a re-run) skip the encoders entirely.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avsr.data.batching import FrameBudgetBatchSampler, TransformedDataset, collate, frame_lengths
from avsr.data.dataset import SkippedItem
from avsr.io import atomic_file
from avsr.models.avsr_model import frozen_features


class FeatureCache(Dataset):
    """Items {"<m>_features": (T, D) float16 per modality, "text", "ids"} for the current copy."""

    def __init__(self, encoders: torch.nn.ModuleDict, dataset: TransformedDataset, copies: int,
                 max_frames: int = 2000, progress: bool = True, store: Path | None = None,
                 fingerprint: str = ""):
        self.rows = dataset.dataset.rows
        self.copies = copies
        self.epoch = 0
        # which utterances (and transcripts) the items are of: a manifest's utterances can change
        # without its file (a .wrd beside a .tsv, media skipped or dropped as too long)
        keys = [[str(row.id), row.text] for row in self.rows]
        if store is not None and store.is_file():
            saved = torch.load(store, weights_only=True)
            if (saved.get("fingerprint") == fingerprint and len(saved["items"]) == len(self.rows)
                    and saved.get("rows", keys) == keys):
                self.items = saved["items"]
                print(f"[avsr train] encoder features from {store}", flush=True)
                return
        self._compute(encoders, dataset, max_frames, progress)
        if store is not None:
            with atomic_file(store) as tmp:
                torch.save({"fingerprint": fingerprint, "rows": keys, "items": self.items}, tmp)

    def _compute(self, encoders: torch.nn.ModuleDict, dataset: TransformedDataset, max_frames: int,
                 progress: bool) -> None:
        self.items: list[list[dict]] = [[] for _ in self.rows]
        sampler = FrameBudgetBatchSampler(frame_lengths(dataset.dataset), max_frames, shuffle=False)
        bar = tqdm(total=self.copies * len(self.rows), desc="caching encoder features", unit="utt", disable=not progress)
        # Each batch's media are read once and augmented for every copy: copy k of an item is
        # what `dataset` gives in epoch k.
        for indices, raw in zip(sampler, DataLoader(dataset.dataset, batch_sampler=sampler, collate_fn=list)):
            for copy in range(self.copies):
                self._encode([dataset.augment(item, i, copy) for i, item in zip(indices, raw)], indices, encoders)
                bar.update(len(indices))
        bar.close()

    def _encode(self, items: list, indices: list[int], encoders: torch.nn.ModuleDict) -> None:
        """Append one copy's features of `items` (the dataset's `indices`) to self.items."""
        for index, item in zip(indices, items):
            if isinstance(item, SkippedItem):  # unreadable media (on_bad_file=skip); kept as plain
                self.items[index].append({"id": item.id, "skipped": item.reason})  # data for torch.load
        indices = [i for i, item in zip(indices, items) if not isinstance(item, SkippedItem)]
        if not indices:
            return
        batch = collate([item for item in items if not isinstance(item, SkippedItem)])
        feats = {m: frozen_features(encoder, batch, m) for m, encoder in encoders.items()}  # (B, T, D), (B,)
        for j, index in enumerate(indices):
            item = {f"{m}_features": x[j, : int(n[j])].to(torch.float16).clone() for m, (x, n) in feats.items()}
            item.update(text=batch["text"][j], id=batch["ids"][j])
            self.items[index].append(item)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict | SkippedItem:
        item = self.items[index][self.epoch % self.copies]
        return SkippedItem(item["id"], item["skipped"]) if "skipped" in item else item


def collate_features(items: list[dict]) -> dict:
    """Pad cached features: "<m>_features" (B, T_max, D) float32 and "<m>_feature_lengths" (B,);
    SkippedItem markers (unreadable media) are dropped."""
    items = [it for it in items if not isinstance(it, SkippedItem)]
    batch = {"text": [it["text"] for it in items], "ids": [it["id"] for it in items]}
    for key in (k for k in items[0] if k.endswith("_features")):
        lengths = torch.tensor([it[key].shape[0] for it in items])
        out = torch.zeros(len(items), int(lengths.max()), items[0][key].shape[1])
        for i, it in enumerate(items):
            out[i, : lengths[i]] = it[key].float()
        batch[key] = out
        batch[key.replace("_features", "_feature_lengths")] = lengths
    return batch
