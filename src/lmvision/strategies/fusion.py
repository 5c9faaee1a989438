"""Strategy `fusion`: image encoder + text encoder, features fused, one head.

The network (``lmvision.nn.classifiers.FusionClassifier``) is built from the config and passed
in, with ``mode`` (``fused``, ``image_only``, ``text_only``) and ``modality_dropout`` among its
options; it reads the run's text side (``inputs=fusion``: every item's side text, tokenised for
the text encoder). This strategy adds to every classifier's metrics ``test/acc_no_text``
(accuracy with the text of every test example hidden). A table of test examples is a callback
(``evaluation=fusion``).
"""

from __future__ import annotations

import torch
from torchmetrics.classification import Accuracy

from lmvision.nn.classifiers import FusionClassifier
from lmvision.strategies.classification import ClassificationStrategy


class FusionStrategy(ClassificationStrategy):
    """Trains a :class:`FusionClassifier`.

    Args:
        net: The fusion network.
        num_classes, task, label_smoothing, optimizer, scheduler, monitor, monitor_mode: As in
            :class:`ClassificationStrategy`.
    """

    def __init__(self, net: FusionClassifier, num_classes: int, task: str = "multiclass",
                 label_smoothing: float = 0.0, optimizer=None, scheduler=None,
                 monitor: str = "val/acc", monitor_mode: str = "max") -> None:
        super().__init__(net, num_classes, task, label_smoothing, optimizer, scheduler, monitor,
                         monitor_mode)
        self.acc_no_text = Accuracy(task=self.task, num_classes=self.num_classes,
                                    num_labels=self.num_classes)

    def test_predictions(self, batch: dict, logits: torch.Tensor) -> None:
        super().test_predictions(batch, logits)
        absent = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
        no_text = self.net(batch, text_present=absent) if self.net.reads_text else logits
        self.acc_no_text.update(no_text, self.targets(batch))

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        values = super().epoch_metrics(split)
        if split == "test":
            values["test/acc_no_text"] = self.acc_no_text.compute()
            self.acc_no_text.reset()
        return values
