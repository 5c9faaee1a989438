"""Text encoders. All share one API:

* ``forward(ids, mask) -> (B, D)``: a pooled vector per text;
* ``tokens(ids, mask) -> (B, L, D)``: one vector per token;
* ``out_dim``: ``D``; ``frozen``: True when no parameter is trained (features can be cached).

Configs build them with ``pretrained(...)`` (any Hugging Face encoder, e.g. the packaged
MiniLM or ``bert-base-uncased``) or ``scratch_bert(...)`` (a small BERT built from a config);
the strategy passes the tokenizer, so the vocabulary and the embeddings always agree.
"""

from __future__ import annotations

import torch
from torch import nn

from lmvision import checks
from lmvision.errors import UserError
from lmvision.text.hub import from_pretrained

POOLINGS = ("mean", "cls")
FREEZE = ("all", "none", "all_but_last_n")


class TransformerTextEncoder(nn.Module):
    """A Hugging Face transformer encoder with pooling and a freezing policy.

    Args:
        model: A Hugging Face encoder whose output has ``last_hidden_state`` (B, L, D).
        pooling: ``mean`` over real tokens, or ``cls`` (the first token).
        freeze: ``all`` (nothing trained), ``none``, or ``all_but_last_n`` (only the last
            ``last_n`` transformer layers are trained).
        last_n: Layers left trainable with ``freeze=all_but_last_n``.
    """

    def __init__(self, model: nn.Module, pooling: str = "mean", freeze: str = "none",
                 last_n: int = 1) -> None:
        super().__init__()
        checks.choice("pooling", pooling, POOLINGS)
        checks.choice("freeze", freeze, FREEZE)
        self.model = model
        self.pooling = pooling
        self.out_dim = int(model.config.hidden_size)
        if freeze != "none":
            model.requires_grad_(False)
        if freeze == "all_but_last_n":
            layers = _layers(model)
            checks.whole_number("last_n", last_n, minimum=1, maximum=len(layers))
            for layer in layers[-last_n:]:
                layer.requires_grad_(True)
        # from_pretrained returns a model in eval mode: train what is trained (dropout on),
        # keep a frozen encoder in eval mode.
        self.train(True)

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True) -> "TransformerTextEncoder":
        # A frozen encoder stays in eval mode (no dropout), so its features are deterministic
        # and can be computed once and cached.
        return super().train(mode and not self.frozen)

    def tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool(self.tokens(ids, mask), mask, self.pooling)  # (B, D)


def pool(tokens: torch.Tensor, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """(B, L, D) tokens and (B, L) mask -> (B, D)."""
    if pooling == "cls":
        return tokens[:, 0]
    weights = mask.unsqueeze(-1).to(tokens.dtype)  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def pretrained(tokenizer, name_or_path: str, pooling: str = "mean", freeze: str = "all",
               last_n: int = 1) -> TransformerTextEncoder:
    """Any Hugging Face encoder by hub id or local directory (``AutoModel.from_pretrained``).

    Args:
        tokenizer: The tokenizer the datamodule uses; checked against the model's vocabulary.
        name_or_path: e.g. ``bert-base-uncased`` (needs network or a filled cache) or a directory.
        pooling, freeze, last_n: As in :class:`TransformerTextEncoder`.
    """
    from transformers import AutoModel

    model = from_pretrained(AutoModel, name_or_path, "text_encoder.name_or_path")
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise UserError(f"text_encoder.name_or_path={name_or_path!r}: the tokenizer has "
                         f"{len(tokenizer)} tokens but the model embeds only {vocab}")
    if getattr(model, "pooler", None) is not None:
        # BERT-style models carry a pooler that lmvision never calls (it pools the tokens
        # itself); a trained parameter that no step uses would stall DDP
        model.pooler = None
    return TransformerTextEncoder(model, pooling=pooling, freeze=freeze, last_n=last_n)


# what lmvision-prefetch fetches for a node built by this function (see its Item kinds)
pretrained.downloads = (("model", "name_or_path", None),)  # type: ignore[attr-defined]


def scratch_bert(tokenizer, dim: int = 128, depth: int = 2, heads: int = 4,
                 intermediate_size: int = 256, max_length: int = 128, dropout: float = 0.1,
                 pooling: str = "mean") -> TransformerTextEncoder:
    """A small BERT built from a config and trained from scratch with lmvision's tokenizer.

    Args:
        tokenizer: The tokenizer trained on the training split (sets the vocabulary).
        dim: Hidden size.
        depth: Transformer layers.
        heads: Attention heads.
        intermediate_size: Width of the feed-forward layers.
        max_length: Longest sequence (position embeddings).
        dropout: Dropout in embeddings, attention and feed-forward layers.
        pooling: ``mean`` or ``cls``.
    """
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=dim, num_hidden_layers=depth,
        num_attention_heads=heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_length, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, pad_token_id=tokenizer.pad_token_id or 0,
    )
    return TransformerTextEncoder(BertModel(config, add_pooling_layer=False), pooling=pooling,
                                  freeze="none")


def _layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer layers: the longest ``nn.ModuleList`` in the model."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise UserError("text_encoder.freeze=all_but_last_n: no layer stack found in the model")
    return max(lists, key=len)
