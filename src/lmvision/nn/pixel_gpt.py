"""A GPT-style decoder over palette tokens, with an optional conditioning prefix and a KV cache.

The sequence it reads is ``[prefix] [BOS] pixel_1 ... pixel_{N-1}`` and it predicts
``pixel_1 ... pixel_N``: one palette token per pixel, in raster order (as Image GPT). The prefix
holds conditioning tokens: a class token, caption tokens, or both (any of them may be the
"no condition" token, so one model samples with or without a condition). All token kinds share
one embedding table: ``[0, V)`` palette colours, ``V`` BOS, then ``C + 1`` class tokens (the
last means "no class"), then the caption tokenizer's vocabulary.

Attention is ``torch.nn.functional.scaled_dot_product_attention`` (``attention="sdpa"``) or the
textbook softmax(QKᵀ/√d)V (``attention="naive"``, kept for the speed study and tests). Sampling
with the KV cache reads the conditions and known pixels in one pass, then feeds one token per
step, attending to the cached keys and values of the positions so far. On a CUDA device the
step is :meth:`PixelGPT.step`, which writes its keys and values at its position and attends
to the whole cache, the slots after its position masked by an additive -inf: its shapes never
change, so it is captured once as a CUDA graph and replayed per token (a step of a small model
is otherwise dozens of kernel launches for little arithmetic); the graph is kept for later
calls of the same batch size. Its one query's attention is two batched matrix-vector products
and a softmax, not a fused attention kernel (which tiles for many queries).
``generate(compile_step=True)`` also compiles the step. Without the cache, every step re-reads
the whole sequence. All give the same tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmvision import checks
from lmvision.errors import UserError
from lmvision.nn.pixel_cache import KVCache
from lmvision.nn.pixel_graphs import _GRAPHS, cuda_graph_replay, stepper  # noqa: F401
from lmvision.nn.sampling import pick

ATTENTIONS = ("sdpa", "naive")


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention and an MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float, attention: str) -> None:
        super().__init__()
        self.heads, self.attention, self.dropout = heads, attention, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> torch.Tensor:
        length = x.shape[1]
        q, k, v = self._qkv(x)
        if cache is not None:
            cache.keys[layer][:, :, start:start + length] = k
            cache.values[layer][:, :, start:start + length] = v
            k = cache.keys[layer][:, :, :start + length]
            v = cache.values[layer][:, :, :start + length]
        return self._rest(x, self._attend(q, k, v, start))

    def step(self, x: torch.Tensor, cache: KVCache, layer: int, position: torch.Tensor,
             bias: torch.Tensor) -> torch.Tensor:
        """One token per sequence, ``x`` (B, 1, dim), at ``position`` (a (1,) tensor): its key
        and value go into the cache there, and it attends to the whole cache, ``bias`` (1, 1, T)
        added to its scores (0 up to its own position, -inf after). Shapes never change, so a
        CUDA graph can replay it (:meth:`forward` with the cache does the same on the slots up
        to ``start``)."""
        b, _, dim = x.shape
        qkv = self._qkv(x)  # (3, B, h, 1, hd)
        pair = cache.pairs[layer]
        pair.index_copy_(3, position, qkv[1:].to(pair.dtype))  # key and value at once
        # one query: softmax(qKᵀ/√d + bias)V as two batched matrix-vector products, the scale
        # and bias inside the first (a fused attention kernel tiles for many queries, and for
        # one it is the slowest kernel of the step on a GPU)
        q = qkv[0].reshape(-1, 1, dim // self.heads)  # (B·h, 1, hd)
        keys, values = (t.to(q.dtype).flatten(0, 1) for t in pair)  # (B·h, T, hd)
        scores = torch.baddbmm(bias.to(q.dtype), q, keys.transpose(1, 2), alpha=q.shape[-1] ** -0.5)
        out = scores.softmax(-1) @ values  # (B·h, 1, hd)
        return self._rest(x, out.view(b, self.heads, 1, -1))

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values: (3, B, h, L, hd)."""
        b, length, dim = x.shape
        return self.qkv(self.norm1(x)).view(b, length, 3, self.heads, dim // self.heads) \
            .permute(2, 0, 3, 1, 4)

    def _rest(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The block's output from its input and the attention's (B, h, L, hd)."""
        b, length, dim = x.shape
        x = x + self.drop(self.proj(out.transpose(1, 2).reshape(b, length, dim)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def _attend(self, q, k, v, start: int, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Queries at positions start..start+L-1 see keys 0..their own position, or where
        ``mask`` (L, T) says."""
        length, total = q.shape[2], k.shape[2]
        p = self.dropout if self.training else 0.0
        if mask is None and length > 1 and start > 0:
            rows = torch.arange(start, start + length, device=q.device).unsqueeze(1)
            mask = torch.arange(total, device=q.device).unsqueeze(0) <= rows  # (L, T)
        if self.attention == "sdpa":
            causal = mask is None and length > 1 and start == 0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                  is_causal=causal)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, h, L, T)
        if mask is None and length > 1:
            mask = torch.ones(length, total, dtype=torch.bool, device=q.device).tril()
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return F.dropout(scores.softmax(-1), p, self.training) @ v


