"""A split as WebDataset-style tar shards (`avsr shard`), and the stream training reads them by
(`data.format: shards`).

A shard set is a folder: `index.json` (per shard its name, size, utterance count, frames and
each utterance's length) and `<name>-NNNNNN.tar` files. An utterance is four consecutive tar
members sharing a key (the WebDataset convention): `<key>.json` (id, index in the manifest,
frames, text), `<key>.mp4` and `<key>.wav` (the corpus files' own bytes, not re-encoded) and
`<key>.txt`. Utterances are stored longest first, the order in which `pack_batches` packs a
split, so shards hold utterances of similar length. The same manifest gives the same bytes.

Reading (`ShardStream`) never lists the corpus: only the index is read whole; shards are read
front to back from a folder, a URL (fsspec) or a `pipe:` command (avsr.data.remote). Each epoch
the shards are dealt to the ranks and, within a rank, to its data-loader workers (the "loaders");
each loader packs its own stream into frame-budget batches (`stream_batches`: a seeded shuffle
buffer, sorted windows; in stored order with shuffling off). The batches are planned from the
index's lengths before any shard is opened, so every loader knows how many batches every other
one has: all give the same number (the largest; a loader with fewer repeats its first ones, as
the file sampler pads), which keeps the ranks' steps in line, and a resumed run skips exactly
the batches it trained (`resume_at`, set through `ResumableLoader`) without decoding them.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from avsr.data.batching import augment_rng, collate, stream_batches
from avsr.data.dataset import load_item, media_item
from avsr.data.manifests import (FRAME_RATE, SHARD_INDEX_FORMAT, DataError, ShardIndex, Utterance, load_manifest,
                                 read_shard_index, warn)
from avsr.data.media import MediaError
from avsr.data.remote import DEFAULT_TIMEOUT, RemoteError, open_stream, size
from avsr.errors import AvsrError
from avsr.io import RUN_MARKER, atomic_folder, check_output, check_removable, claim_folder, write_text_atomic

INDEX = "index.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """'512MB' (10^6), '512MiB' (2^20), '2G', '4096' -> bytes."""
    match = _SIZE.match(str(text))
    unit = match and match[2].lower()
    if not match or unit not in _UNITS or float(match[1]) * _UNITS[unit] < 1:
        raise AvsrError(f"--shard-size {text!r}: expected a size such as 512MB, 1GiB or 100000 (bytes)")
    return int(float(match[1]) * _UNITS[unit])


# --- writing ------------------------------------------------------------------------------------------------

def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One member with fixed metadata (no time, owner or mode of this machine): same input, same bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def _tar_bytes(sizes: list[int]) -> int:
    """Bytes the members take in a tar: a 512-byte header each, contents padded to 512."""
    return sum(512 + -(-n // 512) * 512 for n in sizes)


def _tar_file_bytes(members: int) -> int:
    """The size of a tar file whose members take `members` bytes: the end-of-archive blocks, then
    padded to whole records (tarfile's 10240 bytes)."""
    return -(-(members + 2 * 512) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def _meta(row: Utterance, index: int) -> bytes:
    return json.dumps({"id": row.id, "index": index, "frames": row.n_frames, "text": row.text}, sort_keys=True).encode()


def _written_by_shard(folder: Path) -> bool:
    """A folder `avsr shard` wrote: its marker says so and it holds nothing else (`check_removable`)."""
    try:
        check_removable(folder)
        return json.loads((folder / RUN_MARKER).read_text()).get("written_by") == "avsr shard"
    except (AvsrError, OSError, ValueError):
        return False


def write_shards(manifest: str | Path, out: str | Path, shard_size: int, fmt: str = "auto",
                 root: str | Path | None = None, overwrite: bool = False) -> ShardIndex:
    """Write the split a manifest lists as tar shards of about `shard_size` bytes into `out` (one
    folder per split: `data.root/<split>/`, the split being `out`'s name), with its index.

    Every utterance's media are checked first (present, not empty: a missing file is an error naming
    it and the manifest line), then the folder is written under a temporary name and renamed, so a
    folder with an index is complete. An existing `out` is replaced only with `overwrite`, and only
    if avsr wrote it."""
    out = Path(out)
    if shard_size < 1:
        raise AvsrError(f"shard size must be positive, got {shard_size}")
    check_output(out, "shard", inputs=(manifest, root), replace=overwrite, folder=True, what="a shard set avsr wrote",
                 mine=_written_by_shard)
    rows = load_manifest(manifest, fmt, root, on_bad_file="stop")
    order = sorted(range(len(rows)), key=lambda i: (-rows[i].n_frames, i))  # pack_batches' order
    split = out.name
    shards, current, current_bytes = [], [], 0
    for i in order:
        row = rows[i]
        sample = _tar_bytes([len(_meta(row, i)), row.video.stat().st_size, len(row.text.encode()),
                             row.audio.stat().st_size])
        if current and _tar_file_bytes(current_bytes + sample) > shard_size:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(i)
        current_bytes += sample
    shards.append(current)
    entries = []
    with atomic_folder(out) as tmp:
        claim_folder(tmp, "shard")
        for k, members in enumerate(shards):
            name = f"{split}-{k:06d}.tar"
            with tarfile.open(tmp / name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in members:
                    row = rows[i]
                    key = f"{i:09d}"
                    _member(tar, f"{key}.json", _meta(row, i))
                    _member(tar, f"{key}.mp4", row.video.read_bytes())
                    _member(tar, f"{key}.txt", row.text.encode())
                    _member(tar, f"{key}.wav", row.audio.read_bytes())
            lengths = [rows[i].n_frames for i in members]
            entries.append({"name": name, "count": len(members), "frames": sum(lengths),
                            "bytes": (tmp / name).stat().st_size, "lengths": lengths})
        index = {"format": SHARD_INDEX_FORMAT, "split": split, "source": Path(manifest).name,
                 "utterances": len(rows), "frames": sum(r.n_frames for r in rows), "shards": entries}
        write_text_atomic(tmp / INDEX, json.dumps(index, sort_keys=True) + "\n")
        claim_folder(tmp, "shard", (INDEX, *(e["name"] for e in entries)))
    return read_shard_index(out / INDEX)


def check_shards(index: str | Path, timeout: float = DEFAULT_TIMEOUT) -> ShardIndex:
    """Before training: the index reads, and every shard is there with the size the index gives (a
    shard cut short or replaced is named). A `pipe:` shard cannot be asked its size: it is checked
    while it is read."""
    shard_index = read_shard_index(index, timeout=timeout)
    for k, entry in enumerate(shard_index.shards):
        location = shard_index.shard_location(k)
        try:
            found = size(location, timeout)
        except RemoteError as err:
            raise DataError(str(err)) from None
        if found is not None and found != entry.bytes:
            raise DataError(f"shard {location}: {found} bytes, but {shard_index.location} says {entry.bytes} "
                            "(cut short, or replaced after avsr shard wrote it)")
    return shard_index


# --- reading ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """An utterance as the plan knows it: its shard, its place there and its length."""
    shard: int
    pos: int
    length: int


@dataclass
class Plan:
    """One epoch: every loader's batches (of refs), and the batches each loader gives (the most any has)."""
    batches: list[list[list[Ref]]]  # [loader][batch] -> refs
    shards: list[list[int]]  # [loader] -> its shards, in the order it reads them
    steps: int


class ShardStream(IterableDataset):
    """A split's shard set as a stream of collated, augmented frame-budget batches for one rank.

    `transform(item, rng)` as in TransformedDataset (rng from seed, epoch and the utterance's
    index in the manifest: the same draws as reading the files). `workers`: the DataLoader's
    num_workers (its batches come from the workers in turn). `limit`: only the first utterances
    of the index (validation). `max_seconds`: longer utterances are left out.
    """

    def __init__(self, index: str | Path, max_frames: int, transform: Callable, seed: int = 0, shuffle: bool = True,
                 buffer: int = 1000, num_replicas: int = 1, rank: int = 0, workers: int = 0,
                 on_bad_file: str = "stop", max_seconds: float | None = None, limit: int | None = None,
                 timeout: float = DEFAULT_TIMEOUT):
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.index = read_shard_index(index, timeout=timeout)
        self.max_frames, self.transform, self.seed, self.shuffle, self.buffer = max_frames, transform, seed, shuffle, buffer
        self.num_replicas, self.rank, self.loaders = num_replicas, rank, max(1, workers)
        self.on_bad_file, self.timeout = on_bad_file, timeout
        self.epoch = 0
        self.resume_at = 0  # batches of this rank's epoch already trained (a resumed run skips them)
        self.refs = self._refs(max_seconds, limit)
        self._plans: dict[int, Plan] = {}

    def _refs(self, max_seconds: float | None, limit: int | None) -> list[list[Ref]]:
        """[shard] -> the utterances read from it (the index's lengths; none is decoded)."""
        refs, kept, long = [], 0, 0
        for k, entry in enumerate(self.index.shards):
            mine = []
            for pos, n in enumerate(entry.lengths):
                if max_seconds is not None and n > max_seconds * FRAME_RATE:
                    long += 1
                elif limit is None or kept < limit:
                    mine.append(Ref(k, pos, n))
                    kept += 1
            refs.append(mine)
        if long:
            warn(f"{self.index.location}: dropped {long} of {self.index.utterances} utterances longer than "
                 f"{max_seconds:g} s (data.max_utterance_seconds)")
        if not kept:
            raise DataError(f"{self.index.location}: no utterance left to read")
        return refs

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.resume_at = epoch, 0

    def plan(self, epoch: int) -> Plan:
        """The epoch's batches of every loader (rank r's loader w is number r x workers + w)."""
        if epoch in self._plans:
            return self._plans[epoch]
        used = [k for k, refs in enumerate(self.refs) if refs]
        total = self.num_replicas * self.loaders
        if len(used) < total:
            raise DataError(f"{self.index.location}: {len(used)} shard(s) for {self.num_replicas} rank(s) x "
                            f"{self.loaders} data loader(s): each needs a shard of its own; write smaller shards "
                            "(avsr shard --shard-size) or use fewer data.workers")
        if self.shuffle:
            used = [used[i] for i in np.random.default_rng([self.seed, epoch]).permutation(len(used))]
        shards = [used[r::self.num_replicas][w::self.loaders] for r in range(self.num_replicas)
                  for w in range(self.loaders)]
        batches = []
        for g, mine in enumerate(shards):
            rng = np.random.default_rng([self.seed, epoch, 1 + g]) if self.shuffle else None
            items = (ref for k in mine for ref in self.refs[k])
            batches.append(list(stream_batches(items, lambda ref: ref.length, self.max_frames, rng, self.buffer)))
        plan = Plan(batches, shards, max(len(b) for b in batches))
        self._plans = {epoch: plan}
        return plan

    def __len__(self) -> int:
        """Batches per epoch on this rank: every loader gives the plan's number."""
        return self.plan(self.epoch).steps * self.loaders

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if workers != self.loaders:
            raise DataError(f"ShardStream made for {self.loaders} data loader(s) runs in {workers}")
        # Rank batch j comes from loader slot j % W. A resumed DataLoader asks its workers in turn from
        # worker 0 again, so worker i serves the slot whose turn comes i batches after the resume point.
        slot = (worker + self.resume_at) % self.loaders
        plan = self.plan(self.epoch)
        mine = plan.batches[self.rank * self.loaders + slot]
        order = plan.shards[self.rank * self.loaders + slot]
        j = len(range(slot, self.resume_at, self.loaders))  # this slot's batches already trained
        stand_in: list[dict] = []  # the first readable item, for a batch left with none (on_bad_file skip)
        while j < plan.steps:  # past its own batches, a loader repeats them from the start
            first = j % len(mine)
            last = min(len(mine), first + plan.steps - j)
            for batch in self._fetch(mine[first:last], order):
                yield self._collate(batch, stand_in)
            j += last - first

    def _fetch(self, batches: list[list[Ref]], order: list[int]) -> Iterator[list[tuple[Ref, dict]]]:
        """The batches' utterances read from their shards, in the plan's order. Shards none of them
        is in are not opened; read items wait only until their batch is complete."""
        needed = {(ref.shard, ref.pos) for batch in batches for ref in batch}
        shards = {shard for shard, _ in needed}
        samples = (item for k in order if k in shards for item in self._samples(k, needed))
        held: dict[tuple[int, int], dict] = {}
        for batch in batches:
            for ref in batch:
                while (ref.shard, ref.pos) not in held:
                    key, sample = next(samples)
                    held[key] = sample
            yield [(ref, held.pop((ref.shard, ref.pos))) for ref in batch]

    def _samples(self, k: int, needed: set) -> Iterator[tuple[tuple[int, int], dict]]:
        """((shard, position), {ext: bytes}) of the needed utterances of shard k, read front to back."""
        location = self.index.shard_location(k)
        entry = self.index.shards[k]
        pos, key, parts = -1, None, {}

        def finished():
            meta = json.loads(parts["json"])
            if meta["frames"] != entry.lengths[pos]:
                raise DataError(f"shard {location}: utterance {meta['id']} has {meta['frames']} frames, the index "
                                f"says {entry.lengths[pos]}")
            return (k, pos), {**parts, "meta": meta}

        try:
            with open_stream(location, self.timeout) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    name, _, ext = member.name.partition(".")
                    if name != key:
                        if key is not None and (k, pos) in needed:
                            yield finished()
                        pos, key, parts = pos + 1, name, {}
                    data = tar.extractfile(member).read() if member.isfile() else b""
                    if (k, pos) in needed:
                        parts[ext] = data
                if key is not None and (k, pos) in needed:
                    yield finished()
        except (tarfile.TarError, EOFError, OSError, KeyError, IndexError, ValueError) as err:
            raise DataError(f"shard {location} is cut short or damaged ({type(err).__name__}: {err})") from None
        except RemoteError as err:
            raise DataError(str(err)) from None
        if pos + 1 != entry.count:
            raise DataError(f"shard {location} holds {pos + 1} utterances, the index says {entry.count} "
                            "(cut short, or not the shard the index was written with)")

    def _collate(self, batch: list[tuple[Ref, dict]], stand_in: list[dict]) -> dict:
        items = []
        for ref, sample in batch:
            meta = sample["meta"]
            row = Utterance(meta["id"], Path(f"{meta['id']}.mp4"), Path(f"{meta['id']}.wav"), meta["frames"],
                            meta["text"], f"{self.index.shard_location(ref.shard)}:{meta['id']}")
            try:
                item = load_item(row, video=sample["mp4"], audio=sample["wav"])
            except (MediaError, DataError, KeyError) as err:
                reason = f"no .{err.args[0]} member" if isinstance(err, KeyError) else str(err)
                if self.on_bad_file == "stop":
                    raise DataError(f"{row.source}: {reason}") from None
                warn(f"skipped utterance {row.id}: {reason} (in {self.index.shard_location(ref.shard)})")
                continue
            items.append(self.transform(media_item(item), augment_rng(self.seed, self.epoch, meta["index"])))
            if not stand_in:
                stand_in.append(items[-1])
        if not items:
            if not stand_in:
                raise DataError("every utterance read so far was unreadable")
            warn(f"all {len(batch)} items of a batch were unreadable; training on {stand_in[0]['id']} in their place")
            items = stand_in[:1]
        return collate(items)


__all__ = ["INDEX", "ShardStream", "check_shards", "parse_size", "write_shards"]
