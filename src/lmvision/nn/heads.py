"""Classification heads. Strategies build them with ``head(in_dim=..., out_dim=...)``."""

from __future__ import annotations

import torch
from torch import nn


class LinearHead(nn.Module):
    """Dropout then one linear layer.

    Args:
        in_dim: Feature size of the encoder.
        out_dim: Number of classes (or tags).
        dropout: Dropout probability on the features.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, K)
        return self.fc(self.dropout(features))


class MLPHead(nn.Module):
    """A two-layer perceptron with GELU and dropout.

    Args:
        in_dim: Feature size of the encoder.
        out_dim: Number of classes (or tags).
        hidden_dim: Width of the hidden layer.
        dropout: Dropout probability before each linear layer.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim), nn.GELU(),
            nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, K)
        return self.net(features)
