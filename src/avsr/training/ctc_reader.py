"""`avsr pretrain-reader`, a training stage before the AVSR training: the CTC head of the ctc projector (models/projectors/ctc.py), trained on
the cached frozen encoder frames without the LLM: thousands of cheap steps where one LLM step
costs seconds on a CPU.

Targets are the transcript in the LLM's own tokens, but cut finer: the LLM tokenizer's BPE with
only its first `merges` merges (`Pieces`). Every piece is a token of the LLM's vocabulary, so
posteriors @ the embedding table stay embeddings the LLM knows; a word the training text never
had is still spelt with pieces the head has heard (with the full BPE, 19% of the fortunes test
tokens never occur in 1,200 training sentences; docs/reading.md). The head's vocabulary is the
pieces that occur in the training transcripts, plus the blank.

The training items are those of the AVSR training (`avsr.training.train.train_items`, the same
recipe and overrides): both read one feature cache, computed once.

With `folds` K >= 2 (`--folds`), K more heads are trained for cross-fitting
(`model.ctc_cross_fit`): head k on the training sentences outside fold k (`fold_of`), for
(K - 1) / K of the steps (the same epochs), so each training utterance has a head that reads it
as unseen speech.

Output folder (models/projectors/ctc.py reads it): model.safetensors (+ fold-k.safetensors) +
config.json (written last: the marker) with the token ids, the encoder width, rate and
compression, the settings, and a report (losses, validation CER / WER of greedy CTC decoding
alone, of each fold head too).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avsr.data.batching import FrameBudgetBatchSampler, TransformedDataset, collate, frame_lengths
from avsr.errors import AvsrError
from avsr.io import atomic_folder, check_output
from avsr.models.avsr_model import frozen_features
from avsr.models.compression import compress
from avsr.models.loading import check_backbones, load_encoders
from avsr.models.masks import lengths_to_padding_mask
from avsr.models.projectors.ctc import (ReaderError, ReaderHead, check_kernel, fold_of, greedy_ids,
                                        read_reader_config, save_reader)
from avsr.optimization import train_steps, warmup_cosine_adamw
from avsr.text import character_error_rate, normalise, word_errors
from avsr.training.config import TrainConfig
from avsr.training.train import train_items, val_items



def is_complete(folder: str | Path) -> bool:
    """A finished reader folder (its config.json, written last, is there and of our format)."""
    try:
        read_reader_config(folder)
    except ReaderError:
        return False
    return True


def check_replaceable(folder: Path) -> None:
    """avsr.io's one rule for outputs: an existing folder is replaced only when it is a finished
    reader folder of ours (or empty); the root, home, a checkpoint or an input are refused."""
    check_output(folder, replace=True, folder=True, mine=is_complete, what="a CTC reader folder")


class Pieces:
    """Text <-> LLM token ids under the LLM tokenizer's first `merges` BPE merges (0: bytes only;
    every merge: the tokenizer's own encoding). Pre-tokenisation (byte-level, words with their
    leading space) is the tokenizer's own; a sentence is read with a leading space, so every
    word is written alike."""

    def __init__(self, tokenizer, merges: int):
        state = json.loads(tokenizer.backend_tokenizer.to_str())
        if state["model"].get("type") != "BPE":
            raise AvsrError(f"the LLM's tokenizer is {state['model'].get('type')}, not BPE: the CTC reader cuts "
                            "transcripts with BPE merges")
        ranked = state["model"]["merges"][:merges]
        self.rank = {tuple(m.split(" ") if isinstance(m, str) else m): i for i, m in enumerate(ranked)}
        self.vocab = state["model"]["vocab"]
        self.tokenizer = tokenizer
        self.pre = tokenizer.backend_tokenizer.pre_tokenizer

    def _word(self, word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            ranks = [self.rank.get(pair, len(self.rank)) for pair in zip(parts, parts[1:])]
            best = min(range(len(ranks)), key=ranks.__getitem__)
            if ranks[best] == len(self.rank):
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        return parts

    def encode(self, text: str) -> list[int]:
        return [self.vocab[p] for word, _ in self.pre.pre_tokenize_str(" " + text) for p in self._word(word)]

    def decode(self, ids: list[int]) -> str:
        return normalise(self.tokenizer.decode(ids))


@dataclass
class ReaderConfig:
    """One CTC reader training (defaults: minutes on 2 CPU cores for 1,200 utterances)."""

    merges: int = 1000  # BPE merges of the LLM tokenizer kept for the targets (docs/reading.md)
    hidden: int = 1024  # 0: a linear head; > 0: one hidden ReLU layer of this width first (docs/reading.md)
    kernel: int = 3  # frames the hidden layer sees (odd; > 1 needs hidden > 0; docs/reading.md)
    dropout: float = 0.0  # on the input frames, in training
    steps: int = 2000
    batch: int = 32  # utterances per step
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    grad_clip: float = 5.0
    seed: int = 0
    log_every: int = 100
    folds: int = 0  # >= 2: that many more heads for cross-fitting (model.ctc_cross_fit); 0: none

    def __post_init__(self) -> None:
        if min(self.steps, self.batch) < 1 or self.merges < 0 or self.hidden < 0 or not 0 <= self.dropout < 1:
            raise AvsrError("reader settings: steps and batch must be >= 1, merges and hidden >= 0, dropout in [0, 1)")
        if self.folds == 1 or self.folds < 0:
            raise AvsrError(f"reader settings: folds must be 0 (no cross-fitting) or >= 2, got {self.folds}")
        try:
            check_kernel(self.kernel, self.hidden)
        except ValueError as err:
            raise AvsrError(f"reader settings: {err}") from None


def _frames(batch: dict, rate: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached audio features of a collated batch -> compressed frames (B, T', D), pad (B, T')."""
    feats = batch["audio_features"]  # (B, T, D)
    pad = lengths_to_padding_mask(batch["audio_feature_lengths"], feats.shape[1])
    return compress(feats, pad, rate, mode)


