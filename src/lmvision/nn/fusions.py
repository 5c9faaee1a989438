"""Fusion modules: combine image and text features into one vector for a head.

Every fusion takes its inputs by name in a dict and returns ``(B, out_dim)``:

* ``image``: (B, Di) pooled image features;  ``image_tokens``: (B, N, Di)
* ``text``: (B, Dt) pooled text features;    ``text_tokens``: (B, L, Dt), ``text_mask``: (B, L)

``needs_tokens`` says whether the token inputs are read (only cross-attention does), so a
strategy computes them only then. Strategies build fusions with
``fusion(image_dim=..., text_dim=...)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Inputs = dict[str, torch.Tensor]


class ConcatFusion(nn.Module):
    """Concatenate the pooled features, then an MLP.

    Args:
        image_dim: Size of the image features.
        text_dim: Size of the text features.
        hidden_dim: Width of the MLP and of the output.
        dropout: Dropout inside the MLP.
    """

    needs_tokens = False

    def __init__(self, image_dim: int, text_dim: int, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(image_dim + text_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
        )
        self.out_dim = hidden_dim

    def forward(self, inputs: Inputs) -> torch.Tensor:
        return self.mlp(torch.cat([inputs["image"], inputs["text"]], dim=-1))  # (B, H)


class GatedFusion(nn.Module):
    """A learned gate between modalities (a gated multimodal unit).

    ``h = z * tanh(W_i image) + (1 - z) * tanh(W_t text)`` with ``z = sigmoid(W_z [image; text])``
    chosen per feature and per example, so the model can lean on either modality.

    Args:
        image_dim: Size of the image features.
        text_dim: Size of the text features.
        dim: Size of the fused (and output) vector.
        dropout: Dropout on the output.
    """

    needs_tokens = False

    def __init__(self, image_dim: int, text_dim: int, dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, dim)
        self.text = nn.Linear(text_dim, dim)
        self.gate = nn.Linear(image_dim + text_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = dim

    def forward(self, inputs: Inputs) -> torch.Tensor:
        image, text = inputs["image"], inputs["text"]
        z = torch.sigmoid(self.gate(torch.cat([image, text], dim=-1)))  # (B, D)
        fused = z * torch.tanh(self.image(image)) + (1 - z) * torch.tanh(self.text(text))
        return self.dropout(fused)  # (B, D)


class FiLMFusion(nn.Module):
    """Text produces a per-feature scale and shift for the image features (FiLM).

    ``h = relu(W_i image * (1 + gamma(text)) + beta(text))``, then a linear layer.

    Args:
        image_dim: Size of the image features.
        text_dim: Size of the text features.
        hidden_dim: Width of the modulated features and of the output.
        dropout: Dropout on the modulated features.
    """

    needs_tokens = False

    def __init__(self, image_dim: int, text_dim: int, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.image = nn.Linear(image_dim, hidden_dim)
        self.film = nn.Linear(text_dim, 2 * hidden_dim)
        nn.init.zeros_(self.film.weight)  # start as the identity modulation
        nn.init.zeros_(self.film.bias)
        self.out = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, hidden_dim), nn.GELU())
        self.out_dim = hidden_dim

    def forward(self, inputs: Inputs) -> torch.Tensor:
        gamma, beta = self.film(inputs["text"]).chunk(2, dim=-1)  # (B, H) each
        h = F.relu(self.image(inputs["image"]) * (1 + gamma) + beta)  # (B, H)
        return self.out(h)


class CrossAttentionFusion(nn.Module):
    """Text tokens attend to image tokens (and, with ``both_ways``, image tokens to text).

    Each direction is a pre-norm cross-attention block with a feed-forward layer; the
    attending side is then mean-pooled (text over its real tokens). With ``both_ways`` the two
    pooled vectors are concatenated.

    Args:
        image_dim: Size of the image token features.
        text_dim: Size of the text token features.
        dim: Width inside the attention blocks.
        heads: Attention heads.
        depth: Cross-attention blocks per direction.
        both_ways: Also let image tokens attend to text tokens.
        dropout: Dropout in attention and feed-forward layers.
    """

    needs_tokens = True

    def __init__(self, image_dim: int, text_dim: int, dim: int = 128, heads: int = 4, depth: int = 1,
                 both_ways: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        self.image_in = nn.Linear(image_dim, dim)
        self.text_in = nn.Linear(text_dim, dim)
        self.text_to_image = nn.ModuleList(CrossBlock(dim, heads, dropout) for _ in range(depth))
        self.image_to_text = (nn.ModuleList(CrossBlock(dim, heads, dropout) for _ in range(depth))
                              if both_ways else None)
        self.out_dim = dim * (2 if both_ways else 1)

    def forward(self, inputs: Inputs) -> torch.Tensor:
        image = self.image_in(inputs["image_tokens"])  # (B, N, D)
        text = self.text_in(inputs["text_tokens"])  # (B, L, D)
        mask = inputs["text_mask"].bool()  # (B, L), True = real token
        t = text
        for block in self.text_to_image:
            t = block(t, image)
        weights = mask.unsqueeze(-1).to(t.dtype)
        pooled = [(t * weights).sum(1) / weights.sum(1).clamp(min=1.0)]  # (B, D)
        if self.image_to_text is not None:
            v = image
            for block in self.image_to_text:
                v = block(v, text, key_mask=mask)
            pooled.append(v.mean(1))  # (B, D)
        return torch.cat(pooled, dim=-1)


class CrossBlock(nn.Module):
    """x + attn(norm(x), context), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, T, D) queries; context: (B, S, D) keys/values; key_mask: (B, S) True = real
        kv = self.norm_kv(context)
        padding = None if key_mask is None else ~key_mask
        attended, _ = self.attn(self.norm_q(x), kv, kv, key_padding_mask=padding, need_weights=False)
        x = x + attended
        return x + self.mlp(self.norm_mlp(x))
