"""The pixel language model: a palette, a GPT over its tokens, and (to fine-tune) a head.

    net = PixelLM(num_colors=16, channels=1, image_size=8, num_classes=10)
    net.palette.fit(train_images)                      # raw pixels in [0, 1]
    tokens = net.palette.encode(images)                # (B, 64)
    logits = net.gpt.pixel_logits(net.null_prefix(len(images), images.device), tokens)
    features = net.features(images)                    # per block: (B, dim) mean-pooled
    drawn = net.sample(net.class_prefix(labels))       # (B, C, 8, 8) in [0, 1]

The conditioning prefixes (a class, a caption, or "no condition") are made here, so that
training (``lmvision.strategies.pixel_lm``) and sampling (``lmvision.evaluation.samples``,
``lmvision.evaluation.generation``) read the same ones.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lmvision import checks
from lmvision.nn.palette import PaletteQuantizer
from lmvision.nn.pixel_gpt import PixelGPT
from lmvision.text.side import TextSide

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
        text: The run's text side (:class:`~lmvision.text.side.TextSide`), whose tokenizer
            reads the captions: needed with the ``caption`` condition, else ``None``.
        classify: Add a linear head on the mean-pooled last block (``pixel_lm_finetune``).
        dim, depth, heads, mlp_ratio, dropout, attention: As in :class:`PixelGPT`.
    """

    def __init__(self, num_colors: int, channels: int, image_size: int, num_classes: int,
                 conditions: Sequence[str] = (), caption_tokens: int = 24,
                 text: TextSide | None = None, classify: bool = False, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attention: str = "sdpa") -> None:
        super().__init__()
        self.conditions = checks.choices("conditions", conditions, CONDITIONS)
        if "caption" in self.conditions and text is None:
            raise checks.ArgumentError("conditions", "the caption condition needs the run's text "
                                       "side (inputs=pixel_lm_captions: captions and their "
                                       "tokenizer)")
        self.image_size = image_size
        self.caption_pad_id = (text.tokenizer.pad_token_id or 0) if text is not None else 0
        self.palette = PaletteQuantizer(num_colors, channels)
        self.gpt = PixelGPT(num_colors, image_size * image_size,
                            num_classes=num_classes if "class" in self.conditions else 0,
                            caption_tokens=caption_tokens if "caption" in self.conditions else 0,
                            text_vocab_size=len(text.tokenizer) if text is not None else 0,
                            dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio,
                            dropout=dropout, attention=attention)
        self.head = nn.Linear(dim, num_classes) if classify else None

    def features(self, images: torch.Tensor, prefix: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Mean-pooled pixel-position outputs of every block: ``depth`` tensors (B, dim), for
        raw ``images`` (B, C, H, W) in [0, 1], read without a condition by default."""
        tokens = self.palette.encode(images)
        if prefix is None:
            prefix = self.gpt.prefix(batch=len(images), device=images.device)
        _, states = self.gpt.pixel_logits(prefix, tokens, hidden=True)
        return [s.mean(1) for s in states]

    # -- conditioning prefixes ------------------------------------------------------------------
    def prefix(self, labels: torch.Tensor | None, captions: torch.Tensor | None, n: int,
               device) -> torch.Tensor:
        """(n, P) conditioning tokens of ``labels`` (``-1``: no class) and ``captions`` (token
        ids from :meth:`captions`; ``None``: no caption), as far as the model reads them."""
        return self.gpt.prefix(labels if self.gpt.num_classes else None,
                               captions if self.gpt.caption_tokens else None, batch=n,
                               device=device)

    def captions(self, caption_ids: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        """(n, caption_tokens) the captions' first tokens as the model reads them (padding
        where a caption is shorter)."""
        n, device = len(caption_ids), caption_ids.device
        captions = self.null_captions(n, device)
        ids = caption_ids[:, :self.gpt.caption_tokens]
        mask = caption_mask[:, :self.gpt.caption_tokens].bool()
        captions[:, :ids.shape[1]] = torch.where(mask, ids, captions[:, :ids.shape[1]])
        return captions

    def caption_prefix(self, caption_ids: torch.Tensor, caption_mask: torch.Tensor) -> torch.Tensor:
        """The prefix of captions alone (no class)."""
        n, device = len(caption_ids), caption_ids.device
        hidden = torch.full((n,), -1, dtype=torch.long, device=device)
        return self.prefix(hidden, self.captions(caption_ids, caption_mask), n, device)

    def null_prefix(self, n: int, device) -> torch.Tensor:
        """The prefix of ``n`` sequences with no condition: no class, an all-padding caption."""
        return self.class_prefix(torch.full((n,), -1, dtype=torch.long, device=device))

    def class_prefix(self, labels: torch.Tensor) -> torch.Tensor:
        """The prefix asking for each of ``labels`` (``-1``: no class) and no caption."""
        n, device = len(labels), labels.device
        nothing = self.null_captions(n, device) if self.gpt.caption_tokens else None
        return self.prefix(labels, nothing, n, device)

    def null_captions(self, n: int, device) -> torch.Tensor:
        """(n, caption_tokens) padding: "no caption"."""
        return torch.full((n, self.gpt.caption_tokens), self.caption_pad_id, dtype=torch.long,
                          device=device)

    # -- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, prefix: torch.Tensor, guidance: float = 1.0,
               known: torch.Tensor | None = None, **settings) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] drawn after ``prefix`` (B, P), completing the ``known``
        palette tokens when given; ``guidance`` != 1 weighs the condition against "no
        condition" (classifier-free guidance; see :meth:`PixelGPT.generate`)."""
        guided = {} if guidance == 1.0 else {
            "guidance": guidance, "null_prefix": self.null_prefix(len(prefix), prefix.device)}
        tokens = self.gpt.generate(prefix, known=known, **settings, **guided)
        return self.palette.decode(tokens, self.image_size)

    # -- fine-tuning ----------------------------------------------------------------------------
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (B, K) from the mean-pooled last block, read without a condition, and
        the generative logits (B, N, V) of the same pass with the palette tokens (B, N) they
        predict."""
        if self.head is None:
            raise checks.ArgumentError("classify", "this network was built without a head "
                                                   "(classify=false)")
        tokens = self.palette.encode(images)
        prefix = self.null_prefix(len(images), images.device)
        logits, states = self.gpt.pixel_logits(prefix, tokens, hidden=True)
        return self.head(states[-1].mean(1)), (logits, tokens)
