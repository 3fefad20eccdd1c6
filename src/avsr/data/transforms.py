"""Per-utterance audio/video transforms for training and evaluation (Llama-AVSR recipe).

Train (docs/papers.md §2): audio is synced to the video, time-masked, then babble is added at an
SNR drawn from a list (None = clean); video is scaled to [0, 1], randomly cropped to 88x88
(one crop for the whole clip), time-masked, then normalised with (0.421, 0.165).
Eval: the centre crop, no masking, and optionally babble at one fixed SNR whose noise
segment is chosen from a stable hash of (seed, item id), so every run scores the same audio.

Masked video frames are zeroed *before* normalisation, as in the reference, so they come out
as (0 - mean) / std; masked audio samples are exactly 0 (before noise is added).
All randomness comes from the `numpy.random.Generator` passed in, never from global state.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from avsr.data.acoustics import Acoustics
from avsr.data.media import SAMPLES_PER_FRAME
from avsr.data.noise import mix_at_snr, noise_segment

#: AV-HuBERT's lip-video input (Llama-AVSR uses the same): grayscale pixel / 255, then
#: (x - mean) / std, on mouth crops of this many pixels (centre crop at test time).
AVHUBERT_PIXEL_MEAN = 0.421
AVHUBERT_PIXEL_STD = 0.165
AVHUBERT_CROP_SIZE = 88


@dataclass
class AugmentConfig:
    """Knobs of the training augmentation; the defaults follow Llama-AVSR."""

    snrs: tuple[float | None, ...] = (-5, 0, 5, 10, 15, 20, None)  # None = clean
    crop_size: int = AVHUBERT_CROP_SIZE
    video_mean: float = AVHUBERT_PIXEL_MEAN
    video_std: float = AVHUBERT_PIXEL_STD
    audio_mask_window: int = 6400  # each audio mask spans 0..window-1 samples
    audio_mask_stride: int = 16000  # ceil(N / stride) audio masks
    video_mask_window: int = 10  # each video mask spans 0..window-1 frames
    video_mask_stride: int = 25  # ceil(T / stride) video masks
    add_noise: bool = True
    audio_time_mask: bool = True
    video_time_mask: bool = True
    random_crop: bool = True  # False: centre crop in training too
    audio_znorm: bool = False  # reference's waveform layer_norm (eps 1e-8); off so SNRs stay measurable
    acoustics: Acoustics = Acoustics()  # rooms, speeds, band limits (training only; none by default)


def _to_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def stable_seed(seed: int, key: str) -> int:
    """A process-independent 32-bit hash of (seed, key); Python's hash() is salted per process."""
    return zlib.crc32(f"{seed}:{key}".encode("utf-8"))


