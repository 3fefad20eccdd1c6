"""LoRA as a module: a frozen nn.Linear plus named low-rank adapters, any subset active.

Written here rather than taken from peft because the Matryoshka and Omni schemes need
several adapters per layer with a per-forward choice of which ones run and sum (a global
adapter plus a per-scale or per-task one); a forward pass must never touch the others.

y = W x + b + sum_{a in active} (alpha / r) * B_a A_a x, with A_a Kaiming-uniform and
B_a zero, so every adapter starts as the identity update (standard LoRA semantics).
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
        self.active: tuple[str, ...] = names[:1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.active:
            h = self.dropout(x)
            for name in self.active:
                y = y + self.scale * ((h @ self.lora_A[name].T) @ self.lora_B[name].T)
        return y


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


def set_active(model: nn.Module, names: tuple[str, ...]) -> None:
    """Choose which adapters run in every LoRA layer of `model`."""
    for module in model.modules():
        if isinstance(module, LoRALinear):
            unknown = set(names) - set(module.lora_A.keys())
            if unknown:
                raise KeyError(f"unknown LoRA adapters {sorted(unknown)}")
            module.active = tuple(names)
