"""Whisper encoder for clips of any length up to 30 s, with padding masked everywhere.

The transformers `WhisperEncoder.forward` insists on 30 s of input (3000 mel frames) and
cannot mask padding. We run the same weights ourselves: log-mel per clip, the two convs,
the first T' rows of the position table, the layers with a key-padding mask, the final
norm. On a 30 s input this is exactly the transformers forward; on short clips it is
4-18x faster, and a clip's output never depends on what it is batched with.

Two input options reproduce the Llama-AVSR family's code exactly (the model config's
`pad_audio_to_30s` and `audio_znorm`, which imported checkpoints set):
- `znorm`: each clip's waveform normalised to zero mean and unit variance over its samples
  (`layer_norm` with eps 1e-8; Llama-AVSR `datamodule/transforms.py` L137-L145, the test
  transform), before the log-mel;
- `pad_to_30s`: each clip zero-padded to 30 s before the log-mel (what the transformers
  feature extractor does), the encoder run over all 1500 positions, and the output cut to
  max(floor(N / 16000 * 50), 25) frames computed in float32 (Llama-AVSR
  `models/modeling_AVSRLLM.py` L499-L510, Omni-AVSR `Omni_AVSR/modeling_OmniAVSR.py` L528-L537).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avsr.data.media import SAMPLE_RATE
from avsr.models.masks import lengths_to_padding_mask

HOP = 160  # 10 ms mel hop
N_FFT = 400
THIRTY_SECONDS = 30 * SAMPLE_RATE


class LogMel(nn.Module):
    """Whisper's log-mel features in torch (same numbers as WhisperFeatureExtractor).

    Computed clip by clip on the real samples only, so the reflect padding of the STFT and
    the per-clip dynamic-range clamp (max - 8) never see another clip's padding.
    """

    def __init__(self, n_mels: int = 80):
        super().__init__()
        from transformers import WhisperFeatureExtractor

        filters = WhisperFeatureExtractor(feature_size=n_mels).mel_filters  # (n_fft/2+1, n_mels)
        self.register_buffer("filters", torch.tensor(filters, dtype=torch.float32).T.contiguous(), persistent=False)
        self.register_buffer("window", torch.hann_window(N_FFT), persistent=False)

    def one(self, audio: torch.Tensor) -> torch.Tensor:
        """(N,) samples -> (n_mels, N // 160) log-mel, in float32 whatever the model's dtype (the
        FFT has no bfloat16 kernel on CPU, and 8-bit mantissas would blur the spectrum anyway)."""
        spec = torch.stft(audio.float(), N_FFT, HOP, window=self.window.float(),
                          return_complex=True)  # (201, N/160 + 1)
        power = spec[:, :-1].abs() ** 2
        mel = torch.clamp(self.filters.float() @ power, min=1e-10).log10()  # (n_mels, frames)
        mel = torch.maximum(mel, mel.max() - 8.0)
        return (mel + 4.0) / 4.0

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, N) zero-padded, lengths (B,) samples -> mel (B, n_mels, F) zero-padded, frames (B,)."""
        mels = [self.one(audio[i, : int(n)]) for i, n in enumerate(lengths)]
        frames = torch.tensor([m.shape[1] for m in mels], device=audio.device)
        out = audio.new_zeros(len(mels), self.filters.shape[0], int(frames.max()))
        for i, m in enumerate(mels):
            out[i, :, : m.shape[1]] = m
        return out, frames


