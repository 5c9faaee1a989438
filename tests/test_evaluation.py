"""Evaluation extras that could fail: gen/acc against a judge that is right and one that is
wrong, and saliency that follows the class it explains."""

from __future__ import annotations

import torch
from torch import nn

from lmvision.evaluation.faithfulness import pointing_hits, saliency
from lmvision.evaluation.generation import generation_accuracy
from lmvision.nn.pixel_lm import PixelLM

CLASSES = 4


class _Data:
    """What generation_accuracy reads of a datamodule (a model conditioned on classes only)."""

    num_classes = CLASSES


class _Judge(nn.Module):
    """Reads the class a drawn image was asked for from its pixels (each image is drawn as
    the grey ``label / CLASSES``) and answers that class, or the next one (``wrong=True``)."""

    def __init__(self, wrong: bool = False) -> None:
        super().__init__()
        self.wrong = wrong

    def forward(self, inputs: dict) -> torch.Tensor:
        asked = (inputs["image"].mean((1, 2, 3)) * CLASSES).round().long()  # (B,)
        answer = (asked + int(self.wrong)) % CLASSES
        return nn.functional.one_hot(answer, CLASSES).float()


def drawing_the_asked_class(net: PixelLM) -> PixelLM:
    """The network, sampling for each class prefix the image a judge can read that class from
    (its class token says which class; a wrong prefix would draw the wrong grey)."""
    def sample(prefix: torch.Tensor, guidance: float = 1.0, known=None, **settings):
        labels = prefix[:, 0] - net.gpt.class_offset  # the class token of each row
        return (labels.float() / CLASSES).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)

    net.sample = sample
    return net


def test_gen_acc_is_one_for_a_judge_that_agrees_and_zero_for_one_that_does_not():
    net = drawing_the_asked_class(PixelLM(num_colors=4, channels=1, image_size=4,
                                          num_classes=CLASSES, conditions=["class"], dim=16,
                                          depth=1, heads=2))
    good = generation_accuracy(net, _Judge(), lambda x: x, _Data(), per_class=3, sampling={})
    bad = generation_accuracy(net, _Judge(wrong=True), lambda x: x, _Data(), per_class=3,
                              sampling={})
    assert float(good["gen/acc"]) == 1.0
    assert float(bad["gen/acc"]) == 0.0


class _Halves(nn.Module):
    """Class 0 is the sum of the left half of the image, class 1 that of the right half."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        width = images.shape[-1]
        left = images[..., : width // 2].sum((1, 2, 3))
        right = images[..., width // 2:].sum((1, 2, 3))
        return torch.stack([left, right], 1)  # (B, 2)


def test_integrated_gradients_points_at_what_decides_the_class_it_explains():
    """The same images explained for class 0 and for class 1: the saliency of each falls on
    its own half (a method that ignored the target would point at the same place twice)."""
    images = torch.rand(6, 1, 8, 8) + 0.5
    left = torch.zeros(6, 8, 8, dtype=torch.bool)
    left[..., :4] = True
    for target, half in ((0, left), (1, ~left)):
        maps = saliency("integrated_gradients", _Halves(), None, images,
                        torch.full((6,), target))
        assert float(pointing_hits(maps, half).mean()) == 1.0, target
        assert float((maps * half).sum()) > 0 and float((maps * ~half).sum()) == 0.0
