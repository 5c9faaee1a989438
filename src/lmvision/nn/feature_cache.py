"""Features of a frozen text encoder, computed once per dataset instead of every step.

Texts are de-duplicated first: synthetic side text repeats a lot (``shapes`` has a few hundred
distinct strings for thousands of images), and real data often repeats too.
"""

from __future__ import annotations

import torch
from torch import nn

from lmvision.nn.text_encoders import pool


class TextFeatureCache:
    """Pooled (and optionally token) features of every text of a dataset, looked up by index.

    Args:
        encoder: A frozen text encoder.
        tokenizer: Its tokenizer.
        texts: The dataset's texts, in dataset order (item ``i`` has ``texts[i]``).
        with_tokens: Also keep per-token features and masks (for cross-attention).
        max_length: Longest token sequence.
        batch_size: Texts encoded per forward pass.
    """

    def __init__(self, encoder: nn.Module, tokenizer, texts: list[str], with_tokens: bool,
                 max_length: int = 64, batch_size: int = 256) -> None:
        unique = sorted(set(texts))
        position = {t: i for i, t in enumerate(unique)}
        self.index_to_unique = torch.tensor([position[t] for t in texts])  # (N,)
        self.num_unique = len(unique)
        device = next(encoder.parameters()).device
        pooled, tokens, masks = [], [], []
        with torch.no_grad():
            for start in range(0, len(unique), batch_size):
                enc = tokenizer(unique[start:start + batch_size], padding="max_length",
                                truncation=True, max_length=max_length, return_tensors="pt")
                ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
                tok = encoder.tokens(ids, mask)  # (b, L, D)
                pooled.append(pool(tok, mask, encoder.pooling))
                if with_tokens:
                    tokens.append(tok)
                    masks.append(mask)
        self.pooled = torch.cat(pooled)  # (U, D)
        self.tokens = torch.cat(tokens) if with_tokens else None  # (U, L, D)
        self.mask = torch.cat(masks) if with_tokens else None  # (U, L)
        self.index_to_unique = self.index_to_unique.to(self.pooled.device)
        if with_tokens:  # trim padding that no text uses
            longest = int(self.mask.sum(1).max())
            self.tokens, self.mask = self.tokens[:, :longest], self.mask[:, :longest]

    def lookup(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of dataset items ``index`` (B,): ``text`` and, if kept, ``text_tokens``/``text_mask``."""
        u = self.index_to_unique[index.to(self.pooled.device)]
        device = index.device
        out = {"text": self.pooled[u].to(device)}
        if self.tokens is not None:
            out["text_tokens"] = self.tokens[u].to(device)
            out["text_mask"] = self.mask[u].to(device)
        return out