class PixelGPT(nn.Module):
    """Decoder-only transformer over palette tokens.

    Args:
        num_colors: Palette size ``V`` (the output vocabulary).
        num_pixels: Pixels per image ``N`` (H*W).
        num_classes: Classes of the class token (0: no class conditioning).
        caption_tokens: Length of the caption prefix (0: no caption conditioning).
        text_vocab_size: Vocabulary of the caption tokenizer.
        dim, depth, heads, mlp_ratio, dropout: Transformer size.
        attention: ``sdpa`` or ``naive``.
    """

    def __init__(self, num_colors: int, num_pixels: int, num_classes: int = 0,
                 caption_tokens: int = 0, text_vocab_size: int = 0, dim: int = 128,
                 depth: int = 4, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attention: str = "sdpa") -> None:
        super().__init__()
        checks.choice("attention", attention, ATTENTIONS)
        if dim % heads:
            raise checks.ArgumentError("dim", f"must be a multiple of heads={heads}", dim)
        if caption_tokens and not text_vocab_size:
            raise checks.ArgumentError("text_vocab_size", "caption conditioning needs the caption "
                                       "tokenizer's vocabulary size", text_vocab_size)
        self.num_colors, self.num_pixels = num_colors, num_pixels
        self.num_classes, self.caption_tokens = num_classes, caption_tokens
        self.dim, self.depth, self.heads = dim, depth, heads
        self.bos = num_colors
        self.class_offset = num_colors + 1
        self.text_offset = self.class_offset + (num_classes + 1 if num_classes else 0)
        vocab = self.text_offset + (text_vocab_size if caption_tokens else 0)
        self.prefix_length = (1 if num_classes else 0) + caption_tokens
        self.max_length = self.prefix_length + num_pixels
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.zeros(self.max_length, dim))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout, attention)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_colors, bias=False)
        self.drop = nn.Dropout(dropout)
        self.reset_parameters(0)

    def reset_parameters(self, seed: int) -> None:
        """Initialise every weight from ``seed`` (GPT-2's scheme), e.g. for a random-init control."""
        generator = torch.Generator().manual_seed(int(seed))
        for name, p in self.named_parameters():
            if p.ndim >= 2 or name == "position":
                std = 0.02 / math.sqrt(2 * self.depth) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                p.data.copy_(torch.randn(p.shape, generator=generator) * std)
            elif name.endswith("weight"):  # layer norms
                p.data.fill_(1.0)
            else:
                p.data.zero_()

    # -- sequences ----------------------------------------------------------------------------
    def prefix(self, labels: torch.Tensor | None = None, caption_ids: torch.Tensor | None = None,
               batch: int | None = None, device=None) -> torch.Tensor:
        """(B, P) conditioning tokens: ``labels`` (B,) (``-1``: no class) and ``caption_ids``
        (B, caption_tokens) (``None``: no caption, all padding)."""
        parts = []
        if self.num_classes:
            if labels is None:
                labels = torch.full((batch,), -1, dtype=torch.long, device=device)
            labels = torch.where(labels < 0, torch.full_like(labels, self.num_classes), labels)
            parts.append((self.class_offset + labels).unsqueeze(1))
        if self.caption_tokens:
            if caption_ids is None:
                caption_ids = torch.zeros(batch, self.caption_tokens, dtype=torch.long, device=device)
            parts.append(self.text_offset + caption_ids)
        if not parts:
            return torch.zeros(batch, 0, dtype=torch.long, device=device)
        return torch.cat(parts, 1)

    def inputs(self, prefix: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """``[prefix] [BOS] pixels[:-1]``: the sequence whose outputs predict ``pixels``."""
        bos = torch.full((len(pixels), 1), self.bos, dtype=torch.long, device=pixels.device)
        return torch.cat([prefix, bos, pixels[:, :-1]], 1)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, cache: KVCache | None = None, start: int = 0,
                hidden: bool = False):
        """Logits (B, L, V) of the next palette token at each of ``ids`` (B, L), which sit at
        positions ``start..start+L-1``; with ``hidden=True`` also every block's output."""
        x = self.drop(self.embed(ids) + self.position[start:start + ids.shape[1]])
        states = []
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, start)
            if hidden:
                states.append(x)
        logits = self.head(self.norm(x))
        return (logits, states) if hidden else logits

    def pixel_logits(self, prefix: torch.Tensor, pixels: torch.Tensor, hidden: bool = False):
        """Logits (B, N, V) predicting each of ``pixels`` (B, N) (and the blocks' outputs at the
        N pixel positions, with ``hidden=True``)."""
        out = self(self.inputs(prefix, pixels), hidden=hidden)
        p = prefix.shape[1]
        if not hidden:
            return out[:, p:]
        logits, states = out
        return logits[:, p:], [s[:, p:] for s in states]

    # -- sampling -----------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prefix: torch.Tensor, known: torch.Tensor | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 greedy: bool = False, use_cache: bool = True,
                 generator: torch.Generator | None = None, guidance: float = 1.0,
                 null_prefix: torch.Tensor | None = None,
                 compile_step: bool = False) -> torch.Tensor:
        """Complete images: (B, N) palette tokens, the first ``known`` (B, n) given.

        Args:
            prefix: (B, P) conditioning tokens (see :meth:`prefix`).
            known: Pixels given in raster order (e.g. the top half); ``None`` samples all.
            temperature, top_k, top_p: Sampling settings (``top_k=0``, ``top_p=1``: off).
            greedy: Take the most likely token (ignores the sampling settings).
            use_cache: Keep keys and values of earlier tokens (one token per step) or re-read
                the whole sequence at every step.
            generator: Random generator of the sampling.
            guidance: Classifier-free guidance weight ``g``: each next token is drawn from
                ``u + g * (c - u)``, where ``c`` are the logits given ``prefix`` and ``u`` those
                given ``null_prefix``. A model trained with its conditions dropped for a share of
                the images has learned both. ``g=1`` samples from ``c`` alone, ``g>1`` leans
                further towards the condition. Both sequences are run as one batch.
            null_prefix: (B, P) "no condition" tokens (see :meth:`prefix`), for ``guidance``.
            compile_step: With the cache, run :meth:`step` through ``torch.compile``, which
                fuses its small operations into fewer kernels (on a GPU, inside the CUDA
                graph). The first call of a model and batch size compiles (seconds to a
                minute); later ones reuse it. The tokens are those of the uncompiled step up
                to floating-point rounding.
        """
        b = len(prefix)
        if guidance != 1.0:
            if null_prefix is None or null_prefix.shape != prefix.shape:
                raise UserError("sampling with guidance != 1 needs the 'no condition' prefix "
                                "(null_prefix) of the same shape as the prefix")
            prefix = torch.cat([prefix, null_prefix])  # rows b..2b-1: the unconditional pass
            known = None if known is None else known.repeat(2, 1)
        rows, device = len(prefix), prefix.device
        pixels = torch.zeros(rows, self.num_pixels, dtype=torch.long, device=device)
        n_known = 0 if known is None else known.shape[1]
        if n_known:
            pixels[:, :n_known] = known
        if n_known == self.num_pixels:
            return pixels[:b]
        ids = self.inputs(prefix, pixels)  # (rows, P + N)
        first = prefix.shape[1] + n_known  # the position whose output predicts pixel n_known
        if use_cache:
            step, cache = stepper(self, rows, device, compile_step)  # before the pass below
            logits = self(ids[:, :first + 1], cache, 0)[:, -1]
        drawn = []
        for i in range(n_known, self.num_pixels):
            position = prefix.shape[1] + i
            if not use_cache:
                logits = self(ids[:, :position + 1])[:, -1]
            if rows > b:  # guided: u + g (c - u), and the same token for both passes
                logits = logits[b:] + guidance * (logits[:b] - logits[b:])
            token = pick(logits, temperature, top_k, top_p, greedy, generator)
            if rows > b:
                token = token.repeat(2)
            drawn.append(token)
            if i + 1 < self.num_pixels:
                if use_cache:
                    logits = step(token, position + 1)
                else:
                    ids[:, position + 1] = token
        pixels[:, n_known:] = torch.stack(drawn, 1)
        return pixels[:b]

    def step(self, token: torch.Tensor, position: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (B, V) of the token after ``token`` (B,), which sits at ``position`` (a (1,)
        tensor); its keys and values go into ``cache``, which holds those of every earlier
        position. Every shape is fixed, for a CUDA graph (see :meth:`Block.step`)."""
        x = self.embed(token.unsqueeze(1)) + self.position.index_select(0, position)
        # (1, 1, T): 0 at this position and the ones before, -inf after
        bias = torch.zeros_like(cache.slots, dtype=x.dtype).masked_fill(
            cache.slots > position, float("-inf")).view(1, 1, -1)
        for i, block in enumerate(self.blocks):
            x = block.step(x, cache, i, position, bias)
        return self.head(self.norm(x))[:, -1]
