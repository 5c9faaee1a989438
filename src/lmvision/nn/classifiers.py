"""Classification networks: plain ``nn.Module``s built from encoders, a fusion and a head.

Strategies receive these already built (``strategy.net`` in the configs); a notebook can use
them without Lightning:

    net = ImageClassifier(SmallCNN(), LinearHead, num_classes=4)
    logits = net({"image": images})  # (B, 4)

Every classifier takes its inputs by name, as the batch dict the datamodule yields, and names
its image encoder ``image_encoder`` so that ``init_from_prefix=image_encoder`` moves an image
encoder between any two of them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lmvision import checks
from lmvision.nn.feature_cache import TextFeatureCache
from lmvision.nn.text_encoders import pool
from lmvision.text.side import TextSide

MODES = ("fused", "image_only", "text_only")


class ImageClassifier(nn.Module):
    """An image encoder and a head.

    Args:
        image_encoder: Image encoder with ``forward(images) -> (B, D)`` and ``out_dim``.
        head: Builds the head: ``head(in_dim=image_encoder.out_dim, out_dim=num_classes)``.
        num_classes: Number of classes (or tags).
    """

    def __init__(self, image_encoder: nn.Module, head: Callable[..., nn.Module], num_classes: int) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.head = head(in_dim=image_encoder.out_dim, out_dim=num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.image_encoder(inputs["image"]))  # (B, K)


class FusionClassifier(nn.Module):
    """Image and text encoders, a fusion module and a head.

    ``mode`` runs the ablations through the same module: ``fused`` (both modalities),
    ``image_only`` and ``text_only`` (the unused encoder is not kept, so every parameter of the
    network takes part in every step, as DDP requires). ``modality_dropout`` hides the text of
    a share of the training examples: a learned "no text" vector stands in for it.

    Inputs (a dict, e.g. the batch): ``image`` (B, C, H, W); and either ``text_ids`` /
    ``text_mask`` (B, L), or ``index`` (B,), the items' positions in the dataset: a frozen text
    encoder encodes every distinct text of the data once, when first asked, and looks the
    features up by index.

    Args:
        image_encoder: Image encoder (``forward``, ``tokens``, ``out_dim``).
        text: The run's text side (:class:`~lmvision.text.side.TextSide`): its text encoder
            (``forward``, ``tokens``, ``out_dim``, ``pooling``, ``frozen``), its tokenizer and
            the items' strings.
        fusion: Builds the fusion: ``fusion(image_dim=..., text_dim=...)``.
        head: Builds the head: ``head(in_dim=..., out_dim=num_classes)``.
        num_classes: Number of classes (or tags).
        mode: ``fused``, ``image_only`` or ``text_only``.
        modality_dropout: Probability of hiding an example's text during training, in [0, 1).
    """

    def __init__(self, image_encoder: nn.Module, text: TextSide,
                 fusion: Callable[..., nn.Module], head: Callable[..., nn.Module], num_classes: int,
                 mode: str = "fused", modality_dropout: float = 0.0) -> None:
        super().__init__()
        self.mode = checks.choice("mode", mode, MODES)
        self.modality_dropout = checks.number("modality_dropout", modality_dropout, 0.0, 1.0,
                                              high_open=True)
        text_encoder = text.encoder()
        self.image_encoder = image_encoder if mode != "text_only" else None
        self.text_encoder = text_encoder if mode != "image_only" else None
        image_dim, text_dim = image_encoder.out_dim, text_encoder.out_dim
        self.fusion = fusion(image_dim=image_dim, text_dim=text_dim) if mode == "fused" else None
        in_dim = {"fused": getattr(self.fusion, "out_dim", 0), "image_only": image_dim,
                  "text_only": text_dim}[mode]
        self.head = head(in_dim=in_dim, out_dim=num_classes)
        # Stands in for missing text. Learned only where modality dropout hides text in training;
        # otherwise a fixed zero vector (a parameter no step uses would stall DDP).
        null_text = torch.zeros(text_dim)
        if mode == "fused" and modality_dropout > 0:
            self.null_text = nn.Parameter(null_text)
        else:
            self.register_buffer("null_text", null_text)
        self.text_cache: TextFeatureCache | None = None
        self._text = text

    @property
    def needs_tokens(self) -> bool:
        return bool(getattr(self.fusion, "needs_tokens", False))

    @property
    def reads_text(self) -> bool:
        return self.text_encoder is not None

    def cached_text(self) -> TextFeatureCache | None:
        """The features of every item's text, computed once, on the encoder's device, when the
        text encoder is frozen (``None`` when it learns)."""
        if self.text_encoder is None or not self.text_encoder.frozen:
            return None
        device = next(self.text_encoder.parameters()).device
        if self.text_cache is None or self.text_cache.pooled.device != device:
            # normal tensors even under inference mode: a later training step reads them
            with torch.inference_mode(False), torch.no_grad():
                self.text_cache = TextFeatureCache(
                    self.text_encoder, self._text.tokenizer, self._text.strings(),
                    with_tokens=self.needs_tokens, max_length=self._text.max_length)
        return self.text_cache

    def forward(self, inputs: dict[str, torch.Tensor],
                text_present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, K) scores; ``text_present`` (B,) bool hides the text of the False examples.

        In training mode, modality dropout draws ``text_present`` itself.
        """
        if text_present is None and self.training and isinstance(self.null_text, nn.Parameter):
            batch = len(inputs["image"]) if "image" in inputs else len(inputs["text_ids"])
            text_present = torch.rand(batch, device=self.null_text.device) >= self.modality_dropout
        features: dict[str, torch.Tensor] = {}
        if self.image_encoder is not None:
            images = inputs["image"]
            if self.needs_tokens:
                features["image_tokens"] = self.image_encoder.tokens(images)  # (B, N, Di)
            else:
                features["image"] = self.image_encoder(images)  # (B, Di)
        if self.text_encoder is not None:
            features.update(self.text_features(inputs, text_present))
        if self.mode == "fused":
            fused = self.fusion(features)
        else:
            fused = features["image" if self.mode == "image_only" else "text"]
        return self.head(fused)  # (B, K)

    def text_features(self, inputs: dict[str, torch.Tensor],
                      present: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``text`` (B, Dt) and, for token fusions, ``text_tokens`` (B, L, Dt) / ``text_mask``."""
        cache = self.cached_text() if "index" in inputs else None
        if cache is not None:
            feats = cache.lookup(inputs["index"])
        else:
            ids, mask = inputs["text_ids"], inputs["text_mask"]
            tokens = self.text_encoder.tokens(ids, mask)  # (B, L, Dt)
            feats = {"text": pool(tokens, mask, self.text_encoder.pooling), "text_tokens": tokens,
                     "text_mask": mask}
        return feats if present is None else self._hide_text(feats, present)

    def _hide_text(self, feats: dict, present: torch.Tensor) -> dict:
        keep = present.view(-1, 1)  # (B, 1)
        null = self.null_text.to(feats["text"].dtype)
        out = {"text": torch.where(keep, feats["text"], null.expand_as(feats["text"]))}
        if "text_tokens" in feats:
            tokens, mask = feats["text_tokens"], feats["text_mask"]  # (B, L, D), (B, L)
            null_tokens = torch.zeros_like(tokens)
            null_tokens[:, 0] = null
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = 1
            out["text_tokens"] = torch.where(keep.unsqueeze(-1), tokens, null_tokens)
            out["text_mask"] = torch.where(keep, mask, null_mask)
        return out
