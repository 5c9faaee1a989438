"""A prefix captioner (ClipCap-style): image-encoder tokens, a mapping network that turns them
into prefix embeddings, and a causal language-model decoder that continues the prefix with the
caption. An optional classification head on the pooled image features makes one model that
both decides and explains.

The decoder is a GPT-2 built from a config (``decoder_name=None``) or any Hugging Face causal
LM by hub name or local path, frozen or tuned. Decoding (greedy, beam search, nucleus
sampling) continues the prefix embeddings followed by BOS with the decoder's own Hugging Face
``generate`` and its KV cache (:func:`generate_after`), so validation, test, ``lmvision-eval``
and ``lmvision-explain`` share one implementation. (The hand-written loop that also decodes
without the cache is the baseline of the captioner speed study, in
``experiments/captioner/decoding.py``.)
"""

from __future__ import annotations

import torch
from torch import nn

from lmvision import checks
from lmvision.text.side import TextSide
from lmvision.text.tokenizers import CausalFormat

DECODINGS = ("greedy", "beam", "nucleus")


class Captioner(nn.Module):
    """Image → caption, and optionally image → class.

    Args:
        image_encoder: A module with ``tokens(images) -> (B, N, D)`` and ``out_dim``.
        image_size, channels: The images' side and channels (to count the encoder's tokens).
        text: The run's text side (:class:`~lmvision.text.side.TextSide`), whose tokenizer is
            the caption tokenizer (its size sets the vocabulary of a decoder built from a
            config; a pretrained decoder's embeddings are resized to it when they differ; its
            start, end and padding ids are those of :class:`CausalFormat`).
        num_classes: Classes of the classification head (0: no head).
        decoder_name: A Hugging Face causal LM by name or path (``None``: GPT-2 from a config).
        freeze_decoder: Keep the decoder's weights fixed (only the mapping network and the
            image encoder learn, as in ClipCap's frozen-GPT variant).
        dim, depth, heads: Size of the GPT-2 built from a config.
        max_length: Longest caption in tokens, BOS and EOS included.
        mapping_hidden: Hidden width of the mapping network (an MLP per image token).
        dropout: Dropout of the GPT-2 built from a config.
    """

    # what lmvision-prefetch fetches for a node of this class: (kind, option, revision option)
    downloads = (("model", "decoder_name", None),)

    def __init__(self, image_encoder: nn.Module, image_size: int, channels: int, text: TextSide,
                 num_classes: int = 0, decoder_name: str | None = None,
                 freeze_decoder: bool = False, dim: int = 128, depth: int = 2, heads: int = 4,
                 max_length: int = 64, mapping_hidden: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        fmt = CausalFormat(text.tokenizer)
        bos_id, eos_id, pad_id = fmt.bos_id, fmt.eos_id, fmt.pad_id
        self.image_encoder = image_encoder
        self.num_prefix = count_tokens(image_encoder, image_size, channels)
        self.max_length = int(max_length)  # caption tokens, BOS and EOS included
        self.decoder = build_decoder(decoder_name, len(fmt), dim, depth, heads,
                                     self.num_prefix + self.max_length, dropout, bos_id, eos_id,
                                     pad_id)
        width = self.decoder.config.hidden_size
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.mapping = nn.Sequential(nn.Linear(image_encoder.out_dim, mapping_hidden), nn.GELU(),
                                     nn.Linear(mapping_hidden, width))
        self.prefix_position = nn.Parameter(torch.randn(1, self.num_prefix, width) * 0.02)
        self.head = nn.Linear(image_encoder.out_dim, num_classes) if num_classes else None
        if freeze_decoder:
            self.decoder.requires_grad_(False)

    # -- pieces ---------------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (B, N, D) and their mean (B, D)."""
        tokens = self.image_encoder.tokens(images)
        return tokens, tokens.mean(1)

    def prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, width) prefix embeddings from the image tokens."""
        return self.mapping(tokens) + self.prefix_position

    def classify(self, pooled: torch.Tensor) -> torch.Tensor | None:
        return None if self.head is None else self.head(pooled)

    # -- training -------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Caption logits (B, L-1, V) predicting ``ids[:, 1:]`` from the prefix and ``ids``
        (``[BOS] caption [EOS] pad...``), and class logits (B, K) when there is a head."""
        tokens, pooled = self.encode(images)
        prefix = self.prefix(tokens)
        embeds = torch.cat([prefix, self.decoder.get_input_embeddings()(ids)], 1)
        attention = torch.cat([torch.ones(prefix.shape[:2], dtype=mask.dtype,
                                          device=mask.device), mask], 1)
        logits = self.decoder(inputs_embeds=embeds, attention_mask=attention).logits
        n = prefix.shape[1]
        out = {"caption_logits": logits[:, n:-1]}  # the output at BOS predicts the first token
        class_logits = self.classify(pooled)
        if class_logits is not None:
            out["class_logits"] = class_logits
        return out

    # -- decoding -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, images: torch.Tensor, decoding: str = "greedy", max_length: int | None = None,
                 num_beams: int = 4, top_p: float = 0.9, temperature: float = 1.0,
                 min_length: int = 0) -> torch.Tensor:
        """Generated caption ids (B, T) after BOS, up to EOS (then padding); at most
        ``max_length`` tokens (default: the longest caption the decoder was built for), at
        least ``min_length`` (EOS is held back until then; e.g. to time fixed lengths).
        Decoded by :func:`generate_after` (Hugging Face ``generate``, with the KV cache)."""
        checks.choice("decoding", decoding, DECODINGS)
        tokens, _ = self.encode(images)
        return generate_after(self.decoder, self.prefix(tokens), self.bos_id, self.eos_id,
                              self.pad_id, max_new=max_length or self.max_length - 1,
                              decoding=decoding, min_new=min_length, num_beams=num_beams,
                              top_p=top_p, temperature=temperature)


