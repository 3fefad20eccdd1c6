"""The three manifest formats (label CSV, AV-HuBERT .tsv + .wrd, JSON lines) read into the same
items; bad media (missing, empty, undecodable) under both policies; over-long utterances;
format recognition; the data settings. Tiny media written here (a few frames each)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import pytest
import torch
from torch.utils.data import DataLoader

from avsr.data.batching import FrameBudgetBatchSampler, SkipUnreadable, TransformedDataset, collate, frame_lengths
from avsr.data.dataset import AVDataset, DataError, SkippedItem, validate_corpus
from avsr.data.manifests import FORMATS, ROW_FORMATS, detect_format, read_manifest, split_manifest
from avsr.data.media import write_audio, write_video
from avsr.errors import AvsrError

# id, clip, video frames, transcript (a comma inside one)
CLIPS = [("u1", "clips/a/u1", 10, "hello, world again"), ("u2", "clips/a/u2", 14, "bin blue at f two now"),
         ("u3", "clips/b/u3", 8, "set red by g nine soon")]


def write_media(ds: Path) -> None:
    for k, (_, clip, n, _) in enumerate(CLIPS):
        (ds / clip).parent.mkdir(parents=True, exist_ok=True)
        frames = np.full((n, 96, 96), 40 + 60 * k, np.uint8)
        frames[:, 10 + k * 5 : 30 + k * 5, 20:60] = 220  # something to tell the clips apart
        write_video(ds / f"{clip}.mp4", frames)
        t = np.arange(n * 640, dtype=np.float32) / 16000
        write_audio(ds / f"{clip}.wav", 0.3 * np.sin(2 * np.pi * (200 + 100 * k) * t))


def write_manifests(root: Path) -> dict[str, Path]:
    """The same three utterances in every format: csv (5 columns), fairseq, jsonl."""
    ds = root / "ds"
    (root / "labels").mkdir(parents=True)
    csv = root / "labels" / "c_train.csv"
    csv.write_text("".join(f"ds,{clip}.mp4,{n},{9 + k} 4 17,{text}\n" for k, (_, clip, n, text) in enumerate(CLIPS)))
    tsv = root / "train.tsv"  # relative root line: relative to the manifest's folder; one absolute path
    lines = [f"{uid}\t{clip}.mp4\t{clip}.wav\t{n}\t{n * 640}" for uid, clip, n, _ in CLIPS]
    lines[2] = f"u3\t{ds / CLIPS[2][1]}.mp4\t{CLIPS[2][1]}.wav\t8\t5120"
    tsv.write_text("ds\n" + "\n".join(lines) + "\n")
    (root / "train.wrd").write_text("".join(f"{text}\n" for *_, text in CLIPS))
    jsonl = root / "train.jsonl"  # lengths given as frames, as seconds, and not at all (read from the header)
    objs = [{"id": "u1", "video": "ds/clips/a/u1.mp4", "audio": "ds/clips/a/u1.wav", "text": CLIPS[0][3], "frames": 10},
            {"id": "u2", "video": "ds/clips/a/u2.mp4", "audio": "ds/clips/a/u2.wav", "text": CLIPS[1][3], "seconds": 0.56},
            {"video": "ds/clips/b/u3.mp4", "audio": "ds/clips/b/u3.wav", "text": CLIPS[2][3], "speaker": "s3"}]
    jsonl.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return {"csv": csv, "fairseq": tsv, "jsonl": jsonl}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("readers") / "root"
    write_media(root / "ds")
    return root, write_manifests(root)


@pytest.fixture
def copy(made, tmp_path) -> tuple[Path, dict[str, Path]]:
    """A copy of the media and manifests that a test may damage."""
    root = tmp_path / "root"
    shutil.copytree(made[0], root)
    return root, {fmt: root / path.relative_to(made[0]) for fmt, path in made[1].items()}


def test_the_three_formats_give_the_same_items(made):
    root, paths = made
    sets = {fmt: AVDataset(root, path) for fmt, path in paths.items()}  # format from the file name
    for fmt, ds in sets.items():
        assert [r.n_frames for r in ds.rows] == [n for _, _, n, _ in CLIPS], fmt
        assert frame_lengths(ds) == [10, 14, 8]
    assert [r.id for r in sets["csv"].rows] == [f"{clip}.mp4" for _, clip, _, _ in CLIPS]
    assert [r.id for r in sets["fairseq"].rows] == ["u1", "u2", "u3"]
    assert [r.id for r in sets["jsonl"].rows] == ["u1", "u2", "ds/clips/b/u3.mp4"]  # no id: the video as written
    for i, (_, _, n, text) in enumerate(CLIPS):
        items = [ds[i] for ds in sets.values()]
        assert items[0]["video"].shape == (n, 96, 96) and items[0]["text"] == text
        for other in items[1:]:
            assert torch.equal(other["video"], items[0]["video"]) and torch.equal(other["audio"], items[0]["audio"])
            assert other["text"] == text


def test_csv_with_four_and_five_columns_and_commas_in_the_text(tmp_path):
    labels = tmp_path / "l.csv"
    labels.write_text("lrs3,a/1.mp4,51,12 7 900,well, hello there, you\n"  # 5 columns
                      "synth,b/2.mp4,40,bin blue, at f\n"  # 4 columns, a comma in the text
                      "synth,b/3.mp4,30,12 apples, no ids\n")  # 4 columns: "12 apples" is no list of ids
    rows = read_manifest(labels, "csv", root=tmp_path)
    assert [r.text for r in rows] == ["well, hello there, you", "bin blue, at f", "12 apples, no ids"]
    assert rows[0].video == tmp_path / "lrs3" / "a/1.mp4" and rows[0].audio == tmp_path / "lrs3" / "a/1.wav"
    assert [r.source for r in rows] == [f"{labels}:{n}" for n in (1, 2, 3)]
    nested = tmp_path / "root" / "labels" / "l.csv"  # without a root: the folder above labels/
    nested.parent.mkdir(parents=True)
    shutil.copy(labels, nested)
    assert [r.video for r in read_manifest(nested)] == [tmp_path / "root" / r.video.relative_to(tmp_path) for r in rows]


def test_fairseq_paths_absent_modalities_and_lengths(tmp_path, capsys):
    (tmp_path / "m").mkdir()
    tsv = tmp_path / "m" / "test.tsv"
    tsv.write_text("/data/lrs3\n"
                   "a\tvid/a.mp4\taud/a.wav\t50\t32000\n"
                   "b\tvid/b.mp4\t\t40\t\n"  # VSR only
                   "c\tNone\t/abs/c.wav\t0\t16001\n")  # ASR only: length from the samples
    (tmp_path / "m" / "test.wrd").write_text("one\ntwo\nthree\n")
    (tmp_path / "m" / "vsr.wrd").write_text("one\n")
    (tmp_path / "m" / "vsr.tsv").write_text(f"{tmp_path}\nb\tm/test.tsv\t\t40\t\n")  # a file that exists
    rows = read_manifest(tsv)
    assert [(r.id, r.video, r.audio, r.n_frames, r.text) for r in rows] == [
        ("a", Path("/data/lrs3/vid/a.mp4"), Path("/data/lrs3/aud/a.wav"), 50, "one"),
        ("b", Path("/data/lrs3/vid/b.mp4"), None, 40, "two"),
        ("c", None, Path("/abs/c.wav"), 26, "three")]
    with pytest.raises(DataError, match=r"vsr.tsv:2: names no audio file \(avsr reads audio-visual pairs\)"):
        AVDataset(tmp_path, tsv.with_name("vsr.tsv"))
    with pytest.raises(DataError, match="no utterance left to read"):
        AVDataset(tmp_path, tsv, on_bad_file="skip")
    assert "/data/lrs3/vid/a.mp4 (missing), /data/lrs3/vid/b.mp4 (missing), c (no video)" in capsys.readouterr().err


def test_wrd_count_mismatch_names_both_files(copy):
    root, paths = copy
    (root / "train.wrd").write_text("only one\nand two\n")
    with pytest.raises(DataError) as err:
        read_manifest(paths["fairseq"])
    assert "train.tsv lists 3 utterances" in str(err.value) and f"{root / 'train.wrd'} has 2" in str(err.value)


@pytest.mark.parametrize("content,needle", [
    ('{"video": "a.mp4", "audio": "a.wav"}\n', "x.jsonl:1: text must be a string"),
    ('{"text": "hi"}\n', "x.jsonl:1: names neither a video nor an audio file"),
    ('{"video": "a.mp4", "audio": "a.wav", "text": "hi"}\nnot json\n', "x.jsonl:2: not valid JSON"),
    ('{"video": "a.mp4", "audio": "a.wav", "text": "hi", "frames": 0}\n', "x.jsonl:1: frames must be a positive"),
    ('{"video": "a.mp4", "audio": "a.wav", "text": "  "}\n', "x.jsonl:1: empty transcript"),
])
def test_jsonl_errors_name_file_and_line(tmp_path, content, needle):
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(DataError, match=needle):
        read_manifest(tmp_path / "x.jsonl")


@pytest.mark.parametrize("fmt", ["csv", "fairseq", "jsonl"])
@pytest.mark.parametrize("damage", ["missing", "empty"])
def test_missing_or_empty_media_stop_or_skip(copy, capsys, fmt, damage):
    root, paths = copy
    wav = root / "ds" / "clips" / "a" / "u2.wav"
    wav.unlink() if damage == "missing" else wav.write_bytes(b"")
    with pytest.raises(DataError, match=f"{paths[fmt].name}:\\d+: audio file (not found|is empty): {wav}"):
        AVDataset(root, paths[fmt], on_bad_file="stop")
    ds = AVDataset(root, paths[fmt], on_bad_file="skip")
    assert [r.text for r in ds.rows] == [CLIPS[0][3], CLIPS[2][3]]
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line for the whole manifest
    assert "warning" in lines[0] and "skipped 1 of 3 utterances" in lines[0] and f"{wav} ({damage})" in lines[0]


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_undecodable_video_stop_or_skip(copy, capsys, corruption):
    root, paths = copy
    mp4 = root / "ds" / "clips" / "a" / "u2.mp4"
    data = mp4.read_bytes()
    mp4.write_bytes(b"\x00\x01 not an mp4 at all" * 50 if corruption == "garbage" else data[: len(data) // 2])
    stop = AVDataset(root, paths["csv"], on_bad_file="stop")  # present and non-empty: found when decoded
    with pytest.raises(DataError, match=f"c_train.csv:2: cannot decode video {mp4}"):
        stop[1]
    skip = AVDataset(root, paths["fairseq"], on_bad_file="skip")
    capsys.readouterr()
    loader = DataLoader(skip, batch_sampler=FrameBudgetBatchSampler(frame_lengths(skip), 100, shuffle=False),
                        collate_fn=SkipUnreadable(collate, skip))
    batches = list(loader)
    assert [b["ids"] for b in batches] == [["u1", "u3"]] and batches[0]["video"].shape[:2] == (2, 10)
    err = capsys.readouterr().err
    assert f"skipped utterance u2: cannot decode video {mp4}" in err and "(1 skipped so far in train.tsv)" in err
    # the jsonl row without a length reads its header at load: a damaged u3 is caught there
    shutil.copy(mp4, root / "ds" / "clips" / "b" / "u3.mp4")
    assert [r.id for r in AVDataset(root, paths["jsonl"], on_bad_file="skip").rows] == ["u1", "u2"]
    assert "skipped 1 of 3 utterances" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_infinite_audio_stops_or_is_skipped_naming_the_file(copy, capsys, bad):
    """A float wav holding NaN or infinity is refused where audio is read (train and eval items
    alike), as `data.on_bad_file` says: stop names it, skip drops it with its name."""
    root, paths = copy
    wav = root / "ds" / "clips" / "a" / "u2.wav"
    samples = sf.read(wav, dtype="float32")[0]
    samples[len(samples) // 3] = bad
    sf.write(wav, samples, 16000, subtype="FLOAT")
    stop = AVDataset(root, paths["csv"], on_bad_file="stop")
    with pytest.raises(DataError, match=f"c_train.csv:2: {wav}: the audio holds NaN or infinite samples"):
        stop[1]
    skip = AVDataset(root, paths["csv"], on_bad_file="skip")
    capsys.readouterr()
    assert isinstance(skip[1], SkippedItem) and not isinstance(skip[0], SkippedItem)
    assert f"{wav}: the audio holds NaN or infinite samples" in capsys.readouterr().err


def test_a_batch_of_only_unreadable_items_is_refilled(copy, capsys):
    root, paths = copy
    (root / "ds" / "clips" / "a" / "u1.mp4").write_bytes(b"garbage" * 100)
    ds = AVDataset(root, paths["fairseq"], on_bad_file="skip")
    assert isinstance(ds[0], SkippedItem) and ds[0].id == "u1"
    data = TransformedDataset(ds, lambda item, rng: item)
    sampler = FrameBudgetBatchSampler(frame_lengths(ds), 1, shuffle=False)  # one utterance per batch
    batches = list(DataLoader(data, batch_sampler=sampler, collate_fn=SkipUnreadable(collate, data)))
    assert [b["ids"] for b in batches] == [["u2"], ["u2"], ["u3"]]  # u1's batch: the first readable item
    assert "all 1 items of a batch were unreadable (u1); training on u2 in their place" in capsys.readouterr().err
    with pytest.raises(DataError, match="every item of this batch was unreadable"):
        collate([ds[0]])


def test_long_utterances_are_dropped_with_a_count(made, capsys):
    root, paths = made
    for path in paths.values():
        ds = AVDataset(root, path, max_seconds=0.5)  # 12.5 frames: u2 (14) goes
        assert [r.n_frames for r in ds.rows] == [10, 8]
        err = capsys.readouterr().err
        assert "dropped 1 of 3 utterances longer than 0.5 s (data.max_utterance_seconds)" in err and "0.6 s" in err
    with pytest.raises(DataError, match="no utterance left to read"):
        AVDataset(root, paths["csv"], max_seconds=0.1)


def test_format_recognition(made, tmp_path):
    root, paths = made
    assert [detect_format(p) for p in paths.values()] == ["csv", "fairseq", "jsonl"]
    assert detect_format(root / "train" / "index.json") == "shards" and ROW_FORMATS == ("csv", "fairseq", "jsonl")
    assert list(FORMATS) == ["csv", "fairseq", "jsonl", "shards"]  # the one table: config rule and CLI choices
    with pytest.raises(DataError, match="streamed by training"):
        read_manifest(root / "train" / "index.json")
    with pytest.raises(DataError, match="cannot tell the manifest format"):
        read_manifest(tmp_path / "train.txt")
    assert split_manifest(root, "c", "train", "csv") == paths["csv"]
    assert split_manifest(root, "c", "train", "fairseq") == paths["fairseq"]
    assert split_manifest(root, "c", "train", "jsonl") == paths["jsonl"]
    with pytest.raises(AvsrError, match="several formats"):
        split_manifest(root, "c", "train", "auto")
    assert split_manifest(root, "c", "test", "auto") == root / "labels" / "c_test.csv"  # none: the CSV is named missing
    assert split_manifest(root, "c", "train", "shards") == root / "train" / "index.json"
    assert split_manifest("http://127.0.0.1:8/s", "c", "train") == "http://127.0.0.1:8/s/train/index.json"
    assert split_manifest("pipe:cat /s/{}", "c", "val") == "pipe:cat /s/val/index.json"
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(paths["jsonl"], alone / "val.jsonl")
    assert split_manifest(alone, "c", "val") == alone / "val.jsonl"
    # an explicit format reads a file of another name
    shutil.copy(paths["jsonl"], tmp_path / "list.txt")
    assert [r.id for r in read_manifest(tmp_path / "list.txt", "jsonl")][:2] == ["u1", "u2"]


def test_validate_corpus_reads_every_format(made):
    root, paths = made
    for path in paths.values():
        report = validate_corpus(root, path)
        assert report["ok"] == report["rows"] == 3 and report["video_frames"] == 32, report


def test_data_settings_are_checked():
    from avsr.training.config import ConfigError, load_config

    cfg = load_config(overrides=[])
    assert (cfg.data.format, cfg.data.on_bad_file, cfg.data.max_utterance_seconds) == ("auto", "skip", 16.0)
    assert load_config(overrides=["data.max_utterance_seconds=null"]).data.max_utterance_seconds is None
    for override, needle in (
            ("data.format=xml", "config: data.format must be one of auto, csv, fairseq, jsonl, shards, got 'xml'"),
            ("data.on_bad_file=ignore", "config: data.on_bad_file must be one of skip, stop, got 'ignore'"),
            ("data.max_utterance_seconds=0", "config: data.max_utterance_seconds must be a positive number"),
            ("data.max_utterance_seconds=-3", "must be a positive number of seconds or null (no limit), got -3"),
            ("data.max_utterance_seconds=long", "data.max_utterance_seconds must be a positive number")):
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            load_config(overrides=[override])


def test_training_loaders_read_a_fairseq_split(copy, capsys):
    from avsr.training.config import load_config
    from avsr.training.train import make_loaders

    root, _ = copy
    (root / "labels" / "c_train.csv").unlink()
    (root / "train.jsonl").unlink()
    (root / "ds" / "clips" / "b" / "u3.wav").unlink()  # skipped at load (the default policy)
    cfg = load_config(overrides=[f"data.root={root}", "data.corpus=c", "data.val_split=train", "data.max_frames=30",
                                 "data.max_utterance_seconds=0.5"])
    assert cfg.data.labels("train") == root / "train.tsv"
    train, val = make_loaders(cfg, model=None, progress=False)  # the model serves the feature cache only
    err = capsys.readouterr().err
    assert "skipped 1 of 3" in err and "u3.wav (missing)" in err and "dropped 1 of 3" in err
    assert [b["ids"] for b in train] == [["u1"]] and [b["ids"] for b in val] == [["u1"]]
    assert next(iter(train))["video"].shape == (1, 10, 88, 88)


def test_feature_cache_keeps_unreadable_items_out(copy, tmp_path, capsys):
    from avsr.data.transforms import EvalTransform
    from avsr.training.feature_cache import FeatureCache, collate_features

    class Mean(torch.nn.Module):  # a stand-in encoder: (B, T, 88, 88) -> (B, T, 2)
        def forward(self, x, lengths):
            feats = torch.stack([x.mean((2, 3)), x.amax((2, 3))], -1)
            return feats, torch.arange(x.shape[1])[None] >= lengths[:, None]

    root, paths = copy
    (root / "ds" / "clips" / "a" / "u2.mp4").write_bytes(b"garbage" * 100)
    data = TransformedDataset(AVDataset(root, paths["csv"], on_bad_file="skip"), EvalTransform())
    store = tmp_path / "features.pt"
    for _ in range(2):  # computed, then read back from the store
        cache = FeatureCache(torch.nn.ModuleDict({"video": Mean()}), data, copies=1, progress=False, store=store)
        assert isinstance(cache[1], SkippedItem) and cache[0]["video_features"].shape == (10, 2)
        batch = collate_features([cache[0], cache[1], cache[2]])
        assert batch["ids"] == ["clips/a/u1.mp4", "clips/b/u3.mp4"] and batch["video_features"].shape == (2, 10, 2)
    assert "encoder features from" in capsys.readouterr().out
