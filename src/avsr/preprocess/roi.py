"""From per-frame detections to mouth ROIs: tracking, smoothing, alignment, cropping.

The field's recipe (docs/preprocess.md): keep the largest face, fill frames without a detection
by linear interpolation, smooth the landmarks over time, map stable landmarks onto a reference
face with a similarity transform, and cut a fixed-size grayscale patch around the mouth.
"""

from __future__ import annotations

import cv2
import numpy as np

from avsr.preprocess.detect import Face, LandmarkScheme

ROI = 96  # output side, pixels; the reference face puts the outer eye corners 96 px apart
SMOOTH_FRAMES = 7  # centred moving average over 7 frames (+-3, 0.28 s at 25 fps); shorter at the ends


def largest(faces: list[Face]) -> np.ndarray | None:
    """(N, 2) landmarks of the largest face, or None when there is none."""
    return max(faces, key=lambda f: f.size).landmarks if faces else None


def fill_and_smooth(tracks: list[np.ndarray | None], window: int = SMOOTH_FRAMES) -> np.ndarray:
    """Per-frame landmarks (None = no detection) -> (T, N, 2) float32 with every frame filled.

    Gaps are linear interpolations between the neighbouring detections; frames before the first
    or after the last detection take that detection. Then a centred moving average over `window`
    frames removes the detector's jitter; near the ends the window shrinks symmetrically, so
    steady motion is kept exactly. At least one frame must have a detection.
    """
    found = np.array([t is not None for t in tracks])
    idx = np.flatnonzero(found)
    known = np.stack([tracks[i] for i in idx]).astype(np.float64)  # (K, N, 2)
    n = known.shape[1] * 2
    flat = known.reshape(len(idx), n)
    frames = np.arange(len(tracks))
    filled = np.stack([np.interp(frames, idx, flat[:, j]) for j in range(n)], axis=1)  # (T, 2N)
    filled = _centred_mean(filled, window // 2)
    return filled.reshape(len(tracks), -1, 2).astype(np.float32)


def _centred_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over frames t-r..t+r with r = min(radius, t, T-1-t), per column of x (T, D)."""
    n = len(x)
    sums = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])  # (T+1, D)
    t = np.arange(n)
    r = np.minimum(radius, np.minimum(t, n - 1 - t))
    return (sums[t + r + 1] - sums[t - r]) / (2 * r + 1)[:, None]


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms (rotation, uniform scale, translation; Umeyama without
    reflection) mapping src onto dst, per frame: src (T, K, 2), dst (K, 2) -> (T, 2, 3)."""
    src_c = src - src.mean(axis=1, keepdims=True)
    dst_mean = dst.mean(axis=0)
    dst_c = dst - dst_mean
    norm = (src_c**2).sum(axis=(1, 2))  # (T,)
    a = (src_c * dst_c).sum(axis=(1, 2)) / norm  # s*cos
    b = (src_c[..., 0] * dst_c[:, 1] - src_c[..., 1] * dst_c[:, 0]).sum(axis=1) / norm  # s*sin
    rot = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], axis=1)  # (T, 2, 2)
    shift = dst_mean - np.einsum("tij,tj->ti", rot, src.mean(axis=1))
    return np.concatenate([rot, shift[:, :, None]], axis=2)


def apply(transforms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """One point per frame through its frame's affine transform: (T, 2, 3), (T, 2) -> (T, 2)."""
    return np.einsum("tij,tj->ti", transforms[:, :, :2], points) + transforms[:, :, 2]


def roi_transforms(landmarks: np.ndarray, scheme: LandmarkScheme) -> tuple[np.ndarray, np.ndarray]:
    """(T, N, 2) smoothed landmarks -> (transforms (T, 2, 3) source px -> ROI px, mouth centres
    (T, 2) source px). The face is aligned to the reference; the ROI is centred on the mean of
    the lip landmarks, so a mouth at the reference face's size fills 53 of the 96 pixels."""
    to_ref = similarity(landmarks[:, list(scheme.stable)], scheme.reference)  # (T, 2, 3)
    mouth = landmarks[:, list(scheme.lips)].mean(axis=1)  # (T, 2) source px
    mouth_ref = apply(to_ref, mouth)
    to_ref[:, :, 2] += ROI / 2 - mouth_ref
    return to_ref.astype(np.float32), mouth.astype(np.float32)


def crop(gray: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """One (H, W) uint8 frame through a (2, 3) transform -> (96, 96) uint8 ROI (bilinear; the
    border pixel is repeated where the ROI leaves the frame)."""
    return cv2.warpAffine(gray, transform, (ROI, ROI), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