@torch.no_grad()
def generate_after(decoder: nn.Module, prefix: torch.Tensor, bos_id: int, eos_id: int,
                   pad_id: int, max_new: int, decoding: str = "greedy", min_new: int = 0,
                   num_beams: int = 4, top_p: float = 0.9, temperature: float = 1.0
                   ) -> torch.Tensor:
    """The tokens a Hugging Face causal LM ``decoder`` writes after the embeddings ``prefix``
    (B, N, D) followed by BOS's, decoded by its ``generate`` (with the KV cache).

    ``greedy``: ``do_sample=False, num_beams=1``; ``beam``: ``num_beams`` beams with Hugging
    Face's defaults (length penalty 1, ``early_stopping=False``); ``nucleus``: sampling with
    ``temperature`` and ``top_p`` (no top-k). EOS is held back for the first ``min_new``
    tokens. The settings that change what is decoded are all passed, so a pretrained
    decoder's own generation config (its sampling, penalties or lengths) does not apply.

    Returns (B, T) new token ids (for ``inputs_embeds`` alone, a decoder-only model's
    ``generate`` returns only the tokens it wrote, in transformers 4.x and 5.x), the end token
    included, ``pad_id`` after it; T is at most ``max_new`` and shorter when every row has
    ended.
    """
    checks.choice("decoding", decoding, DECODINGS)
    bos = decoder.get_input_embeddings()(
        torch.full((prefix.shape[0], 1), bos_id, dtype=torch.long, device=prefix.device))
    embeds = torch.cat([prefix, bos], 1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    if decoding == "nucleus":
        how = {"do_sample": True, "num_beams": 1, "top_k": 0, "top_p": top_p,
               "temperature": temperature}
    elif decoding == "beam":
        how = {"do_sample": False, "num_beams": num_beams, "length_penalty": 1.0,
               "early_stopping": False}
    else:
        how = {"do_sample": False, "num_beams": 1}
    ids = decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new,
                           min_new_tokens=min_new, bos_token_id=bos_id, eos_token_id=eos_id,
                           pad_token_id=pad_id, use_cache=True, num_return_sequences=1,
                           repetition_penalty=1.0, no_repeat_ngram_size=0,
                           return_dict_in_generate=False, **how)
    # beam search pads finished hypotheses with EOS when the pad id is 0 (transformers 5 fills
    # with ``pad_token_id or eos_token_id``): padding after the first EOS is always ``pad_id``
    is_end = (ids == eos_id).long()
    return ids.masked_fill(is_end.cumsum(1) - is_end > 0, pad_id)


def count_tokens(encoder: nn.Module, image_size: int, channels: int) -> int:
    """How many tokens ``encoder.tokens`` gives for one image (run once, in eval mode)."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        n = encoder.tokens(torch.zeros(1, channels, image_size, image_size)).shape[1]
    encoder.train(was_training)
    return int(n)


def build_decoder(name: str | None, vocab_size: int, dim: int, depth: int, heads: int,
                  positions: int, dropout: float, bos_id: int, eos_id: int, pad_id: int):
    """A GPT-2 from a config, or a pretrained causal LM resized to the caption vocabulary."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    if name is None:
        if dim % heads:
            raise checks.ArgumentError("dim", f"must be a multiple of heads={heads}", dim)
        config = GPT2Config(vocab_size=vocab_size, n_positions=positions, n_embd=dim,
                            n_layer=depth, n_head=heads, resid_pdrop=dropout, embd_pdrop=dropout,
                            attn_pdrop=dropout, bos_token_id=bos_id, eos_token_id=eos_id,
                            pad_token_id=pad_id)
        return GPT2LMHeadModel(config)
    from lmvision.text.hub import from_pretrained

    model = from_pretrained(AutoModelForCausalLM, name, "strategy.net.decoder_name")
    if model.get_input_embeddings().num_embeddings != vocab_size:
        model.resize_token_embeddings(vocab_size)
    return model
