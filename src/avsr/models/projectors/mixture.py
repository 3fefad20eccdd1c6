"""Sparse mixture of projectors (Llama-SMoP): top-k routed MLP experts instead of one MLP.

Three topologies (docs/papers.md section 5):
- JEJR, joint experts and joint router: the audio and video tokens of an utterance form one
  sequence (audio first) that one router sends through one shared pool of experts; the output
  is split back per modality.
- JEDR, joint experts, disjoint routers: an audio router and a video router choose among one
  shared pool.
- DEDR, disjoint experts and routers: each modality has its own router and its own pool
  (the papers' best).
With one modality present (ASR or VSR), only that modality's tokens are routed.

Routing is per token, so JEJR's time concatenation amounts to routing the tokens of both
modalities with one router and computing its auxiliary losses over all of them.

Joint pools need one input width. When the modalities' widths differ (e.g. Whisper base 512
vs a 192-wide lip encoder, or "stack" compression at different rates), each modality first
goes through its own bias-free linear map to the widest modality's width (trainable, part of
the projector); equal widths (Whisper-medium and AV-HuBERT Large, 1024) are used as they are.

Written here rather than taken from a library: the papers' router/loss definitions, the
padding handling and the per-modality topologies are specific, and the dispatch is small.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avsr.models.projectors.mlp import MLP, Inputs

TOPOLOGIES = ("jejr", "jedr", "dedr")


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> probabilities (N, E) float32, weights (N, k), expert ids (N, k).

    Softmax in float32 over all experts, top-k, the k weights renormalised to sum to one.
    """
    probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
    top_p, experts = probs.topk(top_k, dim=-1)  # (N, k) each, best first
    weights = top_p / top_p.sum(-1, keepdim=True)
    return probs, weights, experts


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Switch/Mixtral load balancing: E * sum_{j,e} f_{j,e} * P_e over N tokens.

    f_{j,e}: fraction of tokens whose j-th choice is expert e (k x E); P_e: mean router
    probability of e. Uniform routing gives k, the minimum; imbalance raises it.
    """
    n_experts = probs.shape[-1]
    if probs.shape[0] == 0:
        return probs.new_zeros(())
    f = F.one_hot(experts, n_experts).float().mean(0)  # (k, E)
    return n_experts * (f * probs.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition of the router logits (keeps them small and stable)."""
    if logits.shape[0] == 0:
        return logits.new_zeros((), dtype=torch.float32)
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


