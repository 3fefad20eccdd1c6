"""A split's utterances as items: (audio, video, transcript), read from any manifest format.

The manifests (auto_avsr / Llama-AVSR label CSV, AV-HuBERT .tsv + .wrd, JSON lines) are read by
`avsr.data.manifests` into the same rows; a label CSV row is `dataset,rel_path,n_video_frames
[,token_ids],transcript` with the media at `<root>/<dataset>/<rel_path>` (.mp4) and the same
stem with .wav. This reads the synthetic corpus of `avsr synth` and a preprocessed LRS3/LRS2
tree alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from avsr.data.manifests import DataError, Utterance, load_manifest, read_manifest, warn
from avsr.data.media import SAMPLE_RATE, VIDEO_FPS, MediaError, read_audio, read_video

__all__ = ["AVDataset", "AVItem", "DataError", "SkippedItem", "Utterance", "load_item", "media_item", "read_manifest",
           "validate_corpus"]


@dataclass
class AVItem:
    audio: np.ndarray  # (N,) float32 at 16 kHz
    video: np.ndarray  # (T, H, W) uint8 mouth ROI at 25 fps
    text: str
    row: Utterance


@dataclass(frozen=True)
class SkippedItem:
    """What AVDataset returns, with on_bad_file="skip", for an utterance whose media cannot be
    decoded: the collate functions drop it (avsr.data.batching.collate, SkipUnreadable)."""
    id: str
    reason: str


def load_item(row: Utterance, video: bytes | None = None, audio: bytes | None = None) -> AVItem:
    """Read and validate one utterance: the audio and video durations must agree within one frame.
    `video`, `audio`: the files' bytes when they come from elsewhere (a shard), else they are read
    from the row's paths."""
    if row.video is None or row.audio is None:
        raise DataError(f"{row.source or row.id}: names no {'video' if row.video is None else 'audio'} file "
                        "(avsr reads audio-visual pairs)")
    frames = read_video(row.video if video is None else video, name=row.video)
    samples = read_audio(row.audio if audio is None else audio, name=row.audio)
    video_s, audio_s = frames.shape[0] / VIDEO_FPS, samples.size / SAMPLE_RATE
    if abs(video_s - audio_s) > 1.0 / VIDEO_FPS + 1e-9:
        raise DataError(f"{row.video}: video lasts {video_s:.3f} s but its audio "
                        f"{audio_s:.3f} s (more than one frame apart)")
    return AVItem(audio=samples, video=frames, text=row.text, row=row)


def media_item(item: AVItem) -> dict:
    """An item as the transforms and collation take it."""
    return {
        "audio": torch.from_numpy(item.audio),  # (N,) float32
        "video": torch.from_numpy(item.video),  # (T, H, W) uint8
        "text": item.text,
        "id": item.row.id,
    }


class AVDataset(Dataset):
    """Map-style dataset over one split's manifest. Items are dicts of tensors plus the transcript.

    `fmt`: the manifest format (auto: from the file name; see avsr.data.manifests). The media
    are checked when the dataset is made (`on_bad_file`: stop raises DataError naming the file,
    skip drops and counts); utterances longer than `max_seconds` are dropped. An item that
    fails to decode later raises DataError naming the file (stop), or comes back as a
    SkippedItem that collation drops, with a warning line naming the file (skip).
    """

    def __init__(self, root: str | Path, labels: str | Path, fmt: str = "auto", on_bad_file: str = "stop",
                 max_seconds: float | None = None):
        self.root = Path(root)
        self.labels = Path(labels)
        self.on_bad_file = on_bad_file
        self.rows: list[Utterance] = load_manifest(labels, fmt, root, on_bad_file, max_seconds)
        self.skipped = 0  # items dropped while iterating (in this process)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict | SkippedItem:
        row = self.rows[index]
        try:
            item = load_item(row)
        except (MediaError, DataError) as err:
            if self.on_bad_file == "stop":
                raise DataError(f"{row.source}: {err}") from None
            self.skipped += 1
            warn(f"skipped utterance {row.id}: {err} ({self.skipped} skipped so far in {self.labels.name})")
            return SkippedItem(row.id, str(err))
        return media_item(item)


def validate_corpus(root: str | Path, labels: str | Path, fmt: str = "auto") -> dict:
    """Load every row of a manifest; return counts and the problems found (file + reason)."""
    problems, frames, seconds = [], 0, 0.0
    rows = read_manifest(labels, fmt, root)
    for row in rows:
        try:
            item = load_item(row)
        except (MediaError, DataError) as err:
            problems.append(str(err))
            continue
        if row.n_frames is not None and item.video.shape[0] != row.n_frames:
            problems.append(f"{row.video}: {item.video.shape[0]} frames, the manifest says {row.n_frames}")
        frames += item.video.shape[0]
        seconds += item.audio.size / SAMPLE_RATE
    return {"rows": len(rows), "ok": len(rows) - len(problems), "video_frames": frames,
            "audio_hours": round(seconds / 3600, 4), "problems": problems}
