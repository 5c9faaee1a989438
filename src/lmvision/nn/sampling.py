"""Picking the next token from a row of logits: greedy, or sampled with temperature, top-k and
nucleus (top-p) filtering (used by :class:`lmvision.nn.pixel_gpt.PixelGPT`'s sampler)."""

from __future__ import annotations

import torch


def pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, greedy: bool,
         generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of ``logits`` (B, V): greedy, or sampled with temperature, top-k and
    nucleus (top-p) filtering."""
    if greedy:
        return logits.argmax(-1)
    logits = logits.float() / max(temperature, 1e-6)
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, index = logits.sort(-1, descending=True)
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative - ordered.softmax(-1) > top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, index, ordered.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
