"""What every classification strategy shares: loss by task, metrics per split, the best
validation accuracy, test figures and optimiser wiring. A strategy adds its model and says how
a batch becomes logits (``logits(batch)``); see ``image_classifier.py`` and ``fusion.py``.
"""

from __future__ import annotations

from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from lmvision.optim import configure_optimizers
from lmvision.strategies.figures import confusion_matrix_figure, log_figure, prediction_grid_figure
from lmvision.strategies.metrics import SplitMetrics

GRID_SIZE = 32  # test images shown in the prediction grid


class ClassificationStrategy(pl.LightningModule):
    """Base of the classification strategies (one level of inheritance, no more).

    Args:
        num_classes: Number of classes (or tags).
        optimizer: Builds the optimiser from parameters (a partial).
        scheduler: Builds the schedule: ``scheduler(optimizer, total_steps=...)``; or ``None``.
        task: ``multiclass`` (cross-entropy) or ``multilabel`` (binary cross-entropy per tag).
        label_smoothing: Label smoothing of the cross-entropy.
    """

    def __init__(self, num_classes: int, optimizer: Callable, scheduler: Callable | None = None,
                 task: str = "multiclass", label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.task, self.label_smoothing = num_classes, task, label_smoothing
        self.optimizer, self.scheduler = optimizer, scheduler
        self.metrics = SplitMetrics(task, num_classes)
        self.val_acc_best = MaxMetric()
        self.confusion = MulticlassConfusionMatrix(num_classes) if task == "multiclass" else None
        self._grid: dict[str, torch.Tensor] = {}

    def logits(self, batch: dict) -> torch.Tensor:
        """(B, K) class scores for a batch; each strategy defines it."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.task == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def model_step(self, batch: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(batch)
        loss = self.loss(logits, batch["label"])
        self.metrics[split].update(logits, self._targets(batch))
        self.log(f"{split}/loss", loss, on_step=split == "train", on_epoch=True, prog_bar=True,
                 batch_size=len(logits), sync_dist=split != "train")
        return loss, logits

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        _, logits = self.model_step(batch, "test")
        if self.confusion is not None:
            self.confusion.update(logits.argmax(dim=1), batch["label"])
        if batch_idx == 0:
            n = min(GRID_SIZE, len(logits))
            self._grid = {"images": batch["image"][:n].cpu(), "logits": logits[:n].detach().cpu(),
                          "labels": batch["label"][:n].cpu()}
        return logits

    def on_train_start(self) -> None:
        self.val_acc_best.reset()  # forget the sanity-check batches

    def on_train_epoch_end(self) -> None:
        self.metrics.log_epoch(self, "train")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.metrics["val"].reset()
            return
        values = self.metrics.log_epoch(self, "val")
        self.val_acc_best(values["val/acc"])
        self.log("val/acc_best", self.val_acc_best.compute(), prog_bar=True, sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self.metrics.log_epoch(self, "test")
        classes = self.class_names()
        if self.confusion is not None:
            matrix = self.confusion.compute()  # synced across processes
            self.confusion.reset()
            log_figure(self.trainer, "test/confusion_matrix", confusion_matrix_figure(matrix, classes))
        if self._grid:
            predicted, actual = self.describe(self._grid["logits"], self._grid["labels"])
            fig = prediction_grid_figure(self._grid["images"], predicted, actual)
            log_figure(self.trainer, "test/predictions", fig)
            self._grid = {}

    def configure_optimizers(self) -> dict:
        return configure_optimizers(self, self.optimizer, self.scheduler,
                                    self.trainer.estimated_stepping_batches)

    def class_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None)
        classes = getattr(dm, "classes", None)
        return list(classes) if classes else [str(i) for i in range(self.num_classes)]

    def describe(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[str], list[str]]:
        """Predicted and true class names (comma-joined tags for multi-label data)."""
        classes = self.class_names()
        if self.task == "multilabel":
            def tags(row):
                return ",".join(classes[i] for i in row.nonzero().flatten().tolist()) or "-"
            return [tags(r) for r in (logits > 0)], [tags(r) for r in labels > 0.5]
        return [classes[i] for i in logits.argmax(1).tolist()], [classes[i] for i in labels.tolist()]

    def _targets(self, batch: dict) -> torch.Tensor:
        return batch["label"].long() if self.task == "multilabel" else batch["label"]
