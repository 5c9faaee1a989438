"""Strategy `aux_text`: class descriptions shape the classifier (classification by description).

The network (``lmvision.nn.prototypes.PrototypeClassifier``) scores images against class
prototypes made from the descriptions of the run's text side (``descriptions=``: a file, a
language model, or the ``class_name`` / ``random_words`` controls). The loss is cross-entropy
over the prototypes, plus, with ``contrastive_weight > 0``, an image-caption contrastive loss
(CLIP's symmetric InfoNCE) on the data's captions. Classes held out of training
(``data.holdout_classes``) still have prototypes, so test predicts them zero-shot. The
descriptions that explain each test prediction are a callback (``evaluation=aux_text``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvision import checks
from lmvision.errors import UserError
from lmvision.nn.feature_cache import TextFeatureCache
from lmvision.nn.prototypes import PrototypeClassifier
from lmvision.strategies.classification import ClassificationStrategy
from lmvision.text.side import TextSide


class AuxTextStrategy(ClassificationStrategy):
    """Trains a :class:`PrototypeClassifier` on class descriptions.

    Args:
        net: The prototype network.
        text: The run's text side (its tokenizer reads the captions of the contrastive loss).
        num_classes, label_smoothing, optimizer, scheduler, monitor, monitor_mode: As in
            :class:`ClassificationStrategy` (single-label data only).
        contrastive_weight: Weight of the image-caption contrastive loss (0 turns it off; it
            needs data with captions).
        task: Must be ``multiclass``.
    """

    def __init__(self, net: PrototypeClassifier, text: TextSide, num_classes: int,
                 contrastive_weight: float = 0.0, task: str = "multiclass",
                 label_smoothing: float = 0.0, optimizer=None, scheduler=None,
                 monitor: str = "val/acc", monitor_mode: str = "max") -> None:
        if task != "multiclass":
            raise checks.ArgumentError("task", "aux_text scores one class per image: it needs "
                                       "single-label data", task)
        super().__init__(net, num_classes, task, label_smoothing, optimizer, scheduler, monitor,
                         monitor_mode)
        if net.num_classes != num_classes:
            raise checks.ArgumentError("num_classes", f"the network describes {net.num_classes} "
                                       "classes", num_classes)
        self.contrastive_weight = checks.number("contrastive_weight", contrastive_weight, low=0.0)
        self.text = text
        self._captions: TextFeatureCache | None = None

    # -- captions -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.contrastive_weight > 0 \
                and not any(self.trainer.datamodule.texts("caption")):
            raise UserError("strategy.contrastive_weight > 0 needs captions, and this dataset "
                            "has none; set strategy.contrastive_weight=0")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.contrastive_weight > 0 and self.net.text_encoder.frozen and self._captions is None:
            self._captions = TextFeatureCache(
                self.net.text_encoder, self.text.tokenizer, self.trainer.datamodule.texts("caption"),
                with_tokens=False, max_length=self.text.max_length)

    def caption_features(self, batch: dict) -> torch.Tensor:
        """(B, Dt) normalised caption vectors of a batch (a learning text encoder reads the
        captions, tokenised here, with gradients)."""
        if self._captions is not None:
            features = self._captions.lookup(batch["index"])["text"]
        else:
            enc = self.text.tokenizer(list(batch["caption"]), padding=True, truncation=True,
                                      max_length=self.text.max_length, return_tensors="pt")
            device = batch["image"].device
            features = self.net.text_encoder(enc["input_ids"].to(device),
                                             enc["attention_mask"].to(device))
        return F.normalize(features, dim=-1)

    # -- loss ---------------------------------------------------------------------------------
    def predict(self, batch: dict) -> dict[str, torch.Tensor]:
        features = self.net.image_features(batch["image"])  # (B, Dt)
        return {"logits": self.net.score(features), "image_features": features}

    def more_losses(self, classification: torch.Tensor, outputs: dict, batch: dict,
                    split: str) -> dict[str, torch.Tensor]:
        if self.contrastive_weight == 0 or split == "test":
            return {"loss": classification}
        images, captions = outputs["image_features"], self.caption_features(batch)
        logits = self.net.scale * images @ captions.T  # (B, B)
        target = torch.arange(len(logits), device=logits.device)
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return {"loss": classification + self.contrastive_weight * contrastive,
                "classification": classification, "contrastive": contrastive}
