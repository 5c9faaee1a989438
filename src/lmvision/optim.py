"""Optimiser and schedule wiring shared by the strategies.

Configs give the optimiser and the schedule as partials (``_partial_: true``). A strategy
calls ``optimizer(params)`` and ``scheduler(optimizer, total_steps=...)``: every schedule in
lmvision takes ``total_steps``, so none needs to know the budget at config time.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.05,
                  min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``min_lr_ratio``."""
    total = max(int(total_steps), 1)
    warmup = int(total * warmup_fraction)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def constant(optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
    """No schedule: the learning rate stays as configured."""
    return LambdaLR(optimizer, lambda step: 1.0)


def configure_optimizers(module: torch.nn.Module, optimizer: Callable, scheduler: Callable | None,
                         total_steps: int) -> dict:
    """Build the optimiser over trainable parameters and a per-step schedule for Lightning."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = optimizer(params)
    if scheduler is None:
        return {"optimizer": opt}
    sched = scheduler(opt, total_steps=int(total_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
