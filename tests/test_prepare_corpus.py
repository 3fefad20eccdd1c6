"""`avsr prepare-corpus` on a user's tree in LRS3 layout, made from 20 drawn talking faces (avsr
synth-faces) plus a broken file: the local engine with 1 and 2 workers, Ctrl-C and a rerun, a Ray
cluster of a head and a second node on loopback addresses (one of its workers killed mid-run), all
giving the same bytes; then the README's commands: prepare-corpus -> shard -> train -> eval.

Ray refuses 127.0.0.1 as a cluster address (it replaces "localhost" by the machine's outward
address), so the head listens on 127.0.0.2 and the second node on 127.0.0.3: both loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import avsr
from avsr.synth.corpus import SynthConfig, synthesize_corpus
from avsr.synth.face import synthesize_faces
from conftest import run_cli, tiny_train_args

pytest.importorskip("mediapipe")

SRC = str(Path(avsr.__file__).resolve().parents[1])  # this avsr, for the subprocesses and Ray's workers
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
RAY = Path(sys.executable).with_name("ray")


def make_lrs3_tree(faces: Path, tree: Path) -> None:
    """LRS3's layout from drawn faces: <split>/<speaker>/<id>.mp4 + <id>.txt with a `Text:` line."""
    for split, name in (("train", "trainval"), ("test", "test")):
        for mp4 in sorted((faces / split).glob("*.mp4")):
            text = json.loads(mp4.with_suffix(".json").read_text())["text"]
            speaker, index = mp4.stem.split("-")
            (tree / name / speaker).mkdir(parents=True, exist_ok=True)
            shutil.copy(mp4, tree / name / speaker / f"{index}.mp4")
            (tree / name / speaker / f"{index}.txt").write_text(f"Text:  {text.upper()}\nConf:  4\n\nWORD START END\n")
    (tree / "trainval" / "s000" / "99999.mp4").write_bytes(b"not a video at all")  # the broken file
    (tree / "trainval" / "s000" / "99999.txt").write_text("Text:  BROKEN\n")


@pytest.fixture(scope="module")
def lrs3_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faces")
    cfg = SynthConfig(out=str(root), seed=5, utterances={"train": 16, "val": 0, "test": 4},
                      speakers={"train": 4, "val": 0, "test": 2}, noise_speakers=1, noise_seconds=1.0, workers=2)
    synthesize_corpus(cfg, progress=False)
    for split in ("train", "test"):
        synthesize_faces(root, "synth", split)
    tree = tmp_path_factory.mktemp("lrs3") / "lrs3"
    make_lrs3_tree(root / "synth" / "faces", tree)
    return tree


