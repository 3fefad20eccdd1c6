"""Score decodings: WER with S/D/I, real-time factor and expert usage per task and condition,
gathered into the results dict that reports, experiments and tests read.

Noise is added to the audio only, so tasks without audio (VSR) are decoded once and their
result is reported for every SNR.
"""

from __future__ import annotations

import torch

from avsr.data.media import MediaError
from avsr.data.noise import read_noise
from avsr.evaluation.decode import Decoded, decode_tasks, labelled_split, snr_label
from avsr.models.avsr_model import AVSRModel
from avsr.models.tasks import MODALITIES, scale_name, tokens_per_second
from avsr.text import word_errors


def real_time_factor(decoded: Decoded) -> float:
    """Decoding seconds per second of speech (what --max-rtf budgets)."""
    return round(decoded.seconds / max(decoded.audio_seconds, 1e-9), 4)


def score(decoded: Decoded) -> dict:
    """One condition's numbers: {wer, substitutions, deletions, insertions, reference_words, rtf,
    utterances, llm_input_tokens (mean per utterance)}."""
    rows = decoded.utterances
    counts = word_errors([r["reference"] for r in rows], [r["hypothesis"] for r in rows])
    return {**counts.to_dict(), "rtf": real_time_factor(decoded), "utterances": len(rows),
            "llm_input_tokens": round(decoded.llm_input_tokens / max(1, len(rows)), 1)}


def usage_fractions(sums: dict[str, torch.Tensor]) -> dict:
    """SMoP usage sums (`usage/<m>/tokens|routed|gate`) -> per modality, per expert: the
    fraction of tokens with the expert among their top-k, and its mean gate weight."""
    out = {}
    for m in sorted({k.split("/")[1] for k in sums}):
        n = float(sums[f"usage/{m}/tokens"])
        out[m] = {"tokens": int(n),
                  "routed_fraction": [round(float(v) / max(n, 1), 4) for v in sums[f"usage/{m}/routed"]],
                  "mean_gate": [round(float(v) / max(n, 1), 4) for v in sums[f"usage/{m}/gate"]]}
    return out


def evaluate(model: AVSRModel, root: str, labels: str, tasks: tuple[str, ...], snrs: tuple, noise_path: str | None,
             num_beams: int = 4, max_new_tokens: int = 32, max_frames: int = 1000, seed: int = 0,
             limit: int | None = None, progress: bool = True, pairs: dict | None = None) -> dict:
    """{"results": {task: {snr label: {wer, substitutions, deletions, insertions, reference_words, rtf,
    utterances, llm_input_tokens}}}, "hypotheses": {task: {snr label: [{id, reference, hypothesis}]}},
    ...}; `pairs` {task: (audio rate, video rate)} picks the rates (default: the model's first
    pair). The noise file is read only when a condition is noisy."""
    dataset = labelled_split(root, labels, limit)
    pairs = {t: model.check_pair(t, (pairs or {}).get(t)) for t in tasks}
    noisy = any(s is not None for s in snrs)
    if noisy and not noise_path:
        raise MediaError("noisy test conditions need a noise file (the corpus babble)")
    noise = read_noise(noise_path) if noisy else None
    options = dict(num_beams=num_beams, max_new_tokens=max_new_tokens, max_frames=max_frames, seed=seed,
                   progress=progress)
    decoded: dict = {}  # (task, snr label) -> Decoded
    for snr in snrs:
        # Noise cannot change a task without audio (VSR): it is decoded at the first condition only.
        wanted = {t: pairs[t] for t in tasks if "audio" in MODALITIES[t] or snr == snrs[0]}
        for task, out in decode_tasks(model, dataset, wanted, snr, noise, **options).items():
            decoded[task, snr_label(snr)] = out
    results: dict = {}
    hypotheses: dict = {}  # every utterance's, so any number in the report can be checked
    expert_usage: dict = {}
    for task in tasks:
        for label in map(snr_label, snrs):
            out = decoded[task, label] if (task, label) in decoded else decoded[task, snr_label(snrs[0])]
            results.setdefault(task, {})[label] = score(out)
            hypotheses.setdefault(task, {})[label] = out.utterances
            if out.usage:
                expert_usage.setdefault(task, {})[label] = usage_fractions(out.usage)
    report = {"results": results, "hypotheses": hypotheses,
              "rates": {t: {"audio": p[0], "video": p[1], "scale": scale_name(t, p),
                            "tokens_per_second": tokens_per_second(t, p)} for t, p in pairs.items()},
              "decoding": {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False},
              "noise": {"file": str(noise_path) if noisy else None, "seed": seed}}
    if expert_usage:
        report["expert_usage"] = expert_usage
    return report
