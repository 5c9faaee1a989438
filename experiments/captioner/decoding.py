"""The captioner speed study's hand-written decoding loop: greedy, nucleus sampling and beam
search of a Hugging Face causal LM that continues given input embeddings, batched, with or
without the KV cache.

The product (:meth:`lmvision.nn.captioner.Captioner.generate`) decodes with Hugging Face's
``generate``. This loop is kept only for the study's baseline: for a decoder-only model started
from ``inputs_embeds`` (a captioner's image prefix), ``generate`` always uses the cache
(transformers 5 turns ``use_cache=False`` back on), so decoding without it, the baseline the
cache is measured against, cannot be had from it. Here both paths run the same loop and differ
only in what the decoder reads at each step: the one new token and the cache, or the whole
sequence. ``tests/test_decoding.py`` checks that it gives ``generate``'s captions.

Output format (as ``generate``'s for ``inputs_embeds``): (B, T) new token ids, the end token
included, padding after it; T is at most ``max_new`` and shorter when every row has ended.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from lmvision.nn.sampling import pick


class CausalStep:
    """One forward of a causal LM on input embeddings: the last position's logits and the
    cache. Works across transformers versions (the cache argument is ``past_key_values`` up
    to 4.x, ``cache`` in 5.x; legacy tuple caches and ``Cache`` objects)."""

    def __init__(self, decoder: nn.Module) -> None:
        self.decoder = decoder
        params = inspect.signature(decoder.forward).parameters
        if "cache" in params or "past_key_values" in params:
            self.cache_arg = "cache" if "cache" in params else "past_key_values"
        else:  # a wrapper (PEFT, compiled) that passes **kwargs on: the installed name
            import transformers

            major = int(transformers.__version__.split(".")[0])
            self.cache_arg = "cache" if major >= 5 else "past_key_values"
        self.last_only = next((k for k in ("logits_to_keep", "num_logits_to_keep")
                               if k in params), None)

    def __call__(self, embeds: torch.Tensor, cache, use_cache: bool, total: int):
        """Logits (B, V) after ``embeds`` (B, L, D), given ``cache`` of ``total - L`` earlier
        positions (``None``: none); the new cache (``None`` when ``use_cache`` is false)."""
        kwargs = {self.cache_arg: cache, "use_cache": use_cache}
        if self.last_only:
            kwargs[self.last_only] = 1
        mask = torch.ones(embeds.shape[0], total, dtype=torch.long, device=embeds.device)
        out = self.decoder(inputs_embeds=embeds, attention_mask=mask, **kwargs)
        new_cache = getattr(out, self.cache_arg, None) if use_cache else None
        return out.logits[:, -1], new_cache

    @staticmethod
    def reorder(cache, index: torch.Tensor):
        """The cache of the rows ``index`` (beam search)."""
        if hasattr(cache, "reorder_cache"):
            cache.reorder_cache(index)
            return cache
        return tuple(tuple(t.index_select(0, index) for t in layer) for layer in cache)


def decode(step: CausalStep, embeds: torch.Tensor, embed_tokens: Callable, eos_id: int,
           pad_id: int, max_new: int, min_new: int = 0, use_cache: bool = True,
           greedy: bool = True, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy decoding or sampling after ``embeds`` (B, L, D); the end token is held back for
    the first ``min_new`` tokens."""
    b = embeds.shape[0]
    out = torch.full((b, max_new), pad_id, dtype=torch.long, device=embeds.device)
    ended = torch.zeros(b, dtype=torch.bool, device=embeds.device)
    logits, cache = step(embeds, None, use_cache, embeds.shape[1])
    total = embeds.shape[1]
    for t in range(max_new):
        if t < min_new:
            logits[:, eos_id] = float("-inf")
        token = pick(logits, temperature, top_k, top_p, greedy, generator)
        token = token.masked_fill(ended, pad_id)
        out[:, t] = token
        ended |= token == eos_id
        if bool(ended.all()) or t + 1 == max_new:
            return out[:, :t + 1]
        new = embed_tokens(token).unsqueeze(1)
        total += 1
        if use_cache:
            logits, cache = step(new, cache, True, total)
        else:
            embeds = torch.cat([embeds, new], 1)
            logits, _ = step(embeds, None, False, total)
    return out


