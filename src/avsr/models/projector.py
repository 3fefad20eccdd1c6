"""Projectors: encoder tokens -> LLM embedding space.

Every projector takes (tokens (B, T, D_in), pad (B, T)) and returns (tokens (B, T, D_llm),
aux) where aux is a dict of auxiliary losses and statistics (empty for the MLP; the sparse
mixture of projectors reports its load-balancing and z losses there). That signature is
the seam where the sparse mixture plugs in.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Module):
    """Linear -> ReLU -> Linear, with the optional final LayerNorm ("pre-fusion LN")."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, layer_norm: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))
        self.norm = nn.LayerNorm(d_out) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, dict]:
        y = self.norm(self.net(x))  # (B, T, D_out)
        return y.masked_fill(pad[..., None], 0.0), {}
