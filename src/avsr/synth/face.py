"""A drawn talking face whose mouth moves exactly as in a corpus item: the test input of
`avsr preprocess` (the face detector must find it, the crop must land on the mouth).

The face is drawn at the corpus's mouth scale (proportions of mediapipe's canonical face, 10.8 px
per cm, so the mouth is as wide as in the 96x96 ROIs), the item's own mouth ROI (render_mouth
from its per-frame lip parameters) is blended in at the mouth, and the whole head moves a little
(head_motion, a few pixels and degrees). Each frame's mouth centre is returned, so a test can
measure where the crop landed.

    <root>/<corpus>/faces/<split>/<speaker>-<index>.mp4   352x288 colour, 25 fps, H.264 + FLAC audio
    <root>/<corpus>/faces/<split>/<speaker>-<index>.json  mouth centre per frame (pixels), source item
"""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from avsr.data.media import SAMPLE_RATE, VIDEO_FPS, read_audio
from avsr.io import atomic_file, check_target, check_writable, write_text_atomic
from avsr.synth.corpus import FACES, SynthError
from avsr.synth.lips import ROI_SIZE, Appearance, head_motion, render_mouth
from avsr.synth.visemes import PARAMS

WIDTH, HEIGHT = 352, 288  # CIF
HEAD = (WIDTH / 2, 150.0)  # head origin (between the eyes and the nose tip) in the frame
MOUTH = (0.0, 46.0)  # mouth centre relative to the head origin (canonical face: 4.3 cm below)


def _ellipse(x, y, cx, cy, ax, ay, soft=1.0):
    """Anti-aliased coverage (0-1) of an axis-aligned ellipse on the pixel grid."""
    r = np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2)
    return np.clip((1.0 - r) * min(ax, ay) / soft + 0.5, 0.0, 1.0)


def _paint(img, cover, value):
    return img + cover * (value - img)


