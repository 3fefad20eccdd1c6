"""Projectors: compressed encoder tokens -> LLM embedding space, for all modalities at once.

Every projector takes `{modality: (tokens (B, T, D_m), pad (B, T))}` and returns
`({modality: tokens (B, T, D_llm)}, aux)`: padded positions come out as zeros, and `aux` holds
auxiliary losses (keys ending in `_loss`, added to the training loss) and statistics. One call
sees every modality of the task, because the sparse mixture's joint topologies route audio and
video tokens through one pool. `build_projector` picks the kind from the model config.
"""

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


PROJECTORS = ("mlp", "smop")


def build_projector(cfg, d_in: dict[str, int], d_out: int) -> nn.Module:
    """The projector named by `cfg.projector` (an `AVSRConfig`) for inputs of widths d_in."""
    if cfg.projector == "mlp":
        return MLPProjector(d_in, cfg.projector_hidden, d_out, cfg.projector_layer_norm)
    if cfg.projector == "smop":
        from avsr.models.mixture import SparseMixtureProjector

        return SparseMixtureProjector(d_in, cfg.projector_hidden, d_out, cfg.projector_layer_norm,
                                      topology=cfg.smop_topology, num_experts=cfg.smop_experts,
                                      top_k=cfg.smop_top_k, load_balancing_coef=cfg.smop_load_balancing,
                                      z_loss_coef=cfg.smop_z_loss)
    raise ValueError(f"unknown projector {cfg.projector!r}; choose from {PROJECTORS}")
