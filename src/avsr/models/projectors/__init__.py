"""Projectors: compressed encoder tokens -> LLM embedding space, for all modalities at once.

Every projector takes `{modality: (tokens (B, T, D_m), pad (B, T))}` and returns
`({modality: tokens (B, T, D_llm)}, aux)`: padded positions come out as zeros, and `aux` holds
auxiliary losses (keys ending in `_loss`, added to the training loss) and statistics; a projector
that returns fewer tokens than it was given (the CTC reader collapses frames into tokens) puts
their padding masks under aux["pad"] = {modality: (B, N)}. One call
sees every modality of the task, because the sparse mixture's joint topologies route audio and
video tokens through one pool. `build_projector` picks the kind from the model config.
"""

from __future__ import annotations

from torch import nn

from avsr.models.projectors.ctc import CTCProjector
from avsr.models.projectors.mixture import TOPOLOGIES, SparseMixtureProjector
from avsr.models.projectors.mlp import MLP, Inputs, MLPProjector

PROJECTORS = ("mlp", "smop", "ctc")
__all__ = ["CTCProjector", "MLP", "PROJECTORS", "TOPOLOGIES", "Inputs", "MLPProjector", "SparseMixtureProjector", "build_projector"]


def build_projector(cfg, d_in: dict[str, int], d_out: int, embeddings=None) -> nn.Module:
    """The projector named by `cfg.projector` (an `AVSRConfig`) for inputs of widths d_in;
    `embeddings`: the LLM's input embedding table (V, D_llm), which the CTC reader reads."""
    if cfg.projector == "mlp":
        return MLPProjector(d_in, cfg.projector_hidden, d_out, cfg.projector_layer_norm)
    if cfg.projector == "smop":
        return SparseMixtureProjector(d_in, cfg.projector_hidden, d_out, cfg.projector_layer_norm,
                                      topology=cfg.smop_topology, num_experts=cfg.smop_experts,
                                      top_k=cfg.smop_top_k, load_balancing_coef=cfg.smop_load_balancing,
                                      z_loss_coef=cfg.smop_z_loss)
    if cfg.projector == "ctc":
        return CTCProjector(d_in, cfg.projector_hidden, d_out, cfg.projector_layer_norm, reader=cfg.ctc_reader,
                            embeddings=embeddings, rate=cfg.audio_rates[0],
                            compression=cfg.compression, top_k=cfg.ctc_top_k, residual=cfg.ctc_residual,
                            train_head=cfg.ctc_train_head, train_dropout=cfg.ctc_train_dropout,
                            cross_fit=cfg.ctc_cross_fit)
    raise ValueError(f"unknown projector {cfg.projector!r}; choose from {PROJECTORS}")