def _static_head(look: Appearance) -> tuple[np.ndarray, np.ndarray]:
    """The face without its mouth: gray levels (H, W) float32 and head coverage (H, W) in 0-1."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32) + 0.5
    x, y = xs - HEAD[0], ys - HEAD[1]  # head coordinates, px (y down)
    skin, dark = look.skin, min(look.lip - 25, 60.0)
    hair_level = max(look.skin - 110, 25.0)
    img = np.zeros((HEIGHT, WIDTH), np.float32)
    hair = _ellipse(x, y, 0, -38, 94, 104)
    neck = np.clip(45 - np.abs(x), 0, 1) * np.clip(y - 40, 0, 1)
    ears = _ellipse(np.abs(x), y, 84, -2, 11, 22)
    face = _ellipse(x, y, 0, -4, 80, 105)
    img = _paint(img, hair, hair_level)
    img = _paint(img, neck, 0.8 * skin)
    img = _paint(img, ears, 0.9 * skin)
    r = np.sqrt((x / 80) ** 2 + ((y + 4) / 105) ** 2)
    img = _paint(img, face, skin * (1.0 - 0.22 * r**4))  # darker towards the edge: a round face
    fringe = hair * np.clip(-62 - y + 14 * (x / 80) ** 2, 0, 1)  # hair over the forehead
    img = _paint(img, fringe, hair_level)
    # Eyes: socket shadow, white, iris, pupil, upper lid; brows above.
    ex, ey = np.abs(x), y
    img = _paint(img, 0.35 * _ellipse(ex, ey, 34, -30, 21, 12, soft=6), 0.75 * skin)
    img = _paint(img, _ellipse(ex, ey, 34, -28, 14, 6.5), 225.0)
    img = _paint(img, _ellipse(ex, ey, 34, -28, 6, 6) * _ellipse(ex, ey, 34, -28, 14, 6.5), 70.0)
    img = _paint(img, _ellipse(ex, ey, 34, -28, 2.6, 2.6), 15.0)
    lid = np.clip(1.6 - np.abs(np.sqrt(((ex - 34) / 14.5) ** 2 + ((ey + 27.5) / 7.5) ** 2) - 1) * 12, 0, 1)
    img = _paint(img, lid * (ey < -27), dark)
    brow_curve = -47 + 0.012 * (ex - 36) ** 2
    brow = np.clip(3.2 - np.abs(ey - brow_curve), 0, 1) * np.clip(19 - np.abs(ex - 34), 0, 1)
    img = _paint(img, brow, hair_level + 10)
    # Nose: shaded sides, a lit tip, nostrils, the shadow under it.
    side = np.clip(2.5 - np.abs(ex - (8 + 0.12 * (y + 20))), 0, 1) * (y > -22) * (y < 10)
    img = _paint(img, 0.5 * side, 0.7 * skin)
    img = _paint(img, 0.4 * _ellipse(x, y, 0, 8, 9, 8, soft=4), min(skin + 25, 250))
    img = _paint(img, 0.6 * _ellipse(x, y, 0, 19, 16, 5, soft=3), 0.8 * skin)
    img = _paint(img, _ellipse(ex, y, 6.5, 16, 4, 2.4), dark)
    coverage = np.clip(hair + neck + ears + face, 0, 1)
    return img, coverage


def render_face(mouth: np.ndarray, look: Appearance, motion: np.ndarray | None = None,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A talking face for per-frame mouth parameters (T, len(PARAMS)).

    motion: (T, 4) head motion (dx, dy px, angle rad, scale) about the head origin, None = still;
    rng: camera noise (None = none). Returns frames (T, 288, 352, 3) uint8 RGB and the rendered
    mouth centre per frame (T, 2) float32 in frame pixels (x, y).
    """
    n = mouth.shape[0]
    look = replace(look, light_strength=0.0)  # the face's own shading replaces the ROI's light
    rois = render_mouth(mouth, look, None, None).astype(np.float32)  # (T, 96, 96), mouth still in it
    head, coverage = _static_head(look)
    # Where the ROI goes: its mouth centre onto the face's mouth; a soft oval blends its skin in.
    left = int(round(HEAD[0] + MOUTH[0] - look.centre_x))
    top = int(round(HEAD[1] + MOUTH[1] - look.centre_y))
    ys, xs = np.mgrid[0:ROI_SIZE, 0:ROI_SIZE].astype(np.float32) + 0.5
    blend = np.clip((1.0 - np.sqrt(((xs - look.centre_x) / 44) ** 2 + ((ys - look.centre_y) / 30) ** 2)) * 5, 0, 1)
    tint = np.array([1.0, 0.84, 0.72], np.float32)  # skin colour from the gray level ...
    tint /= tint @ np.array([0.299, 0.587, 0.114], np.float32)  # ... with the same luma: gray crops keep it
    background = np.array([70, 95, 120], np.float32)
    if motion is None:
        motion = np.tile(np.array([0.0, 0.0, 0.0, 1.0]), (n, 1))
    frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    centres = np.empty((n, 2), np.float32)
    mouth_at = np.array([left + look.centre_x, top + look.centre_y, 1.0])  # before head motion
    for t in range(n):
        gray = head.copy()
        patch = gray[top:top + ROI_SIZE, left:left + ROI_SIZE]
        patch += blend * (rois[t] - patch)
        layer = np.dstack([gray[..., None] * tint, coverage[..., None]])  # (H, W, 4): colour + alpha
        dx, dy, angle, scale = motion[t]
        warp = cv2.getRotationMatrix2D(HEAD, float(np.rad2deg(angle)), float(scale))
        warp[:, 2] += (dx, dy)
        layer = cv2.warpAffine(layer, warp, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        img = layer[..., :3] + (1.0 - layer[..., 3:]) * background
        if rng is not None:
            img = img + rng.normal(0.0, look.camera_noise, size=img.shape)
        frames[t] = np.clip(np.rint(img), 0, 255)
        centres[t] = warp @ mouth_at
    return frames, centres


def write_face_video(path: str | Path, frames: np.ndarray, audio: np.ndarray | None) -> Path:
    """(T, H, W, 3) uint8 RGB frames at 25 fps (+ 16 kHz mono float audio) -> H.264 MP4, atomically.

    The audio is stored losslessly (FLAC in MP4, 16-bit like the corpus's wav), so a transcription
    of the face video hears exactly the corpus item: any difference comes from the video path."""
    path = Path(path)
    with atomic_file(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as out:
        video = out.add_stream("libx264", rate=VIDEO_FPS)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        video.codec_context.options = {"crf": "18", "preset": "veryfast", "threads": "1"}
        sound = out.add_stream("flac", rate=SAMPLE_RATE, layout="mono") if audio is not None else None
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, VIDEO_FPS)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            pcm = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)  # (S,) as in the wav
            for start in range(0, pcm.size, 1024):
                chunk = av.AudioFrame.from_ndarray(pcm[None, start:start + 1024], format="s16", layout="mono")
                chunk.sample_rate, chunk.pts, chunk.time_base = SAMPLE_RATE, start, Fraction(1, SAMPLE_RATE)
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def face_item(corpus_dir: Path, rel_path: str, out_dir: Path, look: Appearance, seed: int) -> Path:
    """Write one corpus item's talking face (from its sidecar .json and .wav) into out_dir, with a
    .json of the mouth centres next to it (written last: it marks completion). Returns the .mp4."""
    stem = corpus_dir / rel_path[: -len(".mp4")]
    split, speaker, index = Path(rel_path).parts[0], Path(rel_path).parts[1], Path(rel_path).stem
    mp4 = out_dir / split / f"{speaker}-{index}.mp4"
    if mp4.with_suffix(".json").exists():
        return mp4
    meta = json.loads(stem.with_suffix(".json").read_text())
    mouth = np.stack([np.asarray(meta["mouth"][name], np.float32) for name in PARAMS], axis=1)  # (T, P)
    rng = np.random.default_rng(seed)
    frames, centres = render_face(mouth, look, head_motion(len(mouth), rng, amplitude=4.0), rng)
    mp4.parent.mkdir(parents=True, exist_ok=True)
    write_face_video(mp4, frames, read_audio(stem.with_suffix(".wav")))
    write_text_atomic(mp4.with_suffix(".json"), json.dumps(
        {"source": rel_path, "text": meta["text"], "n_frames": len(frames), "size": [WIDTH, HEIGHT],
         "mouth_centres": np.round(centres, 2).tolist()}))
    return mp4


