"""Faithfulness of a captioner's explanations, measured when testing (``evaluation=captioner``)
and by ``lmvision-explain``, with the same code (:func:`measure_batch`).

A captioner trained with a classification head (``strategy.classifier_weight > 0``) decides
and explains: :class:`CaptionFaithfulness` reads each test batch's captions and class scores
(the strategy's test outputs) and adds the ``explain/*`` metrics of
:mod:`lmvision.evaluation.faithfulness`: mention rate, consistency, the counterfactual with the
object masked out and the pointing of each saliency method of ``explain.saliency`` (where the
data has object masks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pytorch_lightning import Callback

from lmvision import checks
from lmvision.evaluation.faithfulness import (SALIENCY_METHODS, Faithfulness, TextClassifier,
                                              black, mask_out, saliency)


class CaptionFaithfulness(Callback):
    """The ``explain/*`` metrics of a captioner with a head, at the end of testing.

    Args:
        saliency: Saliency methods whose pointing is measured (``explain.saliency``); empty for
            none.
    """

    def __init__(self, saliency: Sequence[str] = ("gradcam",)) -> None:
        self.methods = checks.choices("saliency", saliency, SALIENCY_METHODS)
        self.faith: Faithfulness | None = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.faith = None
        if getattr(pl_module.net, "head", None) is not None:  # a captioner that decides too
            self.faith = Faithfulness(pl_module.class_names(),
                                      train_text_classifier(trainer.datamodule))

    def on_test_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int,
                          dataloader_idx: int = 0) -> None:
        if self.faith is None or not outputs or "class_logits" not in outputs:
            return
        measure_batch(self.faith, pl_module.classifier_forward, pl_module.captions,
                      pl_module.net.image_encoder, batch, outputs["captions"],
                      outputs["class_logits"].argmax(1), self.methods, black(trainer.datamodule))

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self.faith is None:
            return
        names, totals = self.faith.totals()
        totals = trainer.strategy.reduce(totals.to(pl_module.device), reduce_op="sum").cpu()
        pl_module.log_dict({k: float(v) for k, v in Faithfulness.metrics(names, totals).items()})
        self.faith = None


def measure_batch(faith: Faithfulness, decide: Callable[[torch.Tensor], torch.Tensor],
                  describe: Callable[[torch.Tensor], list[str]], encoder, batch: dict,
                  captions: list[str], predicted: torch.Tensor, methods: Sequence[str],
                  baseline: torch.Tensor,
                  maps: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Add one batch to ``faith``: its captions against the decision ``predicted`` and the
    labels, and where the batch has object masks, the counterfactual (``decide`` and
    ``describe`` the images with the object masked out) and the pointing of each saliency
    method (its maps computed here unless given in ``maps``). Returns the maps."""
    images = batch["image"]
    faith.update(captions, predicted, batch["label"])
    maps = dict(maps or {})
    if "mask" not in batch:
        return maps
    masked = mask_out(images, batch["mask"])
    with torch.no_grad():
        masked_predicted = decide(masked).argmax(1)
    faith.update_counterfactual(captions, predicted, describe(masked), masked_predicted)
    for method in methods:
        if method not in maps:
            maps[method] = saliency(method, decide, encoder, images, predicted, baseline)
        faith.update_pointing(method, maps[method], batch["mask"])
    return maps


def train_text_classifier(datamodule) -> TextClassifier | None:
    """The text-only classifier of ``explain/consistency``: every training reference caption
    and its image's label (``None`` when the data has no captions)."""
    from lmvision.data.validation import dataset_labels

    dataset = datamodule.dataset
    if dataset.references is None and dataset.captions is None:
        return None
    labels = dataset_labels(dataset)
    texts, targets = [], []
    for i in datamodule.split["train"].tolist():
        for caption in (dataset.references[i] if dataset.references is not None
                        else [dataset.captions[i]]):
            texts.append(caption)
            targets.append(int(labels[i]))
    return TextClassifier(texts, targets)
