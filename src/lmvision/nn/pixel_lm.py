"""The pixel language model: a palette, a GPT over its tokens, and (to fine-tune) a head.

    net = PixelLM(num_colors=16, channels=1, image_size=8, num_classes=10)
    net.palette.fit(train_images)                      # raw pixels in [0, 1]
    tokens = net.palette.encode(images)                # (B, 64)
    logits = net.gpt.pixel_logits(net.gpt.prefix(batch=len(images)), tokens)   # (B, 64, 16)
    features = net.features(images)                    # per block: (B, dim) mean-pooled
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lmvision.errors import UserError
from lmvision.nn.palette import PaletteQuantizer
from lmvision.nn.pixel_gpt import PixelGPT

CONDITIONS = ("class", "caption")


class PixelLM(nn.Module):
    """Palette quantizer + :class:`PixelGPT` (+ a classification head when ``classify``).

    Args:
        num_colors: Palette size.
        channels: Image channels (1 or 3).
        image_size: Side of the images (the sequence has ``image_size**2`` pixel tokens).
        num_classes: Number of classes of the data.
        conditions: Which prefixes the model reads: ``class``, ``caption``, both or none.
        caption_tokens: Length of the caption prefix.
        text_vocab_size: The caption tokenizer's vocabulary (filled in by the entry point).
        classify: Add a linear head on the mean-pooled last block (``stage=finetune``).
        dim, depth, heads, mlp_ratio, dropout, attention: As in :class:`PixelGPT`.
    """

    def __init__(self, num_colors: int, channels: int, image_size: int, num_classes: int,
                 conditions: Sequence[str] = (), caption_tokens: int = 24,
                 text_vocab_size: int | None = None, classify: bool = False, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attention: str = "sdpa") -> None:
        super().__init__()
        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown:
            raise UserError(f"strategy.net.conditions: {', '.join(map(repr, unknown))} is not a "
                            f"condition; choose from {', '.join(CONDITIONS)}")
        self.conditions = tuple(conditions)
        self.image_size = image_size
        self.palette = PaletteQuantizer(num_colors, channels)
        self.gpt = PixelGPT(num_colors, image_size * image_size,
                            num_classes=num_classes if "class" in conditions else 0,
                            caption_tokens=caption_tokens if "caption" in conditions else 0,
                            text_vocab_size=text_vocab_size or 0, dim=dim, depth=depth,
                            heads=heads, mlp_ratio=mlp_ratio, dropout=dropout, attention=attention)
        self.head = nn.Linear(dim, num_classes) if classify else None

    def features(self, images: torch.Tensor, prefix: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Mean-pooled pixel-position outputs of every block: ``depth`` tensors (B, dim), for
        raw ``images`` (B, C, H, W) in [0, 1], read without a condition by default."""
        tokens = self.palette.encode(images)
        if prefix is None:
            prefix = self.gpt.prefix(batch=len(images), device=images.device)
        _, states = self.gpt.pixel_logits(prefix, tokens, hidden=True)
        return [s.mean(1) for s in states]
