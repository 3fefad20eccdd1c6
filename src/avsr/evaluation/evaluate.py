"""`avsr eval`: decode a test split per task and per SNR; WER, S/D/I, real-time factor; reports.

Test noise is babble mixed at each SNR with a per-utterance seed (the same noise segment
for an utterance across tasks and runs), so numbers are reproducible and the tasks see
identical inputs. Noise is added to the audio only, so tasks without audio (VSR) are decoded
once and their result is reported for every SNR.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from avsr.data.batching import FrameBudgetBatchSampler, TransformedDataset, collate, frame_lengths
from avsr.data.dataset import AVDataset
from avsr.data.media import SAMPLE_RATE, MediaError
from avsr.data.noise import read_noise
from avsr.data.transforms import AugmentConfig, EvalTransform
from avsr.evaluation.wer import word_errors
from avsr.errors import AvsrError
from avsr.io import claim_folder, remove_written, write_text_atomic
from avsr.models.avsr_model import MODALITIES, AVSRModel, scale_name

CLEAN = None
ENTRIES = ("results.json", "report.md", "wer_vs_snr.png", "expert_usage.png", "rate_grid.json", "rate_grid.md")


def default_eval_folder(checkpoint: str | Path) -> Path:
    """<run>/eval/<name> for a checkpoint in <run>/checkpoints/, else <checkpoint>-eval beside it:
    never inside the checkpoint folder, which the next training of that run replaces."""
    checkpoint = Path(checkpoint)
    if checkpoint.name in ("", ".", ".."):
        checkpoint = checkpoint.resolve()
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent / "eval" / checkpoint.name
    return checkpoint.with_name(f"{checkpoint.name}-eval")


@contextlib.contextmanager
def output_folder(folder: str | Path, command: str = "eval") -> Iterator[Path]:
    """Claim the report folder now (an unwritable one fails before any long work); if the
    command then fails, a folder it created is removed again, so nothing half-done remains."""
    created = not Path(folder).exists()
    claim_folder(folder, command, ENTRIES)
    try:
        yield Path(folder)
    except BaseException:
        if created:
            with contextlib.suppress(AvsrError, OSError):
                remove_written(folder)
        raise


def snr_label(snr: float | None) -> str:
    return "clean" if snr is None else f"{snr:g} dB"


def tokens_per_second(task: str, pair: tuple) -> float:
    """LLM input tokens per second of speech from the audio/video blocks at a rate pair."""
    audio, video = pair
    return (50.0 / audio if "audio" in MODALITIES[task] else 0.0) + (25.0 / video if "video" in MODALITIES[task] else 0.0)


def choose_pair(model: AVSRModel, task: str, max_tokens_per_second: float | None = None,
                max_rtf: float | None = None, rtf_by_pair: dict | None = None) -> tuple[tuple, str]:
    """Elastic inference: the trained rate pair with the most tokens per second that fits the
    budget (tokens per second of speech, and/or a real-time factor measured per pair in
    `rtf_by_pair`). Returns (pair, reason). More tokens = finer rates = (usually) lower WER."""
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


def evaluate(model: AVSRModel, root: str, labels: str, tasks: tuple[str, ...], snrs: tuple, noise_path: str | None,
             num_beams: int = 4, max_new_tokens: int = 32, max_frames: int = 1000, seed: int = 0,
             limit: int | None = None, progress: bool = True, pairs: dict | None = None) -> dict:
    """{"results": {task: {snr label: {wer, substitutions, deletions, insertions, reference_words, rtf,
    utterances, llm_input_tokens}}}, "hypotheses": {task: {snr label: [{id, reference, hypothesis}]}},
    ...}; `pairs` {task: (audio rate, video rate)} picks the rates (default: the model's first
    pair). The noise file is read only when a condition is noisy."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of utterances, got {limit}")
    pairs = {t: model.check_pair(t, (pairs or {}).get(t)) for t in tasks}
    dataset = AVDataset(root, labels)
    dataset.rows = dataset.rows[:limit]
    noisy = any(s is not None for s in snrs)
    if noisy and not noise_path:
        raise MediaError("noisy test conditions need a noise file (the corpus babble)")
    noise = read_noise(noise_path) if noisy else None
    model.eval()
    results: dict = {}
    hypotheses: dict = {}  # every utterance's, so any number in the report can be checked
    expert_usage: dict = {}
    for snr in snrs:
        transform = EvalTransform(AugmentConfig(), snr_db=snr, noise=noise, seed=seed)
        data = TransformedDataset(dataset, transform, seed=seed)
        loader = DataLoader(data, batch_sampler=FrameBudgetBatchSampler(frame_lengths(dataset), max_frames,
                                                                         shuffle=False), collate_fn=collate)
        for task in tasks:
            if "audio" not in MODALITIES[task] and task in results:  # noise cannot change it: decoded once
                first = next(iter(results[task]))
                results[task][snr_label(snr)] = dict(results[task][first])
                hypotheses[task][snr_label(snr)] = hypotheses[task][first]
                if task in expert_usage:
                    expert_usage[task][snr_label(snr)] = expert_usage[task][first]
                continue
            ids, refs, hyps, seconds, audio_seconds, input_tokens = [], [], [], 0.0, 0.0, 0
            usage: dict[str, torch.Tensor] = {}
            for batch in tqdm(loader, desc=f"eval {task} {snr_label(snr)}", disable=not progress, leave=False):
                start = time.perf_counter()
                texts, aux = model.generate(batch, task, num_beams=num_beams, max_new_tokens=max_new_tokens,
                                            return_aux=True, pair=pairs[task])
                seconds += time.perf_counter() - start
                hyps += texts
                input_tokens += int(aux["llm_input_tokens"].sum())
                for k, v in aux.items():
                    if k.startswith("usage/"):
                        usage[k] = usage.get(k, 0) + v.detach().float().cpu()
                refs += batch["text"]
                ids += batch["ids"]
                audio_seconds += float(batch["audio_lengths"].sum()) / SAMPLE_RATE
            if usage:
                expert_usage.setdefault(task, {})[snr_label(snr)] = usage_fractions(usage)
            counts = word_errors(refs, hyps)
            results.setdefault(task, {})[snr_label(snr)] = {
                **counts.to_dict(), "rtf": round(seconds / max(audio_seconds, 1e-9), 4), "utterances": len(refs),
                "llm_input_tokens": round(input_tokens / max(1, len(refs)), 1)}
            hypotheses.setdefault(task, {})[snr_label(snr)] = [
                {"id": i, "reference": r, "hypothesis": h} for i, r, h in zip(ids, refs, hyps)]
    report = {"results": results, "hypotheses": hypotheses,
              "rates": {t: {"audio": p[0], "video": p[1], "scale": scale_name(t, p),
                            "tokens_per_second": tokens_per_second(t, p)} for t, p in pairs.items()},
              "decoding": {"num_beams": num_beams, "max_new_tokens": max_new_tokens, "do_sample": False},
              "noise": {"file": str(noise_path) if noisy else None, "seed": seed}}
    if expert_usage:
        report["expert_usage"] = expert_usage
    return report


