"""What the classification strategies share, on top of :class:`Strategy`: labels, the loss by
task, accuracy and macro P/R/F1 per split, the confusion matrix and a grid of test predictions.
When the datamodule holds classes out of training (``data.holdout_classes``), training scores
only the seen classes and test adds the zero-shot metrics of :class:`HoldoutAccuracy`.
The image-only baseline (``strategy=image_classifier``) is this class with an
``ImageClassifier`` network; ``fusion.py``, ``aux_text.py`` and ``pixel_lm_finetune.py`` add what
they need on top. At test, each batch's outputs (``logits`` and what :meth:`predict` adds) go to
the evaluation callbacks (``on_test_batch_end``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from lmvision.strategies.base import Strategy
from lmvision.evaluation.figures import confusion_matrix_figure, prediction_grid_figure
from lmvision.evaluation.metrics import HoldoutAccuracy, SplitMetrics

GRID_SIZE = 32  # test images shown in the prediction grid


class ClassificationStrategy(Strategy):
    """Base of the classification strategies.

    Args:
        net: The classification network (``net(batch) -> (B, K)`` logits).
        num_classes: Number of classes (or tags).
        task: ``multiclass`` (cross-entropy) or ``multilabel`` (binary cross-entropy per tag).
        label_smoothing: Label smoothing of the cross-entropy.
        optimizer, scheduler, monitor, monitor_mode: As in :class:`Strategy`.
    """

    def __init__(self, net: nn.Module, num_classes: int, task: str = "multiclass",
                 label_smoothing: float = 0.0, optimizer=None, scheduler=None,
                 monitor: str = "val/acc", monitor_mode: str = "max") -> None:
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode)
        self.num_classes, self.task, self.label_smoothing = num_classes, task, label_smoothing
        self.metrics = SplitMetrics(task, num_classes)
        self.confusion = MulticlassConfusionMatrix(num_classes) if task == "multiclass" else None
        self._grid: dict[str, torch.Tensor] = {}
        self.holdout: HoldoutAccuracy | None = None

    def setup(self, stage: str) -> None:
        unseen = getattr(getattr(self.trainer, "datamodule", None), "unseen_classes", None)
        if unseen and self.task == "multiclass" and self.holdout is None:
            self.holdout = HoldoutAccuracy(self.num_classes, unseen)
            seen = torch.ones(self.num_classes, dtype=torch.bool)
            seen[unseen] = False
            self.register_buffer("seen_classes", seen, persistent=False)
            # label -> its column among the seen classes (the training loss has only those)
            self.register_buffer("seen_column", seen.long().cumsum(0) - 1, persistent=False)

    def predict(self, batch: dict) -> dict[str, torch.Tensor]:
        """The network's outputs for a batch: ``logits`` (B, K), and what a strategy's own loss
        or an evaluation callback reads besides (e.g. ``image_features``)."""
        return {"logits": self.net(batch)}

    def logits(self, batch: dict) -> torch.Tensor:
        """(B, K) class scores of a batch."""
        return self.predict(batch)["logits"]

    def step(self, batch: dict, split: str) -> dict[str, torch.Tensor]:
        outputs = self.predict(batch)
        logits, labels = outputs["logits"], batch["label"]
        if self.task == "multilabel":
            loss = F.binary_cross_entropy_with_logits(logits, labels.float())
        elif split == "train" and self.holdout is not None:
            # held-out classes are not trained on: neither the loss nor its label smoothing
            # sees them, and training accuracy predicts among the seen classes
            loss = F.cross_entropy(logits[:, self.seen_classes], self.seen_column[labels],
                                   label_smoothing=self.label_smoothing)
            logits = logits.masked_fill(~self.seen_classes, float("-inf"))
        else:
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        self.metrics[split].update(logits.detach(), self.targets(batch))
        losses = self.more_losses(loss, outputs, batch, split)
        if split == "test":
            self.test_predictions(batch, logits.detach())
            losses["outputs"] = {k: v.detach() for k, v in {**outputs, "logits": logits}.items()}
        return losses

    def more_losses(self, classification: torch.Tensor, outputs: dict, batch: dict,
                    split: str) -> dict[str, torch.Tensor]:
        """The losses of a batch given its classification loss: ``{"loss": classification}``
        here; a strategy with a loss of its own adds it (and logs the parts)."""
        return {"loss": classification}

    def targets(self, batch: dict) -> torch.Tensor:
        """Labels as the metrics take them (multi-hot tags as integers)."""
        return batch["label"].long() if self.task == "multilabel" else batch["label"]

    def test_predictions(self, batch: dict, logits: torch.Tensor) -> None:
        """Collect what the test figures show; strategies add their own (and call this)."""
        if self.confusion is not None:
            self.confusion.update(logits.argmax(dim=1), batch["label"])
        if self.holdout is not None:
            self.holdout.update(logits, batch["label"])
        if not self._grid:
            n = min(GRID_SIZE, len(logits))
            self._grid = {"images": batch["image"][:n].cpu(), "logits": logits[:n].cpu(),
                          "labels": batch["label"][:n].cpu()}

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        values = self.metrics.compute(split)
        if split == "test" and self.holdout is not None:
            values.update({f"test/{k}": v for k, v in self.holdout.compute().items()})
            self.holdout.reset()
        return values

    def validation_metrics(self) -> list[str]:
        return ["val/loss", *self.metrics["val"].keys()]

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        classes = self.class_names()
        if self.confusion is not None:
            matrix = self.confusion.compute()  # synced across processes
            self.confusion.reset()
            self.log_figure("test/confusion_matrix", confusion_matrix_figure(matrix, classes))
        if self._grid:
            predicted, actual = self.describe(self._grid["logits"], self._grid["labels"])
            self.log_figure("test/predictions",
                            prediction_grid_figure(self._grid["images"], predicted, actual))
            self._grid = {}

    def describe(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[str], list[str]]:
        """Predicted and true class names (comma-joined tags for multi-label data)."""
        classes = self.class_names()
        if self.task == "multilabel":
            def tags(row):
                return ",".join(classes[i] for i in row.nonzero().flatten().tolist()) or "-"
            return [tags(r) for r in (logits > 0)], [tags(r) for r in labels > 0.5]
        return [classes[i] for i in logits.argmax(1).tolist()], [classes[i] for i in labels.tolist()]
