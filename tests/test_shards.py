"""`avsr shard` and `data.format: shards`: WebDataset tar shards, streamed to ranks and data-loader
workers (a seeded shuffle buffer, the frame-budget packing), from a folder, a local HTTP server
on 127.0.0.1 or a `pipe:` command; training from shards with shuffling off gives the weights of
training from the files; an interrupted run resumes exactly; two torchrun nodes (gloo, 127.0.0.1)
see disjoint utterances that together are the epoch."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from avsr.data.batching import FrameBudgetBatchSampler, collate, frame_lengths
from avsr.data.dataset import AVDataset
from avsr.data.manifests import read_shard_index
from avsr.data.shards import ShardStream, parse_size, write_shards
from avsr.errors import AvsrError, Interrupted
from avsr.models.loading import WEIGHTS
from avsr.training.config import load_config
from avsr.training.train import train
from conftest import run_cli, tiny_model, tiny_train_args

SHARD_SIZE = 400_000  # bytes: the tiny corpus's 12 training utterances in 7 shards, its 4 val ones in 2


@pytest.fixture(scope="module")
def shards(tiny_corpus, tmp_path_factory) -> Path:
    """The tiny corpus's train and val splits as shard sets under one root."""
    root, out = Path(tiny_corpus[0].out), tmp_path_factory.mktemp("shards")
    for split in ("train", "val"):
        code, _, err = run_cli("shard", root / "labels" / f"synth_{split}.csv", "--out", out / split,
                               "--shard-size", str(SHARD_SIZE))
        assert code == 0, err
    return out


def same(item, rng):  # no augmentation
    return item


