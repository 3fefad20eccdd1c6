"""Transcription of recordings of any length: `Transcriber`, `transcribe` (also `avsr.transcribe`)
and the text / JSON / SRT writers (docs/transcribe.md)."""

from avsr.transcription.formats import FORMATS, check_format, render
from avsr.transcription.transcriber import (Segment, Transcriber, Transcript, check_checkpoint, choose_task,
                                            transcribe)

__all__ = ["FORMATS", "Segment", "check_format", "Transcriber", "Transcript", "check_checkpoint", "choose_task", "render",
           "transcribe"]
