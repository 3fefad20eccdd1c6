"""Media files: the same frames give the same bytes in any process, and pixel values keep their meaning."""

import hashlib
import multiprocessing
import subprocess

import numpy as np
import pytest

from avsr.data.media import MediaError, read_video, write_video
from avsr.synth.lips import Appearance, head_motion, render_mouth
from avsr.synth.visemes import PARAMS


def rendered_clip(seed: int, n_frames: int) -> np.ndarray:
    """A mouth clip as the corpus renders it (smooth shapes, texture, camera noise)."""
    rng = np.random.default_rng(seed)
    shape = np.clip(np.cumsum(rng.normal(0, 0.15, (n_frames, len(PARAMS))), axis=0) % 1.0, 0, 1)
    return render_mouth(shape, Appearance.sample(rng), head_motion(n_frames, rng), rng)


def encode_sequence(args) -> list[str]:
    """Write the clips in order into `folder`; sha256 of each file."""
    folder, clips = args
    digests = []
    for i, clip in enumerate(clips):
        path = f"{folder}/{i}.mp4"
        write_video(path, clip)
        digests.append(hashlib.sha256(open(path, "rb").read()).hexdigest())
    return digests


def test_encoding_a_b_a_gives_identical_bytes_for_both_a_in_one_and_in_two_processes(tmp_path):
    a, b, c = rendered_clip(0, 30), rendered_clip(1, 41), rendered_clip(2, 57)
    (tmp_path / "one").mkdir()
    one = encode_sequence((tmp_path / "one", [a, b, a, c, a, b, a, c, a]))
    assert len(set(one[0::2])) == 1 and len({one[1], one[5]}) == 1 and len({one[3], one[7]}) == 1
    assert len({one[0], one[1], one[3]}) == 3
    folders = [tmp_path / "w0", tmp_path / "w1"]
    for f in folders:
        f.mkdir()
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # fresh processes, nothing converted before
        w0, w1 = pool.map(encode_sequence, [(folders[0], [a]), (folders[1], [b, a, b])])
    assert w0[0] == one[0] == w1[1] and w1[0] == one[1] == w1[2]


def test_pixel_values_are_full_range_both_ways(tmp_path):
    ramp = np.tile(np.arange(0, 256, 256 / 96).astype(np.uint8), (96, 1))
    frames = np.stack([ramp, ramp.T, np.full((96, 96), 255, np.uint8), np.zeros((96, 96), np.uint8)])
    write_video(tmp_path / "r.mp4", frames, crf=0)
    back = read_video(tmp_path / "r.mp4")
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).max() <= 1  # crf 0: lossless apart from rounding
    assert back[2].min() == 255 and back[3].max() == 0


def test_limited_range_videos_are_expanded_to_full_range(tmp_path):
    """A camera-style limited-range file (luma 16..235) reads as 0..255."""
    path = tmp_path / "limited.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "color=c=white:s=64x64:d=0.2:r=25",
                    "-vf", "format=yuv420p", "-color_range", "tv", "-c:v", "libx264", "-crf", "0", str(path)],
                   check=True)
    frames = read_video(path)
    assert frames.shape[1:] == (64, 64) and frames.min() >= 253


def test_bad_frames_are_refused_with_the_file_name(tmp_path):
    with pytest.raises(MediaError, match="odd.mp4"):
        write_video(tmp_path / "odd.mp4", np.zeros((3, 95, 96), np.uint8))
    assert not (tmp_path / "odd.mp4").exists()
