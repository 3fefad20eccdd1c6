"""LoRA as a module: a frozen nn.Linear plus named low-rank adapters, any subset active.

Written here rather than taken from peft because the Matryoshka and Omni schemes need
several adapters per layer with a per-forward choice of which ones run and sum (a global
adapter plus a per-scale or per-task one); a forward pass must never touch the others.

y = W x + b + (alpha / r) * sum_{a in active} B_a A_a x, with A_a Kaiming-uniform and
B_a zero, so every adapter starts as the identity update (standard LoRA semantics). The
adapters' updates are summed before the one scaling, in the Llama-AVSR family's order
(Omni-AVSR `Omni_AVSR/Llama_LoRA.py` L249-L258), so an imported model computes their numbers.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, names: tuple[str, ...], rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name in names:
            a = torch.empty(rank, base.in_features)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A[name] = nn.Parameter(a)  # (r, in)
            self.lora_B[name] = nn.Parameter(torch.zeros(base.out_features, rank))  # (out, r)
        self.dropout = nn.Dropout(dropout)
        # (adapter name, rows) pairs; rows None = every row of the batch, else a slice of it
        self.active: tuple[tuple[str, slice | None], ...] = ((names[0], None),) if names else ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)  # (B, T, out)
        if not self.active:
            return y
        h = self.dropout(x)
        everywhere = [name for name, rows in self.active if rows is None]
        if everywhere:
            y = y + self.scaled(everywhere, h)
        blocks: dict[tuple[int, int], list[str]] = {}  # (start, stop) -> adapters of those rows only
        for name, rows in self.active:
            if rows is not None:  # only this block of rows (one Matryoshka scale in a batched step)
                blocks.setdefault((rows.start, rows.stop), []).append(name)
        if blocks:
            # consecutive row segments with their adapters (none between blocks), cut with split:
            # its backward is one cat, where slicing would allocate a zero-filled full-size
            # gradient per block
            sizes, owners, end = [], [], 0
            for (start, stop), names in sorted(blocks.items()):
                if start < end:
                    raise ValueError("row blocks of LoRA adapters overlap; give each block its adapters at once")
                sizes += [start - end, stop - start]
                owners += [(), names]
                end = stop
            sizes.append(y.shape[0] - end)
            owners.append(())
            y = torch.cat([y_rows + self.scaled(names, h_rows) if names else y_rows
                           for names, y_rows, h_rows in zip(owners, y.split(sizes), h.split(sizes))])
        return y

    def scaled(self, names: list[str], h: torch.Tensor) -> torch.Tensor:
        """(alpha / r) * sum of B A h over the adapters `names`: (..., in) -> (..., out)."""
        total = (h @ self.lora_A[names[0]].T) @ self.lora_B[names[0]].T
        for name in names[1:]:
            total = total + (h @ self.lora_A[name].T) @ self.lora_B[name].T
        return total * self.scale


def add_lora(model: nn.Module, targets: tuple[str, ...], names: tuple[str, ...], rank: int, alpha: float,
             dropout: float = 0.0) -> list[LoRALinear]:
    """Wrap every nn.Linear whose attribute name is in `targets` (e.g. q_proj, v_proj)."""
    wrapped = []
    for module in list(model.modules()):
        for attr, child in list(module.named_children()):
            if attr in targets and isinstance(child, nn.Linear):
                lora = LoRALinear(child, names, rank, alpha, dropout)
                setattr(module, attr, lora)
                wrapped.append(lora)
    if not wrapped:
        raise ValueError(f"no nn.Linear named {targets} in the model: check lora targets")
    return wrapped


def set_active(model: nn.Module, names: tuple[str, ...], rows: list[tuple[tuple[str, ...], slice]] | None = None) -> None:
    """Choose which adapters run in every LoRA layer of `model`.

    `names` run on every row. `rows` (optional) adds adapters that run on a block of rows
    only, e.g. [(("a4v2",), slice(0, 8)), (("a16v5",), slice(8, 16))] when several scales
    share one batch; adapters not named are never touched.
    """
    spec = tuple((n, None) for n in names) + tuple((n, block) for group, block in (rows or []) for n in group)
    wanted = {n for n, _ in spec}
    for module in model.modules():
        if isinstance(module, LoRALinear):
            unknown = wanted - set(module.lora_A.keys())
            if unknown:
                raise KeyError(f"unknown LoRA adapters {sorted(unknown)}; this model has {sorted(module.lora_A.keys())}")
            module.active = spec