def test_shards_hold_the_webdataset_samples_longest_first_and_the_same_bytes_every_time(tiny_corpus, shards,
                                                                                         tmp_path):
    root = Path(tiny_corpus[0].out)
    index = read_shard_index(shards / "train" / "index.json")
    rows = AVDataset(root, root / "labels" / "synth_train.csv").rows
    assert index.utterances == len(rows) and len(index.shards) == 7
    lengths = [n for s in index.shards for n in s.lengths]
    assert lengths == sorted((r.n_frames for r in rows), reverse=True)  # grouped by length
    members = []
    for k, entry in enumerate(index.shards):
        path = shards / "train" / entry.name
        assert path.stat().st_size == entry.bytes and (entry.bytes <= SHARD_SIZE or entry.count == 1)
        with tarfile.open(path) as tar:
            infos = tar.getmembers()
            assert {(i.mtime, i.uid, i.gid, i.uname, i.mode) for i in infos} == {(0, 0, 0, "", 0o644)}
            for i in range(0, len(infos), 4):  # one utterance: four members with one key
                names = [m.name for m in infos[i:i + 4]]
                key = names[0].split(".")[0]
                assert names == [f"{key}.json", f"{key}.mp4", f"{key}.txt", f"{key}.wav"]
                meta = json.loads(tar.extractfile(infos[i]).read())
                row = rows[meta["index"]]
                assert (meta["id"], meta["frames"], meta["text"]) == (row.id, row.n_frames, row.text)
                assert tar.extractfile(infos[i + 1]).read() == row.video.read_bytes()  # not re-encoded
                assert tar.extractfile(infos[i + 3]).read() == row.audio.read_bytes()
                members.append(meta["id"])
    assert sorted(members) == sorted(r.id for r in rows)
    again = write_shards(root / "labels" / "synth_train.csv", tmp_path / "train", SHARD_SIZE)
    assert [s.name for s in again.shards] == [s.name for s in index.shards]
    for name in ["index.json", ".avsr-run", *(s.name for s in index.shards)]:
        assert (tmp_path / "train" / name).read_bytes() == (shards / "train" / name).read_bytes(), name
    with pytest.raises(AvsrError, match="exists"):
        write_shards(root / "labels" / "synth_train.csv", tmp_path / "train", SHARD_SIZE)
    assert write_shards(root / "labels" / "synth_train.csv", tmp_path / "train", 10**9, overwrite=True).shards[0].count == 12
    mine = tmp_path / "mine" / "train"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(AvsrError, match="is not a shard set avsr wrote"):  # --overwrite replaces only what avsr wrote
        write_shards(root / "labels" / "synth_train.csv", mine, SHARD_SIZE, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    assert parse_size("512MB") == 512 * 10**6 and parse_size("1GiB") == 2**30 and parse_size("4096") == 4096


def test_with_shuffling_off_the_stream_gives_the_file_samplers_batches(tiny_corpus, shards):
    root = Path(tiny_corpus[0].out)
    dataset = AVDataset(root, root / "labels" / "synth_train.csv")
    sampler = FrameBudgetBatchSampler(frame_lengths(dataset), 150, shuffle=False)
    stream = ShardStream(shards / "train" / "index.json", 150, same, shuffle=False)
    batches = list(stream)
    assert len(stream) == len(sampler) == len(batches)
    for streamed, indices in zip(batches, sampler):
        files = collate([dataset[i] for i in indices])
        assert streamed["ids"] == files["ids"] and streamed["text"] == files["text"]
        for key in ("audio", "video", "audio_lengths", "video_lengths"):
            assert torch.equal(streamed[key], files[key]), key


def ids_of(stream, epoch: int, workers: int = 0, resume_at: int = 0) -> list[list[str]]:
    stream.set_epoch(epoch)
    stream.resume_at = resume_at
    return [b["ids"] for b in DataLoader(stream, batch_size=None, num_workers=workers)]


@pytest.mark.parametrize("ranks, workers", [(2, 0), (3, 0), (1, 2), (2, 2)])
def test_every_rank_and_worker_reads_its_own_shards_and_the_epoch_is_covered(shards, ranks, workers):
    index = read_shard_index(shards / "train" / "index.json")
    every = set()
    for epoch in (0, 1):
        seen = []
        for rank in range(ranks):
            stream = ShardStream(shards / "train" / "index.json", 150, same, seed=3, buffer=4, num_replicas=ranks,
                                 rank=rank, workers=workers)
            batches = ids_of(stream, epoch, workers)
            assert len(batches) == len(stream)  # every rank the same number of steps
            seen.append(batches)
            every |= {i for b in batches for i in b}
        assert len({len(b) for b in seen}) == 1
        # across ranks disjoint; within a rank a short loader repeats its own first batches
        per_rank = [{i for b in batches for i in b} for batches in seen]
        assert sum(len(ids) for ids in per_rank) == len(set().union(*per_rank)) == index.utterances
        assert all(sum(sum(1 for _ in b) for b in batches) <= 2 * index.utterances for batches in seen)
    assert len(every) == index.utterances


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_epoch_continues_with_exactly_the_batches_left(shards, workers):
    stream = ShardStream(shards / "train" / "index.json", 150, same, seed=5, buffer=4, workers=workers)
    full = ids_of(stream, 1, workers)
    assert full != ids_of(stream, 2, workers)  # reshuffled every epoch
    for k in range(len(full) + 1) if workers == 0 else (1, 2, len(full) - 1):  # with workers: both slots first
        assert ids_of(stream, 1, workers, resume_at=k) == full[k:], k


@pytest.fixture
def served(shards):
    """The shard root over HTTP on 127.0.0.1 (stopped after the test)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_shards_from_a_local_http_server_and_a_pipe_read_the_same(shards, served):
    def batches(root):
        stream = ShardStream(f"{root}/train/index.json" if "{}" not in root else root.replace("{}", "train/index.json"),
                             150, same, seed=1, buffer=4, num_replicas=2, rank=1)
        return list(stream)

    local = batches(str(shards))
    for root in (served, f"pipe:cat {shards}/{{}}"):
        remote = batches(root)
        assert [b["ids"] for b in remote] == [b["ids"] for b in local]
        assert all(torch.equal(a["video"], b["video"]) and torch.equal(a["audio"], b["audio"])
                   for a, b in zip(remote, local))


def test_training_from_shards_with_shuffling_off_gives_the_weights_of_training_from_files(tiny_corpus, shards,
                                                                                          tmp_path):
    root = Path(tiny_corpus[0].out)
    per_epoch = len(ShardStream(shards / "train" / "index.json", 300, same, shuffle=False))
    common = [f"out={tmp_path / 'files'}", f"optim.max_steps={per_epoch + 1}", "optim.warmup_steps=1",
              "data.max_frames=300", "val_every=0", "checkpoint_every=100", "data.feature_cache_copies=0", "accelerator=cpu",
              "data.shuffle=false", f"data.noise={root / 'noise' / 'synth_babble.wav'}"]
    files = train(load_config(None, [*common, f"data.root={root}"]), model=tiny_model(seed=3), progress=False)
    streamed = train(load_config(None, [*common, f"data.root={shards}", "data.format=shards",
                                        f"out={tmp_path / 'shards'}"]), model=tiny_model(seed=3), progress=False)
    a, b = load_file(str(files / WEIGHTS)), load_file(str(streamed / WEIGHTS))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit, into a second epoch
    start = tiny_model(seed=3).trainable_state_dict()
    assert sum(not torch.equal(start[k], a[k]) for k in a) > len(a) // 2  # and training moved them


def test_an_interrupted_run_from_shards_resumes_at_the_step_with_the_straight_runs_weights(shards, tiny_corpus,
                                                                                          tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_recorder import RecordRank

    root = Path(tiny_corpus[0].out)
    per_epoch = len(ShardStream(shards / "train" / "index.json", 300, same, seed=42, buffer=4))
    settings = [f"optim.max_steps={per_epoch + 3}", "optim.warmup_steps=1", "data.max_frames=300", "val_every=0",
                "checkpoint_every=100", "data.feature_cache_copies=0", "accelerator=cpu", "data.shuffle_buffer=4",
                f"data.root={shards}", "data.format=shards", f"data.noise={root / 'noise' / 'synth_babble.wav'}"]
    straight = train(load_config(None, [*settings, f"out={tmp_path / 'straight'}"]), model=tiny_model(seed=4),
                     progress=False)
    cfg = load_config(None, [*settings, f"out={tmp_path / 'resumed'}"])
    record = tmp_path / "record"
    record.mkdir()
    stop = per_epoch + 1  # inside the second batch of the second epoch
    with pytest.raises(Interrupted, match=f"step {stop} saved"):
        train(cfg, model=tiny_model(seed=4), progress=False, callbacks=[RecordRank(str(record), stop_at=stop)])
    resumed = train(cfg, model=tiny_model(seed=4), progress=False, callbacks=[RecordRank(str(record))])
    steps = torch.load(record / "rank0.pt")["steps"]
    assert [s["step"] for s in steps] == [stop, stop + 1] and [s["epoch"] for s in steps] == [1, 1]
    a, b = load_file(str(straight / WEIGHTS)), load_file(str(resumed / WEIGHTS))
    assert all(torch.equal(a[k], b[k]) for k in a)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_nodes_see_disjoint_utterances_that_together_are_the_epoch(shards, tiny_corpus, tiny_backbones,
                                                                               tmp_path):
    root = Path(tiny_corpus[0].out)
    record = tmp_path / "record"
    record.mkdir()
    per_epoch = len(ShardStream(shards / "train" / "index.json", 150, same, seed=42, buffer=4, num_replicas=2))
    args = tiny_train_args(shards, tiny_backbones, tmp_path / "run", per_epoch + 1, "data.format=shards", "num_nodes=2",
                           "devices=1", "strategy=ddp", "data.shuffle_buffer=4",
                           f"data.noise={root / 'noise' / 'synth_babble.wav'}")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={n}", "--master_addr=127.0.0.1", f"--master_port={port}",
                               str(Path(__file__).with_name("ddp_recorder.py")), str(record), "train", "--quiet", *args],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in (0, 1)]
    try:
        outputs = [node.communicate(timeout=400) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [node.returncode for node in nodes] == [0, 0], [o[1][-3000:] for o in outputs]
    ranks = [torch.load(record / f"rank{r}.pt") for r in (0, 1)]
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    steps = [r["steps"] for r in ranks]
    assert [s["step"] for s in steps[0]] == [s["step"] for s in steps[1]] == list(range(per_epoch + 1))
    assert [s["epoch"] for s in steps[0]] == [0] * per_epoch + [1]
    index = read_shard_index(shards / "train" / "index.json")
    first = [{i for s in rank if s["epoch"] == 0 for i in s["ids"]} for rank in steps]
    assert not first[0] & first[1] and len(first[0] | first[1]) == index.utterances  # disjoint, the whole epoch
    for r in ranks:  # every rank ends with the same weights (DDP)
        assert all(torch.equal(r["end"][k], ranks[0]["end"][k]) for k in r["end"])


def test_a_shard_cut_short_while_streaming_and_a_server_that_does_not_answer_are_named(shards, tmp_path):
    from avsr.data.manifests import DataError

    cut = tmp_path / "cut"
    shutil.copytree(shards, cut)
    tar = sorted((cut / "train").glob("*.tar"))[2]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])  # the size check cannot see it through a pipe
    stream = ShardStream(f"pipe:cat {cut}/train/index.json", 150, same, shuffle=False)
    with pytest.raises(DataError, match=f"shard pipe:cat {cut}/train/{tar.name} is cut short or damaged"):
        list(stream)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        with pytest.raises(DataError, match="no answer within 1 s"):
            ShardStream(f"http://127.0.0.1:{silent.getsockname()[1]}/train/index.json", 150, same, timeout=1)
        assert time.monotonic() - started < 30
