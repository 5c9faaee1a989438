"""Checks of a dataset before training: labels, strings, and what a model of pixel values may
be given as augmentation."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lmvision.data.class_splits import DataConfigError
from lmvision.errors import UserError


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every item's label: the dataset's ``labels`` when it has them, else read item by item."""
    labels = dataset.labels
    if labels is None:
        labels = [dataset[i]["label"] for i in range(len(dataset))]
    return torch.as_tensor(labels)


def validate_dataset(dataset: Dataset, num_classes: int, task: str) -> None:
    """Check labels and strings of every item; raise one error naming the first bad row."""
    labels = dataset_labels(dataset)
    if len(labels) != len(dataset):
        raise DataConfigError(f"{type(dataset).__name__}: {len(labels)} labels for {len(dataset)} items")
    name = type(dataset).__name__
    if task == "multiclass":
        bad = ((labels < 0) | (labels >= num_classes)).nonzero()
        if len(bad):
            row = int(bad[0, 0])
            raise DataConfigError(
                f"{name}: row {row} has label {int(labels[row])}, outside 0..{num_classes - 1}"
            )
    else:
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DataConfigError(
                f"{name}: multi-label targets must have shape (N, {num_classes}), "
                f"got {tuple(labels.shape)}"
            )
        bad = ((labels != 0) & (labels != 1)).any(dim=1).nonzero()
        if len(bad):
            raise DataConfigError(f"{name}: row {int(bad[0, 0])} has a tag that is not 0 or 1")
    for field, strings in (("caption", dataset.captions), ("text", dataset.texts)):
        for row, s in enumerate(strings or ()):
            if not isinstance(s, str) or not s.strip():
                raise DataConfigError(f"{name}: row {row} has an empty {field}")


GEOMETRIC = (v2.RandomAffine, v2.RandomRotation, v2.RandomCrop, v2.RandomResizedCrop,
             v2.RandomHorizontalFlip, v2.RandomVerticalFlip, v2.RandomPerspective, v2.Pad)


def check_colour_preserving(transform) -> None:
    """Raise a :class:`UserError` unless ``transform`` only moves pixels: a geometric transform
    with nearest-neighbour interpolation (a pixel model's palette sees no blended colours)."""
    name = type(transform).__name__
    if not isinstance(transform, GEOMETRIC):
        raise UserError(f"data.datamodule.augment: {name} may change colours; a model of pixel "
                        f"values keeps only geometric transforms "
                        f"({', '.join(t.__name__ for t in GEOMETRIC)})")
    interpolation = getattr(transform, "interpolation", "nearest")
    interpolation = getattr(interpolation, "value", interpolation)  # an enum or its string
    if interpolation not in ("nearest", "nearest-exact"):
        raise UserError(f"data.datamodule.augment: {name} interpolates ({interpolation}), which "
                        f"blends colours; a pixel model needs nearest-neighbour interpolation")
