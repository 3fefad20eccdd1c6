"""Data throughput: reading a split from files vs from tar shards, and preprocessing per engine.

    python benchmarks/data_throughput.py [--utterances 400] [--faces 12] [--no-ray]

1. Reading: a synthetic corpus of --utterances training utterances, also written as shards
   (`avsr shard`, 2 MB each); one epoch of frame-budget batches (1000 frames, decoded and collated,
   no augmentation) through a DataLoader with 1 and 2 workers, from the files (AVDataset + the
   batch sampler) and from the shards (ShardStream), after one untimed epoch of each (warm page
   cache). Utterances per second.
2. Preprocessing: --faces drawn talking faces (avsr synth-faces) in LRS3 layout through `avsr
   prepare-corpus` with the local engine (1 and 2 workers) and the Ray engine (a one-node cluster
   of 2 CPUs started here on 127.0.0.2 and stopped after; its time includes joining the cluster).
   Video frames per second, and per worker.

Writes JSON (default benchmarks/results/data_throughput.json); the last line is
`shards/files read speed-up: <x>` (2 loader workers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from avsr.data.batching import FrameBudgetBatchSampler, collate, frame_lengths
from avsr.data.dataset import AVDataset
from avsr.data.shards import ShardStream, write_shards
from avsr.io import write_text_atomic
from avsr.preprocess.corpus import prepare_corpus
from avsr.synth.corpus import SynthConfig, synthesize_corpus
from avsr.synth.face import synthesize_faces

MAX_FRAMES = 1000


def same(item, rng):
    return item


def utterances_per_second(make_loader) -> float:
    for _ in make_loader():  # warm-up epoch: page cache, worker start-up paths
        pass
    start, count = time.perf_counter(), 0
    for batch in make_loader():
        count += len(batch["ids"])
    return count / (time.perf_counter() - start)


def reading(root: Path, shards: Path, workers: int) -> dict:
    dataset = AVDataset(root, root / "labels" / "synth_train.csv")
    sampler = FrameBudgetBatchSampler(frame_lengths(dataset), MAX_FRAMES, shuffle=False)
    files = utterances_per_second(lambda: DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                                     num_workers=workers))
    stream = ShardStream(shards / "train" / "index.json", MAX_FRAMES, same, shuffle=False, workers=workers)
    streamed = utterances_per_second(lambda: DataLoader(stream, batch_size=None, num_workers=workers))
    return {"workers": workers, "files_utt_per_s": round(files, 1), "shards_utt_per_s": round(streamed, 1),
            "speed_up": round(streamed / files, 3)}


def lrs3_tree(faces: Path, tree: Path) -> None:
    for mp4 in sorted(faces.glob("*.mp4")):
        text = json.loads(mp4.with_suffix(".json").read_text())["text"]
        speaker, index = mp4.stem.split("-")
        (tree / "trainval" / speaker).mkdir(parents=True, exist_ok=True)
        shutil.copy(mp4, tree / "trainval" / speaker / f"{index}.mp4")
        (tree / "trainval" / speaker / f"{index}.txt").write_text(f"Text:  {text.upper()}\n")


def one_node_ray(temp: Path) -> tuple[subprocess.Popen, str]:
    """A Ray head of 2 CPUs on 127.0.0.2 (Ray refuses 127.0.0.1 for a cluster), in its own process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray), "start", "--head", "--node-ip-address=127.0.0.2", f"--port={port}",
                             "--num-cpus=2", "--object-store-memory=100000000", "--include-dashboard=false",
                             "--disable-usage-stats", f"--temp-dir={temp}", "--block"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(240):
        try:
            socket.create_connection(("127.0.0.2", port), timeout=1).close()
            time.sleep(3)  # the raylet registers after the head's port opens
            return proc, f"127.0.0.2:{port}"
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the Ray head did not start within 2 minutes")


def stop(proc: subprocess.Popen) -> None:
    """The head's process group, then whatever of its descendants (raylet's workers) is left."""
    children = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    workers = subprocess.run(["pgrep", "-P", ",".join(children or [str(proc.pid)])], capture_output=True,
                             text=True).stdout.split()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for pid in {*children, *workers}:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def preprocessing(tree: Path, out: Path, ray_address: str | None) -> list[dict]:
    runs = []
    for engine, workers in (("local", 1), ("local", 2), *((("ray", 2),) if ray_address else ())):
        report = prepare_corpus(tree, "lrs3", out / f"{engine}{workers}", engine=engine, workers=workers,
                                ray_address=ray_address, group_size=2, progress=False)
        run = report["run"]
        rate = run["frames_processed"] / run["seconds"]
        runs.append({"engine": engine, "workers": workers, "frames": run["frames_processed"],
                     "seconds": run["seconds"], "frames_per_s": round(rate, 1),
                     "frames_per_s_per_worker": round(rate / workers, 1),
                     "ms_per_frame_per_worker": round(1000 * workers / rate, 2)})
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=400)
    parser.add_argument("--faces", type=int, default=12)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    parser.add_argument("--json", default="benchmarks/results/data_throughput.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="avsr-bench", dir="/tmp") as tmp:
        tmp = Path(tmp)
        cfg = SynthConfig(out=str(tmp / "c"), seed=0, utterances={"train": args.utterances, "val": 0, "test": args.faces},
                          speakers={"train": 8, "val": 0, "test": 4}, workers=2, noise_seconds=2.0)
        synthesize_corpus(cfg, progress=False)
        index = write_shards(tmp / "c" / "labels" / "synth_train.csv", tmp / "shards" / "train", 2_000_000)
        reads = [reading(tmp / "c", tmp / "shards", w) for w in (1, 2)]
        synthesize_faces(tmp / "c", "synth", "test")
        lrs3_tree(tmp / "c" / "synth" / "faces" / "test", tmp / "lrs3")
        head = None if args.no_ray else one_node_ray(tmp / "ray")
        try:
            prep = preprocessing(tmp / "lrs3", tmp / "prepared", head[1] if head else None)
        finally:
            if head:
                stop(head[0])
    result = {"utterances": args.utterances, "shards": len(index.shards), "max_frames": MAX_FRAMES, "reading": reads,
              "faces": args.faces, "preprocessing": prep,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "note": "shared machine: other jobs ran beside this one"}}
    write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    for r in reads:
        print(f"reading, {r['workers']} loader worker(s): files {r['files_utt_per_s']} utt/s, "
              f"shards {r['shards_utt_per_s']} utt/s")
    for p in prep:
        print(f"preprocessing, {p['engine']} x {p['workers']}: {p['frames_per_s']} frames/s, "
              f"{p['frames_per_s_per_worker']} per worker ({p['ms_per_frame_per_worker']} ms/frame)")
    print(f"shards/files read speed-up: {reads[-1]['speed_up']:.2f}")


if __name__ == "__main__":
    main()
