"""Strategy `captioner`: an image→caption decoder (ClipCap-style prefix captioning) scored with
the COCO caption metrics against every reference caption, optionally with a classification head
on the shared image encoder (``classifier_weight > 0``), so that one model decides and
explains. How faithful the captions are to the decision (``explain/*``) is measured by a
callback when testing (``evaluation=captioner``, :mod:`lmvision.evaluation.explanations`).

Loss: token cross-entropy of the caption (labels masked on padding) plus
``classifier_weight`` × the classification cross-entropy. Validation and test decode every
image (``decoding``: greedy, beam or nucleus) and log ``<split>/bleu1..4``, ``rougeL`` and
``cider``; ``val/cider`` selects the best checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmvision import checks
from lmvision.evaluation.caption_metrics import caption_scores
from lmvision.evaluation.metrics import SplitMetrics
from lmvision.nn.captioner import DECODINGS, Captioner
from lmvision.strategies.base import Strategy
from lmvision.text.side import TextSide
from lmvision.text.tokenizers import CausalFormat

SHOWN = 8  # captions written to the log per validation epoch


class CaptionerStrategy(Strategy):
    """Trains a :class:`Captioner`.

    Args:
        net: The captioner.
        text: The run's text side (``inputs=captioner``: the captions and their tokenizer).
        num_classes: Classes of the data (the classification head).
        classifier_weight: Weight of the classification loss (0: captions only; needs a head,
            i.e. ``net.num_classes > 0``).
        decoding, num_beams, top_p, temperature: How captions are decoded for the metrics.
        meteor: Also compute METEOR when testing (needs Java; it takes some seconds).
        optimizer, scheduler, monitor, monitor_mode: As in :class:`Strategy`.
    """

    def __init__(self, net: Captioner, text: TextSide, num_classes: int,
                 classifier_weight: float = 0.0, decoding: str = "greedy", num_beams: int = 4,
                 top_p: float = 0.9, temperature: float = 1.0, meteor: bool = False,
                 optimizer=None, scheduler=None, monitor: str = "val/cider",
                 monitor_mode: str = "max") -> None:
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode)
        checks.choice("decoding", decoding, DECODINGS)
        self.classifier_weight = checks.number("classifier_weight", classifier_weight, low=0.0)
        if (classifier_weight > 0) != (net.head is not None):
            raise checks.ArgumentError(
                "classifier_weight", "a classification head (net.num_classes > 0) goes with "
                "classifier_weight > 0, and only with it (an unweighted head would never learn)",
                classifier_weight)
        self.format = CausalFormat(text.tokenizer)
        self.num_classes = num_classes
        self.decoding = {"decoding": decoding, "num_beams": num_beams, "top_p": top_p,
                         "temperature": temperature}
        self.meteor = bool(meteor)
        self.metrics = SplitMetrics("multiclass", num_classes) if net.head is not None else None
        self._outputs: dict[str, list] = {}

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
            captions = self.describe(batch, split)
            if split == "test":  # for the evaluation callbacks
                losses["outputs"] = {"captions": captions,
                                     **({"class_logits": out["class_logits"].detach()}
                                        if "class_logits" in out else {})}
        return losses

    def captions(self, images: torch.Tensor, **overrides) -> list[str]:
        """Decoded captions of a batch of images (the strategy's decoding settings)."""
        ids = self.net.generate(images, **{**self.decoding, **overrides})
        return [self.format.decode(row) for row in ids]

    def describe(self, batch: dict, split: str) -> list[str]:
        """Decode the batch's captions and keep them, with their references, for the epoch's
        caption metrics."""
        captions = self.captions(batch["image"])
        references = batch.get("references") or [[c] for c in batch["caption"]]
        self._outputs.setdefault(split, []).extend(zip(captions, references))
        return captions

    def classifier_forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, K) the head's class scores (the decision that captions explain)."""
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
        return values

    def validation_metrics(self) -> list[str]:
        names = ["val/loss", "val/caption", "val/bleu1", "val/bleu2", "val/bleu3", "val/bleu4",
                 "val/rougeL", "val/cider"]
        if self.metrics is not None:
            names += ["val/classification", *self.metrics["val"].keys()]
        return names


def gather(items: list, trainer) -> list:
    """Every process's ``items``, concatenated in rank order (the items themselves on one
    process)."""
    if trainer is None or trainer.world_size <= 1:
        return items
    import torch.distributed as dist

    everyone: list = [None] * trainer.world_size
    dist.all_gather_object(everyone, items)
    return [item for part in everyone for item in part]
