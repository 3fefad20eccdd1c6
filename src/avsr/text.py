"""Transcript text: the one normalisation (labels, WER, CTC), and corpus-level word and
character error rates with substitutions, deletions and insertions.

Normalisation (documented, applied to reference and hypothesis alike): lowercase, keep
letters, digits and apostrophes, every other character becomes a space, collapse spaces.
WER = (S + D + I) / N over the whole test set, N = reference words (the field's convention).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import jiwer


def normalise(sentence: str) -> str:
    """Transcript form used in labels and for WER: lowercase words, letters, digits, apostrophes."""
    words = re.sub(r"[^a-z0-9' ]+", " ", sentence.lower()).split()
    return " ".join(w.strip("'") for w in words if w.strip("'"))


@dataclass
class WERCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_words: int = 0

    @property
    def wer(self) -> float:
        return (self.substitutions + self.deletions + self.insertions) / max(self.reference_words, 1)

    def to_dict(self) -> dict:
        return {"wer": round(self.wer, 4), **asdict(self)}


def word_errors(references: list[str], hypotheses: list[str]) -> WERCounts:
    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    counts = WERCounts(reference_words=sum(len(r.split()) for r in refs))
    scored = [(r, h) for r, h in zip(refs, hyps) if r]
    if scored:
        out = jiwer.process_words([r for r, _ in scored], [h for _, h in scored])
        counts.substitutions, counts.deletions, counts.insertions = out.substitutions, out.deletions, out.insertions
    # jiwer cannot score an empty reference: every hypothesis word there is an insertion.
    counts.insertions += sum(len(h.split()) for r, h in zip(refs, hyps) if not r)
    return counts


def character_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus CER over the normalised strings (spaces count as characters)."""
    refs = [normalise(r) for r in references]
    hyps = [normalise(h) for h in hypotheses]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        return 0.0
    out = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
    edits = out.substitutions + out.deletions + out.insertions
    return edits / max(1, sum(len(r) for r, _ in pairs))
