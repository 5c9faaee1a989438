"""Datasets whose items are held in memory as aligned sequences (the embedded ones)."""

from __future__ import annotations

import torch
from lmvision.data.protocol import DatasetBase


class InMemoryDataset(DatasetBase):
    """Item ``i`` is ``{"image": images[i], "label": labels[i], "caption": captions[i],
    "text": texts[i]}``; a subclass fills these four sequences (and ``classes``) in its
    constructor. The datamodule reads ``labels``, ``captions`` and ``texts`` whole, to validate
    them and to cache per-text features without touching the images."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) class indices, or (N, K) multi-hot tags
    captions: list[str]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {
            "image": self.images[index],
            "label": self.labels[index],
            "caption": self.captions[index],
            "text": self.texts[index],
        }
