"""Decode utterances with a model at one condition (task, SNR, rate pair) -> hypotheses and timing.

Nothing here scores or reports: this is what any transcription needs, so `evaluate` and a
plain transcription share it. Test noise is babble mixed at the SNR with a per-utterance seed
(the same noise segment for an utterance across tasks and runs), so conditions are
reproducible and every task sees identical inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from avsr.data.batching import FrameBudgetBatchSampler, TransformedDataset, collate, frame_lengths
from avsr.data.dataset import AVDataset
from avsr.data.media import SAMPLE_RATE
from avsr.data.transforms import AugmentConfig, EvalTransform
from avsr.models.avsr_model import AVSRModel, frozen_features
from avsr.models.tasks import MODALITIES, RatePair


def snr_label(snr: float | None) -> str:
    """A condition's name in results and progress bars: "clean" or "5 dB"."""
    return "clean" if snr is None else f"{snr:g} dB"


def labelled_split(root: str | Path, labels: str | Path, limit: int | None = None) -> AVDataset:
    """The items of a label CSV, or its first `limit` (refused unless positive: 0 would decode nothing)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of utterances, got {limit}")
    dataset = AVDataset(root, labels)
    dataset.rows = dataset.rows[:limit]
    return dataset


@dataclass
class Decoded:
    """One condition's decoding: every utterance's hypothesis (decoding order) and the sums a
    score needs, so nothing is decoded twice to measure it."""
    utterances: list[dict] = field(default_factory=list)  # [{id, reference, hypothesis}]
    seconds: float = 0.0  # wall time spent in model.generate
    audio_seconds: float = 0.0  # speech decoded
    llm_input_tokens: int = 0  # summed over utterances
    usage: dict[str, torch.Tensor] = field(default_factory=dict)  # SMoP "usage/<m>/..." sums; {} without SMoP


def decode(model: AVSRModel, dataset: AVDataset, task: str, pair: RatePair, snr: float | None = None,
           noise: np.ndarray | None = None, **options) -> Decoded:
    """Decode every item of `dataset` for one `task` at `pair`; see `decode_tasks` for the rest."""
    return decode_tasks(model, dataset, {task: pair}, snr, noise, **options)[task]


def decode_tasks(model: AVSRModel, dataset: AVDataset, tasks: dict[str, RatePair], snr: float | None = None,
                 noise: np.ndarray | None = None, num_beams: int = 4, max_new_tokens: int = 32,
                 max_frames: int = 1000, seed: int = 0, progress: bool = True, scores: bool = False,
                 search: str = "avsr", caps: dict[str, int] | None = None) -> dict[str, Decoded]:
    """Decode every item of `dataset` (any list of rows with `n_frames` in `dataset.rows`) for
    each task of `tasks` ({task: rate pair}) with `noise` (16 kHz samples) mixed at `snr` dB
    (None: clean). Batches are packed by video frames in a fixed order, so the same inputs give
    the same hypotheses. Each batch is read once, and each frozen encoder runs once on it for
    all the tasks that use its modality (ASR and AVSR share the noisy audio's features); a task's
    `seconds` include the encoders it uses, so its real-time factor is that of decoding it alone.
    With `scores`, each utterance also gets its hypothesis's "score" (see AVSRModel.generate) and,
    with search "avsr", its tokens' log-probabilities ("token_logp", a list). `search` goes to
    AVSRModel.generate: "avsr" (our batched beam search) or "transformers". `caps`: a token limit
    per utterance id instead of `max_new_tokens` (search "avsr")."""
    model.eval()
    device = model.device
    data = TransformedDataset(dataset, EvalTransform(AugmentConfig(), snr_db=snr, noise=noise, seed=seed), seed=seed)
    loader = DataLoader(data, batch_sampler=FrameBudgetBatchSampler(frame_lengths(dataset), max_frames, shuffle=False),
                        collate_fn=collate)
    frozen = [m for m in ("audio", "video") if any(m in MODALITIES[t] for t in tasks) and not model.encoder_trains(m)]
    outs = {task: Decoded() for task in tasks}
    for batch in tqdm(loader, desc=f"decode {'+'.join(tasks)} {snr_label(snr)}", disable=not progress, leave=False):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        encoder_seconds = {}
        for m in frozen:  # what AVSRModel.encode would run per task, run once here
            start = time.perf_counter()
            batch[f"{m}_features"], batch[f"{m}_feature_lengths"] = frozen_features(model.encoders[m], batch, m)
            encoder_seconds[m] = time.perf_counter() - start
        limit = torch.tensor([caps[i] for i in batch["ids"]]) if caps else max_new_tokens  # (B,) or one
        for task, pair in tasks.items():
            out = outs[task]
            start = time.perf_counter()
            texts, aux = model.generate(batch, task, num_beams=num_beams, max_new_tokens=limit,
                                        return_aux=True, pair=pair, return_scores=scores, search=search)
            out.seconds += time.perf_counter() - start + sum(encoder_seconds.get(m, 0.0) for m in MODALITIES[task])
            out.utterances += [{"id": i, "reference": r, "hypothesis": h}
                               for i, r, h in zip(batch["ids"], batch["text"], texts)]
            if scores:
                for j, (row, score) in enumerate(zip(out.utterances[-len(texts):], aux["scores"].tolist())):
                    row["score"] = score
                    if "token_logp" in aux:
                        row["token_logp"] = aux["token_logp"][j].tolist()
            out.llm_input_tokens += int(aux["llm_input_tokens"].sum())  # (B,) tokens per utterance
            for k, v in aux.items():
                if k.startswith("usage/"):
                    out.usage[k] = out.usage.get(k, 0) + v.detach().float().cpu()
            out.audio_seconds += float(batch["audio_lengths"].sum()) / SAMPLE_RATE  # (B,) samples
    return outs