def prepare(tree: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare-corpus", str(tree), "--layout", "lrs3", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def baseline(lrs3_tree, tmp_path_factory) -> Path:
    """The README's first command: the local engine, one process."""
    out = tmp_path_factory.mktemp("dst") / "lrs3-prepared"
    code, stdout, err = run_cli(*prepare(lrs3_tree, out))
    assert code == 0, err
    assert "20/21 files ready" in stdout and "1 failed" in stdout, stdout
    return out


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by its relative path (hidden ones too: the run marker)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_report_lists_the_broken_file_and_every_format_is_written(baseline, lrs3_tree):
    from avsr.data.manifests import read_manifest

    report = json.loads((baseline / "prepare-report.json").read_text())
    assert report["files"] == 21 and report["done"] == 20
    assert [f["file"] for f in report["failed"]] == [str(lrs3_tree / "trainval" / "s000" / "99999.mp4")]
    assert "cannot read" in report["failed"][0]["reason"]
    assert report["face_detection_rate"] >= 0.95 and report["splits"]["trainval"]["utterances"] == 16
    assert report["frames"] == sum(s["frames"] for s in report["splits"].values())
    # the three formats name the same utterances, media and transcripts
    views = [read_manifest(baseline / "labels" / "lrs3_test.csv"), read_manifest(baseline / "test.tsv"),
             read_manifest(baseline / "test.jsonl")]
    assert [[(r.id, r.video.resolve(), r.audio.resolve(), r.n_frames, r.text) for r in v] for v in views[1:]] == \
        [[(r.id, r.video.resolve(), r.audio.resolve(), r.n_frames, r.text) for r in views[0]]] * 2
    first = views[0][0]
    txt = (lrs3_tree / first.id).with_suffix(".txt").read_text()
    assert first.text == txt.splitlines()[0].split(":", 1)[1].strip().lower()
    assert first.video.is_file() and first.audio.is_file() and first.n_frames > 20


def wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def markers(out: Path) -> list[Path]:
    return list((out / "lrs3").rglob("*.json")) if (out / "lrs3").is_dir() else []


def test_ctrl_c_then_a_rerun_skips_finished_files_and_gives_the_same_bytes(lrs3_tree, baseline, tmp_path):
    out = tmp_path / "dst"
    command = [sys.executable, "-m", "avsr", *prepare(lrs3_tree, out, "--workers", "2", "--group-size", "2")]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(markers(out)) >= 4 or proc.poll() is not None, 180, "four finished files")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stdout + stderr
    # one line from avsr; the pool's resource tracker may add a warning about the terminated workers' semaphores
    assert "avsr prepare-corpus: interrupted" in stderr.splitlines() and "Traceback" not in stderr, stderr
    finished = len(markers(out))
    assert 4 <= finished < 20 and not (out / "prepare-report.json").exists()
    rerun = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"({20 - finished} processed now, {finished} done before)" in rerun.stdout, rerun.stdout
    assert tree_bytes(out) == tree_bytes(baseline)  # 2 workers, interrupted: the bytes of 1 worker straight


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RayCluster:
    """`ray start` of a head (127.0.0.2) and a second node (127.0.0.3), one CPU and a 100 MB object
    store each, every process in a process group of its own, so that stopping them stops nothing else."""

    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Unix socket paths must stay short
        self.port = free_port("127.0.0.2")
        self.address = f"127.0.0.2:{self.port}"
        self.procs: list[subprocess.Popen] = []
        common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats", "--block"]
        self._start("head", "--head", "--node-ip-address=127.0.0.2", f"--port={self.port}", "--include-dashboard=false",
                    f"--temp-dir={self.temp}", *common)
        wait_for(self._answers, 120, "the Ray head")
        self._start("node", f"--address={self.address}", "--node-ip-address=127.0.0.3", *common)
        wait_for(lambda: self.nodes() == 2, 120, "the second Ray node")

    def _start(self, name: str, *args: str) -> None:
        log = open(self.temp / f"{name}.log", "w")
        self.procs.append(subprocess.Popen([str(RAY), "start", *args], env=ENV, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))
        log.close()

    def _answers(self) -> bool:
        try:
            socket.create_connection(("127.0.0.2", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def nodes(self) -> int:
        result = subprocess.run([str(RAY), "status", f"--address={self.address}"], env=ENV, capture_output=True,
                                text=True, timeout=60)
        active = result.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return active.count("node_")

    def processes(self) -> list[tuple[int, str]]:
        """(pid, title) of this cluster's processes: the `ray start` processes and their descendants
        (raylet starts its workers in sessions of their own)."""
        parents, titles = {}, {}
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit():
                    stat = (entry / "stat").read_text()
                    parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
                    titles[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
        mine, grew = {p.pid for p in self.procs}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in mine} - mine
            grew = bool(more)
            mine |= more
        mine |= {pid for pid in parents if _group(pid) in {p.pid for p in self.procs}}
        return [(pid, titles.get(pid, "")) for pid in sorted(mine) if pid in titles]

    def stop(self) -> None:
        left = [pid for pid, _ in self.processes()]
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pid in left:  # what is left of them (raylet, workers), by id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait()
        shutil.rmtree(self.temp, ignore_errors=True)


def _group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_a_two_node_ray_cluster_gives_the_local_engines_bytes(lrs3_tree, baseline, ray_cluster, tmp_path):
    out = tmp_path / "dst"
    result = subprocess.run([sys.executable, "-m", "avsr", *prepare(lrs3_tree, out, "--engine", "ray",
                                                                     "--ray-address", ray_cluster.address,
                                                                     "--group-size", "2")],
                            env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 node(s), 2 CPU(s)" in result.stdout, result.stdout
    per_node = result.stdout.split("groups per node: ", 1)[1].splitlines()[0]
    assert "127.0.0.2" in per_node and "127.0.0.3" in per_node, per_node  # both nodes prepared files
    assert "1 failed" in result.stdout and "99999.mp4" in result.stdout
    assert tree_bytes(out) == tree_bytes(baseline)


def test_a_ray_worker_killed_mid_run_and_the_corpus_still_completes_with_the_same_bytes(
        lrs3_tree, baseline, ray_cluster, tmp_path):
    out = tmp_path / "dst"
    command = [sys.executable, "-m", "avsr", *prepare(lrs3_tree, out, "--engine", "ray", "--ray-address",
                                                      ray_cluster.address, "--group-size", "4")]
    proc = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: markers(out), 180, "a first finished file")
        busy = wait_for(lambda: [pid for pid, title in ray_cluster.processes() if title.startswith("ray::_on_node")],
                        60, "a Ray worker running a group")
        os.kill(busy[0], signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "20/21 files ready" in stdout and "1 failed" in stdout, stdout  # the group was run again
    written = tree_bytes(out)
    leftovers = [name for name in written if name not in tree_bytes(baseline)]
    # a file being written when its worker died may leave its hidden temporary name, never a visible file
    assert all(Path(name).name.startswith(".") and ".tmp" in name for name in leftovers), leftovers
    assert {k: v for k, v in written.items() if k not in leftovers} == tree_bytes(baseline)


def test_the_readme_commands_prepare_shard_train_and_evaluate(baseline, tiny_backbones, tmp_path):
    """README: prepare-corpus (the baseline) -> shard each split -> train from the shards -> eval."""
    shards = tmp_path / "shards"
    for split in ("trainval", "test"):
        code, stdout, err = run_cli("shard", baseline / "labels" / f"lrs3_{split}.csv", "--out", shards / split,
                                    "--shard-size", "300KB")
        assert code == 0, err
        assert "utterances" in stdout and (shards / split / "index.json").is_file()
    run = tmp_path / "run"
    args = tiny_train_args(shards, tiny_backbones, run, 3, "data.format=shards", "data.train_split=trainval",
                           "data.val_split=test")
    code, stdout, err = run_cli("train", "--quiet", *args)
    assert code == 0, err
    assert (run / "done.json").is_file()
    code, stdout, err = run_cli("eval", run / "checkpoints" / "last", "--root", baseline, "--corpus", "lrs3",
                                "--format", "csv", "--split", "test", "--snrs", "clean", "--beams", "1", "--limit", "2",
                                "--quiet", "--out", tmp_path / "eval")
    assert code == 0, err
    assert (tmp_path / "eval" / "report.md").is_file()
    results = (tmp_path / "eval" / "results.json").read_text()
    assert "test/s004/00000.mp4" in results  # the prepared test utterances were decoded
    # evaluating from the checkpoint's own data (shards) is refused with what to do
    code, _, err = run_cli("eval", run / "checkpoints" / "last", "--snrs", "clean", "--quiet",
                           "--out", tmp_path / "eval2")
    assert code == 2 and "--root and --format" in err and "\n" not in err.strip()


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory) -> Path:
    from avsr.backbones.whisper_ct2 import convert_whisper_base

    return convert_whisper_base(tmp_path_factory.mktemp("whisper") / "whisper-base")


def test_voxceleb2_layout_without_transcripts_is_transcribed_by_a_local_whisper(lrs3_tree, whisper_base, tmp_path):
    """VoxCeleb2 has no transcripts: --whisper makes them from each utterance's preprocessed audio.
    The clips: a drawn face (its frames held over the speech) saying ordinary English sentences,
    which Whisper base gets right from espeak-ng (tests/test_whisper_convert.py)."""
    import numpy as np

    from avsr.preprocess.decode import video_frames
    from avsr.synth.corpus import speak
    from avsr.synth.face import write_face_video
    from avsr.text import word_errors
    from test_whisper_convert import SENTENCES

    face = [rgb for _, rgb in video_frames(sorted((lrs3_tree / "test").glob("*/*.mp4"))[0])]
    vox = tmp_path / "vox2"
    spoken = {}
    for k, (sentence, voice, seed) in enumerate(SENTENCES):
        audio, _ = speak(sentence, voice, np.random.default_rng(seed))
        frames = [face[i % len(face)] for i in range(audio.size // 640)]
        clip = vox / "test" / "mp4" / f"id0000{k}" / "yt-video" / "00001.mp4"
        clip.parent.mkdir(parents=True)
        write_face_video(clip, np.stack(frames), audio)
        spoken[f"test/id0000{k}/yt-video/00001.mp4"] = sentence
    out = tmp_path / "dst"
    code, stdout, err = run_cli("prepare-corpus", vox, "--layout", "vox2", "--out", out, "--whisper", whisper_base,
                                "--quiet")
    assert code == 0, err
    report = json.loads((out / "prepare-report.json").read_text())
    assert report["done"] == 3 and report["transcribed_by_whisper"] == 3 and report["corpus"] == "vox2"
    rows = {json.loads(line)["id"]: json.loads(line)["text"] for line in (out / "test.jsonl").read_text().splitlines()}
    assert rows.keys() == spoken.keys()
    errors = word_errors(list(spoken.values()), [rows[k] for k in spoken])
    print(f"Whisper base transcripts: WER {errors.wer:.2f} ({rows})")
    assert errors.wer <= 0.10  # measured 0 by the converter's test; a broken pass gives ~1.0
