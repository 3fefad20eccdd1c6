"""Read an auto_avsr / Llama-AVSR style corpus: label CSV rows -> (audio, video, transcript).

A label row is `dataset,rel_path,n_video_frames[,token_ids],transcript`; the media live at
`<root>/<dataset>/<rel_path>` (.mp4) and the same stem with .wav. This reads the synthetic
corpus of `avsr synth` and a preprocessed LRS3/LRS2 tree alike (the Llama-AVSR CSVs carry
an extra column of SentencePiece ids, which is skipped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from avsr.data.media import SAMPLE_RATE, VIDEO_FPS, MediaError, read_audio, read_video
from avsr.errors import AvsrError


class DataError(AvsrError):
    """A label file or a corpus item that is malformed or inconsistent."""


@dataclass(frozen=True)
class LabelRow:
    dataset: str
    rel_path: str  # relative to <root>/<dataset>, ends in .mp4
    n_frames: int  # video frames at 25 fps
    text: str

    def video_path(self, root: str | Path) -> Path:
        return Path(root) / self.dataset / self.rel_path

    def audio_path(self, root: str | Path) -> Path:
        return self.video_path(root).with_suffix(".wav")


@dataclass
class AVItem:
    audio: np.ndarray  # (N,) float32 at 16 kHz
    video: np.ndarray  # (T, H, W) uint8 mouth ROI at 25 fps
    text: str
    row: LabelRow


_TOKEN_IDS = re.compile(r"^[0-9 ]*,")


def read_labels(path: str | Path) -> list[LabelRow]:
    """Parse a label CSV; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file not found: {path}")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(",", 3)
        if len(parts) < 4:
            raise DataError(f"{path}:{lineno}: expected dataset,rel_path,n_frames,transcript; got {line!r}")
        dataset, rel_path, n_frames, rest = parts
        if _TOKEN_IDS.match(rest):  # Llama-AVSR: token ids, then the transcript
            rest = rest.split(",", 1)[1]
        if not n_frames.strip().isdigit():
            raise DataError(f"{path}:{lineno}: frame count {n_frames!r} is not a number")
        if not rest.strip():  # it would count as a reference of 0 words and distort the WER
            raise DataError(f"{path}:{lineno}: empty transcript")
        rows.append(LabelRow(dataset.strip(), rel_path.strip(), int(n_frames), rest.strip()))
    if not rows:
        raise DataError(f"label file is empty: {path}")
    return rows


def load_item(root: str | Path, row: LabelRow) -> AVItem:
    """Read and validate one utterance: the audio and video durations must agree within one frame."""
    video = read_video(row.video_path(root))
    audio = read_audio(row.audio_path(root))
    video_s, audio_s = video.shape[0] / VIDEO_FPS, audio.size / SAMPLE_RATE
    if abs(video_s - audio_s) > 1.0 / VIDEO_FPS + 1e-9:
        raise DataError(f"{row.video_path(root)}: video lasts {video_s:.3f} s but its audio "
                        f"{audio_s:.3f} s (more than one frame apart)")
    return AVItem(audio=audio, video=video, text=row.text, row=row)


class AVDataset(Dataset):
    """Map-style dataset over one label CSV. Items are dicts of tensors plus the transcript."""

    def __init__(self, root: str | Path, labels: str | Path):
        self.root = Path(root)
        self.rows = read_labels(labels)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        item = load_item(self.root, self.rows[index])
        return {
            "audio": torch.from_numpy(item.audio),  # (N,) float32
            "video": torch.from_numpy(item.video),  # (T, H, W) uint8
            "text": item.text,
            "id": item.row.rel_path,
        }


def validate_corpus(root: str | Path, labels: str | Path) -> dict:
    """Load every row of a label CSV; return counts and the problems found (file + reason)."""
    problems, frames, seconds = [], 0, 0.0
    rows = read_labels(labels)
    for row in rows:
        try:
            item = load_item(root, row)
        except (MediaError, DataError) as err:
            problems.append(str(err))
            continue
        if item.video.shape[0] != row.n_frames:
            problems.append(f"{row.video_path(root)}: {item.video.shape[0]} frames, label says {row.n_frames}")
        frames += item.video.shape[0]
        seconds += item.audio.size / SAMPLE_RATE
    return {"rows": len(rows), "ok": len(rows) - len(problems), "video_frames": frames,
            "audio_hours": round(seconds / 3600, 4), "problems": problems}
