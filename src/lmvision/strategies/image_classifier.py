"""Strategy `image_classifier`: the image-only baseline every other strategy is measured against."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lmvision.strategies.base import ClassificationStrategy


class ImageClassifier(ClassificationStrategy):
    """Image encoder + head trained with cross-entropy (or BCE for multi-label tagging).

    Args:
        encoder: Image encoder with ``forward(images) -> (B, D)`` and ``out_dim``.
        head: Builds the head: ``head(in_dim=encoder.out_dim, out_dim=num_classes)``.
        num_classes: Number of classes (or tags).
        optimizer: Builds the optimiser from parameters (a partial).
        scheduler: Builds the schedule: ``scheduler(optimizer, total_steps=...)``; or ``None``.
        task: ``multiclass`` (cross-entropy) or ``multilabel`` (binary cross-entropy per tag).
        label_smoothing: Label smoothing of the cross-entropy.
    """

    def __init__(self, encoder: nn.Module, head: Callable[..., nn.Module], num_classes: int,
                 optimizer: Callable, scheduler: Callable | None = None, task: str = "multiclass",
                 label_smoothing: float = 0.0) -> None:
        super().__init__(num_classes, optimizer, scheduler, task, label_smoothing)
        self.save_hyperparameters(ignore=["encoder", "head", "optimizer", "scheduler"])
        self.encoder = encoder
        self.head = head(in_dim=encoder.out_dim, out_dim=num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))  # (B, K)

    def logits(self, batch: dict) -> torch.Tensor:
        return self(batch["image"])