class WhisperAudioEncoder(nn.Module):
    """Audio (B, N) at 16 kHz -> features (B, T, D) at 50 Hz and a padding mask (True = pad)."""

    def __init__(self, encoder: nn.Module, n_mels: int, pad_to_30s: bool = False, znorm: bool = False):
        super().__init__()
        self.encoder = encoder  # a transformers WhisperEncoder (pretrained or fresh)
        self.log_mel = LogMel(n_mels)
        self.pad_to_30s = pad_to_30s
        self.znorm = znorm
        self.output_dim = encoder.config.d_model

    @classmethod
    def from_pretrained(cls, folder: str, pad_to_30s: bool = False, znorm: bool = False) -> "WhisperAudioEncoder":
        """The encoder of a local Whisper folder (a transformers `WhisperModel` or
        `WhisperForConditionalGeneration`, or the encoder alone as `avsr import` writes it). Only
        the encoder's tensors are read from safetensors files: the decoder is never built."""
        from transformers import WhisperConfig, WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig.from_pretrained(folder, local_files_only=True)
        state = _encoder_tensors(Path(folder))
        if state is None:  # no safetensors (an older .bin folder): transformers loads the whole model
            encoder = WhisperModel.from_pretrained(folder, local_files_only=True).get_encoder()
        else:
            with torch.device("meta"):
                encoder = WhisperEncoder(config)
            encoder.load_state_dict(state, strict=True, assign=True)
            encoder.embed_positions.weight.requires_grad_(False)  # as transformers builds it
        return cls(encoder.float().eval(), config.num_mel_bins, pad_to_30s, znorm)

    @classmethod
    def from_config(cls, **sizes) -> "WhisperAudioEncoder":
        """A randomly initialised Whisper-architecture encoder (tests, from-scratch training)."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig(**sizes)
        return cls(WhisperEncoder(config), config.num_mel_bins)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.znorm:  # per clip, over its real samples; padding stays zero
            audio = torch.stack([F.pad(F.layer_norm(a[: int(n), None], (int(n), 1), eps=1e-8)[:, 0],
                                       (0, audio.shape[1] - int(n))) for a, n in zip(audio, lengths)])
        if self.pad_to_30s:
            return self._padded(audio, lengths)
        mel, frames = self.log_mel(audio, lengths)  # (B, M, F), (B,)
        return self._encode(mel, frames)

    def _padded(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The authors' recipe (see the module docstring): 30 s of input per clip, output cut after."""
        if int(lengths.max()) > THIRTY_SECONDS:
            raise ValueError("audio longer than 30 s")
        clips = audio.new_zeros(audio.shape[0], THIRTY_SECONDS)  # (B, 480000) zero-padded
        for i, n in enumerate(lengths.tolist()):
            clips[i, :n] = audio[i, :n]
        mel = torch.stack([self.log_mel.one(c) for c in clips]).to(audio.dtype)  # (B, M, 3000)
        full = torch.full_like(lengths, mel.shape[-1])
        x, _ = self._encode(mel, full)  # (B, 1500, D)
        # int(max_len / 16000 * 50) on a tensor: float32 arithmetic, at least 25 frames
        out_lengths = (lengths.to(torch.float32) / SAMPLE_RATE * 50).floor().long().clamp(25, x.shape[1])
        pad = lengths_to_padding_mask(out_lengths, int(out_lengths.max()))  # (B, T)
        x = x[:, : pad.shape[1]]
        return x.masked_fill(pad[..., None], 0.0), pad

    def _encode(self, mel: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mel (B, M, F) zero-padded beyond `frames` (B,) -> features (B, ceil(F / 2), D), pad."""
        enc = self.encoder
        mel_pad = lengths_to_padding_mask(frames, mel.shape[-1])  # (B, F)
        x = mel.masked_fill(mel_pad[:, None, :], 0.0).to(enc.conv1.weight.dtype)  # the encoder's dtype (bf16 too)
        # Zero padded positions between the convs too: a lone clip sees zero padding there.
        x = F.gelu(enc.conv1(x))  # (B, D, F)
        x = x.masked_fill(mel_pad[:, None, :], 0.0)
        x = F.gelu(enc.conv2(x)).transpose(1, 2)  # (B, T, D), T = ceil(F / 2)
        out_lengths = (frames + 1) // 2
        if x.shape[1] > enc.embed_positions.weight.shape[0]:
            raise ValueError(f"audio longer than {enc.config.max_source_positions / 50:.0f} s")
        x = x + enc.embed_positions.weight[: x.shape[1]]
        x = F.dropout(x, p=enc.dropout, training=self.training)
        pad = lengths_to_padding_mask(out_lengths, x.shape[1])  # (B, T)
        attn = None
        if bool(pad.any()):  # additive key mask (B, 1, 1, T); none when nothing is padded
            attn = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, torch.finfo(x.dtype).min)
            attn = attn[:, None, None, :]
        for layer in enc.layers:
            x = layer(x, attn)
            if isinstance(x, tuple):
                x = x[0]
        x = enc.layer_norm(x)
        return x.masked_fill(pad[..., None], 0.0), pad


def _encoder_tensors(folder: Path) -> dict[str, torch.Tensor] | None:
    """The encoder's tensors (names relative to the encoder) from a Whisper folder's safetensors
    files (one, or the shards of an index), or None when the folder has none."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    state = {}
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                for prefix in ("model.encoder.", "encoder."):
                    if key.startswith(prefix):
                        state[key[len(prefix):]] = f.get_tensor(key)
    if not state:
        raise ValueError(f"{folder}: its safetensors files hold no Whisper encoder tensors (encoder.* or "
                         "model.encoder.*)")
    return state


def load_audio_encoder(path: str, cfg) -> WhisperAudioEncoder:
    """The encoder table's loader (avsr.models.encoders): a Whisper folder with the config's input options."""
    return WhisperAudioEncoder.from_pretrained(path, pad_to_30s=cfg.pad_audio_to_30s, znorm=cfg.audio_znorm)