class ExpertPool(nn.Module):
    """E MLP experts; each token runs through its k chosen experts only.

    Dispatch: the N*k (token, expert) assignments are sorted by expert, each expert gets one
    contiguous block (index_select), and the weighted outputs are summed back per token
    (index_add). Work follows N*k, not N*E; the loop is over experts, never over tokens.
    """

    def __init__(self, num_experts: int, d_in: int, d_hidden: int, d_out: int, layer_norm: bool):
        super().__init__()
        self.experts = nn.ModuleList(MLP(d_in, d_hidden, d_out, layer_norm) for _ in range(num_experts))
        self.d_out = d_out

    def forward(self, x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        """x (N, D_in), weights (N, k), experts (N, k) -> (N, D_out)."""
        n, k = experts.shape
        flat = experts.reshape(-1)  # (N*k,)
        order = torch.argsort(flat, stable=True)  # assignments grouped by expert
        token = order // k  # (N*k,) which token each sorted assignment belongs to
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        blocks = x.index_select(0, token).split(counts)  # per expert: (n_e, D_in)
        y = torch.cat([expert(block) for expert, block in zip(self.experts, blocks)])  # (N*k, D_out)
        y = y * weights.reshape(-1)[order, None].to(y.dtype)
        return y.new_zeros(n, self.d_out).index_add_(0, token, y)


class SparseMixtureProjector(nn.Module):
    """Llama-SMoP projector: routers + expert pools arranged by `topology`.

    aux: `load_balancing_loss` and `router_z_loss` (already multiplied by their
    coefficients; each is the mean over the routers that saw tokens in this call, so the
    scale does not depend on the topology or the number of modalities), their unweighted
    values under `smop/`, and per modality `usage/<m>/tokens` (N), `usage/<m>/routed` (E,
    tokens with expert e among their top-k) and `usage/<m>/gate` (E, summed weights), sums
    that evaluation accumulates into the expert-usage heatmap.
    """

    def __init__(self, d_in: dict[str, int], d_hidden: int, d_out: int, layer_norm: bool = False, *,
                 topology: str = "dedr", num_experts: int = 4, top_k: int = 2,
                 load_balancing_coef: float = 0.01, z_loss_coef: float = 0.001):
        super().__init__()
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown SMoP topology {topology!r}; choose from {TOPOLOGIES}")
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in 1..num_experts ({num_experts}), got {top_k}")
        self.topology, self.num_experts, self.top_k = topology, num_experts, top_k
        self.load_balancing_coef, self.z_loss_coef = load_balancing_coef, z_loss_coef
        modalities = list(d_in)
        joint_experts = topology in ("jejr", "jedr")
        width = max(d_in.values())
        # Joint pools: bring every modality to one width (see the module docstring).
        self.align = nn.ModuleDict({m: nn.Linear(d, width, bias=False) for m, d in d_in.items()
                                    if joint_experts and len(set(d_in.values())) > 1})
        self.pool_of = {m: "joint" if joint_experts else m for m in modalities}
        self.router_of = {m: "joint" if topology == "jejr" else m for m in modalities}
        pool_width = {p: width if p == "joint" else d_in[p] for p in set(self.pool_of.values())}
        self.pools = nn.ModuleDict({p: ExpertPool(num_experts, w, d_hidden, d_out, layer_norm)
                                    for p, w in sorted(pool_width.items())})
        # A router reads the tokens its pool will see (aligned ones for a joint pool).
        self.routers = nn.ModuleDict({r: nn.Linear(width if joint_experts else d_in[r], num_experts, bias=False)
                                      for r in sorted(set(self.router_of.values()))})

    def forward(self, inputs: Inputs) -> tuple[dict[str, torch.Tensor], dict]:
        # Real tokens only: padding is neither routed nor counted in the losses.
        real = {}
        for m, (x, pad) in inputs.items():
            x = x[~pad]  # (N_m, D_m)
            real[m] = self.align[m](x) if m in self.align else x
        groups: dict[str, list[str]] = {}
        for m in inputs:  # in input order: audio before video, as the JEJR concatenation
            groups.setdefault(self.router_of[m], []).append(m)
        out, aux = {}, {}
        lb_terms, z_terms = [], []
        for router_name, members in groups.items():
            x = torch.cat([real[m] for m in members])  # (N, D): the router's tokens
            logits = self.routers[router_name](x)  # (N, E)
            probs, weights, experts = route(logits, self.top_k)
            y = self.pools[self.pool_of[members[0]]](x, weights.to(x.dtype), experts)  # (N, D_out)
            if x.shape[0]:
                lb_terms.append(load_balancing_loss(probs, experts))
                z_terms.append(router_z_loss(logits))
            for m, y_m, e_m, w_m in zip(members, *(t.split([real[m].shape[0] for m in members])
                                                   for t in (y, experts, weights))):
                x_in, pad = inputs[m]
                full = y_m.new_zeros(*pad.shape, y_m.shape[-1])  # (B, T, D_out)
                full[~pad] = y_m
                out[m] = full
                aux.update(self._usage(m, e_m, w_m))
        zero = next(iter(inputs.values()))[0].new_zeros((), dtype=torch.float32)
        lb = torch.stack(lb_terms).mean() if lb_terms else zero
        z = torch.stack(z_terms).mean() if z_terms else zero
        aux.update({"load_balancing_loss": self.load_balancing_coef * lb, "router_z_loss": self.z_loss_coef * z,
                    "smop/load_balancing": lb.detach(), "smop/router_z": z.detach()})
        return out, aux

    def active_parameters(self) -> int:
        """Parameters one token runs through: its router (+ width alignment) and k experts."""
        per_expert = {name: sum(p.numel() for p in pool.experts[0].parameters()) for name, pool in self.pools.items()}
        routers = sum(p.numel() for p in self.routers.parameters()) // len(self.routers)
        align = sum(p.numel() for p in self.align.parameters()) // max(1, len(self.align))
        return routers + align + self.top_k * max(per_expert.values())

    def _usage(self, modality: str, experts: torch.Tensor, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """Expert-usage sums for one modality's tokens: experts, weights (N, k)."""
        with torch.no_grad():
            routed = torch.bincount(experts.reshape(-1), minlength=self.num_experts).float()  # (E,)
            gate = torch.zeros(self.num_experts, device=weights.device).index_add_(
                0, experts.reshape(-1), weights.reshape(-1).float())  # (E,)
        return {f"usage/{modality}/tokens": torch.tensor(float(experts.shape[0])),
                f"usage/{modality}/routed": routed, f"usage/{modality}/gate": gate}
