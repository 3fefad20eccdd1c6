"""The vocabulary of tasks and rates, in one place: which modalities a task reads, its prompt,
the rate pair type, Matryoshka scale names, which LoRA adapters run, and LLM input tokens per
second. Adding a task means adding it here (and its prompt); everything else reads these."""

from __future__ import annotations

from typing import NamedTuple

from avsr.models.encoders import ENCODERS

TASKS = ("asr", "vsr", "avsr")
MODALITIES = {"asr": ("audio",), "vsr": ("video",), "avsr": ("audio", "video")}
PROMPTS = {  # as in the Llama-AVSR papers
    "asr": "Transcribe speech to text.",
    "vsr": "Transcribe video to text.",
    "avsr": "Transcribe speech and video to text.",
}
# LoRA schemes (docs/papers.md): "ms" one adapter shared by every scale (Llama-MTSK MS; Omni-AVSR
# calls the same rule S), "ss" one per scale, "mss" both, "t" one per task, "st" shared + task.
LORA_SCHEMES = ("ms", "ss", "mss", "t", "st")


class RatePair(NamedTuple):
    """The compression rates a task runs at: (audio, video); None for a modality it does not read."""
    audio: int | None
    video: int | None


def modalities_of(tasks) -> set[str]:
    """Every modality the tasks read."""
    return {m for t in tasks for m in MODALITIES[t]}


def scale_name(task: str, pair: RatePair) -> str:
    """The Matryoshka scale of a task at a rate pair: "a4v2" (AVSR), "a4" (ASR), "v2" (VSR)."""
    return "".join(f"{m[0]}{r}" for m, r in zip(("audio", "video"), pair) if m in MODALITIES[task])


def adapter_names(scheme: str, task: str, pair: RatePair) -> tuple[str, ...]:
    """The LoRA adapters that run for a task at a rate pair under a scheme.

    MS: the global adapter "shared"; SS: the scale's own; MSS: both (updates added);
    T: the task's own; ST: "shared" and the task's. Nothing else runs.
    """
    shared = ("shared",) if scheme in ("ms", "mss", "st") else ()
    specific = {"ss": scale_name(task, pair), "mss": scale_name(task, pair), "t": task, "st": task}.get(scheme)
    return shared + ((specific,) if specific else ())


def tokens_per_second(task: str, pair: RatePair) -> float:
    """LLM input tokens per second of speech from the task's blocks at a rate pair."""
    return sum(ENCODERS[m].frames_per_second / rate for m, rate in zip(("audio", "video"), pair) if m in MODALITIES[task])
