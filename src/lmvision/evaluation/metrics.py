"""Classification metrics per split, named as in the run record (``test/acc``, ``val/f1_macro``)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import Metric, MetricCollection
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


class HoldoutAccuracy(Metric):
    """Zero-shot test metrics when some classes were held out of training.

    Accuracies are per-class means (each class counts once, as is usual for zero-shot
    benchmarks), over the seen and over the unseen classes:

    * ``acc_seen`` / ``acc_unseen``: predicting among *all* classes (the generalized setting);
    * ``acc_hm``: their harmonic mean;
    * ``acc_unseen_zsl``: unseen items, predicting among the unseen classes only.

    Args:
        num_classes: Number of classes.
        unseen: Indices of the held-out classes.
    """

    full_state_update = False

    def __init__(self, num_classes: int, unseen: list[int]) -> None:
        super().__init__()
        mask = torch.zeros(num_classes, dtype=torch.bool)
        mask[list(unseen)] = True
        self.register_buffer("unseen", mask, persistent=False)
        for name in ("correct", "correct_zsl", "total"):
            self.add_state(name, default=torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        unseen = self.unseen.to(logits.device)
        hit = logits.argmax(1) == labels
        zsl = logits.masked_fill(~unseen, float("-inf")).argmax(1) == labels
        # index_add_ rather than bincount with weights: deterministic on CUDA too
        ones = torch.ones_like(labels, dtype=self.total.dtype)
        self.total.index_add_(0, labels, ones)
        self.correct.index_add_(0, labels, hit.to(ones.dtype))
        self.correct_zsl.index_add_(0, labels, zsl.to(ones.dtype))

    def compute(self) -> dict[str, torch.Tensor]:
        present = self.total > 0
        unseen = self.unseen.to(self.total.device)

        def mean_accuracy(correct: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
            chosen = classes & present
            if not chosen.any():
                return torch.tensor(float("nan"), device=correct.device)
            return (correct[chosen] / self.total[chosen]).mean()

        seen_acc = mean_accuracy(self.correct, ~unseen)
        unseen_acc = mean_accuracy(self.correct, unseen)
        total = seen_acc + unseen_acc
        hm = torch.zeros_like(total) if total == 0 else 2 * seen_acc * unseen_acc / total
        return {"acc_seen": seen_acc, "acc_unseen": unseen_acc, "acc_hm": hm,
                "acc_unseen_zsl": mean_accuracy(self.correct_zsl, unseen)}
