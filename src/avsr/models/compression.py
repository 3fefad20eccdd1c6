"""Token compression after an encoder: average pooling or stacking of K consecutive frames.

Audio tokens leave the encoder at 50 Hz and video tokens at 25 Hz; a rate K gives 50/K and
25/K tokens per second. Groups never mix a clip's frames with padding: a clip of T frames
gives floor(T / K) tokens (the incomplete last group is dropped, as AvgPool1d does), and at
least one token, averaged over the frames it has.
"""

from __future__ import annotations

import torch

from avsr.models.masks import lengths_to_padding_mask

MODES = ("avg-pooling", "stack")


def compressed_lengths(lengths: torch.Tensor, rate: int) -> torch.Tensor:
    return torch.clamp(torch.div(lengths, rate, rounding_mode="floor"), min=1)


def compress(x: torch.Tensor, pad: torch.Tensor, rate: int, mode: str = "avg-pooling") -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, D), pad (B, T) True = padding -> (B, T', D or K*D), pad (B, T')."""
    if mode not in MODES:
        raise ValueError(f"unknown compression mode {mode!r}; choose from {MODES}")
    if rate == 1:
        return x, pad
    b, t, d = x.shape
    lengths = (~pad).sum(1)
    out_lengths = compressed_lengths(lengths, rate)
    t_out = int(out_lengths.max())
    need = t_out * rate
    keep = (~pad).to(x.dtype)[..., None]  # (B, T, 1)
    x = x * keep
    if need > t:  # a clip shorter than K: pad the time axis so it forms one group
        x = torch.nn.functional.pad(x, (0, 0, 0, need - t))
        keep = torch.nn.functional.pad(keep, (0, 0, 0, need - t))
    groups = x[:, :need].reshape(b, t_out, rate, d)  # (B, T', K, D)
    if mode == "stack":
        out = groups.reshape(b, t_out, rate * d)
    else:
        counts = keep[:, :need].reshape(b, t_out, rate, 1).sum(2).clamp(min=1)
        out = groups.sum(2) / counts
    out_pad = lengths_to_padding_mask(out_lengths, t_out)
    return out.masked_fill(out_pad[..., None], 0.0), out_pad