def rate_grid(model: AVSRModel, root: str, labels: str, tasks: tuple[str, ...], snrs: tuple,
              noise_path: str | None, **kwargs) -> dict:
    """Evaluate every trained rate pair of every task: {task: {scale: evaluate(...) of that pair}}."""
    grid: dict = {}
    for task in tasks:
        for pair in model.pairs(task):
            grid.setdefault(task, {})[scale_name(task, pair)] = evaluate(
                model, root, labels, (task,), snrs, noise_path, pairs={task: pair}, **kwargs)
    return grid


def grid_table(grid: dict) -> str:
    """Markdown: per task, one row per rate pair with tokens/s, LLM input tokens and WER per condition."""
    out = []
    for task, by_scale in grid.items():
        conditions = list(next(iter(by_scale.values()))["results"][task])
        out += [f"| {task.upper()} rates | tokens/s | LLM input tokens / utt | RTF | "
                + " | ".join(conditions) + " |", "|---|---|---|---|" + "---|" * len(conditions)]
        for scale, report in by_scale.items():
            r = report["results"][task]
            first = next(iter(r.values()))
            out.append(f"| {scale} | {report['rates'][task]['tokens_per_second']:g} | {first['llm_input_tokens']:g} | "
                       f"{first['rtf']:.3f} | " + " | ".join(f"{100 * r[c]['wer']:.1f}" for c in conditions) + " |")
        out.append("")
    return "\n".join(out) + "\nWER in %."


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


