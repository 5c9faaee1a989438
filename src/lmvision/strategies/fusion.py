"""Strategy `fusion`: image encoder + text encoder, features fused, one head.

The network (``lmvision.nn.classifiers.FusionClassifier``) is built from the config and passed
in, with ``mode`` (``fused``, ``image_only``, ``text_only``) and ``modality_dropout`` among its
options. This strategy adds to every classifier's metrics ``test/acc_no_text`` (accuracy with
the text of every test example hidden), a table of test examples, and the one-time encoding of
the dataset's text when the text encoder is frozen.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import Accuracy

from lmvision.errors import UserError
from lmvision.nn.classifiers import FusionClassifier
from lmvision.strategies.classification import ClassificationStrategy
from lmvision.evaluation.figures import log_examples

EXAMPLES = 32  # test examples in the W&B table


class FusionStrategy(ClassificationStrategy):
    """Trains a :class:`FusionClassifier`.

    Args:
        net: The fusion network.
        num_classes, task, label_smoothing, optimizer, scheduler, monitor, monitor_mode: As in
            :class:`ClassificationStrategy`.
        tokenizer: The tokenizer of the text encoder (the entry point builds it from
            ``text_encoder.tokenizer`` and gives the same one to the datamodule); stored in
            checkpoints with the run.
    """

    def __init__(self, net: FusionClassifier, num_classes: int, task: str = "multiclass",
                 label_smoothing: float = 0.0, optimizer=None, scheduler=None,
                 monitor: str = "val/acc", monitor_mode: str = "max", tokenizer=None) -> None:
        super().__init__(net, num_classes, task, label_smoothing, optimizer, scheduler, monitor,
                         monitor_mode)
        if tokenizer is None:
            raise UserError("strategy=fusion needs a tokenizer; the entry points build it from "
                            "text_encoder.tokenizer")
        self.tokenizer = tokenizer
        self.text_keys = ("text",)  # the side text of every item
        self.acc_no_text = Accuracy(task=self.task, num_classes=self.num_classes,
                                    num_labels=self.num_classes)
        self._examples: list[dict] = []

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._cache_text()

    def on_validation_start(self) -> None:
        self._cache_text()

    def on_test_start(self) -> None:
        self._cache_text()

    def _cache_text(self) -> None:
        # a frozen text encoder encodes every distinct text of the dataset once, on its device
        datamodule = self.trainer.datamodule
        if self.net.reads_text and self.net.text_cache is None:
            self.net.cache_text_features(datamodule.texts("text"), self.tokenizer,
                                         datamodule.max_text_length)

    def test_predictions(self, batch: dict, logits: torch.Tensor) -> None:
        super().test_predictions(batch, logits)
        absent = torch.zeros(len(logits), dtype=torch.bool, device=logits.device)
        no_text = self.net(batch, text_present=absent) if self.net.reads_text else logits
        self.acc_no_text.update(no_text, self.targets(batch))
        if len(self._examples) < EXAMPLES:
            n = min(EXAMPLES - len(self._examples), len(logits))
            predicted, actual = self.describe(logits[:n].cpu(), batch["label"][:n].cpu())
            self._examples += [{"_image": batch["image"][i].cpu(), "text": batch["text"][i],
                                "label": actual[i], "prediction": predicted[i]} for i in range(n)]

    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        values = super().epoch_metrics(split)
        if split == "test":
            values["test/acc_no_text"] = self.acc_no_text.compute()
            self.acc_no_text.reset()
        return values

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        log_examples(self.trainer, "test/examples", self._examples)
        self._examples = []
