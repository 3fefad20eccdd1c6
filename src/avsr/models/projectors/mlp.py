"""The MLP projector of Llama-AVSR (one MLP per modality); its MLP is also the expert of the
sparse mixture (see the package docstring for the projector contract)."""

from __future__ import annotations

import torch
from torch import nn

Inputs = dict[str, tuple[torch.Tensor, torch.Tensor]]


class MLP(nn.Module):
    """Linear -> ReLU -> Linear, with the optional final LayerNorm ("pre-fusion LN").

    The Llama-AVSR projector, and each expert of the sparse mixture of projectors.
    """

    def __init__(self, d_in: int, d_hidden: int, d_out: int, layer_norm: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))
        self.norm = nn.LayerNorm(d_out) if layer_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.net(x))  # (..., D_out)


class MLPProjector(nn.Module):
    """One MLP per modality (Llama-AVSR)."""

    def __init__(self, d_in: dict[str, int], d_hidden: int, d_out: int, layer_norm: bool = False):
        super().__init__()
        self.mlps = nn.ModuleDict({m: MLP(d, d_hidden, d_out, layer_norm) for m, d in d_in.items()})

    def active_parameters(self) -> int:
        """Parameters one token runs through: its modality's MLP."""
        return max(sum(p.numel() for p in mlp.parameters()) for mlp in self.mlps.values())

    def forward(self, inputs: Inputs) -> tuple[dict[str, torch.Tensor], dict]:
        out = {}
        for m, (x, pad) in inputs.items():
            out[m] = self.mlps[m](x).masked_fill(pad[..., None], 0.0)  # (B, T, D_llm)
        return out, {}
