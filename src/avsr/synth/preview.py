"""A contact sheet of the synthetic lips: visemes x speakers, and one utterance frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from avsr.io import claimed_file
from avsr.synth.corpus import SynthConfig, SynthError, make_speakers, speak
from avsr.synth.lips import ROI_SIZE, head_motion, render_mouth
from avsr.synth.visemes import VISEME_NAMES, VISEMES, mouth_trajectory, viseme_segments

_LABEL_H = 14


def _grid(tiles: list[list[np.ndarray]], col_labels: list[str], row_labels: list[str], scale: int) -> Image.Image:
    rows, cols = len(tiles), len(tiles[0])
    cell = ROI_SIZE * scale
    left = 60
    sheet = Image.new("L", (left + cols * cell, _LABEL_H + rows * cell), 255)
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(col_labels):
        draw.text((left + c * cell + 2, 1), label[:cell // 6], fill=0)
    for r, label in enumerate(row_labels):
        draw.text((2, _LABEL_H + r * cell + cell // 2 - 5), label, fill=0)
        for c in range(cols):
            tile = Image.fromarray(tiles[r][c]).resize((cell, cell), Image.NEAREST)
            sheet.paste(tile, (left + c * cell, _LABEL_H + r * cell))
    return sheet


def contact_sheet(path: str | Path, seed: int = 0, n_speakers: int = 4,
                  sentence: str = "bin blue at f two now") -> Path:
    """Write a PNG: every viseme for a few train speakers, then `sentence` frame by frame.
    The image type is checked first (not after rendering); the file is replaced whole."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None or path.is_dir():
        raise SynthError(f"--out {path}: not an image file name (unknown type {path.suffix!r} or a folder); "
                         "name a .png file")
    speakers = [s for s in make_speakers(SynthConfig(seed=seed)) if s.split == "train"][:n_speakers]
    shapes = np.array([VISEMES[n].shape for n in VISEME_NAMES], np.float32)  # (V, P)
    rng = np.random.default_rng(seed)
    tiles = [list(render_mouth(shapes, s.look, rng=rng)) for s in speakers]
    top = _grid(tiles, [n.replace("_", " ") for n in VISEME_NAMES], [s.id for s in speakers], 1)

    speaker = speakers[0]
    audio, phonemes = speak(sentence, speaker.voice, np.random.default_rng(seed))
    n_frames = audio.size // 640
    segments = viseme_segments(phonemes)
    frames = render_mouth(mouth_trajectory(segments, n_frames), speaker.look, head_motion(n_frames, rng), rng)
    picks = list(range(0, n_frames, max(1, n_frames // 14)))[:14]
    labels = []
    for f in picks:  # the viseme under each frame's centre
        t = (f + 0.5) / 25
        labels.append(next((s.viseme for s in segments if s.start <= t < s.end), "rest"))
    strip = _grid([[frames[f] for f in picks]], labels, [f"{speaker.id}"], 1)
    title = Image.new("L", (max(top.width, strip.width), 16), 255)
    ImageDraw.Draw(title).text((2, 2), f'"{sentence}", frames {picks[0]}..{picks[-1]} at 25 fps', fill=0)

    sheet = Image.new("L", (max(top.width, strip.width), top.height + title.height + strip.height), 255)
    sheet.paste(top, (0, 0))
    sheet.paste(title, (0, top.height))
    sheet.paste(strip, (0, top.height + title.height))
    with claimed_file(path, "contact-sheet") as tmp:  # the caller checked the path (avsr.io.check_output)
        sheet.save(tmp, format=image_format)
    return path
