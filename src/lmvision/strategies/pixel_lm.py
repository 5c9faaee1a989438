"""Strategy `pixel_lm`: a language model of pixels (Image GPT), pretrained on pixels alone.

Images (raw pixels in [0, 1]: ``inputs=pixel_lm`` serves them unnormalised) become palette
tokens (``lmvision.nn.palette``, fitted on training pixels when training starts); a GPT
(``lmvision.nn.pixel_gpt``) learns them autoregressively, optionally after a class token and/or
caption tokens, each dropped for a share ``condition_dropout`` of the training images (so one
model also samples without them). The loss is next-token cross-entropy, logged as
``bits_per_dim`` (bits per pixel token); ``val/bits_per_dim`` selects the best checkpoint.

What else is measured is a callback (``evaluation=pixel_lm``): sample grids at validation
(``lmvision.evaluation.samples``), linear probes of every block with their controls when
testing (``lmvision.evaluation.linear_probe``) and, with a judge classifier, ``gen/acc``
(``lmvision.evaluation.generation``). Fine-tuning a pretrained run is ``strategy=
pixel_lm_finetune`` (``lmvision.strategies.pixel_lm_finetune``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmvision import checks
from lmvision.errors import UserError
from lmvision.nn.pixel_lm import PixelLM
from lmvision.strategies.base import Strategy


class PixelLMStrategy(Strategy):
    """Pretrains a :class:`PixelLM`.

    Args:
        net: The pixel language model (without a head).
        condition_dropout: Share of training examples whose class token (and, independently,
            caption) is replaced by "no condition", so that one model also samples without it.
        palette_images: Training images whose pixels fit the palette.
        palette_seed: Seed of the palette's k-means.
        optimizer, scheduler, monitor, monitor_mode: As in :class:`Strategy`.
    """

    def __init__(self, net: PixelLM, condition_dropout: float = 0.2, palette_images: int = 2000,
                 palette_seed: int = 0, optimizer=None, scheduler=None,
                 monitor: str = "val/bits_per_dim", monitor_mode: str = "min") -> None:
        super().__init__(net, optimizer, scheduler, monitor, monitor_mode)
        if net.head is not None:
            raise checks.ArgumentError("net", "pretraining reads no class head: build the network "
                                       "with classify=false (fine-tune with "
                                       "strategy=pixel_lm_finetune)")
        self.condition_dropout = checks.number("condition_dropout", condition_dropout, 0.0, 1.0,
                                               high_open=True)
        self.palette_images = checks.whole_number("palette_images", palette_images)
        self.palette_seed = palette_seed

    def setup(self, stage: str) -> None:
        prepare_palette(self.net, self.trainer.datamodule, stage, self.palette_images,
                        self.palette_seed)

    def condition(self, batch: dict, train: bool) -> torch.Tensor:
        """The prefix of a batch: its class and caption, each dropped for a share of training
        examples."""
        net, n, device = self.net, len(batch["image"]), batch["image"].device
        labels = captions = None
        if net.gpt.num_classes:
            labels = batch["label"].clone()
            if train and self.condition_dropout:
                labels[torch.rand(n, device=device) < self.condition_dropout] = -1
        if net.gpt.caption_tokens:
            captions = net.captions(batch["caption_ids"], batch["caption_mask"])
            if train and self.condition_dropout:
                drop = torch.rand(n, device=device) < self.condition_dropout
                captions[drop] = net.null_captions(int(drop.sum()), device)
        return net.prefix(labels, captions, n, device)

    def step(self, batch: dict, split: str) -> dict[str, torch.Tensor]:
        tokens = self.net.palette.encode(batch["image"])  # (B, N)
        prefix = self.condition(batch, train=split == "train")
        logits = self.net.gpt.pixel_logits(prefix, tokens)  # (B, N, V)
        generative = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))
        return {"loss": generative, "generative": generative,
                "bits_per_dim": generative.detach() / math.log(2)}

    def validation_metrics(self) -> list[str]:
        return ["val/loss", "val/generative", "val/bits_per_dim"]


def prepare_palette(net: PixelLM, datamodule, stage: str, images: int, seed: int) -> None:
    """Check the image size against the network, and fit the palette on the training pixels
    when training starts (a palette loaded with the weights is kept)."""
    if datamodule.image_size * datamodule.image_size != net.gpt.num_pixels:
        raise UserError(f"strategy.net.image_size must equal data.image_size "
                        f"({datamodule.image_size}), got {net.image_size}")
    if stage == "fit" and not bool(net.palette.fitted):
        net.palette.fit(datamodule.train_images(images), seed)
