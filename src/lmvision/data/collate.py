"""Batch collate: stack images and labels, keep strings, tokenise the field a run reads."""

from __future__ import annotations

from typing import Any, Callable

import torch

TEXT_KEYS = ("text", "caption")


class BatchCollator:
    """Turns a list of dataset items into a batch dict.

    Images and labels are stacked, and so are object ``mask``s where items have them;
    ``references`` (several captions per image) stay lists of lists and the strings under
    ``text`` and ``caption`` lists. The fields in ``tokenize`` are also tokenised into
    ``<field>_ids`` / ``<field>_mask`` (padded to the longest string of the batch, truncated at
    ``max_length``).

    Args:
        tokenizer: A Hugging Face tokenizer (anything called as
            ``tokenizer(strings, padding=..., truncation=..., max_length=..., return_tensors="pt")``).
        max_length: Longest token sequence kept.
        tokenize: Which string fields to tokenise (at most the one a run reads).
        causal: Tokenise as a causal language model reads text: ``[BOS] tokens [EOS]``
            (:class:`lmvision.text.tokenizers.CausalFormat`).
    """

    def __init__(self, tokenizer: Callable[..., Any] | None = None, max_length: int = 64,
                 tokenize: tuple[str, ...] = (), causal: bool = False) -> None:
        if tokenize and tokenizer is None:
            raise ValueError("tokenize: a field to tokenise needs a tokenizer")
        if causal and tokenizer is not None:
            from lmvision.text.tokenizers import CausalFormat

            tokenizer = CausalFormat(tokenizer)
        self.tokenizer, self.max_length, self.tokenize = tokenizer, int(max_length), tuple(tokenize)

    def __call__(self, items: list[dict]) -> dict:
        first = items[0]
        batch: dict[str, Any] = {
            "image": torch.stack([it["image"] for it in items]),  # (B, C, H, W)
            "label": torch.stack([torch.as_tensor(it["label"]) for it in items]),  # (B,) or (B, K)
        }
        for key in TEXT_KEYS:
            if key not in first:
                continue
            strings = [it[key] for it in items]
            batch[key] = strings
            if key in self.tokenize:
                enc = self.tokenizer(strings, padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt")
                batch[f"{key}_ids"] = enc["input_ids"]  # (B, L)
                batch[f"{key}_mask"] = enc["attention_mask"]  # (B, L)
        if "references" in first:
            batch["references"] = [list(it["references"]) for it in items]
        if "mask" in first:
            batch["mask"] = torch.stack([torch.as_tensor(it["mask"]) for it in items])  # (B, H, W)
        batch["index"] = torch.as_tensor([it.get("index", -1) for it in items])
        return batch
