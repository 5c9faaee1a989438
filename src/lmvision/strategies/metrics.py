"""Classification metrics per split, named as in the run record (``test/acc``, ``val/f1_macro``)."""

from __future__ import annotations

from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    Accuracy,
    ExactMatch,
    F1Score,
    Precision,
    Recall,
)

from lmvision.errors import UserError


def classification_metrics(task: str, num_classes: int, split: str) -> MetricCollection:
    """Accuracy and macro precision/recall/F1 for ``multiclass`` or ``multilabel`` targets."""
    if task == "multiclass":
        kw = {"task": "multiclass", "num_classes": num_classes}
        extra = {}
    elif task == "multilabel":
        kw = {"task": "multilabel", "num_labels": num_classes}
        extra = {"exact_match": ExactMatch(task="multilabel", num_labels=num_classes)}
    else:
        raise UserError(f"strategy.task must be 'multiclass' or 'multilabel', got {task!r}")
    metrics = {
        "acc": Accuracy(average="micro", **kw),
        "precision_macro": Precision(average="macro", **kw),
        "recall_macro": Recall(average="macro", **kw),
        "f1_macro": F1Score(average="macro", **kw),
        **extra,
    }
    return MetricCollection(metrics, prefix=f"{split}/")


class SplitMetrics(nn.Module):
    """One metric collection for each of train, val and test: ``metrics["val"]``."""

    def __init__(self, task: str, num_classes: int) -> None:
        super().__init__()
        self.train_metrics = classification_metrics(task, num_classes, "train")
        self.val_metrics = classification_metrics(task, num_classes, "val")
        self.test_metrics = classification_metrics(task, num_classes, "test")

    def __getitem__(self, split: str) -> MetricCollection:
        return getattr(self, f"{split}_metrics")

    def compute(self, split: str) -> dict:
        """The split's metrics over the epoch (synced across processes), then reset.

        Steps only ``update`` the metrics; they are computed and logged once per epoch: logging
        a metric object on every step costs the Lightning loop about a millisecond per step for
        nothing (experiments/overhead).
        """
        values = self[split].compute()
        self[split].reset()
        return values