def synthesize_faces(root: str | Path, corpus: str, split: str = "test", limit: int | None = None) -> list[Path]:
    """Talking-face videos for a finished corpus's split, under <root>/<corpus>/faces/<split>/
    (resumable: items already written are kept). Returns the .mp4 paths."""
    corpus_dir = Path(root) / corpus
    try:
        manifest = json.loads((corpus_dir / "corpus.json").read_text("utf-8"))
    except (OSError, ValueError):
        manifest = {}
    if not manifest.get("complete"):
        raise SynthError(f"no finished avsr synth corpus in {corpus_dir}: run avsr synth --out {root} "
                         f"--corpus {corpus} first")
    looks = {s["id"]: Appearance(**s["appearance"]) for s in manifest["speakers"]}
    items = sorted(p.relative_to(corpus_dir).as_posix() for p in (corpus_dir / split).glob("*/*.mp4"))
    if not items:
        raise SynthError(f"no {split} items in {corpus_dir}")
    check_target(corpus_dir / FACES / split)  # a read-only corpus or a full name is refused before any drawing
    check_writable(corpus_dir / FACES / split)
    return [face_item(corpus_dir, rel, corpus_dir / FACES, looks[rel.split("/")[1]], seed=k)
            for k, rel in enumerate(items[:limit])]