def plot_expert_usage(report: dict, path: Path) -> None:
    """Heatmap per task (first test condition): modalities x experts, fraction of tokens routed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usage = report["expert_usage"]
    fig, axes = plt.subplots(1, len(usage), figsize=(3.6 * len(usage), 2.4), squeeze=False,
                             gridspec_kw={"wspace": 0.45})
    for ax, (task, by_snr) in zip(axes[0], usage.items()):
        condition, by_modality = next(iter(by_snr.items()))
        rows = list(by_modality)
        grid = [by_modality[m]["routed_fraction"] for m in rows]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
        ax.set_xticks(range(len(grid[0])), [f"E{j}" for j in range(len(grid[0]))])
        ax.set_yticks(range(len(rows)), rows)
        ax.set_title(f"{task.upper()} ({condition})", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="fraction of tokens routed")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def markdown_table(report: dict) -> str:
    results = report["results"]
    conditions = list(next(iter(results.values())).keys())
    lines = ["| task | " + " | ".join(conditions) + " |", "|---|" + "---|" * len(conditions)]
    for task, by_snr in results.items():
        cells = [f"{100 * by_snr[c]['wer']:.1f}" for c in conditions]
        lines.append(f"| {task.upper()} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("WER in %. Details (S/D/I, reference words, real-time factor) in results.json.")
    return "\n".join(lines)


def usage_table(report: dict) -> str:
    """Markdown: per task, condition and modality, the fraction of tokens routed to each expert."""
    lines = []
    for task, by_snr in report["expert_usage"].items():
        for condition, by_modality in by_snr.items():
            for m, u in by_modality.items():
                cells = " ".join(f"{v:.2f}" for v in u["routed_fraction"])
                lines.append(f"| {task.upper()} | {condition} | {m} | {u['tokens']} | {cells} |")
    header = "| task | condition | modality | tokens | fraction routed per expert (E0 E1 ...) |\n|---|---|---|---|---|"
    return header + "\n" + "\n".join(lines) + "\n\nEach token goes to k experts, so a row sums to k."


def plot_wer_vs_snr(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for task, by_snr in report["results"].items():
        noisy = [(float(c.split()[0]), v["wer"]) for c, v in by_snr.items() if c != "clean"]
        noisy.sort()
        xs = [x for x, _ in noisy] + ([25.0] if "clean" in by_snr else [])
        ys = [100 * y for _, y in noisy] + ([100 * by_snr["clean"]["wer"]] if "clean" in by_snr else [])
        ax.plot(xs, ys, marker="o", label=task.upper())
    ax.set_xlabel("babble SNR (dB); 25 = clean")
    ax.set_ylabel("WER (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: dict, out: str | Path, title: str = "avsr evaluation") -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(report, indent=1))
    text = f"# {title}\n\n{markdown_table(report)}\n"
    if "expert_usage" in report:
        text += f"\n## Expert usage (sparse mixture of projectors)\n\n{usage_table(report)}\n"
    write_text_atomic(out / "report.md", text)
    plot_wer_vs_snr(report, out / "wer_vs_snr.png")
    if "expert_usage" in report:
        plot_expert_usage(report, out / "expert_usage.png")
