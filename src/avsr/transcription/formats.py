"""Transcripts as text (one line per file, named when there are several), JSON (everything) or
SRT subtitles (one file's segments)."""

from __future__ import annotations

import json

from avsr.errors import AvsrError

FORMATS = ("text", "json", "srt")


def srt_time(seconds: float) -> str:
    """SRT's HH:MM:SS,mmm (rounded to the millisecond)."""
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def to_srt(transcript) -> str:
    """Numbered cues, one per segment with text (an empty cue is not valid SRT), blank-line separated."""
    cues = [s for s in transcript.segments if s.text]
    return "".join(f"{n}\n{srt_time(s.start)} --> {srt_time(s.end)}\n{s.text}\n\n" for n, s in enumerate(cues, 1))


def check_format(fmt: str, files: int) -> None:
    """Refuse, before any work, a format that cannot hold `files` recordings (SRT: one)."""
    if fmt not in FORMATS:
        raise AvsrError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "srt" and files != 1:
        raise AvsrError(f"--format srt writes the subtitles of one recording; got {files} files (use json for several)")


def render(transcripts: list, fmt: str, about: dict | None = None) -> str:
    """The transcripts in `fmt`; `about` (checkpoint, decoding settings) heads the JSON document."""
    check_format(fmt, len(transcripts))
    if fmt == "text":  # one file: its text alone (as in a shell's $(...)); several: "<file><TAB><text>" each
        if len(transcripts) == 1:
            return f"{transcripts[0].text}\n"
        return "".join(f"{t.source}\t{t.text}\n" for t in transcripts)
    if fmt == "json":
        return json.dumps({**(about or {}), "files": [t.to_dict() for t in transcripts]}, indent=1) + "\n"
    return to_srt(transcripts[0])
