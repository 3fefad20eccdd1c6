"""Transcripts for the synthetic corpus: a GRID-style command grammar, or a user's text file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from avsr.errors import AvsrError
from avsr.io import read_utf8
from avsr.text import normalise

# GRID (Cooke et al., 2006): command, colour, preposition, letter, digit, adverb.
GRID_GRAMMAR: tuple[tuple[str, ...], ...] = (
    ("bin", "lay", "place", "set"),
    ("blue", "green", "red", "white"),
    ("at", "by", "in", "with"),
    tuple("abcdefghijklmnopqrstuvxyz"),  # GRID leaves out "w"
    ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    ("again", "now", "please", "soon"),
)


# One line is one utterance: at most 40 words and 300 characters, about 18 s at the slowest
# speaking rate a speaker is given (135 words per minute; training drops utterances over 16 s by
# default). A longer line is refused before any synthesis: it is a paragraph, not a sentence,
# and a 3,000-word one would be synthesised, rendered and kept in memory as one clip of 20 minutes.
MAX_LINE_WORDS, MAX_LINE_CHARACTERS = 40, 300
MAX_FILE_BYTES = 64 * 2**20  # far more sentences than a corpus can use (avsr.synth.corpus.MAX_UTTERANCES)


class TextError(AvsrError):
    """A text file or sentence that cannot become a transcript."""


def grid_sentence(rng: np.random.Generator) -> str:
    return " ".join(slot[rng.integers(len(slot))] for slot in GRID_GRAMMAR)


def check_sentence(sentence: str, where: str) -> str:
    """Return the normalised transcript, or raise TextError naming `where` (file:line)."""
    if not sentence.strip():
        raise TextError(f"{where}: empty sentence")
    if not sentence.isascii():
        bad = next(c for c in sentence if not c.isascii())
        raise TextError(f"{where}: non-ASCII character {bad!r} in {sentence.strip()!r} (only English ASCII text is supported)")
    text = normalise(sentence)
    if not text:
        raise TextError(f"{where}: no words in {sentence.strip()!r}")
    words = len(text.split())
    if words > MAX_LINE_WORDS or len(text) > MAX_LINE_CHARACTERS:
        raise TextError(f"{where}: {words} word{'s' * (words != 1)}, {len(text)} characters: a line is one "
                        f"utterance of at most {MAX_LINE_WORDS} words and {MAX_LINE_CHARACTERS} characters (about "
                        "18 s of speech); split it into sentences, one per line")
    return text


def read_text_file(path: str | Path) -> list[str]:
    """One sentence per line; blank lines are errors (they usually mean a broken file)."""
    path = Path(path)
    if not path.is_file():  # a folder fails, a FIFO or a device would block or never end
        raise TextError(f"text file not found: {path}" if not path.exists() else
                        f"{path}: not a regular file (a folder, pipe or device); --text takes a text file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise TextError(f"{path}: {path.stat().st_size / 2**20:.0f} MiB; a sentence file of at most "
                        f"{MAX_FILE_BYTES // 2**20} MiB is read (more than a corpus can use)")
    lines = read_utf8(path, "save it as UTF-8 (plain ASCII English)", TextError).splitlines()
    if not any(line.strip() for line in lines):
        raise TextError(f"{path}: the text file is empty")
    while lines and not lines[-1].strip():
        lines.pop()
    return [check_sentence(line, f"{path}:{i}") for i, line in enumerate(lines, 1)]
