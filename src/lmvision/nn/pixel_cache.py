"""The KV cache of :class:`~lmvision.nn.pixel_gpt.PixelGPT`'s sampling."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for sequences of up to ``length`` tokens."""

    def __init__(self, depth: int, batch: int, heads: int, length: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        shape = (2, batch, heads, length, head_dim)
        # per layer, keys and values in one tensor: a step writes both with one kernel
        self.pairs = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.keys = [pair[0] for pair in self.pairs]  # views of ``pairs``
        self.values = [pair[1] for pair in self.pairs]
        self.slots = torch.arange(length, device=device)  # the cache's positions, for the mask
