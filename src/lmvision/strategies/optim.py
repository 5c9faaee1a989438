"""Optimisers and learning-rate schedules, chosen by config group (``optimizer=``, ``scheduler=``).

Each is a small config dataclass that checks its values when the run is assembled (before any
training) and builds the real object later, once the network and the step budget are known:

    optimizer = AdamW(lr=3e-3, weight_decay=1e-4).build(net)
    schedule = WarmupCosine(warmup_fraction=0.05).build(optimizer, total_steps=1000)

Weight decay applies to the weight matrices and kernels of layers (linear, convolution,
attention projections) only. Norm scales, biases, embedding tables and a model's free
parameters (class tokens, position embeddings, a learned "no text" vector) are not decayed
unless ``decay_all=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from lmvision import checks

EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


@dataclass
class AdamW:
    """AdamW (decoupled weight decay).

    Args:
        lr: Peak learning rate (> 0).
        weight_decay: Decoupled weight decay (>= 0) of the decayed parameters.
        betas: Coefficients of the running averages, each in [0, 1).
        eps: Term added to the denominator (> 0).
        decay_all: Also decay norms, biases and embeddings.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    decay_all: bool = False

    def __post_init__(self) -> None:
        checks.number("lr", self.lr, low=0.0, low_open=True)
        checks.number("weight_decay", self.weight_decay, low=0.0)
        checks.number("eps", self.eps, low=0.0, low_open=True)
        if len(self.betas) != 2:
            raise checks.ArgumentError("betas", "expected two numbers", list(self.betas))
        for i, beta in enumerate(self.betas):
            checks.number(f"betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def build(self, net: nn.Module) -> torch.optim.AdamW:
        return torch.optim.AdamW(param_groups(net, self.weight_decay, self.decay_all), lr=self.lr,
                                 betas=self.betas, eps=self.eps)


@dataclass
class SGD:
    """SGD with (Nesterov) momentum.

    Args:
        lr: Peak learning rate (> 0).
        momentum: Momentum in [0, 1).
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 weight decay (>= 0) of the decayed parameters.
        decay_all: Also decay norms, biases and embeddings.
    """

    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    decay_all: bool = False

    def __post_init__(self) -> None:
        checks.number("lr", self.lr, low=0.0, low_open=True)
        checks.number("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        checks.number("weight_decay", self.weight_decay, low=0.0)
        if self.nesterov and self.momentum == 0:
            raise checks.ArgumentError("nesterov", "needs momentum > 0", self.nesterov)

    def build(self, net: nn.Module) -> torch.optim.SGD:
        return torch.optim.SGD(param_groups(net, self.weight_decay, self.decay_all), lr=self.lr,
                               momentum=self.momentum, nesterov=self.nesterov)


@dataclass
class WarmupCosine:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``min_lr_ratio``.

    Args:
        warmup_fraction: Share of all steps spent warming up, in [0, 1).
        min_lr_ratio: Final learning rate as a share of the peak, in [0, 1].
    """

    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        checks.fraction("warmup_fraction", self.warmup_fraction, allow_zero=True)
        checks.number("min_lr_ratio", self.min_lr_ratio, low=0.0, high=1.0)

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
        total = max(int(total_steps), 1)
        warmup = int(total * self.warmup_fraction)
        floor = self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return LambdaLR(optimizer, factor)


@dataclass
class Constant:
    """The learning rate stays as configured (the schedule is still logged)."""

    def build(self, optimizer: torch.optim.Optimizer, total_steps: int) -> LambdaLR:
        return LambdaLR(optimizer, lambda step: 1.0)


def param_groups(net: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Trainable parameters in two groups: decayed (weight matrices and kernels of layers) and
    not decayed (everything else; empty with ``decay_all``). Each parameter appears once."""
    decay, no_decay, seen = [], [], set()
    for module in net.modules():
        # a layer has no sub-modules (Linear, Conv2d, GPT-2's Conv1D) or is an attention block
        # whose input projection lives on it; other modules' own parameters are free ones
        layer = not any(True for _ in module.children()) or isinstance(module, nn.MultiheadAttention)
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            decayed = decay_all or (layer and param.ndim >= 2 and not isinstance(module, EMBEDDINGS))
            (decay if decayed else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups
