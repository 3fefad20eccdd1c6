"""The encoder table: what the rest of avsr needs to know about each modality's frozen encoder.

One row per modality: how to load it from a backbone folder (with the model config's input
options), how many frames per second it outputs before compression (the token rates and the
elastic budgets read this), and the transformer layer class that FSDP shards as a unit. The
output size is the loaded module's `output_dim` (read from its folder's config), which the
projector widths follow, so Whisper base / medium / large-v3 (128 mel bins, from the folder's
`num_mel_bins`) and AV-HuBERT Base / Large plug in without edits elsewhere.

A new encoder: a module with the encoder contract (ARCHITECTURE.md, "where to add things")
and its row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class EncoderKind:
    name: str
    frames_per_second: float  # encoder output frames per second (before compression)
    layer_class: str  # "module:Class" of the transformer layer FSDP wraps as a unit
    loader: str  # "module:function" (path, AVSRConfig) -> encoder module, imported when used

    def load(self, path: str, cfg) -> nn.Module:
        """The encoder of the backbone folder (or file) `path`, with `cfg`'s input options."""
        return _resolve(self.loader)(path, cfg)

    def layer(self) -> type[nn.Module]:
        return _resolve(self.layer_class)


def _resolve(spec: str) -> Callable | type:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


ENCODERS = {
    "audio": EncoderKind("whisper", 50.0, "transformers.models.whisper.modeling_whisper:WhisperEncoderLayer",
                         "avsr.models.audio_encoder:load_audio_encoder"),
    "video": EncoderKind("av-hubert", 25.0, "avsr.models.video_encoder:EncoderLayer",
                         "avsr.models.video_encoder:load_for_model"),
}
