"""Strategy `fusion`: image encoder + text encoder, features fused, one head.

``mode`` runs the ablations through the same module so that one sweep compares them:
``fused`` (both modalities), ``image_only`` and ``text_only``. ``modality_dropout`` hides the
text of a share of training examples (a learned "no text" vector stands in), so the model
also works when text is missing; at test time ``test/acc_no_text`` reports accuracy with the
text of every example removed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchmetrics.classification import Accuracy

from lmvision.nn.text_encoders import pool
from lmvision.strategies.base import ClassificationStrategy
from lmvision.strategies.figures import log_examples
from lmvision.text.feature_cache import TextFeatureCache

MODES = ("fused", "image_only", "text_only")
EXAMPLES = 32  # test examples in the W&B table


class FusionClassifier(ClassificationStrategy):
    """Image and text encoders, a fusion module and a head.

    Args:
        image_encoder: Image encoder (``forward``, ``tokens``, ``out_dim``).
        text_encoder: Builds the text encoder: ``text_encoder(tokenizer=...)``.
        fusion: Builds the fusion: ``fusion(image_dim=..., text_dim=...)``.
        head: Builds the head: ``head(in_dim=..., out_dim=num_classes)``.
        num_classes: Number of classes (or tags).
        optimizer: Builds the optimiser from parameters (a partial).
        scheduler: Builds the schedule (``scheduler(optimizer, total_steps=...)``) or ``None``.
        tokenizer: The tokenizer of the text encoder (the entry point builds it from
            ``text_encoder.tokenizer`` and gives the same one to the datamodule).
        mode: ``fused``, ``image_only`` or ``text_only``.
        modality_dropout: Probability of hiding an example's text during training.
        max_text_length: Longest token sequence for cached text features.
        task: ``multiclass`` or ``multilabel``.
        label_smoothing: Label smoothing of the cross-entropy.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: Callable[..., nn.Module],
                 fusion: Callable[..., nn.Module], head: Callable[..., nn.Module], num_classes: int,
                 optimizer: Callable, scheduler: Callable | None = None, tokenizer=None,
                 mode: str = "fused", modality_dropout: float = 0.0, max_text_length: int = 64,
                 task: str = "multiclass", label_smoothing: float = 0.0) -> None:
        super().__init__(num_classes, optimizer, scheduler, task, label_smoothing)
        if mode not in MODES:
            raise ValueError(f"strategy.mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"strategy.modality_dropout must be in [0, 1), got {modality_dropout}")
        if tokenizer is None:
            raise ValueError("strategy=fusion needs a tokenizer; the entry points build it from "
                             "text_encoder.tokenizer")
        self.save_hyperparameters(ignore=["image_encoder", "text_encoder", "fusion", "head",
                                          "optimizer", "scheduler", "tokenizer"])
        self.mode, self.modality_dropout, self.max_text_length = mode, modality_dropout, max_text_length
        self.tokenizer = tokenizer
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder(tokenizer=tokenizer)
        image_dim, text_dim = image_encoder.out_dim, self.text_encoder.out_dim
        self.fusion = fusion(image_dim=image_dim, text_dim=text_dim) if mode == "fused" else None
        in_dim = {"fused": getattr(self.fusion, "out_dim", 0), "image_only": image_dim,
                  "text_only": text_dim}[mode]
        self.head = head(in_dim=in_dim, out_dim=num_classes)
        self.null_text = nn.Parameter(torch.zeros(text_dim))  # stands in for missing text
        self.acc_no_text = (Accuracy(task="multiclass", num_classes=num_classes) if task == "multiclass"
                            else Accuracy(task="multilabel", num_labels=num_classes))
        self.text_cache: TextFeatureCache | None = None
        self._examples: list[dict] = []

    @property
    def needs_tokens(self) -> bool:
        return bool(getattr(self.fusion, "needs_tokens", False))

    # -- features ---------------------------------------------------------------------------
    def logits(self, batch: dict, text_present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) scores; ``text_present`` (B,) bool hides the text of the False examples.

        In training mode, modality dropout draws ``text_present`` itself.
        """
        if text_present is None and self.training and self.modality_dropout > 0 and self.mode == "fused":
            text_present = torch.rand(len(batch["label"]), device=self.device) >= self.modality_dropout
        inputs: dict[str, torch.Tensor] = {}
        if self.mode != "text_only":
            images = batch["image"]
            if self.needs_tokens:
                inputs["image_tokens"] = self.image_encoder.tokens(images)  # (B, N, Di)
            else:
                inputs["image"] = self.image_encoder(images)  # (B, Di)
        if self.mode != "image_only":
            inputs.update(self.text_features(batch, text_present))
        if self.mode == "fused":
            features = self.fusion(inputs)
        else:
            features = inputs["image" if self.mode == "image_only" else "text"]
        return self.head(features)  # (B, K)

    def text_features(self, batch: dict, present: torch.Tensor | None) -> dict[str, torch.Tensor]:
        if self.text_encoder.frozen:
            feats = self.cached_text(batch["index"])
        else:
            ids, mask = batch["text_ids"], batch["text_mask"]
            tokens = self.text_encoder.tokens(ids, mask)  # (B, L, Dt)
            feats = {"text": pool(tokens, mask, self.text_encoder.pooling), "text_tokens": tokens,
                     "text_mask": mask}
        if present is None:
            return feats
        return self._hide_text(feats, present)

    def cached_text(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of a frozen text encoder, computed once for the whole dataset."""
        if self.text_cache is None:
            texts = self.trainer.datamodule.texts("text")  # every item, in dataset order
            self.text_cache = TextFeatureCache(self.text_encoder, self.tokenizer, texts,
                                               with_tokens=self.needs_tokens,
                                               max_length=self.max_text_length)
        return self.text_cache.lookup(index)

    def _hide_text(self, feats: dict, present: torch.Tensor) -> dict:
        keep = present.view(-1, 1)  # (B, 1)
        out = {"text": torch.where(keep, feats["text"], self.null_text.expand_as(feats["text"]))}
        if "text_tokens" in feats:
            tokens, mask = feats["text_tokens"], feats["text_mask"]  # (B, L, D), (B, L)
            null_tokens = torch.zeros_like(tokens)
            null_tokens[:, 0] = self.null_text
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = 1
            out["text_tokens"] = torch.where(keep.unsqueeze(-1), tokens, null_tokens)
            out["text_mask"] = torch.where(keep, mask, null_mask)
        return out

    # -- test ------------------------------------------------------------------------------
    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = super().test_step(batch, batch_idx)
        absent = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
        no_text = self.logits(batch, absent) if self.mode != "image_only" else logits
        self.acc_no_text.update(no_text, self._targets(batch))
        if len(self._examples) < EXAMPLES:
            self._collect_examples(batch, logits)
        return logits

    def on_test_epoch_end(self) -> None:
        self.log("test/acc_no_text", self.acc_no_text.compute(), sync_dist=True)
        self.acc_no_text.reset()
        if self._examples:
            images = torch.stack([e.pop("_image") for e in self._examples])
            log_examples(self.trainer, "test/examples", images, self._examples)
            self._examples = []
        super().on_test_epoch_end()

    def _collect_examples(self, batch: dict, logits: torch.Tensor) -> None:
        n = min(EXAMPLES - len(self._examples), len(logits))
        predicted, actual = self.describe(logits[:n].detach().cpu(), batch["label"][:n].cpu())
        for i in range(n):
            self._examples.append({"_image": batch["image"][i].cpu(), "text": batch["text"][i],
                                   "label": actual[i], "prediction": predicted[i]})
