"""Reports of an evaluation: results.json, report.md, wer_vs_snr.png, expert_usage.png (and the
rate grid's rate_grid.json/.md), and the folder they go to."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from avsr.errors import AvsrError
from avsr.io import check_output_folder, claim_folder, fs_errors_named, remove_written, write_text_atomic

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
def output_folder(folder: str | Path, command: str = "eval", inputs=(), replace: bool = False) -> Iterator[Path]:
    """Check the report folder by avsr.io's rule (not inside an input such as the checkpoint;
    report files already there replaced only with `replace` and only when this command wrote
    them) and claim it now, before any long work; if the command then fails, a folder it
    created is removed again, so nothing half-done remains."""
    check_output_folder(folder, command, ENTRIES, inputs=inputs, replace=replace)
    created = not Path(folder).exists()
    claim_folder(folder, command, ENTRIES)
    try:
        yield Path(folder)
    except BaseException:
        if created:
            with contextlib.suppress(AvsrError, OSError):
                remove_written(folder)
        raise


def markdown_table(report: dict) -> str:
    """Markdown: one row per task, WER per condition."""
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


def plot_wer_vs_snr(report: dict, path: Path) -> None:
    """One line per task; the clean condition is drawn at 25 dB."""
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


def write_report(report: dict, out: str | Path, title: str = "avsr evaluation") -> None:
    """results.json (everything, every hypothesis), report.md, wer_vs_snr.png, and with SMoP
    the expert-usage table and expert_usage.png."""
    out = Path(out)
    with fs_errors_named(out):
        out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "results.json", json.dumps(report, indent=1))
    text = f"# {title}\n\n{markdown_table(report)}\n"
    if "expert_usage" in report:
        text += f"\n## Expert usage (sparse mixture of projectors)\n\n{usage_table(report)}\n"
    write_text_atomic(out / "report.md", text)
    with fs_errors_named(out / "wer_vs_snr.png"):
        plot_wer_vs_snr(report, out / "wer_vs_snr.png")
    if "expert_usage" in report:
        with fs_errors_named(out / "expert_usage.png"):
            plot_expert_usage(report, out / "expert_usage.png")


def write_rate_grid(grid: dict, out: str | Path, title: str) -> None:
    """rate_grid.md, then rate_grid.json: written last, its presence marks the grid complete."""
    out = Path(out)
    write_text_atomic(out / "rate_grid.md", f"# {title}\n\n{grid_table(grid)}\n")
    write_text_atomic(out / "rate_grid.json", json.dumps(grid, indent=1))
