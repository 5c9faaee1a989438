"""Strategy `captioner`: an image→caption decoder (ClipCap-style prefix captioning) scored with
the COCO caption metrics against every reference caption, optionally with a classification head
on the shared image encoder (``classifier_weight > 0``), so that one model decides and
explains. With the head, testing also measures how faithful the captions are to the decision
(``explain/*``, see :mod:`lmvision.evaluation.faithfulness`).

Loss: token cross-entropy of the caption (labels masked on padding) plus
``classifier_weight`` × the classification cross-entropy. Validation and test decode every
image (``decoding``: greedy, beam or nucleus) and log ``<split>/bleu1..4``, ``rougeL`` and
``cider``; ``val/cider`` selects the best checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from lmvision.errors import UserError
from lmvision.evaluation.faithfulness import (SALIENCY_METHODS, Faithfulness, TextClassifier, black,
                                   mask_out, saliency)
from lmvision.nn.captioner import DECODINGS, Captioner
from lmvision.strategies.base import Strategy
from lmvision.evaluation.metrics import SplitMetrics
from lmvision.evaluation.caption_metrics import caption_scores
from lmvision.text.tokenizers import CausalFormat

SHOWN = 8  # captions written to the log per validation epoch


class CaptionerStrategy(Strategy):
    """Trains a :class:`Captioner`.

    Args:
        net: The captioner.
        num_classes: Classes of the data (the classification head and ``explain/*``).
        tokenizer: The caption tokenizer (the entry point builds it from ``caption_tokenizer``
            on the training captions, or a checkpoint carries it).
        caption_tokenizer: How that tokenizer is built (read by the entry point).
        classifier_weight: Weight of the classification loss (0: captions only; needs a head,
            i.e. ``net.num_classes > 0``).
        decoding, num_beams, top_p, temperature: How captions are decoded for the metrics.
        saliency: Saliency methods whose pointing is measured when testing (with the head and
            object masks in the data); empty for none.
        meteor: Also compute METEOR when testing (needs Java; it takes some seconds).
        optimizer, scheduler, monitor, monitor_mode: As in :class:`Strategy`.
    """

    def __init__(self, net: Captioner, num_classes: int, tokenizer=None,
                 caption_tokenizer: Any = None, classifier_weight: float = 0.0,
                 decoding: str = "greedy", num_beams: int = 4, top_p: float = 0.9,
                 temperature: float = 1.0, saliency: tuple[str, ...] = ("gradcam",),
                 meteor: bool = False,
                 optimizer=None, scheduler=None, monitor: str = "val/cider",
                 monitor_mode: str = "max") -> None:
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode)
        if tokenizer is None:
            raise UserError("the captioner needs its caption tokenizer (strategy.caption_tokenizer)")
        if decoding not in DECODINGS:
            raise UserError(f"strategy.decoding={decoding!r}: choose one of {', '.join(DECODINGS)}")
        if classifier_weight < 0:
            raise UserError(f"strategy.classifier_weight must be >= 0, got {classifier_weight}")
        if (classifier_weight > 0) != (net.head is not None):
            raise UserError("a classification head (strategy.net.num_classes > 0) goes with "
                            "strategy.classifier_weight > 0, and only with it (an unweighted "
                            "head would never learn)")
        unknown = [m for m in saliency or () if m not in SALIENCY_METHODS]
        if unknown:
            raise UserError(f"strategy.saliency: {unknown[0]!r} is not one of "
                            f"{', '.join(SALIENCY_METHODS)}")
        self.tokenizer = tokenizer
        self.format = CausalFormat(tokenizer)
        self.num_classes, self.classifier_weight = num_classes, float(classifier_weight)
        self.decoding = {"decoding": decoding, "num_beams": num_beams, "top_p": top_p,
                         "temperature": temperature}
        self.saliency_methods = tuple(saliency or ())
        self.meteor = bool(meteor)
        self.text_keys = ()  # the datamodule tokenises `caption` with the causal format below
        self.tokenizers_per_key = {"caption": self.format}
        self.metrics = SplitMetrics("multiclass", num_classes) if net.head is not None else None
        self._outputs: dict[str, list] = {}
        self.faithfulness: Faithfulness | None = None

    # -- training -------------------------------------------------------------------------------
    def step(self, batch: dict, split: str) -> dict[str, torch.Tensor]:
        ids, mask = batch["caption_ids"], batch["caption_mask"]
        out = self.net(batch["image"], ids, mask)
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)  # no loss on padding
        caption = F.cross_entropy(out["caption_logits"].flatten(0, 1), targets.flatten(),
                                  ignore_index=-100)
        losses = {"caption": caption, "loss": caption}
        if "class_logits" in out:
            classification = F.cross_entropy(out["class_logits"], batch["label"])
            losses["classification"] = classification
            losses["loss"] = caption + self.classifier_weight * classification
            self.metrics[split].update(out["class_logits"].detach(), batch["label"])
        if split != "train":
            self.describe(batch, split, out.get("class_logits"))
        return losses

    def captions(self, images: torch.Tensor, **overrides) -> list[str]:
        """Decoded captions of a batch of images (the strategy's decoding settings)."""
        ids = self.net.generate(images, **{**self.decoding, **overrides})
        return [self.format.decode(row) for row in ids]

    def describe(self, batch: dict, split: str, class_logits: torch.Tensor | None) -> None:
        captions = self.captions(batch["image"])
        references = batch.get("references") or [[c] for c in batch["caption"]]
        store = self._outputs.setdefault(split, [])
        store.extend(zip(captions, references))
        if split == "test" and class_logits is not None and self.faithfulness is not None:
            self.explain_batch(batch, captions, class_logits)

    # -- faithfulness (test, with the classification head) --------------------------------------
    def on_test_epoch_start(self) -> None:
        if self.net.head is None:
            return
        datamodule = self.trainer.datamodule
        self.faithfulness = Faithfulness(self.class_names(), train_text_classifier(datamodule))

    def explain_batch(self, batch: dict, captions: list[str], class_logits: torch.Tensor) -> None:
        predicted = class_logits.argmax(1)
        self.faithfulness.update(captions, predicted, batch["label"])
        if "mask" not in batch:
            return
        masked = mask_out(batch["image"], batch["mask"])
        masked_predicted = self.classifier_forward(masked).argmax(1)
        self.faithfulness.update_counterfactual(captions, predicted, self.captions(masked),
                                                masked_predicted)
        for method in self.saliency_methods:
            maps = saliency(method, self.classifier_forward, self.net.image_encoder,
                            batch["image"], predicted, black(self.trainer.datamodule))
            self.faithfulness.update_pointing(method, maps, batch["mask"])

    def classifier_forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.classify(self.net.encode(images)[1])

    # -- epoch metrics --------------------------------------------------------------------------
    def epoch_metrics(self, split: str) -> dict[str, torch.Tensor]:
        values = self.metrics.compute(split) if self.metrics is not None else {}
        if split == "train":
            return values
        pairs = gather(self._outputs.pop(split, []), self.trainer)
        if pairs:
            scores = caption_scores([c for c, _ in pairs], [r for _, r in pairs],
                                    meteor=self.meteor and split == "test")
            values.update({f"{split}/{k}": torch.tensor(v) for k, v in scores.items()})
            if split == "val" and self.trainer.is_global_zero and not self.trainer.sanity_checking:
                shown = "\n".join(f"  {c!r}  (ref: {r[0]!r})" for c, r in pairs[:SHOWN])
                print(f"captions at epoch {self.current_epoch}:\n{shown}", flush=True)
        if split == "test" and self.faithfulness is not None:
            names, totals = self.faithfulness.totals()
            totals = self.trainer.strategy.reduce(totals.to(self.device), reduce_op="sum").cpu()
            values.update({k: torch.tensor(v) for k, v in
                           Faithfulness.metrics(names, totals).items()})
            self.faithfulness = None
        return values

    def validation_metrics(self) -> list[str]:
        names = ["val/loss", "val/caption", "val/bleu1", "val/bleu2", "val/bleu3", "val/bleu4",
                 "val/rougeL", "val/cider"]
        if self.metrics is not None:
            names += ["val/classification", *self.metrics["val"].keys()]
        return names


def train_text_classifier(datamodule) -> TextClassifier | None:
    """The text-only classifier of ``explain/consistency``: every training reference caption
    and its image's label (``None`` when the data has no captions)."""
    from lmvision.data.datamodule import dataset_labels

    dataset = datamodule.dataset
    references = getattr(dataset, "references", None)
    captions = getattr(dataset, "captions", None)
    if references is None and captions is None:
        return None
    labels = dataset_labels(dataset)
    texts, targets = [], []
    for i in datamodule.split["train"].tolist():
        for caption in (references[i] if references is not None else [captions[i]]):
            texts.append(caption)
            targets.append(int(labels[i]))
    return TextClassifier(texts, targets)


def gather(items: list, trainer) -> list:
    """Every process's ``items``, concatenated in rank order (the items themselves on one
    process)."""
    if trainer is None or trainer.world_size <= 1:
        return items
    import torch.distributed as dist

    everyone: list = [None] * trainer.world_size
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]
