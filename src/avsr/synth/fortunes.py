"""Real English sentences for the synthetic corpus, from the Debian `fortunes` package.

Why: the GRID grammar has 51 words and a fixed word order, so any LM learns it by heart; a
real LLM has to be shown real language. The fortune files (BSD fortune-mod data, a registry
package, offline) hold thousands of quotations and sayings; this keeps the sentences that a
speaker could read aloud as they are: one sentence, 5 to 14 plain words, no digits, symbols,
abbreviations or verse, and normalises them like every transcript (avsr.text.normalise).
Deterministic: the same files give the same sentences in the same order.
"""

from __future__ import annotations

import re
from pathlib import Path

from avsr.synth.text import TextError, check_sentence

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Files of sayings and quotations in plain prose (the offensive collection is another package,
# which is never read).
FORTUNE_FILES = ("education", "food", "fortunes", "humorists", "kids", "literature", "love", "miscellaneous",
                 "people", "pets", "platitudes", "science", "wisdom", "work")
# More files of the same package, read only for a corpus that needs more sentences than the
# sayings give (the reading profile's): smaller corpora keep the sentences they always had. Left
# out: the files about ethnic groups, men and women, drugs, medicine and politics.
MORE_FORTUNE_FILES = ("art", "computers", "cookie", "definitions", "disclaimer", "goedel", "knghtbrd", "law", "linux",
                      "magic", "paradoxum", "perl", "songs-poems", "sports", "startrek", "tao", "zippy")
MIN_WORDS, MAX_WORDS = 5, 14

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_READABLE = re.compile(r"[A-Z][A-Za-z ,;']*[a-z][.!?]")  # capital first, plain words, a full stop
_ABBREVIATION = re.compile(r"\b(?:[A-Z][a-z]?|Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|etc)\.")


def _fortunes(text: str) -> list[str]:
    """The fortunes of one file (separated by lines holding only '%'), attributions removed."""
    out = []
    for block in re.split(r"^%\s*$", text, flags=re.M):
        lines = []
        for line in block.splitlines():
            if line.strip().startswith("--"):  # "-- Author": the attribution ends the fortune
                break
            lines.append(line.strip())
        out.append(" ".join(lines))
    return out


def _spoken(sentence: str) -> str | None:
    """The normalised sentence if it reads aloud as written, else None."""
    sentence = sentence.replace('"', "").strip()
    if not _READABLE.fullmatch(sentence) or _ABBREVIATION.search(sentence) or "  " in sentence:
        return None
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or any(len(w.strip(",;.!?'")) > 13 for w in words):
        return None
    if any(w.isupper() and len(w) > 1 for w in words):  # acronyms are spelt out by speakers, not read
        return None
    return check_sentence(sentence, "fortune")


def fortune_sentences(folder: str | Path = FORTUNES_DIR, files: tuple[str, ...] = FORTUNE_FILES,
                      at_least: int = 0) -> list[str]:
    """Distinct spoken-style sentences from the fortune files, in file order; if `files` give
    fewer than `at_least`, those of MORE_FORTUNE_FILES follow them."""
    found = _sentences(Path(folder), files)
    if len(found) < at_least:
        found = _sentences(Path(folder), tuple(name for name in MORE_FORTUNE_FILES if name not in files), found)
    return found


def _sentences(folder: Path, files: tuple[str, ...], before: tuple[str, ...] | list[str] = ()) -> list[str]:
    """`before`, then the distinct sentences of `files` it does not hold, in file order."""
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise TextError(f"fortune files {', '.join(missing)} not found in {folder}: install the Debian package "
                        f"`fortunes` (apt-get install fortunes; scripts/setup.sh does)")
    seen, out = set(before), list(before)
    for name in files:
        for fortune in _fortunes((folder / name).read_text("utf-8", errors="replace")):
            for sentence in _SENTENCE_END.split(" ".join(fortune.split())):
                text = _spoken(sentence)
                if text and text not in seen:
                    seen.add(text)
                    out.append(text)
    return out


def write_sentence_file(path: str | Path, sentences: list[str]) -> Path:
    """One sentence per line (what `avsr synth --text` reads), written only if it differs."""
    path = Path(path)
    text = "\n".join(sentences) + "\n"
    if not path.is_file() or path.read_text("utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, "utf-8")
        tmp.replace(path)
    return path
