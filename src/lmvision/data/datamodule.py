"""One datamodule for every dataset: seeded splits, v2 transforms, the text a run reads, loaders."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from lmvision import checks
from lmvision.data.class_splits import (DataConfigError, choose_holdout, missing_classes,
                                        own_split, restrict_split, seeded_split)
from lmvision.data.collate import BatchCollator
from lmvision.data.protocol import missing_attributes, strings_of
from lmvision.data.samplers import (EpochShuffleSampler, ItemView, LoaderState,
                                    ResumableDistributedSampler, ResumableLoader,
                                    UnpaddedDistributedSampler, batches_trained)
from lmvision.data.shard_sampler import ShardBatches
from lmvision.data.validation import check_colour_preserving, dataset_labels, validate_dataset

PIXELS = ("normalised", "raw", "raw_augmented")


class SplitWarning(UserWarning):
    """A split misses some classes (tiny data): its metrics cover only the others."""


class ImageDataModule(LoaderState, pl.LightningDataModule):
    """Splits a dataset into train/val/test with a seed and serves batches as dicts.

    The dataset (:class:`~lmvision.data.protocol.ImageDataset`) is checked against the values
    given here for ``num_classes``, ``image_size``, ``channels`` and ``task`` (they come from
    the data config, which other groups interpolate), and every row is validated, before
    training starts.

    Args:
        dataset: The full dataset, already built.
        num_classes: Number of classes (or tags, for multi-label data).
        image_size: Side of the images in pixels.
        channels: Image channels (1 or 3).
        task: ``multiclass`` or ``multilabel``.
        batch_size: Training batch size.
        eval_batch_size: Batch size for val/test (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
        val_fraction: Share of the items held out for validation.
        test_fraction: Share of the items held out for testing.
        split_seed: Seed of the split; the same seed gives the same split.
        augment: torchvision v2 transforms applied to training images only (after conversion to
            float in [0, 1], before normalisation).
        mean: Per-channel mean for normalisation (default 0.5).
        std: Per-channel std for normalisation (default 0.5).
        max_text_length: Longest token sequence kept by the collate.
        pin_memory: Pin batches in memory, for faster copies to a GPU; ``None``: when the
            trainer runs on a CUDA GPU.
        holdout_classes: Classes removed from training and validation (zero-shot evaluation):
            a list of class names, or a fraction of the classes drawn with ``split_seed``
            (keeping every part of combined classes, such as shapes' colours and shapes, seen).
            Test keeps every class; ``unseen_classes`` lists the held-out ones.
        shots_per_class: Keep this many training images per class (few-shot), drawn with
            ``split_seed``; ``None`` keeps all.
        shuffle_window: For data in shards (``webdataset``): training items are shuffled
            within runs of this many items of a process's shards (and the shards each epoch).
        text: The string field a run reads (a :class:`~lmvision.text.side.TextField`, from the
            run session): its tokenizer is made here, from the training split, and the field
            tokenised in every batch; ``None``: batches carry strings only.
        pixels: ``normalised``, ``raw`` (floats in [0, 1], unaugmented: a model of pixel
            values), or ``raw_augmented`` (augmentation that only moves pixels).

    Under DDP each process gets its share of the training set (padded to equal length) and of
    val/test without padding: every item is evaluated exactly once. Data in shards
    (``shard_of``) is served by :class:`ShardBatches`: each process and loader worker reads its
    own shards. Training resumes mid-epoch through the loader (``samplers.ResumableLoader``).
    """

    def __init__(
        self,
        dataset: Dataset,
        num_classes: int,
        image_size: int,
        channels: int,
        task: str = "multiclass",
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        augment: Sequence[Callable] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        max_text_length: int = 64,
        pin_memory: bool | None = None,
        holdout_classes: Sequence[str] | float | None = None,
        shots_per_class: int | None = None,
        shuffle_window: int = 1000,
        text: Any | None = None,
        pixels: str = "normalised",
    ) -> None:
        super().__init__()
        missing = missing_attributes(dataset)
        if missing:
            raise DataConfigError(f"{type(dataset).__name__} is not an lmvision dataset: it lacks "
                                  f"{', '.join(missing)} (see lmvision.data.protocol)")
        self.dataset = dataset
        self.classes: list[str] = list(dataset.classes)
        self.num_classes = checks.whole_number("num_classes", num_classes)
        self.image_size = checks.whole_number("image_size", image_size)
        self.channels = checks.whole_number("channels", channels)
        self.task = checks.choice("task", task, ("multiclass", "multilabel"))
        self.batch_size = checks.whole_number("batch_size", batch_size)
        self.eval_batch_size = checks.whole_number("eval_batch_size", eval_batch_size or batch_size)
        self.num_workers = checks.whole_number("num_workers", num_workers, minimum=0)
        self.pin_memory = None if pin_memory is None else bool(pin_memory)
        self.max_text_length = checks.whole_number("max_text_length", max_text_length)
        self.split_seed = split_seed
        self.shuffle_window = checks.whole_number("shuffle_window", shuffle_window)
        self._check_against_dataset(checks.fraction("val_fraction", val_fraction),
                                    checks.fraction("test_fraction", test_fraction))
        validate_dataset(dataset, self.num_classes, self.task)
        self.augment = list(augment or [])
        self._transforms(mean, std, checks.choice("pixels", pixels, PIXELS))

        if dataset.split_indices is not None:  # the data's own split (val drawn from train if absent)
            self.split = own_split(dataset.split_indices, val_fraction, split_seed)
        else:
            self.split = seeded_split(len(dataset), val_fraction, test_fraction, split_seed)
        self.unseen_classes: list[int] = []  # indices of the held-out classes
        if holdout_classes is not None or shots_per_class is not None:
            if self.task != "multiclass":
                raise DataConfigError("data.holdout_classes and data.shots_per_class need "
                                      "single-label data (data.task=multiclass)")
            self.unseen_classes = choose_holdout(self.classes, holdout_classes, split_seed,
                                                 dataset.class_parts)
            self.split = restrict_split(self.split, dataset_labels(dataset), self.classes,
                                        self.unseen_classes, shots_per_class, split_seed)
        self.shots_per_class = shots_per_class
        self.split_warnings = missing_classes(dataset, self.split, self.classes, self.task,
                                              held_out=self.unseen_classes)
        for message in self.split_warnings:
            warnings.warn(message, SplitWarning, stacklevel=2)
        self.tokenizer = self._make_tokenizer(text)
        self.collate = BatchCollator(self.tokenizer, self.max_text_length,
                                     tokenize=(text.name,) if text and text.in_batches else (),
                                     causal=bool(text and text.causal))
        self.data_train = self.data_val = self.data_test = None

    def _transforms(self, mean, std, pixels: str) -> None:
        to_float = [v2.ToDtype(torch.float32, scale=True)]
        if pixels != "normalised":  # a model of pixel values: floats in [0, 1]
            for transform in self.augment if pixels == "raw_augmented" else []:
                check_colour_preserving(transform)
            kept = self.augment if pixels == "raw_augmented" else []
            self.train_transform, self.eval_transform = (v2.Compose(to_float + kept),
                                                         v2.Compose(to_float))
            self.mean, self.std = [0.0] * self.channels, [1.0] * self.channels
            return
        self.mean = list(mean) if mean is not None else [0.5] * self.channels
        self.std = list(std) if std is not None else [0.5] * self.channels
        norm = [v2.Normalize(mean=self.mean, std=self.std)]
        self.train_transform = v2.Compose(to_float + self.augment + norm)
        self.eval_transform = v2.Compose(to_float + norm)

    def _make_tokenizer(self, text: Any | None) -> Any | None:
        """The tokenizer of the field the run reads, made from the training split."""
        if text is None:
            return None
        if text.in_batches and strings_of(self.dataset, text.name) is None:  # else: none needed
            raise DataConfigError(f"{self.dataset.source or type(self.dataset).__name__}: this "
                                  f"data has no {text.name} per item, and this strategy reads "
                                  "one; choose data that has them, or another strategy")
        return text.make(self.train_texts(text.name))

    # -- what the run record and the strategies read --------------------------------------------
    @property
    def class_split(self) -> dict[str, Any]:
        """What the run record says about held-out classes and few-shot training."""
        return {"unseen_classes": [self.classes[i] for i in self.unseen_classes],
                "shots_per_class": self.shots_per_class,
                "items": {name: len(index) for name, index in self.split.items()}}

    @property
    def fingerprint(self) -> str | None:
        return self.dataset.fingerprint

    def texts(self, key: str = "text") -> list[str]:
        """The ``text`` (or ``caption``) string of every item, in dataset order."""
        return list(strings_of(self.dataset, key) or [])

    def train_texts(self, key: str = "text") -> list[str]:
        """The strings of the training split only, e.g. to fit a tokenizer without test text
        (for ``caption``: every reference caption of the training images)."""
        if key == "caption" and self.dataset.references is not None:
            refs = self.dataset.references
            return [r for i in self.split["train"].tolist() for r in refs[i]]
        strings = self.texts(key)
        return [strings[i] for i in self.split["train"].tolist()] if strings else []

    def train_images(self, limit: int | None = None) -> torch.Tensor:
        """Images of the training split as served (no augmentation), at most ``limit``."""
        data = self.unaugmented("train")
        return torch.stack([data[i]["image"] for i in range(min(limit or len(data), len(data)))])

    def unaugmented(self, split: str) -> Dataset:
        """The items of ``split`` (train, val or test) with the evaluation transform: the
        training images as they are, for probes and palettes."""
        return ItemView(self.dataset, self.split[split], self.eval_transform)

    # -- Lightning ------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.data_train is None:
            self.data_train = ItemView(self.dataset, self.split["train"], self.train_transform,
                                       seed=self.split_seed)
            self.data_val = ItemView(self.dataset, self.split["val"], self.eval_transform)
            self.data_test = ItemView(self.dataset, self.split["test"], self.eval_transform)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, self.eval_batch_size, train=False)

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        # Batches are flat dicts: move the tensors, leave the strings (Lightning's default walks
        # every string of `text` and `caption`: about half a millisecond per step here).
        return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _loader(self, data: ItemView, batch_size: int, train: bool) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        if not train and world > 1 and len(data) < world:
            raise DataConfigError(f"a split of {len(data)} items cannot be shared by {world} "
                                  "processes; use more data or fewer devices")
        # the loader's own generator: starting an epoch's iterator (which draws the workers'
        # base seed) leaves the global random state alone, wherever a run was resumed
        common: dict[str, Any] = {
            "num_workers": self.num_workers, "collate_fn": self.collate,
            "pin_memory": self._pin_memory(), "persistent_workers": self.num_workers > 0,
            "generator": torch.Generator().manual_seed(self.split_seed)}
        shards = self.dataset.shard_of
        if shards is not None:  # shards: each process and worker reads its own
            common["batch_sampler"] = ShardBatches(
                shards[data.indices], batch_size, self.num_workers, rank, world, train=train,
                seed=self.split_seed, window=self.shuffle_window)
        elif world == 1:
            common["sampler"] = EpochShuffleSampler(len(data), self.split_seed) if train else None
        elif train:  # Lightning sets the epoch; padding keeps every process's step count equal
            common["sampler"] = ResumableDistributedSampler(data, num_replicas=world, rank=rank,
                                                            shuffle=True, seed=self.split_seed)
        else:
            common["sampler"] = UnpaddedDistributedSampler(data, num_replicas=world, rank=rank,
                                                           shuffle=False)
        if shards is None:
            common["batch_size"] = batch_size
        if not train:
            return DataLoader(data, **common)
        layout = {"devices x nodes": world, "data.batch_size": self.batch_size}
        if shards is not None:  # a shard's batches are cut per loader worker
            layout["data.num_workers"] = self.num_workers
        return self.resumed(ResumableLoader(data, position=lambda: (trainer.current_epoch,
                                                                    batches_trained(trainer),
                                                                    trainer.num_training_batches),
                                            layout=layout, items_per_batch=batch_size, **common))

    def _pin_memory(self) -> bool:  # by default, when the trainer runs on a CUDA GPU
        from pytorch_lightning.accelerators import CUDAAccelerator

        cuda = self.trainer is not None and isinstance(self.trainer.accelerator, CUDAAccelerator)
        return cuda if self.pin_memory is None else self.pin_memory

    def _check_against_dataset(self, val_fraction: float, test_fraction: float) -> None:
        ds = self.dataset
        for option, given, actual in (("data.num_classes", self.num_classes, len(self.classes)),
                                      ("data.image_size", self.image_size, ds.image_size),
                                      ("data.channels", self.channels, ds.channels),
                                      ("data.task", self.task, ds.task)):
            if actual is not None and given != actual:
                raise DataConfigError(f"{option}={given!r} but the {type(ds).__name__} gives "
                                      f"{actual!r}; set {option}={actual!r} or change the "
                                      "dataset options")
        if val_fraction + test_fraction >= 1.0:
            raise DataConfigError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} "
                "leaves nothing to train on; keep their sum below 1")
        if ds.split_indices is not None:
            return  # the data's own split: checked by own_split
        n_val, n_test = round(len(ds) * val_fraction), round(len(ds) * test_fraction)
        if min(n_val, n_test, len(ds) - n_val - n_test) < 1:
            raise DataConfigError(
                f"{type(ds).__name__} has {len(ds)} items: too few for a train/val/test split "
                f"with val_fraction={val_fraction} and test_fraction={test_fraction}")
