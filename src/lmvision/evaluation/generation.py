"""How well a pixel language model samples what it is asked for, scored by a judge classifier
when testing (``evaluation=pixel_lm``, ``evaluation.generation.judge=<checkpoint>``).

``gen/acc`` is the share of class-conditioned samples that the judge (a trained
``image_classifier`` of the same data) assigns to the requested class; ``gen/acc_caption`` the
same for caption-conditioned samples (the class of the test item whose caption was given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from pytorch_lightning import Callback

from lmvision import checks
from lmvision.errors import UserError
from lmvision.evaluation.samples import check_sampling, sampling_settings
from lmvision.run.checkpoints import restore_network

JUDGE = "lmvision.strategies.classification.ClassificationStrategy"  # an image_classifier


class GenerationAccuracy(Callback):
    """Scores conditional samples with a judge classifier at the end of testing.

    Args:
        judge: Path of a trained ``image_classifier`` checkpoint of the same data (``None``:
            no ``gen/acc``).
        samples_per_class: Class-conditioned samples per class (and caption-conditioned
            samples per class, drawn from as many test items).
        sampling: As :class:`~lmvision.evaluation.samples.SampleGrids`'s.
    """

    def __init__(self, judge: str | None = None, samples_per_class: int = 8,
                 sampling: Mapping[str, Any] | None = None) -> None:
        self.judge_path = judge
        self.samples_per_class = checks.whole_number("samples_per_class", samples_per_class)
        self.sampling = dict(sampling or {})
        self._judge: tuple[torch.nn.Module, Callable] | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        check_sampling(self.sampling, pl_module.net.conditions)
        if self.judge_path and self._judge is None:  # a bad path is refused before training
            self._judge = load_judge(self.judge_path, trainer.datamodule,
                                     pl_module.net.gpt.num_classes or trainer.datamodule.num_classes)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        if self._judge is None:
            return
        values = generation_accuracy(pl_module.net, *self._judge, trainer.datamodule,
                                     self.samples_per_class, self.sampling)
        # every process computes the same values: nothing to reduce
        pl_module.log_dict({k: float(v) for k, v in values.items()})


@torch.no_grad()
def generation_accuracy(net, judge: torch.nn.Module, normalise: Callable, datamodule,
                        per_class: int, sampling: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Share of conditional samples of ``net`` that ``judge`` assigns to the asked class."""
    settings, guidance = sampling_settings(sampling, net.conditions)
    device = next(net.parameters()).device
    judge.to(device).eval()
    settings["generator"] = torch.Generator(device="cpu").manual_seed(0)
    was_training = net.training
    net.eval()
    out = {}
    if net.gpt.num_classes:
        labels = torch.arange(net.gpt.num_classes, device=device).repeat_interleave(per_class)
        drawn = net.sample(net.class_prefix(labels), guidance, **settings)
        out["gen/acc"] = (judge({"image": normalise(drawn)}).argmax(1) == labels).float().mean()
    if net.gpt.caption_tokens:
        data = datamodule.data_test
        count = min(len(data), datamodule.num_classes * per_class)
        batch = datamodule.collate([data[i] for i in range(count)])
        ids, mask = batch["caption_ids"].to(device), batch["caption_mask"].to(device)
        drawn = net.sample(net.caption_prefix(ids, mask), guidance, **settings)
        hits = judge({"image": normalise(drawn)}).argmax(1) == batch["label"].to(device)
        out["gen/acc_caption"] = hits.float().mean()
    net.train(was_training)
    return out


def load_judge(path: str, datamodule, num_classes: int) -> tuple[torch.nn.Module, Callable]:
    """The network of an ``image_classifier`` checkpoint and the normalisation it was trained
    with, checked against this run's data (classes, image size, channels)."""
    from omegaconf import OmegaConf

    option = "evaluation.generation.judge"
    net, config = restore_network(path, option, JUDGE)
    for key, mine in (("data.num_classes", num_classes), ("data.image_size", datamodule.image_size),
                      ("data.channels", datamodule.channels)):
        if OmegaConf.select(config, key) != mine:
            raise UserError(f"{option}={path}: it was trained with {key}="
                            f"{OmegaConf.select(config, key)}, this run has {mine}")
    channels = datamodule.channels
    mean = torch.tensor(list(OmegaConf.select(config, "data.datamodule.mean") or [0.5] * channels))
    std = torch.tensor(list(OmegaConf.select(config, "data.datamodule.std") or [0.5] * channels))

    def normalise(images: torch.Tensor) -> torch.Tensor:
        return (images - mean.to(images.device).view(1, -1, 1, 1)) / \
            std.to(images.device).view(1, -1, 1, 1)

    return net, normalise