def sync_audio(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Cut or zero-pad (N,) audio to exactly n_frames * 640 samples (Llama-AVSR does this for AV)."""
    n = n_frames * SAMPLES_PER_FRAME
    if audio.shape[0] >= n:
        return audio[:n].copy()
    out = np.zeros(n, dtype=audio.dtype)
    out[:audio.shape[0]] = audio
    return out


def mask_spans(length: int, window: int, stride: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The [start, end) spans AdaptiveTimeMask zeroes: ceil(length/stride) masks of 0..window-1 steps.

    Spans of width 0 (or not fitting in the signal) are dropped, as in the reference.
    """
    spans = []
    for _ in range(math.ceil(length / stride)):
        width = int(rng.integers(0, window))
        if width == 0 or width >= length:
            continue
        start = int(rng.integers(0, length - width + 1))
        spans.append((start, start + width))
    return spans


def time_mask(x: np.ndarray, window: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of x with random spans along axis 0 set to zero (see mask_spans)."""
    out = x.copy()
    for start, end in mask_spans(x.shape[0], window, stride, rng):
        out[start:end] = 0
    return out


def crop(video: np.ndarray, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """(T, H, W) -> (T, size, size): one random window for all frames, or the centre if rng is None."""
    _, h, w = video.shape
    if h < size or w < size:
        raise ValueError(f"video frames are {h}x{w}, smaller than the {size}x{size} crop")
    if rng is None:
        top, left = (h - size) // 2, (w - size) // 2  # torchvision CenterCrop rounding for even sizes
    else:
        top, left = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return video[:, top:top + size, left:left + size]


def _znorm(audio: np.ndarray) -> np.ndarray:
    return ((audio - audio.mean()) / np.sqrt(audio.var() + 1e-8)).astype(np.float32)


class _Base:
    def __init__(self, config: AugmentConfig | None = None):
        self.config = config or AugmentConfig()

    def _prepare(self, item: dict) -> tuple[np.ndarray, np.ndarray]:
        video = _to_numpy(item["video"])  # (T, H, W) uint8
        audio = _to_numpy(item["audio"]).astype(np.float32, copy=False)  # (N,) float32
        return sync_audio(audio, video.shape[0]), video

    def _finish(self, item: dict, audio: np.ndarray, video: np.ndarray) -> dict:
        cfg = self.config
        if cfg.audio_znorm:
            audio = _znorm(audio)
        video = (video - cfg.video_mean) / cfg.video_std
        return {
            "audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),  # (T*640,) float32
            "video": torch.from_numpy(np.ascontiguousarray(video, dtype=np.float32)),  # (T, 88, 88) float32
            "text": item["text"],
            "id": item["id"],
        }


class TrainTransform(_Base):
    """Training augmentation: time masks, babble (`noise`, 16 kHz; None: none) at a random SNR,
    random crop. Uses only `rng`."""

    def __init__(self, config: AugmentConfig | None = None, noise: np.ndarray | None = None):
        super().__init__(config)
        self.noise = None if noise is None else np.asarray(noise, dtype=np.float32)  # (M,) 16 kHz

    def __call__(self, item: dict, rng: np.random.Generator) -> dict:
        cfg = self.config
        audio, video = self._prepare(item)
        if cfg.acoustics.active:  # before the masks and the noise: the room and the channel shape the speech
            audio = cfg.acoustics(audio, rng)
        if cfg.audio_time_mask:
            audio = time_mask(audio, cfg.audio_mask_window, cfg.audio_mask_stride, rng)
        if cfg.add_noise and self.noise is not None and cfg.snrs:
            snr = cfg.snrs[int(rng.integers(0, len(cfg.snrs)))]
            if snr is not None:
                audio = mix_at_snr(audio, noise_segment(self.noise, audio.shape[0], rng), float(snr))
        video = crop(video, cfg.crop_size, rng if cfg.random_crop else None).astype(np.float32) / 255.0
        if cfg.video_time_mask:
            video = time_mask(video, cfg.video_mask_window, cfg.video_mask_stride, rng)
        return self._finish(item, audio, video)


class EvalTransform(_Base):
    """Deterministic evaluation transform: centre crop, optional babble at a fixed SNR.

    snr_db=None means clean; snr_db=0 really is 0 dB (the reference's `if snr` bug is avoided).
    The noise segment depends only on (seed, item id), so results are reproducible across runs,
    processes and dataloader workers.
    """

    def __init__(self, config: AugmentConfig | None = None, snr_db: float | None = None,
                 noise: np.ndarray | None = None, seed: int = 0):
        super().__init__(config)
        if snr_db is not None and noise is None:
            raise ValueError("snr_db was given but there is no noise (pass noise=)")
        self.snr_db = snr_db
        self.noise = None if noise is None else np.asarray(noise, dtype=np.float32)  # (M,) 16 kHz
        self.seed = seed

    def __call__(self, item: dict, rng: np.random.Generator | None = None) -> dict:
        """`rng` is accepted for interface symmetry with TrainTransform and ignored."""
        audio, video = self._prepare(item)
        if self.snr_db is not None:
            seg_rng = np.random.default_rng(stable_seed(self.seed, str(item["id"])))
            audio = mix_at_snr(audio, noise_segment(self.noise, audio.shape[0], seg_rng), float(self.snr_db))
        video = crop(video, self.config.crop_size, None).astype(np.float32) / 255.0
        return self._finish(item, audio, video)
