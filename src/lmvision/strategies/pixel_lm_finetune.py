"""Strategy `pixel_lm_finetune`: a classifier over a pixel language model (Image GPT's fine-tune).

A :class:`ClassificationStrategy` whose network is a :class:`~lmvision.nn.pixel_lm.PixelLM`
with a head (``classify: true``): a linear head on the mean-pooled last block, read without a
condition. The loss is the cross-entropy plus the generative loss of the same pass times
``generative_weight`` (as iGPT), logged as ``classification``, ``generative`` and
``bits_per_dim``. Usually started from a pretrained ``pixel_lm`` run's weights:

    lmvision-train experiment=pixel_lm_digits strategy=pixel_lm_finetune \\
        init_from=<pretrained run>/checkpoints/last.ckpt
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmvision import checks
from lmvision.nn.pixel_lm import PixelLM
from lmvision.strategies.classification import ClassificationStrategy
from lmvision.strategies.pixel_lm import prepare_palette


class PixelLMClassification(ClassificationStrategy):
    """Fine-tunes a :class:`PixelLM` with a head.

    Args:
        net: The pixel language model, with a head (``classify: true``).
        num_classes, optimizer, scheduler, monitor, monitor_mode: As in
            :class:`ClassificationStrategy` (single-label data).
        generative_weight: Weight of the generative loss.
        palette_images, palette_seed: Fit the palette when the weights do not bring one (a run
            that does not start from a pretrained one), as ``pixel_lm`` does.
    """

    def __init__(self, net: PixelLM, num_classes: int, generative_weight: float = 0.5,
                 palette_images: int = 2000, palette_seed: int = 0, optimizer=None,
                 scheduler=None, monitor: str = "val/acc", monitor_mode: str = "max") -> None:
        if net.head is None:
            raise checks.ArgumentError("net", "fine-tuning needs a network with a head "
                                       "(classify=true)")
        super().__init__(net, num_classes, "multiclass", 0.0, optimizer, scheduler, monitor,
                         monitor_mode)
        self.generative_weight = checks.number("generative_weight", generative_weight, low=0.0)
        self.palette_images = checks.whole_number("palette_images", palette_images)
        self.palette_seed = palette_seed

    def setup(self, stage: str) -> None:
        super().setup(stage)
        prepare_palette(self.net, self.trainer.datamodule, stage, self.palette_images,
                        self.palette_seed)

    def predict(self, batch: dict) -> dict[str, torch.Tensor]:
        scores, (logits, tokens) = self.net.classify(batch["image"])
        generative = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        return {"logits": scores, "generative": generative}

    def more_losses(self, classification: torch.Tensor, outputs: dict, batch: dict,
                    split: str) -> dict[str, torch.Tensor]:
        generative = outputs.pop("generative")
        return {"loss": classification + self.generative_weight * generative,
                "classification": classification, "generative": generative,
                "bits_per_dim": generative.detach() / math.log(2)}

    def validation_metrics(self) -> list[str]:
        return [*super().validation_metrics(), "val/classification", "val/generative",
                "val/bits_per_dim"]
