"""avsr.preprocess on small generated files: re-timing, resampling, tracking with a fake detector,
ROI pass-through, bad inputs, and the `avsr preprocess` command."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf

from avsr.cli import main
from avsr.data.media import read_audio, read_video
from avsr.preprocess import Face, LandmarkScheme, PreprocessError, pipeline, preprocess_file, write_pair
from avsr.preprocess.decode import video_frames
from avsr.preprocess.roi import ROI, fill_and_smooth, roi_transforms


def level(k: int) -> int:
    """The gray level that identifies source frame k in the re-timing tests."""
    return 40 + 3 * k


def write_clip(path, frames=None, fps=25, audio=None, rate=16000, layout="mono"):
    """A lossless test clip: (T, H, W) uint8 gray frames (H.264 qp 0) and/or (C, S) float audio (PCM), in MKV."""
    with av.open(str(path), "w") as out:
        if frames is not None:
            video = out.add_stream("libx264", rate=Fraction(fps))
            video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
            video.codec_context.options = {"qp": "0", "preset": "ultrafast"}
        if audio is not None:
            sound = out.add_stream("pcm_s16le", rate=rate, layout=layout)
        if frames is not None:
            for i, gray in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, axis=2), format="rgb24")
                frame.pts, frame.time_base = i, Fraction(1, fps)
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
        if audio is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            for start in range(0, pcm.shape[1], 1024):
                chunk = av.AudioFrame.from_ndarray(pcm[:, start:start + 1024].T.reshape(1, -1).copy(), format="s16",
                                                   layout=layout)
                chunk.sample_rate, chunk.pts, chunk.time_base = rate, start, Fraction(1, rate)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def pattern(n: int, side: int) -> np.ndarray:
    """(n, side, side) frames, frame k uniformly `level(k)`."""
    return np.stack([np.full((side, side), level(k), np.uint8) for k in range(n)])


@pytest.mark.parametrize("fps", [30, 24])
def test_retiming_to_25_fps(tmp_path, fps):
    n = 2 * fps  # two seconds
    clip = write_clip(tmp_path / f"p{fps}.mkv", pattern(n, 96), fps=fps)
    result = preprocess_file(clip)
    assert result.total_frames == 50 and result.video.shape == (50, 96, 96) and result.duration == 2.0
    shown = np.round((result.video[:, 48, 48].astype(float) - 40) / 3).astype(int)
    expected = np.floor(np.arange(50) * fps / 25 + 1e-9).astype(int)  # the source frame on screen at i/25 s
    np.testing.assert_array_equal(shown, expected)
    assert result.audio is None and result.face_frames == 50  # a ROI-sized clip: taken as it is


def test_retiming_any_size_yields_source_indices(tmp_path):
    clip = write_clip(tmp_path / "p30.mkv", pattern(30, 64)[:, :48], fps=30)
    indices = [k for k, _ in video_frames(clip)]
    assert indices == [int(i * 30 / 25 + 1e-9) for i in range(25)]


def test_audio_resampled_to_16k_mono(tmp_path):
    t = np.arange(int(1.5 * 44100)) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.5 * np.sin(2 * np.pi * 1000 * t)])  # (2, S)
    clip = write_clip(tmp_path / "a.mkv", audio=stereo, rate=44100, layout="stereo")
    result = preprocess_file(clip)
    assert result.video is None and result.audio.dtype == np.float32 and result.audio.ndim == 1
    assert abs(result.audio.size - 24000) <= 32 and abs(result.duration - 1.5) < 0.01
    spectrum = np.abs(np.fft.rfft(result.audio[2000:18000]))
    assert abs(np.argmax(spectrum) - 1000) <= 2  # 16000 samples at 16 kHz: 1 Hz bins
    assert 0.4 < np.abs(result.audio[2000:18000]).max() < 0.6
    assert any("no video stream" in w for w in result.warnings)


def test_audio_and_video_cover_the_same_duration(tmp_path):
    audio = 0.1 * np.ones((1, int(1.5 * 48000)))  # 1.5 s of 48 kHz audio next to 2 s of video
    clip = write_clip(tmp_path / "av.mkv", pattern(50, 96), audio=audio, rate=48000)
    result = preprocess_file(clip)
    assert result.video.shape[0] == 50 and result.audio.size == 50 * 640
    assert np.all(result.audio[-640:] == 0) and abs(result.audio[8000] - 0.1) < 0.01


def test_roi_88_is_padded_and_kept(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(30, 220, size=(10, 88, 88), dtype=np.uint8)
    result = preprocess_file(write_clip(tmp_path / "roi88.mkv", frames))
    assert result.video.shape == (10, 96, 96) and result.face_frames == result.total_frames == 10
    assert np.abs(result.video[:, 4:92, 4:92].astype(int) - frames).max() <= 2  # the centre 88x88 is the clip


# --- tracking with a fake detector -------------------------------------------------------------

SQUARE = LandmarkScheme("square", stable=(0, 1, 2, 3), lips=(4, 5),
                        reference=np.array([[-48, -30], [48, -30], [-48, 30], [48, 30]], np.float32))


def face_at(x: float, y: float, scale: float = 1.0) -> np.ndarray:
    """(6, 2) landmarks: four stable corners, two lip points whose mean is 40 px below the centre."""
    pts = np.array([[-48, -30], [48, -30], [-48, 30], [48, 30], [-20, 40], [20, 40]], np.float32)
    return pts * scale + np.array([x, y], np.float32)


class FakeDetector:
    """Detector interface: a face moving right 1 px per frame, missing on `gaps`, with a small
    decoy face on every frame."""

    scheme = SQUARE

    def __init__(self, gaps=()):
        self.calls, self.gaps = 0, set(gaps)

    def detect(self, frame):
        k, self.calls = self.calls, self.calls + 1
        if k in self.gaps:
            return []
        return [Face(face_at(20, 20, scale=0.2)), Face(face_at(100 + k, 90))]


def test_fill_interpolates_and_smooths():
    truth = [face_at(100 + k, 90) for k in range(20)]
    tracks = [None if k in (0, 1, 7, 8, 9, 19) else truth[k] for k in range(20)]
    filled = fill_and_smooth(tracks, window=1)
    np.testing.assert_allclose(filled[2:19], np.stack(truth[2:19]), atol=1e-4)  # linear motion: exact
    np.testing.assert_allclose(filled[:2], np.stack([truth[2]] * 2), atol=1e-4)  # edges: nearest detection
    np.testing.assert_allclose(filled[19], truth[18], atol=1e-4)
    rng = np.random.default_rng(0)
    noisy = [face_at(100, 90) + rng.normal(0, 2, (6, 2)).astype(np.float32) for _ in range(200)]
    smooth = fill_and_smooth(noisy, window=7)
    assert smooth[:, 0, 0].std() < 0.5 * np.stack(noisy)[:, 0, 0].std()


def test_alignment_centres_the_lips():
    landmarks = np.stack([face_at(150, 100, 1.5)])  # (1, 6, 2), 1.5x the reference size
    transforms, centres = roi_transforms(landmarks, SQUARE)
    np.testing.assert_allclose(centres[0], [150, 100 + 60], atol=1e-4)
    mapped = transforms[0, :, :2] @ centres[0] + transforms[0, :, 2]
    np.testing.assert_allclose(mapped, [ROI / 2, ROI / 2], atol=1e-3)
    np.testing.assert_allclose(np.linalg.det(transforms[0, :, :2]), 1 / 1.5**2, rtol=1e-4)  # scaled to the reference


@pytest.mark.parametrize("keep_bytes", [None, 0])  # gray frames kept from the detection pass, or decoded again
def test_fake_detector_through_the_pipeline(tmp_path, monkeypatch, keep_bytes):
    if keep_bytes is not None:
        monkeypatch.setattr(pipeline, "KEEP_GRAY_BYTES", keep_bytes)
    frames = np.random.default_rng(1).integers(0, 256, (25, 200, 260), dtype=np.uint8)
    clip = write_clip(tmp_path / "moving.mkv", frames)
    result = preprocess_file(clip, detector=FakeDetector(gaps=(3, 4, 5)))
    assert result.total_frames == 25 and result.face_frames == 22 and result.face_ratio == pytest.approx(0.88)
    assert result.video.shape == (25, 96, 96)
    # the largest face wins; the missing frames are interpolated, so the mouth moves 1 px per frame
    np.testing.assert_allclose(result.mouth_centres[:, 0], 100 + np.arange(25), atol=1e-3)
    np.testing.assert_allclose(result.mouth_centres[:, 1], 130, atol=1e-3)
    assert set(result.timings) == {"decode", "detect", "crop"}
    # the ROI of frame 0 is the frame's patch around the mouth (scale 1: the face is reference-sized)
    x, y = np.round(result.mouth_centres[0]).astype(int)
    patch = frames[0, y - 48:y + 48, x - 48:x + 48].astype(int)
    assert np.abs(result.video[0].astype(int) - patch).max() <= 2  # gray -> RGB -> gray rounding only


# --- bad inputs ------------------------------------------------------------------------------

def test_bad_files_are_named(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    subtitles = tmp_path / "only.srt"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    for path, words in ((junk, "cannot read"), (subtitles, "no video or audio stream"), (empty, "zero-length"),
                        (tmp_path / "missing.mp4", "not found")):
        with pytest.raises(PreprocessError, match=words) as err:
            preprocess_file(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_no_face_gives_no_video(tmp_path):
    clip = write_clip(tmp_path / "blank.mkv", np.full((10, 120, 160), 90, np.uint8), audio=np.zeros((1, 6400)))
    result = preprocess_file(clip, detector=FakeDetector(gaps=range(100)))
    assert result.video is None and result.audio.size == 6400 and result.total_frames == 10
    assert result.face_frames == 0 and any("no face found in blank.mkv" in w for w in result.warnings)
    with pytest.raises(PreprocessError, match="no mouth video"):
        write_pair(result, tmp_path / "out")


def test_cli_preprocess_writes_the_pair(tmp_path, capsys):
    clip = write_clip(tmp_path / "talk.mkv", pattern(30, 96), fps=30, audio=0.2 * np.ones((1, 44100)), rate=44100)
    assert main(["preprocess", str(clip), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "25 frames, face in 100.0%" in capsys.readouterr().out
    assert read_video(tmp_path / "out" / "talk.mp4").shape == (25, 96, 96)
    assert read_audio(tmp_path / "out" / "talk.wav").size == 25 * 640


def test_cli_no_face_exits_2_in_one_line(tmp_path):
    """Real mediapipe on blank frames: no face, exit 2, one line on stderr, no traceback."""
    pytest.importorskip("mediapipe")
    clip = write_clip(tmp_path / "wall.mkv", np.full((8, 120, 160), 128, np.uint8))
    run = subprocess.run([sys.executable, "-m", "avsr", "preprocess", str(clip), "--out", str(tmp_path / "o"),
                          "--quiet"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [f"avsr preprocess: error: no face found in {clip} "
                                               "(8 frames at 25 fps): no mouth to crop"]
    assert not (tmp_path / "o" / "wall.mp4").exists()
