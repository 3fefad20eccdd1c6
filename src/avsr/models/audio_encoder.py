"""Whisper encoder for clips of any length up to 30 s, with padding masked everywhere.

The transformers `WhisperEncoder.forward` insists on 30 s of input (3000 mel frames) and
cannot mask padding. We run the same weights ourselves: log-mel per clip, the two convs,
the first T' rows of the position table, the layers with a key-padding mask, the final
norm. On a 30 s input this is exactly the transformers forward; on short clips it is
4-18x faster, and a clip's output never depends on what it is batched with.
`pad_to_30s=True` reproduces the reference recipe (pad every clip to 30 s, cut after).
"""

from __future__ import annotations

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

    def __init__(self, encoder: nn.Module, n_mels: int, pad_to_30s: bool = False):
        super().__init__()
        self.encoder = encoder  # a transformers WhisperEncoder (pretrained or fresh)
        self.log_mel = LogMel(n_mels)
        self.pad_to_30s = pad_to_30s
        self.output_dim = encoder.config.d_model

    @classmethod
    def from_pretrained(cls, name_or_path: str, pad_to_30s: bool = False) -> "WhisperAudioEncoder":
        """A local folder or hub id of any Whisper model (only the encoder is kept)."""
        from transformers import WhisperConfig, WhisperModel

        config = WhisperConfig.from_pretrained(name_or_path)
        encoder = WhisperModel.from_pretrained(name_or_path).get_encoder()
        return cls(encoder, config.num_mel_bins, pad_to_30s)

    @classmethod
    def from_config(cls, **sizes) -> "WhisperAudioEncoder":
        """A randomly initialised Whisper-architecture encoder (tests, from-scratch training)."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config = WhisperConfig(**sizes)
        return cls(WhisperEncoder(config), config.num_mel_bins)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.encoder
        mel, frames = self.log_mel(audio, lengths)  # (B, M, F), (B,)
        if self.pad_to_30s:  # the reference recipe: every clip is 30 s long, padding included
            full = 2 * enc.config.max_source_positions
            pad_value = [m[:, : int(f)].min() for m, f in zip(mel, frames)]
            mel = torch.stack([F.pad(m[:, : int(f)], (0, full - int(f)), value=float(v))
                               for m, f, v in zip(mel, frames, pad_value)])
            frames = torch.full_like(frames, full)
        mel_pad = lengths_to_padding_mask(frames, mel.shape[-1])  # (B, F)
        x = mel.masked_fill(mel_pad[:, None, :], 0.0)
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
        attn = torch.zeros(pad.shape, dtype=x.dtype, device=x.device).masked_fill(pad, torch.finfo(x.dtype).min)
        attn = attn[:, None, None, :]  # (B, 1, 1, T) additive key mask
        for layer in enc.layers:
            x = layer(x, attn)
            if isinstance(x, tuple):
                x = x[0]
        x = enc.layer_norm(x)
        if self.pad_to_30s:  # cut back to the clip, as the reference does
            out_lengths = (torch.div(lengths, HOP, rounding_mode="floor") + 1) // 2
            x = x[:, : int(out_lengths.max())]
            pad = lengths_to_padding_mask(out_lengths, x.shape[1])
        return x.masked_fill(pad[..., None], 0.0), pad
