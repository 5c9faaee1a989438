"""Data options shared by every strategy: held-out classes, few-shot training, distinct colours,
and the zero-shot test metrics."""

from __future__ import annotations

import pytest
import torch

from lmvision.data import spec
from lmvision.data.datamodule import DataConfigError, ImageDataModule
from lmvision.data.digits import DigitsDataset
from lmvision.data.shapes import ShapesDataset, render_shapes
from lmvision.errors import UserError
from lmvision.strategies.metrics import HoldoutAccuracy


@pytest.fixture(scope="module")
def combos():
    return ShapesDataset(1200, 16, target="color_shape", colors="distinct", seed=0)


def datamodule(dataset, **kwargs):
    return ImageDataModule(dataset, len(dataset.classes), dataset.image_size, dataset.channels,
                           task=dataset.task, **kwargs)


def labels_of(dm, split):
    return set(dm.dataset.labels[dm.split[split]].tolist())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_seeded_fraction_never_leaks_into_train_or_val_and_keeps_every_part_seen(combos, seed):
    dm = datamodule(combos, holdout_classes=0.25, split_seed=seed)
    unseen = set(dm.unseen_classes)
    assert len(unseen) == 6
    assert not unseen & labels_of(dm, "train") and not unseen & labels_of(dm, "val")
    assert unseen <= labels_of(dm, "test")  # test keeps every class
    seen_parts = {p for i, parts in enumerate(combos.class_parts) if i not in unseen for p in parts}
    assert seen_parts == set(spec.COLORS) | set(spec.SHAPES)
    # the same seed holds out the same classes; the test split is the one without a holdout
    again = datamodule(combos, holdout_classes=0.25, split_seed=seed)
    assert again.unseen_classes == dm.unseen_classes
    plain = datamodule(combos, split_seed=seed)
    assert torch.equal(plain.split["test"], dm.split["test"])
    assert dm.class_split["unseen_classes"] == [combos.classes[i] for i in dm.unseen_classes]


def test_holdout_by_name_and_its_errors(combos):
    dm = datamodule(combos, holdout_classes=["red circle", "blue cross"])
    assert [combos.classes[i] for i in dm.unseen_classes] == ["red circle", "blue cross"]
    with pytest.raises(UserError, match=r"'blue sqare' \(did you mean 'blue square'\?\)"):
        datamodule(combos, holdout_classes=["red circle", "blue sqare"])
    with pytest.raises(UserError, match="every class"):
        datamodule(combos, holdout_classes=list(combos.classes))
    with pytest.raises(UserError, match="at least one"):
        datamodule(combos, holdout_classes=0.01)
    with pytest.raises(UserError, match="more than once"):
        datamodule(combos, holdout_classes=["red circle", "red circle"])


def test_a_holdout_that_cannot_keep_every_part_seen_is_refused(combos):
    with pytest.raises(UserError, match="keeps every part"):
        datamodule(combos, holdout_classes=0.9)


@pytest.mark.parametrize("k", [1, 5])
def test_few_shot_keeps_k_seeded_images_per_class(k):
    digits = DigitsDataset(8)
    dm = datamodule(digits, shots_per_class=k, split_seed=4)
    train_labels = digits.labels[dm.split["train"]]
    assert torch.equal(torch.bincount(train_labels, minlength=10), torch.full((10,), k))
    same = datamodule(digits, shots_per_class=k, split_seed=4)
    other = datamodule(digits, shots_per_class=k, split_seed=5)
    assert torch.equal(same.split["train"], dm.split["train"])
    assert not torch.equal(other.split["train"], dm.split["train"])
    full = datamodule(digits, split_seed=4)
    assert set(dm.split["train"].tolist()) <= set(full.split["train"].tolist())
    assert torch.equal(full.split["val"], dm.split["val"])  # only training is few-shot


def test_few_shot_with_a_holdout_and_its_errors(combos):
    dm = datamodule(combos, holdout_classes=0.25, shots_per_class=2)
    counts = torch.bincount(combos.labels[dm.split["train"]], minlength=24)
    assert all(counts[i] == (0 if i in dm.unseen_classes else 2) for i in range(24))
    with pytest.raises(UserError, match="only .* images of class"):
        datamodule(combos, shots_per_class=500)
    with pytest.raises(UserError, match="shots_per_class=0"):
        datamodule(combos, shots_per_class=0)
    tags = ShapesDataset(200, 16, target="attributes")
    with pytest.raises(DataConfigError, match="single-label"):
        datamodule(tags, shots_per_class=1)


def test_distinct_colours_separate_every_colour_in_the_image():
    def mean_hue_rgb(colors):
        arrays, _ = render_shapes(600, 16, 0, colors)
        images = arrays["images"].astype(float)  # (N, 3, H, W)
        bright = images.max(1) > 150  # the shape's pixels
        return [images[i][:, bright[i]].mean(1) for i in range(len(images))], arrays["color"]

    for colors, separable in (("paired", False), ("distinct", True)):
        rgb, color = mean_hue_rgb(colors)
        red = [v for v, c in zip(rgb, color) if spec.COLORS[c] == "red"]
        orange = [v for v, c in zip(rgb, color) if spec.COLORS[c] == "orange"]
        green_over_red = (sum(v[1] / v[0] for v in orange) / len(orange)
                          - sum(v[1] / v[0] for v in red) / len(red))
        # orange has clearly more green than red only when colours are distinct
        assert bool(green_over_red > 0.2) == separable, (colors, green_over_red)
    with pytest.raises(UserError, match="data.colors='pastel'"):
        ShapesDataset(10, 16, colors="pastel")


def test_holdout_accuracy_known_values():
    metric = HoldoutAccuracy(4, unseen=[2, 3])
    logits = torch.tensor([[5.0, 0, 1, 0], [0, 5, 0, 1], [0, 0, 5, 0], [0, 0, 0, 5], [5, 0, 0, 1],
                           [0, 0, 1, 5]])
    labels = torch.tensor([0, 1, 2, 3, 3, 2])
    metric.update(logits, labels)
    values = metric.compute()
    # seen: classes 0 and 1 all right; unseen: class 2 1/2, class 3 1/2 (per-class mean 0.5)
    assert values["acc_seen"] == 1.0 and values["acc_unseen"] == 0.5
    assert values["acc_hm"] == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    # among unseen classes only, item 4 (row [5,0,0,1]) becomes right: class 3 is 2/2, class 2 1/2
    assert values["acc_unseen_zsl"] == pytest.approx(0.75)
