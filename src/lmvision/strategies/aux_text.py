"""Strategy `aux_text`: class descriptions shape the classifier (classification by description).

The network (``lmvision.nn.prototypes.PrototypeClassifier``) scores images against class
prototypes made from descriptions (``descriptions=``: a file, a language model, or the
``class_name`` / ``random_words`` controls). The loss is cross-entropy over the prototypes,
plus, with ``contrastive_weight > 0``, an image-caption contrastive loss (CLIP's symmetric
InfoNCE) on the data's captions. Classes held out of training (``data.holdout_classes``) still
have prototypes, so test predicts them zero-shot. Each test example is explained by the
descriptions of its predicted class that score highest (``figures/test_explanations.json`` and
a W&B table).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvision.errors import UserError
from lmvision.nn.prototypes import PrototypeClassifier
from lmvision.strategies.classification import ClassificationStrategy
from lmvision.evaluation.figures import log_examples
from lmvision.text.descriptions import Descriptions
from lmvision.nn.feature_cache import TextFeatureCache

EXAMPLES = 32  # explained test examples


class AuxTextStrategy(ClassificationStrategy):
    """Trains a :class:`PrototypeClassifier` on class descriptions.

    Args:
        net: The prototype network.
        num_classes, label_smoothing, optimizer, scheduler, monitor, monitor_mode: As in
            :class:`ClassificationStrategy` (single-label data only).
        descriptions: The class descriptions (the entry point builds them from
            ``descriptions=``, or takes them from the checkpoint); stored in checkpoints.
        tokenizer: The text encoder's tokenizer (built by the entry point).
        classes: The class names, in label order (the datamodule's); descriptions are matched
            to them by name.
        contrastive_weight: Weight of the image-caption contrastive loss (0 turns it off; it
            needs data with captions).
        explain_top_k: Descriptions shown per explained test example.
        max_text_length: Longest tokenised description.
        task: Must be ``multiclass``.
    """

    def __init__(self, net: PrototypeClassifier, num_classes: int,
                 descriptions: Descriptions | None = None, tokenizer=None,
                 classes: list[str] | None = None, contrastive_weight: float = 0.0,
                 explain_top_k: int = 3, max_text_length: int = 64, task: str = "multiclass",
                 label_smoothing: float = 0.0, optimizer=None, scheduler=None,
                 monitor: str = "val/acc", monitor_mode: str = "max") -> None:
        if task != "multiclass":
            raise UserError("strategy=aux_text scores one class per image: it needs single-label "
                            f"data, not data.task={task!r}")
        super().__init__(net, num_classes, task, label_smoothing, optimizer, scheduler, monitor,
                         monitor_mode)
        if tokenizer is None or descriptions is None or classes is None:
            raise UserError("strategy=aux_text needs a tokenizer, descriptions and class names; "
                            "the entry points build them from text_encoder=, descriptions= and "
                            "the data")
        if isinstance(max_text_length, bool) or not isinstance(max_text_length, int) \
                or max_text_length < 1:
            raise UserError(f"strategy.max_text_length must be a whole number >= 1, "
                            f"got {max_text_length!r}")
        if not contrastive_weight >= 0:
            raise UserError(f"strategy.contrastive_weight must be >= 0, got {contrastive_weight}")
        if list(descriptions.by_class) != list(classes):
            raise UserError("strategy=aux_text: the descriptions' classes "
                            f"({', '.join(list(descriptions.by_class)[:5])}, ...) are not the "
                            f"data's ({', '.join(list(classes)[:5])}, ...) in the same order")
        if len(classes) != num_classes:
            raise UserError(f"strategy=aux_text: {len(classes)} class names for "
                            f"num_classes={num_classes}")
        self.descriptions, self.tokenizer = descriptions, tokenizer
        self.contrastive_weight, self.explain_top_k = float(contrastive_weight), int(explain_top_k)
        texts, owners = descriptions.flat()
        self.description_texts, self.description_owners = texts, torch.tensor(owners)
        net.set_descriptions(texts, owners, tokenizer, max_text_length)
        self.max_text_length = max_text_length
        # batches carry tokenised captions only when a trained text encoder reads them
        tuned = not net.text_encoder.frozen
        self.text_keys = ("caption",) if self.contrastive_weight > 0 and tuned else ()
        self._captions: TextFeatureCache | None = None
        self._image_features: torch.Tensor | None = None
        self._examples: list[dict] = []

    # -- captions -----------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.contrastive_weight > 0 \
                and not any(self.trainer.datamodule.texts("caption")):
            raise UserError("strategy.contrastive_weight > 0 needs captions, and this dataset "
                            "has none; set strategy.contrastive_weight=0")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.contrastive_weight > 0:
            datamodule = self.trainer.datamodule
            if self.net.text_encoder.frozen and self._captions is None:
                self._captions = TextFeatureCache(self.net.text_encoder, self.tokenizer,
                                                  datamodule.texts("caption"), with_tokens=False,
                                                  max_length=datamodule.max_text_length)

    def caption_features(self, batch: dict) -> torch.Tensor:
        """(B, Dt) normalised caption vectors of a batch."""
        if self._captions is not None:
            features = self._captions.lookup(batch["index"])["text"]
        else:
            features = self.net.text_encoder(batch["caption_ids"], batch["caption_mask"])
        return F.normalize(features, dim=-1)

    # -- loss ---------------------------------------------------------------------------------
    def logits(self, batch: dict) -> torch.Tensor:
        self._image_features = self.net.image_features(batch["image"])
        return self.net.score(self._image_features)

    def step(self, batch: dict, split: str) -> dict[str, torch.Tensor]:
        losses = super().step(batch, split)
        if self.contrastive_weight > 0 and split != "test":
            images, captions = self._image_features, self.caption_features(batch)
            logits = self.net.scale * images @ captions.T  # (B, B)
            target = torch.arange(len(logits), device=logits.device)
            contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            losses = {"loss": losses["loss"] + self.contrastive_weight * contrastive,
                      "classification": losses["loss"], "contrastive": contrastive}
        self._image_features = None
        return losses

    # -- explanations -------------------------------------------------------------------------
    def test_predictions(self, batch: dict, logits: torch.Tensor) -> None:
        super().test_predictions(batch, logits)
        if len(self._examples) >= EXAMPLES:
            return
        n = min(EXAMPLES - len(self._examples), len(logits))
        scores = self.net.description_scores(self._image_features[:n].detach())  # (n, M)
        predicted, actual = self.describe(logits[:n].cpu(), batch["label"][:n].cpu())
        owners = self.description_owners.to(scores.device)
        for i in range(n):
            mine = (owners == logits[i].argmax()).nonzero().flatten()
            top = mine[scores[i, mine].argsort(descending=True)[:self.explain_top_k]]
            self._examples.append({
                "_image": batch["image"][i].cpu(), "label": actual[i], "prediction": predicted[i],
                "confidence": round(float(logits[i].softmax(0).max()), 4),
                "because": " | ".join(f"{self.description_texts[j]} ({float(scores[i, j]):.3f})"
                                      for j in top.tolist())})

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        log_examples(self.trainer, "test/explanations", self._examples)
        self._examples = []
