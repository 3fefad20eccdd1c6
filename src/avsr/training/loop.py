"""The plain training loop of the backbone pre-trainings (small LM, lip encoder).

The AVSR model trains under Lightning (`avsr.training.train`), which owns its loop; the
backbones train with this one: one optimizer update per step, in a fixed order, so the
weights depend only on the seeds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


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