def beam_search(step: CausalStep, embeds: torch.Tensor, embed_tokens: Callable, eos_id: int,
                pad_id: int, max_new: int, num_beams: int, min_new: int = 0,
                use_cache: bool = True) -> torch.Tensor:
    """The best continuation of each of ``embeds`` (B, L, D) found by beam search, with the
    rules of Hugging Face's default beam search (length penalty 1, ``early_stopping=False``):

    - a hypothesis scores its summed log-probability divided by its length in tokens, the end
      token included;
    - each step ranks the 2K best extensions of the K open beams; those of the first K that
      end join the row's K ended hypotheses (the best K are kept), and the K best that go on
      become the open beams;
    - a row is final once its worst kept ended hypothesis beats its best open beam's score at
      the current length; at ``max_new`` tokens the open beams end.
    """
    b, k, device = embeds.shape[0], num_beams, embeds.device
    x = embeds.repeat_interleave(k, 0)
    running = torch.zeros(b, k, device=device)
    running[:, 1:] = float("-inf")  # all beams start alike: extend only the first
    tokens = torch.empty(b, k, 0, dtype=torch.long, device=device)  # open beams' tokens
    ended = torch.full((b, k), float("-inf"), device=device)  # scores of ended hypotheses
    ended_tokens = torch.full((b, k, max_new), pad_id, dtype=torch.long, device=device)
    ended_length = torch.zeros(b, k, dtype=torch.long, device=device)
    final = torch.zeros(b, dtype=torch.bool, device=device)
    rows = torch.arange(b, device=device)[:, None]
    logits, cache = step(x, None, use_cache, x.shape[1])
    total = x.shape[1]
    for t in range(max_new):
        logp = logits.float().log_softmax(-1)
        if t < min_new:
            logp[:, eos_id] = float("-inf")
        vocab = logp.shape[-1]
        top, index = (running.view(-1, 1) + logp).view(b, k * vocab).topk(2 * k, dim=1)
        origin, token = index // vocab, index % vocab  # (b, 2k)
        extended = torch.cat([tokens[rows, origin], token[..., None]], 2)  # (b, 2k, t+1)
        last = t + 1 == max_new
        ends = (token == eos_id) | last
        # the first K of the 2K that end join the ended hypotheses of rows not yet final
        joins = ends & (torch.arange(2 * k, device=device) < k) & ~final[:, None]
        padded = torch.full((b, 2 * k, max_new), pad_id, dtype=torch.long, device=device)
        padded[..., :t + 1] = extended
        merged = torch.cat([ended, torch.where(joins, top / (t + 1), float("-inf"))], 1)
        ended, keep = merged.topk(k, dim=1)
        ended_tokens = torch.cat([ended_tokens, padded], 1)[rows, keep]
        lengths = torch.full((b, 2 * k), t + 1, dtype=torch.long, device=device)
        ended_length = torch.cat([ended_length, lengths], 1)[rows, keep]
        if last:
            break
        # the K best that go on
        running, chosen = top.masked_fill(ends, float("-inf")).topk(k, dim=1)
        origin = origin[rows, chosen]
        tokens = extended[rows, chosen]
        final |= ended.min(1).values >= running[:, 0] / (t + 1)
        if bool(final.all()):
            break
        flat = (origin + rows * k).view(-1)
        new = embed_tokens(tokens[..., -1].reshape(-1)).unsqueeze(1)
        total += 1
        if use_cache:
            logits, cache = step(new, CausalStep.reorder(cache, flat), True, total)
        else:
            x = torch.cat([x[flat], new], 1)
            logits, _ = step(x, None, False, total)
    best = ended.argmax(1)
    length = ended_length[rows[:, 0], best]
    return ended_tokens[rows[:, 0], best][:, :int(length.max())]


@torch.no_grad()
def hand_generate(net: nn.Module, images: torch.Tensor, decoding: str = "greedy",
                  max_length: int | None = None, num_beams: int = 4, top_p: float = 0.9,
                  temperature: float = 1.0, use_cache: bool = True,
                  min_length: int = 0) -> torch.Tensor:
    """A :class:`~lmvision.nn.captioner.Captioner`'s captions, as its ``generate`` gives them
    (same arguments and output), decoded by this loop with or without the KV cache."""
    if decoding not in ("greedy", "beam", "nucleus"):
        raise ValueError(f"decoding {decoding!r}: choose one of greedy, beam, nucleus")
    tokens, _ = net.encode(images)
    prefix = net.prefix(tokens)
    embed = net.decoder.get_input_embeddings()
    bos = embed(torch.full((len(images), 1), net.bos_id, dtype=torch.long, device=images.device))
    embeds = torch.cat([prefix, bos], 1)
    step = CausalStep(net.decoder)
    common = {"eos_id": net.eos_id, "pad_id": net.pad_id, "min_new": min_length,
              "max_new": max_length or net.max_length - 1, "use_cache": use_cache}
    if decoding == "beam":
        return beam_search(step, embeds, embed, num_beams=num_beams, **common)
    return decode(step, embeds, embed, greedy=decoding == "greedy", top_p=top_p,
                  temperature=temperature, **common)
