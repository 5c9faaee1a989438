"""Batch collate: stack images and labels, tokenise `text` and `caption` when asked to."""

from __future__ import annotations

from typing import Any, Callable

import torch

TEXT_KEYS = ("text", "caption")


class BatchCollator:
    """Turns a list of dataset items into a batch dict.

    Images and labels are stacked, and so are object ``mask``s where items have them;
    ``references`` (several captions per image) stay lists of lists. The strings under
    ``text`` and ``caption`` stay in the batch as lists; when a tokenizer is configured they
    are also tokenised into ``text_ids``/``text_mask`` and ``caption_ids``/``caption_mask``
    (padded to the longest string of the batch, truncated at ``max_length``).

    Args:
        tokenizer: A Hugging Face tokenizer (anything called as
            ``tokenizer(strings, padding=..., truncation=..., max_length=..., return_tensors="pt")``).
        max_length: Longest token sequence kept.
        keys: Which string fields to tokenise.
        tokenizers: A tokenizer per field that overrides ``tokenizer`` for it (e.g. a causal
            language model's for ``caption``, see :class:`lmvision.text.tokenizers.CausalFormat`).
    """

    def __init__(
        self,
        tokenizer: Callable[..., Any] | None = None,
        max_length: int = 64,
        keys: tuple[str, ...] = TEXT_KEYS,
        tokenizers: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.tokenizers = dict(tokenizers or {})
        self.max_length = int(max_length)
        self.keys = tuple(keys)

    def __call__(self, items: list[dict]) -> dict:
        first = items[0]
        batch: dict[str, Any] = {
            "image": torch.stack([it["image"] for it in items]),  # (B, C, H, W)
            "label": torch.stack([torch.as_tensor(it["label"]) for it in items]),  # (B,) or (B, K)
        }
        for key in self.keys:
            if key not in first:
                continue
            strings = [it[key] for it in items]
            batch[key] = strings
            tokenizer = self.tokenizers.get(key, self.tokenizer)
            if tokenizer is not None:
                enc = tokenizer(
                    strings, padding=True, truncation=True, max_length=self.max_length,
                    return_tensors="pt",
                )
                batch[f"{key}_ids"] = enc["input_ids"]  # (B, L)
                batch[f"{key}_mask"] = enc["attention_mask"]  # (B, L)
        if "references" in first:
            batch["references"] = [list(it["references"]) for it in items]
        if "mask" in first:
            batch["mask"] = torch.stack([torch.as_tensor(it["mask"]) for it in items])  # (B, H, W)
        batch["index"] = torch.as_tensor([it.get("index", -1) for it in items])
        return batch
