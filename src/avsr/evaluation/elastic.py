"""Elastic inference with a Matryoshka model: one checkpoint, several trained rate pairs per
task. Choose the pair a budget allows (tokens per second of speech, or a real-time factor
measured here), or evaluate every pair (the rate grid)."""

from __future__ import annotations

from avsr.data.dataset import AVDataset
from avsr.evaluation.decode import decode
from avsr.evaluation.score import evaluate, real_time_factor
from avsr.models.avsr_model import AVSRModel
from avsr.models.tasks import RatePair, scale_name, tokens_per_second


def choose_pair(model: AVSRModel, task: str, max_tokens_per_second: float | None = None,
                max_rtf: float | None = None, rtf_by_pair: dict | None = None) -> tuple[tuple, str]:
    """The trained rate pair with the most tokens per second that fits the budget (tokens per
    second of speech, and/or a real-time factor measured per pair in `rtf_by_pair`). Returns
    (pair, reason). More tokens = finer rates = (usually) lower WER."""
    fits = []
    for pair in model.pairs(task):
        tps = tokens_per_second(task, pair)
        if max_tokens_per_second is not None and tps > max_tokens_per_second:
            continue
        if max_rtf is not None and rtf_by_pair[pair] > max_rtf:
            continue
        fits.append((tps, pair))
    budget = " and ".join(x for x in (f"<= {max_tokens_per_second:g} tokens/s" if max_tokens_per_second else "",
                                       f"RTF <= {max_rtf:g}" if max_rtf else "") if x)
    if not fits:
        cheapest = min(model.pairs(task), key=lambda p: tokens_per_second(task, p))
        raise ValueError(f"no trained {task} rate pair fits {budget}; the cheapest, "
                         f"{scale_name(task, cheapest)}, needs {tokens_per_second(task, cheapest):g} tokens/s"
                         + (f" and RTF {rtf_by_pair[cheapest]:.3f}" if rtf_by_pair else ""))
    tps, pair = max(fits)
    return pair, f"{scale_name(task, pair)}: the most tokens ({tps:g}/s) within {budget or 'no budget'}"


def measure_rtf(model: AVSRModel, task: str, dataset: AVDataset, **decoding) -> dict[RatePair, float]:
    """Each trained pair's real-time factor for `task`, decoding `dataset` clean: an RTF budget
    depends on the machine, so it is measured, not computed."""
    return {pair: real_time_factor(decode(model, dataset, task, pair, **decoding)) for pair in model.pairs(task)}


def pick_pairs(model: AVSRModel, tasks: tuple[str, ...], rates: tuple | None = None,
               max_tokens_per_second: float | None = None, max_rtf: float | None = None,
               calibration: AVDataset | None = None, **decoding) -> tuple[dict, dict]:
    """({task: pair}, {task: why}): with a budget, each task's best pair within it (a `max_rtf`
    needs the `calibration` utterances to measure on); else `rates` (None: the first trained
    pair) for every task, and no reasons."""
    pairs, reasons = {}, {}
    for task in tasks:
        if max_tokens_per_second or max_rtf:
            rtf = measure_rtf(model, task, calibration, **decoding) if max_rtf else None
            pairs[task], reasons[task] = choose_pair(model, task, max_tokens_per_second, max_rtf, rtf)
        else:
            pairs[task] = model.check_pair(task, rates)
    return pairs, reasons


def rate_grid(model: AVSRModel, root: str, labels: str, tasks: tuple[str, ...], snrs: tuple,
              noise_path: str | None, **kwargs) -> dict:
    """Evaluate every trained rate pair of every task: {task: {scale: evaluate(...) of that pair}}."""
    grid: dict = {}
    for task in tasks:
        for pair in model.pairs(task):
            grid.setdefault(task, {})[scale_name(task, pair)] = evaluate(
                model, root, labels, (task,), snrs, noise_path, pairs={task: pair}, **kwargs)
    return grid
