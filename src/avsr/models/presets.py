"""Architecture facts of the backbones the papers use, as data (docs/papers.md §1.1, §1.4).

A preset is enough to build a backbone's architecture, without its weights, from its
configuration alone: `avsr train RECIPE --dry-run` builds the full-size model on the meta
device from these (avsr.models.dry_run). Nothing here reads or downloads weights.

A backbone setting (`model.llm`, `model.audio_encoder`, `model.video_encoder`) names its
preset either way (`resolve`):

* an existing local folder with a config.json: that configuration (a Hugging Face causal LM
  or Whisper folder, or an `avsr pretrain-encoder` video-encoder folder);
* otherwise the path's last part, case-insensitive: `models/Llama-3.2-1B`,
  `meta-llama/Llama-3.2-1B`, `models/whisper-medium.en`, `models/avhubert-large`,
  `large_vox_iter5.pt`. Instruct variants share the architecture of their base model.

LLM sizes (hidden, layers, attention heads, KV heads, FFN width, vocabulary) are those of
the models' config.json files: Llama 3.2-1B/3B and 3.1-8B, Qwen2.5 0.5B/1.5B/3B/7B, SmolLM2-135M. Note
that Qwen2.5-7B's embedding table has 152,064 rows, not the 151,936 of the smaller Qwen2.5
models, and that it does not tie its output layer to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avsr.errors import AvsrError


class PresetError(AvsrError):
    """A backbone setting that is neither a local model folder nor a known preset."""


# ---------------------------------------------------------------------------------- LLMs

_LLAMA3_TOKENS = {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>", "pad": None}
_QWEN_TOKENS = {"bos": None, "eos": "<|endoftext|>", "pad": "<|endoftext|>"}  # Qwen has no BOS; pad = EOS


def _llama3_rope(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class LLMPreset:
    """A decoder-only LLM's architecture; `config()` gives its transformers configuration."""

    name: str
    family: str  # "llama" or "qwen2": the transformers model type
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie_embeddings: bool
    rope_theta: float
    max_positions: int
    rope_scaling: dict | None = field(default=None, compare=False)
    tokens: dict = field(default_factory=dict, compare=False)  # bos / eos / pad token strings (None: absent)
    aliases: tuple[str, ...] = ()
    token_ids: tuple[int, int] | None = None  # (bos, eos) ids; None: the family's (Llama 3's, Qwen's)

    @property
    def kv_width(self) -> int:
        """Output width of k_proj / v_proj: KV heads x head width."""
        return self.kv_heads * (self.hidden // self.heads)

    def config(self):
        from transformers import LlamaConfig, Qwen2Config

        common = dict(vocab_size=self.vocab, hidden_size=self.hidden, num_hidden_layers=self.layers,
                      num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                      intermediate_size=self.intermediate, tie_word_embeddings=self.tie_embeddings,
                      max_position_embeddings=self.max_positions, rope_theta=self.rope_theta)
        if self.family == "llama":
            bos, eos = self.token_ids or (128000, 128001)
            return LlamaConfig(**common, rope_scaling=self.rope_scaling, bos_token_id=bos, eos_token_id=eos)
        bos, eos = self.token_ids or (151643, 151643)
        return Qwen2Config(**common, bos_token_id=bos, eos_token_id=eos)

    def describe(self) -> str:
        return (f"{self.name}: hidden {self.hidden}, {self.layers} layers, {self.heads} heads, "
                f"{self.kv_heads} KV heads (KV width {self.kv_width}), FFN {self.intermediate}, "
                f"vocabulary {self.vocab}{', tied embeddings' if self.tie_embeddings else ''}")


def _llama(name: str, hidden: int, layers: int, heads: int, intermediate: int, tie: bool, rope_factor: float,
           aliases: tuple[str, ...]) -> LLMPreset:
    return LLMPreset(name, "llama", hidden, layers, heads, 8, intermediate, 128256, tie, 500000.0, 131072,
                     _llama3_rope(rope_factor), _LLAMA3_TOKENS, aliases)


def _qwen(name: str, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
          tie: bool) -> LLMPreset:
    return LLMPreset(name, "qwen2", hidden, layers, heads, kv_heads, intermediate, vocab, tie, 1000000.0, 32768,
                     None, _QWEN_TOKENS)


LLMS = {p.name: p for p in (
    _llama("Llama-3.2-1B", 2048, 16, 32, 8192, True, 32.0, ("llama3.2-1b",)),
    _llama("Llama-3.2-3B", 3072, 28, 24, 8192, True, 32.0, ("llama3.2-3b",)),
    _llama("Llama-3.1-8B", 4096, 32, 32, 14336, False, 8.0, ("meta-llama-3.1-8b", "llama3.1-8b")),
    _qwen("Qwen2.5-0.5B", 896, 24, 14, 2, 4864, 151936, True),
    _qwen("Qwen2.5-1.5B", 1536, 28, 12, 2, 8960, 151936, True),
    _qwen("Qwen2.5-3B", 2048, 36, 16, 2, 11008, 151936, True),
    _qwen("Qwen2.5-7B", 3584, 28, 28, 4, 18944, 152064, False),
    # the quickstart's real LLM (`avsr prepare smollm2`; its folder's config.json)
    LLMPreset("SmolLM2-135M", "llama", 576, 30, 9, 3, 1536, 49152, True, 100000.0, 8192, None,
              {"bos": "<|im_start|>", "eos": "<|im_end|>", "pad": "<|im_end|>"}, token_ids=(1, 2)),
)}


# ------------------------------------------------------------------------------ Whisper


@dataclass(frozen=True)
class WhisperPreset:
    """A Whisper encoder's architecture (`.en` models have the same encoder)."""

    name: str
    d_model: int
    layers: int
    heads: int
    ffn: int
    n_mels: int = 80
    aliases: tuple[str, ...] = ()

    def config(self):
        from transformers import WhisperConfig

        return WhisperConfig(d_model=self.d_model, encoder_layers=self.layers, encoder_attention_heads=self.heads,
                             encoder_ffn_dim=self.ffn, decoder_layers=self.layers,
                             decoder_attention_heads=self.heads, decoder_ffn_dim=self.ffn, num_mel_bins=self.n_mels)

    def describe(self) -> str:
        return f"{self.name} encoder: d {self.d_model}, {self.layers} layers, {self.heads} heads, FFN {self.ffn}"


def _whisper(size: str, d: int, layers: int, heads: int, english: bool = True, n_mels: int = 80) -> WhisperPreset:
    name = f"whisper-{size}"
    return WhisperPreset(name, d, layers, heads, 4 * d, n_mels, (f"{name}.en",) if english else ())


WHISPERS = {p.name: p for p in (
    _whisper("tiny", 384, 4, 6), _whisper("base", 512, 6, 8), _whisper("small", 768, 12, 12),
    _whisper("medium", 1024, 24, 16), _whisper("large", 1280, 32, 20, english=False),
    _whisper("large-v2", 1280, 32, 20, english=False), _whisper("large-v3", 1280, 32, 20, english=False, n_mels=128),
)}


# ----------------------------------------------------------------------------- AV-HuBERT


@dataclass(frozen=True)
class VideoPreset:
    """AV-HuBERT's video-only encoder (avsr.models.video_encoder)."""

    name: str
    size: str  # "base" or "large": VideoEncoderConfig.base() / .large()
    aliases: tuple[str, ...] = ()

    def config(self):
        from avsr.models.video_encoder import VideoEncoderConfig

        return getattr(VideoEncoderConfig, self.size)()

    def describe(self) -> str:
        c = self.config()
        return f"{self.name}: d {c.embed_dim}, {c.layers} layers, {c.heads} heads, FFN {c.ffn_dim}, ResNet-18 front end"


VIDEOS = {p.name: p for p in (
    VideoPreset("avhubert-base", "base", ("av-hubert-base", "base-vox-iter5", "base-lrs3-iter5")),
    VideoPreset("avhubert-large", "large", ("av-hubert-large", "large-vox-iter5", "large-lrs3-iter5")),
)}


# ------------------------------------------------------------------------- folder configs


@dataclass(frozen=True)
class FolderBackbone:
    """A backbone described by a local folder's config.json (weights are not read)."""

    name: str
    kind: str  # "llm", "audio_encoder" or "video_encoder"
    settings: Any  # a transformers config, or a VideoEncoderConfig
    tokens: dict = field(default_factory=dict, compare=False)

    def config(self):
        return self.settings

    def describe(self) -> str:
        c = self.settings
        if self.kind == "llm":
            return (f"{self.name} (folder): hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
                    f"vocabulary {c.vocab_size}")
        if self.kind == "audio_encoder":
            return f"{self.name} (folder) encoder: d {c.d_model}, {c.encoder_layers} layers"
        return f"{self.name} (folder): d {c.embed_dim}, {c.layers} layers"


def _from_folder(kind: str, folder: Path) -> FolderBackbone:
    name = folder.resolve().name
    if kind == "video_encoder":
        from avsr.models.video_encoder import VideoEncoderConfig

        saved = json.loads((folder / "config.json").read_text("utf-8"))
        if not isinstance(saved, dict) or not isinstance(saved.get("encoder"), dict):
            raise ValueError("config.json has no \"encoder\" section (not an `avsr pretrain-encoder` folder)")
        return FolderBackbone(name, kind, VideoEncoderConfig(**saved["encoder"]))
    if kind == "audio_encoder":
        from transformers import WhisperConfig

        return FolderBackbone(name, kind, WhisperConfig.from_pretrained(str(folder), local_files_only=True))
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    # The dry run's stand-in tokenizer only needs to know which of these the real one has.
    tokens = {"bos": "<s>" if config.bos_token_id is not None else None, "eos": "</s>",
              "pad": "<pad>" if getattr(config, "pad_token_id", None) is not None else None}
    return FolderBackbone(name, kind, config, tokens)


# ------------------------------------------------------------------------------ resolve

PRESETS: dict[str, dict[str, Any]] = {"llm": LLMS, "audio_encoder": WHISPERS, "video_encoder": VIDEOS}


def _key(name: str) -> str:
    key = name.strip().lower().replace("_", "-")
    return key[: -len(".pt")] if key.endswith(".pt") else key


def _index(kind: str) -> dict[str, Any]:
    index = {}
    for preset in PRESETS[kind].values():
        for alias in (preset.name, *preset.aliases):
            index[_key(alias)] = preset
            index[_key(alias) + "-instruct"] = preset
    return index


def preset_names(kind: str) -> list[str]:
    return list(PRESETS[kind])


def resolve(kind: str, path: str | None):
    """The architecture a backbone setting names (see the module docstring); `kind` is the
    setting's name: "llm", "audio_encoder" or "video_encoder"."""
    if kind not in PRESETS:
        raise ValueError(f"unknown backbone kind {kind!r}; choose from {sorted(PRESETS)}")
    known = ", ".join(preset_names(kind))
    if not path:
        raise PresetError(f"model.{kind}: not set (name a local model folder or a preset: {known})")
    folder = Path(path)
    if folder.is_dir() and (folder / "config.json").is_file():
        from huggingface_hub.errors import StrictDataclassError  # transformers' typed configs

        try:
            return _from_folder(kind, folder)
        except (OSError, ValueError, TypeError, KeyError, AvsrError, StrictDataclassError) as err:
            raise PresetError(f"model.{kind}: cannot read the configuration in {folder}: "
                              f"{' '.join(str(err).split())}") from None
    preset = _index(kind).get(_key(Path(str(path).rstrip("/\\")).name))
    if preset is None:
        raise PresetError(f"model.{kind}: {path!r} is neither a local model folder with a config.json nor a "
                          f"known preset (its last part names it, case-insensitive); presets: {known}")
    return preset