@torch.no_grad()
def read_split(head: ReaderHead, encoder: torch.nn.Module, dataset: TransformedDataset, pieces: Pieces, rate: int,
               mode: str, max_frames: int = 2000, dropout: float = 0.0) -> tuple[list[str], list[str]]:
    """(references, greedy CTC transcripts) of a split, encoder and head only (no LLM);
    `dropout` on the head's input frames as `model.ctc_train_dropout` gives them in training."""
    head.eval()
    refs, hyps = [], []
    sampler = FrameBudgetBatchSampler(frame_lengths(dataset.dataset), max_frames, shuffle=False)
    for indices in sampler:
        batch = collate([dataset[i] for i in indices])
        feats, lengths = frozen_features(encoder, batch, "audio")  # (B, T, D), (B,)
        x, pad = compress(feats, lengths_to_padding_mask(lengths, feats.shape[1]), rate, mode)
        logits = head(F.dropout(x, dropout), pad)  # (B, T', 1 + V); p = 0: x itself
        for text, ids in zip(batch["text"], greedy_ids(logits, pad)):
            refs.append(normalise(text))
            hyps.append(pieces.decode([int(head.token_ids[i - 1]) for i in ids]))
    return refs, hyps


def pretrain_reader(train_cfg: TrainConfig, out: str | Path, cfg: ReaderConfig | None = None, progress: bool = True,
                    log=print) -> Path:
    """Train the CTC head on the training items of `train_cfg` (its recipe: encoder, audio rate,
    compression, feature cache), report greedy CTC WER on the validation split, write `out`."""
    from transformers import AutoTokenizer

    cfg = cfg or ReaderConfig()
    out = Path(out)
    check_replaceable(out)
    m, d = train_cfg.model, train_cfg.data
    if len(m.audio_rates) != 1:
        raise AvsrError(f"model.audio_rates: the CTC reader reads one audio rate, got {list(m.audio_rates)}")
    if d.feature_cache_copies < 1:
        raise AvsrError("data.feature_cache_copies: the CTC reader trains on cached encoder features; set it to 1 or more")
    check_backbones(m.without_reader())  # the reader folder is what this makes
    rate, mode = m.audio_rates[0], m.compression
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(m.llm, local_files_only=True)
    pieces = Pieces(tokenizer, cfg.merges)
    encoders = load_encoders(m)
    _, items, collate_items = train_items(train_cfg, encoders, progress)
    features_s = time.perf_counter() - started
    texts = {i: item["text"] for i, item in enumerate(map(items.__getitem__, range(len(items))))
             if isinstance(item, dict)}  # item index -> transcript
    goals = {t: pieces.encode(t) for t in texts.values()}  # transcript -> LLM piece ids
    token_ids = sorted({i for g in goals.values() for i in g})
    index = {t: j + 1 for j, t in enumerate(token_ids)}  # 0 = blank
    d_in = encoders["audio"].output_dim * (rate if mode == "stack" else 1)
    val = val_items(train_cfg)  # every head is validated on it

    def train_head(pool: list[int], steps: int, name: str) -> tuple[ReaderHead, dict]:
        """A head trained for `steps` on the items `pool`, and its report (losses, validation)."""
        torch.manual_seed(cfg.seed)  # here: computing the features (or not, when cached) leaves the seed alone
        head = ReaderHead(d_in, token_ids, cfg.hidden, cfg.dropout, cfg.kernel)
        log(f"CTC reader{name}: {len(token_ids)} tokens ({cfg.merges} merges), "
            f"{sum(len(goals[texts[i]]) for i in pool) / max(1, sum(len(texts[i].split()) for i in pool)):.2f} tokens "
            f"per word, {sum(p.numel() for p in head.parameters()) / 1e6:.2f}M parameters, {len(pool)} utterances")
        rng = np.random.default_rng(cfg.seed)
        order: list[int] = []
        per_epoch = max(1, -(-len(pool) // cfg.batch))
        opt, sched = warmup_cosine_adamw(head.named_parameters(), cfg.lr, cfg.weight_decay, cfg.warmup_steps, steps,
                                         floor=0.02)

        def loss_at(step: int) -> torch.Tensor:
            if not order:  # an epoch: every utterance of the pool once, in the cache's copy of that epoch
                items.set_epoch(step // per_epoch)
                order.extend(rng.permutation(pool).tolist())
            chosen = [order.pop() for _ in range(min(cfg.batch, len(order)))]
            batch = collate_items([items[i] for i in chosen])
            x, pad = _frames(batch, rate, mode)  # (B, T', D), (B, T')
            log_probs = head(x, pad).float().log_softmax(-1)  # (B, T', 1 + V)
            goal = [[index[t] for t in goals[text]] for text in batch["text"]]
            return F.ctc_loss(log_probs.transpose(0, 1), torch.tensor([t for g in goal for t in g]), (~pad).sum(1),
                              torch.tensor([len(g) for g in goal]), blank=0, zero_infinity=True)

        def after(step: int, losses: list[float]) -> None:
            if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
                window = losses[-cfg.log_every:]
                log(f"reader{name} step {step + 1}/{steps}  loss {sum(window) / len(window):.3f}  "
                    f"{time.perf_counter() - started:.0f}s")

        t0 = time.perf_counter()
        history = train_steps(head, opt, sched, steps, loss_at, cfg.grad_clip, after)
        report = {"steps": steps, "utterances": len(pool), "train_seconds": round(time.perf_counter() - t0, 1),
                  "loss_history": [round(x, 4) for x in history]}
        refs, hyps = read_split(head, encoders["audio"], val, pieces, rate, mode)
        report.update(val_wer=round(word_errors(refs, hyps).wer, 4), val_cer=round(character_error_rate(refs, hyps), 4),
                      val_utterances=len(refs), val_examples=[{"ref": r, "hyp": h} for r, h in zip(refs[:5], hyps[:5])])
        log(f"CTC reader{name} alone: val WER {report['val_wer']:.3f}  CER {report['val_cer']:.3f}  "
            f"({len(refs)} utterances)")
        return head, report

    head, report = train_head(sorted(texts), cfg.steps, "")
    fold_heads, fold_reports = [], []
    for k in range(cfg.folds):
        fold_head, fold_report = train_head([i for i, t in sorted(texts.items()) if fold_of(t, cfg.folds) != k],
                                            max(1, cfg.steps * (cfg.folds - 1) // cfg.folds), f" (fold {k})")
        fold_heads.append(fold_head.eval())
        fold_reports.append(fold_report)
    report.update(features_seconds=round(features_s, 1), total_seconds=round(time.perf_counter() - started, 1),
                  **({"folds": fold_reports} if fold_reports else {}))
    with atomic_folder(out) as tmp:
        save_reader(head.eval(), tmp, {"rate": rate, "compression": mode, "merges": cfg.merges,
                                       "llm": str(m.llm), "audio_encoder": str(m.audio_encoder),
                                       "settings": asdict(cfg), "report": report}, fold_heads)
    return out
