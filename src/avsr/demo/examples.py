"""The videos the demo offers as examples: the files of an `--examples` folder, or else a few
test utterances of the corpus the checkpoint was trained on: its drawn talking faces (`avsr
synth-faces`, where made; the face detector finds the mouth) and its mouth crops.

A corpus utterance is a silent 96x96 mouth video beside a wav; the page needs one playable
file with sound, as a user's upload would be, so the two are muxed into one mp4 (the video
stream copied as it is, the audio encoded as AAC, which browsers play).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from avsr.data.manifests import read_manifest, split_manifest
from avsr.data.media import SAMPLE_RATE, read_audio
from avsr.errors import AvsrError
from avsr.models.loading import Checkpoint
from avsr.synth.corpus import FACES

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")


@dataclass(frozen=True)
class Example:
    path: Path
    label: str  # shown on the page instead of a thumbnail: the kind and the reference transcript, or the file name


def folder_examples(folder: str | Path) -> list[Example]:
    """Every video file in `folder`, by name; a folder without one is refused (the user meant some)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AvsrError(f"--examples {folder}: not a folder")
    videos = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise AvsrError(f"--examples {folder}: no video files ({', '.join(VIDEO_SUFFIXES)})")
    return [Example(p, p.name) for p in videos]


def corpus_examples(checkpoint: Checkpoint, out: Path, count: int = 3) -> list[Example]:
    """Up to `count` talking faces and `count` mouth-crop clips (muxed into `out`) of the
    checkpoint's corpus test split; none when that corpus is not on this machine (examples are
    a convenience, not a requirement)."""
    data = checkpoint.train_section.get("data", {})
    root = checkpoint.locate("data.root", data.get("root", "data"))
    corpus, fmt = data.get("corpus", "synth"), data.get("format", "auto")
    examples = []
    for face in sorted((Path(root) / corpus / FACES / "test").glob("*.mp4"))[:count]:
        try:
            text = json.loads(face.with_suffix(".json").read_text("utf-8"))["text"]
        except (OSError, ValueError, KeyError):
            continue  # not finished: its .json is written last
        examples.append(Example(face, f"talking face · {text}"))
    try:
        rows = read_manifest(split_manifest(root, corpus, "test", fmt), fmt, root)
    except AvsrError:
        return examples
    crops = [row for row in rows if row.video and row.audio and row.video.is_file() and row.audio.is_file()]
    for row in crops[:count]:
        path = out / f"{re.sub(r'[^A-Za-z0-9_-]+', '_', str(Path(row.id).with_suffix(''))).strip('_')}.mp4"
        mux(row.video, row.audio, path)
        examples.append(Example(path, f"mouth crop · {row.text}"))
    return examples


def mux(video: Path, audio: Path, out: Path) -> None:
    """One mp4 with sound from a silent mp4 and a 16 kHz wav: the video packets copied
    unchanged (the frames the model reads stay byte-identical), the audio encoded as AAC."""
    samples = read_audio(audio)
    try:
        with av.open(str(video)) as source, av.open(str(out), mode="w") as target:
            video_in = source.streams.video[0]
            video_out = target.add_stream_from_template(video_in)
            sound = target.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
            for packet in source.demux(video_in):
                if packet.dts is not None:  # the demuxer's empty flush packet
                    packet.stream = video_out
                    target.mux(packet)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None], np.float32), format="flt",
                                               layout="mono")
            frame.sample_rate, frame.pts = SAMPLE_RATE, 0
            target.mux(sound.encode(frame))
            target.mux(sound.encode(None))
    except (av.error.FFmpegError, IndexError) as err:
        raise AvsrError(f"cannot make a demo example from {video} and {audio}: {err}") from None
