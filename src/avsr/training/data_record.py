"""What a model was trained on, recorded in its checkpoint and said where its output appears.

An LLM recogniser writes fluent text whatever it hears: a model trained on the synthetic GRID
corpus turns a real speech into GRID commands. The checkpoint therefore records its training
data (`training_data`, written by training with every checkpoint), and `avsr transcribe`, its
JSON and the demo say plainly what that means (`knowledge_note`). Checkpoints of older avsr
versions have no record: it is derived from the corpus their training section names when that
is still found (`checkpoint_training_data`), else the training data is said to be unknown.

The record: corpus name; kind "synthetic" (a corpus.json of avsr synth in `<root>/<corpus>`,
with its sentences: "grid" commands, "fortunes" sentences or the lines of a "text" file) or
"real" (anything else); utterances, hours and distinct words of the training manifest; and the
training transcripts' LLM tokens per second of speech (EOS included; mean and max): the
transcription's token limit follows the fastest (avsr.transcription.trust); and the utterances'
seconds (mean and max): the transcription cuts recordings into segments not much longer than the
longest (a model trained on 3-s sentences stops early on a 13-s segment: avsr.transcription.trust).
Records saved before the seconds were added get them from the corpus when it is still found.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

from avsr.data.manifests import FRAME_RATE, read_manifest, split_manifest
from avsr.errors import AvsrError

SYNTH_WRITER = "avsr synth"  # corpus.json's written_by (avsr.synth.corpus.WRITTEN_BY, a layer apart)
SENTENCES = {"grid": "GRID commands", "fortunes": "English sentences from the fortunes package",
             "text": "the sentences of a text file"}


def training_data(cfg) -> dict | None:
    """The record of a TrainConfig's training split (see the module docstring); None when its
    manifest cannot be read. Computed once per process (every checkpoint of a run saves it)."""
    d = cfg.data
    return data_record(str(d.root), d.corpus, d.train_split, d.format, cfg.model.llm)


def data_record(root: str, corpus: str, split: str = "train", fmt: str = "auto", llm: str | None = None) -> dict | None:
    """The record of one split's manifest; `llm` names the folder whose tokenizer counts tokens
    (None: no token rate). None when the manifest is missing or unreadable."""
    return copy.deepcopy(_record(root, corpus, split, fmt, llm))


@functools.lru_cache(maxsize=8)
def _record(root: str, corpus: str, split: str, fmt: str, llm: str | None) -> dict | None:
    try:
        rows = read_manifest(split_manifest(root, corpus, split, fmt), fmt, root)
    except (AvsrError, OSError, ValueError):
        return None
    timed = [r for r in rows if r.n_frames]
    seconds = [r.n_frames / FRAME_RATE for r in timed]
    record = {"corpus": corpus, "split": split, **_kind(Path(root) / corpus), "utterances": len(rows),
              "hours": round(sum(seconds) / 3600, 3), "vocabulary": len({w for r in rows for w in r.text.split()}),
              "tokens_per_second": None, "seconds": None}
    if seconds:
        record["seconds"] = {"mean": round(sum(seconds) / len(seconds), 2), "max": round(max(seconds), 2)}
    if llm and timed:
        rates = _token_rates(llm, [r.text for r in timed], seconds)
        if rates:
            record["tokens_per_second"] = {"mean": round(sum(rates) / len(rates), 2), "max": round(max(rates), 2)}
    return record


def _kind(folder: Path) -> dict:
    """{"kind", "sentences"} of a corpus folder: synthetic when avsr synth's corpus.json is there."""
    try:
        saved = json.loads((folder / "corpus.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {"kind": "real", "sentences": None}
    if not isinstance(saved, dict) or saved.get("written_by") != SYNTH_WRITER:
        return {"kind": "real", "sentences": None}
    text_file = saved.get("identity", {}).get("text_file")
    if not text_file:
        return {"kind": "synthetic", "sentences": "grid"}
    name = text_file.get("name") if isinstance(text_file, dict) else str(text_file)
    return {"kind": "synthetic", "sentences": "fortunes" if name == "fortunes.txt" else "text"}  # the quickstart's


def _token_rates(llm: str, texts: list[str], seconds: list[float]) -> list[float]:
    """Tokens (the transcript's, plus EOS) per second of each utterance, with the LLM's tokenizer."""
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(llm, local_files_only=True)
    except (OSError, ValueError):
        return []
    counts = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [(len(ids) + 1) / s for ids, s in zip(counts, seconds) if s > 0]


def checkpoint_training_data(opened) -> dict | None:
    """A Checkpoint's record: as saved, or derived from the corpus its training section names
    (older checkpoints) when that is found; None when unknown."""
    saved = opened.saved.get("training_data")
    if isinstance(saved, dict) and "seconds" in saved:
        return saved
    data = opened.train_section.get("data")
    derived = None
    if isinstance(data, dict) and data.get("root"):
        root = opened.locate("data.root", data["root"])
        derived = data_record(str(root), data.get("corpus", "synth"), data.get("train_split", "train"),
                              data.get("format", "auto"), None if isinstance(saved, dict) else opened.config.llm)
    if isinstance(saved, dict):  # saved before the seconds were recorded
        return {**saved, "seconds": (derived or {}).get("seconds")}
    return derived


def knowledge_note(record: dict | None) -> str | None:
    """One plain sentence on what the model can write, for a synthetic or unknown training set;
    None for a real corpus (nothing to warn about)."""
    if record is None:
        return ("the training data of this checkpoint is unknown (it was saved without a record of it and its "
                "corpus is not found): its transcripts may be limited to what it was trained on")
    if record.get("kind") != "synthetic":
        return None
    words, hours = record.get("vocabulary"), record.get("hours")
    sentences = record.get("sentences")
    if sentences == "grid":
        return (f"this model was trained on a synthetic corpus of {words} words (GRID commands, {hours} h of "
                "espeak-ng speech and drawn lips): it writes only such sentences, whatever it hears")
    return (f"this model was trained on a synthetic corpus ({SENTENCES.get(sentences, 'sentences')}: {words} distinct "
            f"words, {hours} h of espeak-ng speech and drawn lips): it knows no other words, and has never heard "
            "a real voice or seen a real face")
