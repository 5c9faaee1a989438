"""Data options shared by every strategy: held-out classes, few-shot training, distinct colours,
and the zero-shot test metrics."""

from __future__ import annotations

import pytest
import torch

from lmvision.checks import ArgumentError
from lmvision.config import build
from lmvision.data import spec
from lmvision.data.class_splits import DataConfigError
from lmvision.data.datamodule import ImageDataModule
from lmvision.data.digits import DigitsDataset
from lmvision.data.shapes import ShapesDataset, render_shapes
from lmvision.errors import UserError
from lmvision.evaluation.metrics import HoldoutAccuracy


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
    assert torch.equal(same.split["train"], dm.split["train"])
    full = datamodule(digits, split_seed=4)
    assert set(dm.split["train"].tolist()) <= set(full.split["train"].tolist())
    assert torch.equal(full.split["val"], dm.split["val"])  # only training is few-shot
    # the shots are drawn at random, not the first k of each class; more shots add images
    firsts = torch.cat([full.split["train"][digits.labels[full.split["train"]] == c][:k]
                        for c in range(10)]).sort().values
    assert not torch.equal(dm.split["train"], firsts)
    more = datamodule(digits, shots_per_class=k + 3, split_seed=4)
    assert set(dm.split["train"].tolist()) < set(more.split["train"].tolist())


def test_few_shot_with_a_holdout_and_its_errors(combos, make_cfg):
    dm = datamodule(combos, holdout_classes=0.25, shots_per_class=2)
    counts = torch.bincount(combos.labels[dm.split["train"]], minlength=24)
    assert all(counts[i] == (0 if i in dm.unseen_classes else 2) for i in range(24))
    with pytest.raises(UserError, match="only .* images of class"):
        datamodule(combos, shots_per_class=500)
    with pytest.raises(ArgumentError, match="^shots_per_class=0: expected a whole number, "
                                            "at least 1$"):
        datamodule(combos, shots_per_class=0)
    with pytest.raises(UserError, match="^data.shots_per_class=0: expected a whole number, "
                                        "at least 1$"):  # built from a config: the option
        build.datamodule(make_cfg("data.num_images=60", "data.shots_per_class=0"), None)
    tags = ShapesDataset(200, 16, target="attributes")
    with pytest.raises(DataConfigError, match="single-label"):
        datamodule(tags, shots_per_class=1)


def test_distinct_colours_separate_every_colour_in_the_image(make_cfg):
    def mean_hue_rgb(colors):
        arrays, _ = render_shapes(600, 16, 0, colors)
        images = arrays["images"].astype(float)  # (N, 3, H, W)
        bright = images.max(1) > 150  # the shape's pixels
        return [images[i][:, bright[i]].mean(1) for i in range(len(images))], arrays["color"]

    import colorsys

    for colors, separable in (("paired", False), ("distinct", True)):
        rgb, color = mean_hue_rgb(colors)
        for first, second in spec.COLOR_PAIRS:
            hues = {}
            for name in (first, second):
                values = [colorsys.rgb_to_hsv(*(v / 255))[0] for v, c in zip(rgb, color)
                          if spec.COLORS[c] == name]
                hues[name] = sorted(values)[len(values) // 2] * 360  # median hue, degrees
            gap = abs(hues[first] - hues[second])
            gap = min(gap, 360 - gap)
            # the two colours of a pair share a hue band, unless colours are distinct
            assert bool(gap > 15) == separable, (colors, first, second, hues)
    with pytest.raises(ArgumentError, match="^colors='pastel': choose one of paired, distinct$"):
        ShapesDataset(10, 16, colors="pastel")
    with pytest.raises(UserError, match="^data.colors='pastel': choose one of paired, distinct$"):
        build.datamodule(make_cfg("data.num_images=10", "data.colors=pastel"), None)


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


def test_training_never_scores_held_out_classes(make_cfg):
    """The loss (with label smoothing too) is over the seen classes only: the head rows of the
    held-out classes get no gradient, and the loss stays finite."""
    from lmvision.run.parts import build_parts

    cfg = make_cfg("data.target=color_shape", "data.num_images=600", "data.holdout_classes=0.25",
                   "strategy.label_smoothing=0.1")
    datamodule, _, model = build_parts(cfg, {}, {})

    class Trainer:  # what setup() reads
        pass

    trainer = Trainer()
    trainer.datamodule = datamodule
    model.trainer = trainer
    model.setup("fit")
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    loss = model.step(batch, "train")["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    grad = model.net.head.fc.weight.grad  # (24, D)
    unseen = datamodule.unseen_classes
    seen = [i for i in range(24) if i not in unseen]
    assert grad[unseen].abs().max() == 0 and grad[seen].abs().sum(1).min() > 0
