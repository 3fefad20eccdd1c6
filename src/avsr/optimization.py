"""Optimisation shared by every training loop of avsr: one warm-up + cosine schedule (the AVSR
training decays to 0, the backbone pre-trainings to a floor), one AdamW whose grouping exempts
vectors and scalars from weight decay where asked, and the plain step loop of the backbone
pre-trainings (the AVSR model trains under Lightning, which owns its loop). Torch only, so the
training and the backbone preparation both import it from below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def warmup_cosine(warmup: int, total: int, floor: float = 0.0) -> Callable[[int], float]:
    """LR factor per step (for `LambdaLR`): linear warm-up to 1, (step + 1) / warmup over the
    first `warmup` steps, then a cosine from 1 down to `floor` at step `total`, held after it."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def decay_groups(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], weight_decay: float,
                 exempt_vectors: bool = True) -> list[dict]:
    """AdamW parameter groups of the trainable parameters, in their given order.

    With `exempt_vectors`, matrices and convolution kernels (dim >= 2) decay and vectors and
    scalars (biases, norm weights, PReLU slopes) do not: two groups. Otherwise one group where
    every parameter decays."""
    params = [p for _, p in named_parameters if p.requires_grad]
    if not exempt_vectors:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def adamw(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
          betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          exempt_vectors: bool = True) -> torch.optim.AdamW:
    """AdamW over `decay_groups(named_parameters, weight_decay, exempt_vectors)`."""
    return torch.optim.AdamW(decay_groups(named_parameters, weight_decay, exempt_vectors),
                             lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


def warmup_cosine_adamw(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], lr: float,
                        weight_decay: float, warmup: int, total: int, floor: float = 0.0,
                        betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                        exempt_vectors: bool = True
                        ) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """(AdamW, per-step warm-up + cosine scheduler): what every training loop here starts with."""
    opt = adamw(named_parameters, lr, weight_decay, betas, eps, exempt_vectors)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total, floor))


def train_steps(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                steps: int, loss_at: Callable[[int], torch.Tensor], grad_clip: float,
                after_step: Callable[[int, list[float]], None] | None = None) -> list[float]:
    """Train `steps` steps; returns every step's loss.

    Per step: `loss_at(step)` draws the batch and runs the forward pass, then the gradients are
    reset, back-propagated and clipped to norm `grad_clip`, and the optimizer and the (per-step)
    scheduler step. `after_step(step, losses)` then sees the losses so far (for logging).
    """
    model.train()
    losses: list[float] = []
    for step in range(steps):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if after_step is not None:
            after_step(step, losses)
    return losses
