"""Transcripts for a corpus that has none (VoxCeleb2), as auto_avsr makes them: a Whisper model from a
local folder (a transformers folder, e.g. what `avsr prepare whisper-base` writes) transcribes each
utterance's 16 kHz audio, greedy, in English. Loaded once per process."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from avsr.errors import AvsrError
from avsr.text import normalise

WHISPER_SECONDS = 30  # Whisper hears at most this much; a longer clip's transcript would be cut


def check_whisper(folder: str | Path) -> Path:
    """Before any work: the folder holds a saved Whisper model with its processor."""
    folder = Path(folder)
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        missing.append("processor_config.json or preprocessor_config.json")
    if missing:
        raise AvsrError(f"--whisper {folder}: not a Whisper model folder (no {', '.join(missing)}); make one "
                        "with `avsr prepare whisper-base --out FOLDER`, or save a transformers Whisper model there")
    return folder


@lru_cache(maxsize=1)
def _load(folder: str):
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    torch.set_num_threads(1)  # one per worker process; and the same arithmetic in every process
    return WhisperProcessor.from_pretrained(folder), WhisperForConditionalGeneration.from_pretrained(folder).eval()


def transcribe(folder: str | Path, audio: np.ndarray) -> str:
    """(S,) float32 16 kHz mono -> the normalised English transcript ("" when Whisper hears no words)."""
    import torch

    if audio.size > WHISPER_SECONDS * 16000:
        raise AvsrError(f"{audio.size / 16000:.1f} s of audio: longer than Whisper's {WHISPER_SECONDS} s, so its "
                        "transcript would be cut")
    processor, model = _load(str(folder))
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        tokens = model.generate(features, language="en", task="transcribe", do_sample=False, num_beams=1)
    return normalise(processor.batch_decode(tokens, skip_special_tokens=True)[0])
