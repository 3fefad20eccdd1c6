"""The drawn talking face (avsr.synth.face) through real preprocessing: mediapipe finds the face,
and the crop lands on the rendered mouth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avsr.cli import main
from avsr.data.media import read_audio
from avsr.synth.corpus import SynthConfig, _foreign, synthesize_corpus
from avsr.synth.face import HEIGHT, WIDTH, synthesize_faces

pytest.importorskip("mediapipe")

from avsr.preprocess import preprocess_file  # noqa: E402
from avsr.preprocess.roi import apply  # noqa: E402


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Three test items of a tiny corpus (three speakers) and their talking faces."""
    root = tmp_path_factory.mktemp("faces")
    cfg = SynthConfig(out=str(root), seed=3, utterances={"train": 0, "val": 0, "test": 3},
                      speakers={"train": 0, "val": 0, "test": 3}, noise_speakers=1, noise_seconds=1.0, workers=1)
    synthesize_corpus(cfg, progress=False)
    return root, synthesize_faces(root, "synth", "test")


def test_faces_are_found_and_the_crop_is_on_the_mouth(faces):
    root, videos = faces
    offsets = []
    for mp4 in videos:
        meta = json.loads(mp4.with_suffix(".json").read_text())
        result = preprocess_file(mp4)
        assert result.total_frames == meta["n_frames"] and result.video.shape[1:] == (96, 96)
        assert result.face_ratio >= 0.95, f"{mp4.name}: face in {result.face_ratio:.0%} of frames"
        rendered = np.asarray(meta["mouth_centres"], np.float32)  # (T, 2) frame pixels
        in_roi = apply(result.transforms, rendered)
        offsets.append(np.linalg.norm(in_roi - 48.0, axis=1))  # ROI pixels from the crop centre
        wav = read_audio(root / "synth" / meta["source"].replace(".mp4", ".wav"))
        assert abs(result.audio.size - wav.size) <= 640
        n = min(result.audio.size, wav.size)
        assert np.array_equal(result.audio[:n], wav[:n])  # the item's audio, losslessly (FLAC in MP4)
    offsets = np.concatenate(offsets)
    print(f"mouth offset in ROI px: mean {offsets.mean():.2f}, max {offsets.max():.2f}")
    assert offsets.mean() < 4.0 and offsets.max() < 8.0


def test_face_files_and_corpus_layout(faces):
    root, videos = faces
    assert [v.parent for v in videos] == [root / "synth" / "faces" / "test"] * 3
    meta = json.loads(videos[0].with_suffix(".json").read_text())
    assert meta["size"] == [WIDTH, HEIGHT] and len(meta["mouth_centres"]) == meta["n_frames"]
    stamp = videos[0].stat().st_mtime_ns
    assert synthesize_faces(root, "synth", "test", limit=1) == videos[:1]  # resumed, not redrawn
    assert videos[0].stat().st_mtime_ns == stamp
    assert _foreign(root / "synth") == []  # `avsr synth --overwrite` still recognises the corpus as its own


def test_synth_faces_cli_without_corpus(tmp_path, capsys):
    assert main(["synth-faces", "--root", str(tmp_path), "--corpus", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avsr synth-faces: error: no finished avsr synth corpus") and "\n" not in err
