"""Batching by a video-frame budget (Llama-AVSR's CustomBucketDataset), collation, seeded datasets.

Utterance lengths vary from ~1 s to 16 s, so a fixed batch size either wastes memory on short
clips or runs out of it on long ones; packing length-sorted items up to a frame budget keeps the
padded tensor size roughly constant. Unlike the reference, an item longer than the budget gets
a batch of its own instead of an assert.
"""

from __future__ import annotations

from itertools import islice
from typing import Callable, Iterable, Iterator, Literal, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from avsr.data.dataset import SkippedItem
from avsr.data.manifests import DataError, warn

T = TypeVar("T")


def greedy_batches(items: Iterable[T], length: Callable[[T], int], max_frames: int,
                   cost: Literal["frames", "padded"] = "frames") -> Iterator[list[T]]:
    """Cut a stream of items, in the order given, into batches whose cost stays within `max_frames`:
    a batch closes when the next item would take it over (an item over the budget on its own gets
    a batch of its own). cost="frames": the sum of the items' frames; cost="padded": items x
    longest item, the frames of the zero-padded batch tensor. Needs only the current batch, so
    it packs a stream (avsr.data.shards) as it packs a list."""
    if cost not in ("frames", "padded"):
        raise ValueError(f"cost must be 'frames' or 'padded', got {cost!r}")
    current: list[T] = []
    total = longest = 0
    for item in items:
        n = int(length(item))
        grown = total + n if cost == "frames" else (len(current) + 1) * max(longest, n)
        if current and grown > max_frames:
            yield current
            current, total, longest = [], 0, 0
        current.append(item)
        total, longest = total + n, max(longest, n)
    if current:
        yield current


def pack_batches(lengths: Sequence[int], max_frames: int,
                 cost: Literal["frames", "padded"] = "frames") -> list[list[int]]:
    """Greedily cut length-sorted indices into batches whose cost stays within `max_frames`.

    cost="frames" (the AVSR training's budget): items taken longest first; cost="padded" (the lip
    encoder pre-training's): shortest first, so that padding stays small. Ties go by index.
    """
    sign = -1 if cost == "frames" else 1
    order = sorted(range(len(lengths)), key=lambda i: (sign * int(lengths[i]), i))
    return list(greedy_batches(order, lambda i: lengths[i], max_frames, cost))


def shuffle_buffer(items: Iterable[T], rng: np.random.Generator, size: int) -> Iterator[T]:
    """A seeded shuffle of a stream within a buffer of `size` items: each new item takes the place
    of one drawn at random, which is given out. The draws depend on the count of items only, not
    on the items, so a plan made from lengths alone gives the order the real stream will have."""
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def stream_batches(items: Iterable[T], length: Callable[[T], int], max_frames: int,
                   rng: np.random.Generator | None = None, window: int = 1000) -> Iterator[list[T]]:
    """Frame-budget batches of a stream. Without `rng`: packed in the order given (a shard set is
    stored longest first, so this is `pack_batches`' packing of the whole split). With `rng`:
    through a shuffle buffer of `window` items; each window of `window` items drawn is sorted
    longest first and packed, and its batches given out in a shuffled order (bucketing: batches
    of similar lengths, little padding)."""
    if rng is None:
        yield from greedy_batches(items, length, max_frames)
        return
    stream = shuffle_buffer(items, rng, window)
    while chunk := list(islice(stream, window)):
        chunk.sort(key=lambda item: -int(length(item)))  # stable: ties keep the drawn order
        batches = list(greedy_batches(chunk, length, max_frames))
        for k in rng.permutation(len(batches)):
            yield batches[k]


def augment_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random draws of one utterance's augmentation: a pure function of (seed, epoch, index)."""
    return np.random.default_rng([seed, epoch, int(index)])


class FrameBudgetBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices whose video frames sum to at most `max_frames`.

    Batches are fixed once (deterministic packing); only their order is shuffled, with seed + epoch,
    so every rank computes the same permutation. Rank r takes batches r, r + R, r + 2R, ...; the list
    is padded by repeating batches from its start (or cut, with drop_last) so all ranks see the same
    number of batches, which keeps DDP collectives in step. Call set_epoch(epoch) before each epoch.
    `resume_at = n` makes the next pass start after this rank's first n batches of the epoch
    (resuming a run mid-epoch); set_epoch clears it.
    """

    def __init__(self, lengths: Sequence[int], max_frames: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int = 1, rank: int = 0, drop_last: bool = False):
        if max_frames <= 0:
            raise ValueError(f"max_frames must be positive, got {max_frames}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.batches = pack_batches(lengths, max_frames)
        self.max_frames = max_frames
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.resume_at = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.resume_at = 0

    def _per_rank(self) -> int:
        n = len(self.batches)
        return n // self.num_replicas if self.drop_last else -(-n // self.num_replicas)

    def __len__(self) -> int:
        return self._per_rank()

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.batches)))
        if self.shuffle:
            order = np.random.default_rng(self.seed + self.epoch).permutation(len(order)).tolist()
        total = self._per_rank() * self.num_replicas
        if total > len(order):  # pad by repeating from the start (repeat whole list if very short)
            order = (order * (total // len(order) + 1))[:total]
        else:
            order = order[:total]
        start, self.resume_at = self.resume_at, 0  # a resumed epoch skips what was trained
        for k in order[self.rank::self.num_replicas][start:]:
            yield list(self.batches[k])


def collate(items: list[dict]) -> dict:
    """Stack transformed items into zero-padded batch tensors plus their true lengths.

    items: dicts with "audio" (N_i,) float, "video" (T_i, H, W) float, "text" str, "id" str;
    SkippedItem markers (unreadable media, on_bad_file=skip) are dropped.
    """
    items = [it for it in items if not isinstance(it, SkippedItem)]
    if not items:
        raise DataError("every item of this batch was unreadable (wrap the collate in SkipUnreadable)")
    audios = [torch.as_tensor(it["audio"], dtype=torch.float32) for it in items]
    videos = [torch.as_tensor(it["video"], dtype=torch.float32) for it in items]
    b = len(items)
    audio_lengths = torch.tensor([a.shape[0] for a in audios], dtype=torch.long)  # (B,)
    video_lengths = torch.tensor([v.shape[0] for v in videos], dtype=torch.long)  # (B,)
    h, w = videos[0].shape[1:]
    audio = torch.zeros(b, int(audio_lengths.max()), dtype=torch.float32)  # (B, N_max)
    video = torch.zeros(b, int(video_lengths.max()), h, w, dtype=torch.float32)  # (B, T_max, H, W)
    for i, (a, v) in enumerate(zip(audios, videos)):
        if v.shape[1:] != (h, w):
            raise ValueError(f"item {items[i]['id']}: frame size {tuple(v.shape[1:])}, batch has {(h, w)}")
        audio[i, :a.shape[0]] = a
        video[i, :v.shape[0]] = v
    return {
        "audio": audio,  # (B, N_max) float32, zero-padded
        "audio_lengths": audio_lengths,  # (B,) long
        "video": video,  # (B, T_max, H, W) float32, zero-padded
        "video_lengths": video_lengths,  # (B,) long
        "text": [it["text"] for it in items],
        "ids": [it["id"] for it in items],
    }


class TransformedDataset(Dataset):
    """Applies `transform(item, rng)` with rng = default_rng([seed, epoch, index]).

    Augmentation is then a pure function of (seed, epoch, index): reproducible regardless of
    worker count or order, and different every epoch. With DataLoader workers, call set_epoch on
    this object before creating the epoch's iterator (persistent_workers would keep a stale copy).
    """

    def __init__(self, dataset: Dataset, transform: Callable[[dict, np.random.Generator], dict], seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def augment(self, item: dict | SkippedItem, index: int, epoch: int) -> dict | SkippedItem:
        """`item` (the dataset's item `index`) as this dataset gives it in `epoch`: one read of
        the media serves several epochs' augmentations (training.feature_cache)."""
        if isinstance(item, SkippedItem):
            return item
        return self.transform(item, augment_rng(self.seed, epoch, index))

    def __getitem__(self, index: int) -> dict | SkippedItem:
        return self.augment(self.dataset[index], index, self.epoch)


class SkipUnreadable:
    """A collate function for a dataset that skips unreadable items (on_bad_file=skip): the
    SkippedItem markers are dropped, and a batch left with no item at all gets the dataset's
    first readable item in their place. Every batch so still reaches the training step (an
    empty one would crash it, and a process skipping a step alone would stall DDP), as the
    sampler's padding repeats batches for the same reason."""

    def __init__(self, collate_fn: Callable[[list], dict], dataset: Dataset):
        self.collate_fn = collate_fn
        self.dataset = dataset
        self.stand_in: int | None = None  # index of the first readable item, once found

    def __call__(self, items: list) -> dict:
        kept = [it for it in items if not isinstance(it, SkippedItem)]
        if not kept:
            item = self._stand_in()
            warn(f"all {len(items)} items of a batch were unreadable ({', '.join(it.id for it in items)}); "
                 f"training on {item['id']} in their place")
            kept = [item]
        return self.collate_fn(kept)

    def _stand_in(self) -> dict:
        start = self.stand_in or 0
        for index in range(start, len(self.dataset)):
            item = self.dataset[index]
            if not isinstance(item, SkippedItem):
                self.stand_in = index
                return item
        raise DataError("no readable item left in the dataset: every utterance failed to decode")


def frame_lengths(dataset) -> list[int]:
    """Video-frame counts from an AVDataset's manifest rows, without decoding any media."""
    return [row.n_frames for row in dataset.rows]
