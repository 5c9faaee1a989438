"""One datamodule for every dataset: seeded splits, v2 transforms, validation, collate, samplers."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import v2

from lmvision.data.class_splits import choose_holdout, restrict_split
from lmvision.data.collate import BatchCollator
from lmvision.data.shard_sampler import ShardBatches
from lmvision.errors import UserError


class DataConfigError(UserError):
    """Bad data options or bad data; raised before training starts."""


class SplitWarning(UserWarning):
    """A split misses some classes (tiny data): its metrics cover only the others."""


class ImageDataModule(pl.LightningDataModule):
    """Splits a dataset into train/val/test with a seed and serves batches as dicts.

    The dataset returns items ``{"image": uint8 (C, H, W), "label", "text"?, "caption"?}`` and
    exposes ``classes``, ``image_size``, ``channels`` and ``task``. The values given here for
    ``num_classes``, ``image_size``, ``channels`` and ``task`` come from the data config (other
    groups interpolate them); they are checked against the dataset so the two never disagree.

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
        tokenizer: Tokenizer for ``text``/``caption``; ``None`` keeps raw strings only. Strategies
            that read text get theirs here through ``use_tokenizer``.
        max_text_length: Longest token sequence kept by the collate.
        tokenize_keys: Which string fields the collate tokenises.
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

    Training batches are shuffled by a sampler seeded with ``split_seed`` and the epoch, and
    each training image is augmented with a random state seeded by ``split_seed``, the epoch and
    the item, so that batches never depend on the global random state, on prefetching or on the
    number of loader workers (shard data excepted: there each worker reads its own shards). A
    checkpoint saved mid-epoch (a preempted job) records how many batches of the epoch were
    trained (:meth:`state_dict`): a run resumed from it continues with the next batch, and ends
    with the weights of a run that was never stopped. Under DDP each process gets its share of
    the training set (padded to equal length, as DDP needs) and of val/test *without* padding:
    every item is evaluated exactly once, so metrics equal one process's.
    Data in shards (a dataset with ``shard_of``) is served by :class:`ShardBatches` instead:
    each process and each loader worker reads its own shards, every training item once per
    epoch across processes (padded likewise), every val/test item once. A checkpoint saved
    mid-epoch records how the epoch was cut (processes, batch size and, for shards, loader
    workers); a resume with another cut is refused, as its skipped batches would differ.
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
        tokenizer: Any | None = None,
        max_text_length: int = 64,
        tokenize_keys: Sequence[str] = ("text", "caption"),
        pin_memory: bool | None = None,
        holdout_classes: Sequence[str] | float | None = None,
        shots_per_class: int | None = None,
        shuffle_window: int = 1000,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.classes: list[str] = list(dataset.classes)
        self.num_classes = _count("data.num_classes", num_classes)
        self.image_size = _count("data.image_size", image_size)
        self.channels = _count("data.channels", channels)
        self.task = task
        self.batch_size = _count("data.batch_size", batch_size)
        self.eval_batch_size = _count("data.eval_batch_size", eval_batch_size or batch_size)
        self.num_workers = _count("data.num_workers", num_workers, minimum=0)
        self.pin_memory = None if pin_memory is None else bool(pin_memory)
        self.max_text_length = _count("data.max_text_length", max_text_length)
        self.split_seed = split_seed
        self.shuffle_window = _count("data.shuffle_window", shuffle_window)
        self.tokenize_keys = tuple(tokenize_keys)
        self.use_tokenizer(tokenizer)
        self._check_options(val_fraction, test_fraction)
        validate_dataset(dataset, self.num_classes, self.task)

        mean = list(mean) if mean is not None else [0.5] * self.channels
        std = list(std) if std is not None else [0.5] * self.channels
        base = [v2.ToDtype(torch.float32, scale=True)]
        norm = [v2.Normalize(mean=mean, std=std)]
        self.augment = list(augment or [])
        self.train_transform = v2.Compose(base + self.augment + norm)
        self.eval_transform = v2.Compose(base + norm)
        self.mean, self.std = mean, std

        predefined = getattr(dataset, "split_indices", None)
        if predefined is not None:  # the data's own split (val drawn from train if absent)
            self.split = own_split(predefined, val_fraction, split_seed)
        else:
            self.split = seeded_split(len(dataset), val_fraction, test_fraction, split_seed)
        self.unseen_classes: list[int] = []  # indices of the held-out classes
        if holdout_classes is not None or shots_per_class is not None:
            if self.task != "multiclass":
                raise DataConfigError("data.holdout_classes and data.shots_per_class need "
                                      "single-label data (data.task=multiclass)")
            self.unseen_classes = choose_holdout(self.classes, holdout_classes, split_seed,
                                                 getattr(dataset, "class_parts", None))
            self.split = restrict_split(self.split, dataset_labels(dataset), self.classes,
                                        self.unseen_classes, shots_per_class, split_seed)
        self.shots_per_class = shots_per_class
        self.split_warnings = missing_classes(dataset, self.split, self.classes, self.task,
                                              held_out=self.unseen_classes)
        for message in self.split_warnings:
            warnings.warn(message, SplitWarning, stacklevel=2)
        self.data_train = self.data_val = self.data_test = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches trained in it)
        self._resumed_layout: dict[str, int | None] = {}  # how those batches were cut

    def use_raw_pixels(self, augment: bool = False) -> None:
        """Serve images as floats in [0, 1] in every split, unnormalised (a strategy that models
        pixel values, such as ``pixel_lm``, asks for it). ``augment=True`` keeps the training
        augmentation when every transform only moves pixels (geometric, nearest-neighbour
        interpolation), so that no new colour appears; otherwise there is none."""
        if self.data_train is not None:
            raise RuntimeError("use_raw_pixels() must come before setup()")
        raw = [v2.ToDtype(torch.float32, scale=True)]
        if augment:
            for transform in self.augment:
                check_colour_preserving(transform)
        self.train_transform = v2.Compose(raw + (self.augment if augment else []))
        self.eval_transform = v2.Compose(raw)
        self.mean, self.std = [0.0] * self.channels, [1.0] * self.channels

    def train_images(self, limit: int | None = None) -> torch.Tensor:
        """Images of the training split as served (no augmentation), at most ``limit``."""
        data = self.unaugmented("train")
        return torch.stack([data[i]["image"] for i in range(min(limit or len(data), len(data)))])

    def unaugmented(self, split: str) -> Dataset:
        """The items of ``split`` (train, val or test) with the evaluation transform: the
        training images as they are, for probes and palettes."""
        return TransformedSubset(self.dataset, self.split[split], self.eval_transform)

    @property
    def class_split(self) -> dict[str, Any]:
        """What the run record says about held-out classes and few-shot training."""
        return {"unseen_classes": [self.classes[i] for i in self.unseen_classes],
                "shots_per_class": self.shots_per_class,
                "items": {name: len(index) for name, index in self.split.items()}}

    def use_tokenizer(self, tokenizer: Any | None, keys: Sequence[str] = (),
                      per_key: dict[str, Any] | None = None) -> None:
        """Tokenise the ``tokenize_keys`` fields, and ``keys`` (those a strategy needs), with
        ``tokenizer`` in every batch from now on; ``per_key`` gives some fields their own (a
        captioner's ``caption`` tokenizer beside the ``text`` one)."""
        for key in (*keys, *(per_key or {})):
            self.require_strings(key)
        self.tokenizer = tokenizer
        keys = tuple(self.tokenize_keys) + tuple(k for k in keys if k not in self.tokenize_keys)
        keys += tuple(k for k in (per_key or {}) if k not in keys)
        self.collate = BatchCollator(tokenizer, self.max_text_length, keys, per_key)

    def has_strings(self, key: str) -> bool:
        """Whether the items carry ``key`` (``text``, ``caption``): file datasets may not."""
        return not (hasattr(self.dataset, f"{key}s") and getattr(self.dataset, f"{key}s") is None)

    def require_strings(self, key: str) -> None:
        """One clear error when a strategy reads ``key`` and the items have none."""
        if not self.has_strings(key):
            source = getattr(self.dataset, "source", type(self.dataset).__name__)
            raise DataConfigError(f"{source}: this data has no {key} per item, and this strategy "
                                  "reads one; choose data that has them, or another strategy")

    def texts(self, key: str = "text") -> list[str]:
        """The ``text`` (or ``caption``) string of every item, in dataset order."""
        if not self.has_strings(key):
            return []
        strings = getattr(self.dataset, f"{key}s", None)
        if strings is None:
            strings = [self.dataset[i].get(key, "") for i in range(len(self.dataset))]
        return list(strings)

    def train_texts(self, key: str = "text") -> list[str]:
        """The strings of the training split only, e.g. to fit a tokenizer without test text
        (for ``caption``: every reference caption of the training images)."""
        if key == "caption" and getattr(self.dataset, "references", None) is not None:
            refs = self.dataset.references
            return [r for i in self.split["train"].tolist() for r in refs[i]]
        strings = self.texts(key)
        return [strings[i] for i in self.split["train"].tolist()] if strings else []

    @property
    def fingerprint(self) -> str | None:
        return getattr(self.dataset, "fingerprint", None)

    def setup(self, stage: str | None = None) -> None:
        if self.data_train is None:
            self.data_train = TransformedSubset(self.dataset, self.split["train"],
                                                self.train_transform, seed=self.split_seed)
            self.data_val = TransformedSubset(self.dataset, self.split["val"], self.eval_transform)
            self.data_test = TransformedSubset(self.dataset, self.split["test"],
                                               self.eval_transform)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.data_train, self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val, self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test, self.eval_batch_size, train=False)

    def state_dict(self) -> dict[str, int]:
        """Saved in every checkpoint: during a training epoch, the epoch and how many of its
        batches were trained (none after a whole epoch), so that a resume skips those."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not 0 < done < trainer.num_training_batches:
            return {}
        return {"train_epoch": int(trainer.current_epoch), "train_batches_done": int(done),
                "train_processes": int(trainer.world_size),
                "train_batch_size": self.batch_size, "train_workers": self.num_workers}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "train_epoch" in state_dict:
            self._resume_at = (int(state_dict["train_epoch"]), int(state_dict["train_batches_done"]))
            self._resumed_layout = {k: state_dict.get(k) for k in
                                    ("train_processes", "train_batch_size", "train_workers")}
            # Lightning cannot see that the training sampler resumes in place, and would warn
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that "
                                    "ended before the epoch ended")

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        # Batches are flat dicts: move the tensors, leave the strings (Lightning's default walks
        # every string of `text` and `caption`: about half a millisecond per step here).
        return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    def _loader(self, data: Dataset, batch_size: int, train: bool) -> DataLoader:
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        resume = None
        if train:  # (epoch, batches trained in it) of a run resumed mid-epoch
            resume, self._resume_at = self._resume_at, None
            if resume is not None:
                self._check_resumed_layout(world)
        elif world > 1 and len(data) < world:
            raise DataConfigError(f"a split of {len(data)} items cannot be shared by {world} "
                                  "processes; use more data or fewer devices")
        # the loader's own generator: starting an epoch's iterator (which draws the workers'
        # base seed) leaves the global random state alone, wherever a run was resumed
        common = {"num_workers": self.num_workers, "collate_fn": self.collate,
                  "pin_memory": self._pin_memory(), "persistent_workers": self.num_workers > 0,
                  "generator": torch.Generator().manual_seed(self.split_seed)}
        shard_of = getattr(self.dataset, "shard_of", None)
        if shard_of is not None:  # shards: each process and worker reads its own
            batches = ShardBatches(shard_of[data.indices], batch_size, self.num_workers, rank,
                                   world, train=train, seed=self.split_seed,
                                   window=self.shuffle_window, skip=resume)
            return DataLoader(data, batch_sampler=batches, **common)
        sampler = self._sampler(data, world, rank, train,
                                (resume[0], resume[1] * batch_size) if resume else None)
        return DataLoader(data, batch_size=batch_size, sampler=sampler, **common)

    def _pin_memory(self) -> bool:
        if self.pin_memory is not None:
            return self.pin_memory
        accelerator = getattr(self.trainer, "accelerator", None)
        return type(accelerator).__name__ == "CUDAAccelerator"

    def _check_resumed_layout(self, world: int) -> None:
        """A run resumed mid-epoch skips the batches already trained: that needs the batches it
        was cut into (processes, batch size; for shards, loader workers too) to be the same."""
        now = {"train_processes": (world, "devices x nodes"),
               "train_batch_size": (self.batch_size, "data.batch_size")}
        if getattr(self.dataset, "shard_of", None) is not None:
            now["train_workers"] = (self.num_workers, "data.num_workers")
        saved = self._resumed_layout
        for key, (value, option) in now.items():
            if saved.get(key) is not None and saved[key] != value:
                raise DataConfigError(
                    f"this checkpoint was saved mid-epoch with {option}={saved[key]} and is "
                    f"resumed with {value}: the rest of the epoch would not be the batches it "
                    f"skipped; resume with {option}={saved[key]}, or from a checkpoint saved at "
                    "the end of an epoch")

    def _sampler(self, data: Dataset, world: int, rank: int, train: bool,
                 skip: tuple[int, int] | None) -> Sampler | None:
        if world == 1:
            return EpochShuffleSampler(len(data), self.split_seed, skip) if train else None
        if train:  # Lightning sets the epoch; padding keeps every process's step count equal
            return ResumableDistributedSampler(data, num_replicas=world, rank=rank, shuffle=True,
                                               seed=self.split_seed, skip=skip)
        return UnpaddedDistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)

    def _check_options(self, val_fraction: float, test_fraction: float) -> None:
        ds = self.dataset
        checks = [
            ("data.num_classes", self.num_classes, len(self.classes)),
            ("data.image_size", self.image_size, getattr(ds, "image_size", self.image_size)),
            ("data.channels", self.channels, getattr(ds, "channels", self.channels)),
            ("data.task", self.task, getattr(ds, "task", self.task)),
        ]
        for option, given, actual in checks:
            if given != actual:
                raise DataConfigError(
                    f"{option}={given!r} but the {type(ds).__name__} gives {actual!r}; "
                    f"set {option}={actual!r} or change the dataset options"
                )
        if self.task not in ("multiclass", "multilabel"):
            raise DataConfigError(f"data.task must be 'multiclass' or 'multilabel', got {self.task!r}")
        for option, value in (("data.val_fraction", val_fraction),
                              ("data.test_fraction", test_fraction)):
            if not 0.0 < value < 1.0:
                raise DataConfigError(f"{option} must be between 0 and 1, got {value}")
        if val_fraction + test_fraction >= 1.0:
            raise DataConfigError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} "
                "leaves nothing to train on; keep their sum below 1"
            )
        if getattr(ds, "split_indices", None) is not None:
            return  # the data's own split: checked by own_split
        n_val = round(len(ds) * val_fraction)
        n_test = round(len(ds) * test_fraction)
        if min(n_val, n_test, len(ds) - n_val - n_test) < 1:
            raise DataConfigError(
                f"{type(ds).__name__} has {len(ds)} items: too few for a train/val/test split "
                f"with val_fraction={val_fraction} and test_fraction={test_fraction}"
            )


class _Resumable:
    """What the training samplers share: they yield ``(index, epoch)`` (the epoch seeds the
    item's augmentation) and can skip the start of one epoch, the part a resumed run trained
    before it was stopped (``skip=(epoch, items)``; once only)."""

    epoch: int
    skip: tuple[int, int] | None

    def _keyed(self, order: list[int]) -> Iterator[tuple[int, int]]:
        start = 0
        if self.skip is not None and self.skip[0] == self.epoch:
            start, self.skip = self.skip[1], None
        return ((i, self.epoch) for i in order[start:])


class EpochShuffleSampler(_Resumable, Sampler[tuple[int, int]]):
    """A random order of ``range(n)`` drawn from ``seed`` and the epoch (set by Lightning), so
    that it does not depend on the global random state: a resumed run gets the same order."""

    def __init__(self, n: int, seed: int, skip: tuple[int, int] | None = None) -> None:
        self.n, self.seed, self.epoch, self.skip = n, int(seed), 0, skip

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return self._keyed(torch.randperm(self.n, generator=generator).tolist())


class ResumableDistributedSampler(_Resumable, DistributedSampler):
    """This process's share of a seeded, padded order (torch's DistributedSampler), keyed and
    skippable like :class:`EpochShuffleSampler`."""

    def __init__(self, *args: Any, skip: tuple[int, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return self._keyed(list(super().__iter__()))


class UnpaddedDistributedSampler(DistributedSampler):
    """Item ``i`` goes to process ``i % world_size``: each item is seen exactly once (the shares
    may differ by one item; fine for evaluation, where processes need not step together)."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class TransformedSubset(Dataset):
    """A view of some items of a dataset with a transform on the image; adds ``index``.

    A key ``(i, epoch)`` (what the training samplers yield) runs the transform under a random
    state seeded by ``seed``, the epoch and the item, when ``seed`` is given: an item's
    augmentation is then the same whichever process, worker or batch loads it, and whatever
    the global random state is (it is left untouched).
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor, transform: Callable,
                 seed: int | None = None) -> None:
        self.dataset = dataset
        self.indices = indices
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        i, epoch = key if isinstance(key, tuple) else (key, None)
        index = int(self.indices[i])
        item = dict(self.dataset[index])
        if epoch is None or self.seed is None:
            item["image"] = self.transform(item["image"])
        else:  # the CPU generator's own methods: torch.manual_seed costs milliseconds here
            generator = torch.default_generator
            state = generator.get_state()
            generator.manual_seed(item_seed(self.seed, epoch, index))
            try:
                item["image"] = self.transform(item["image"])
            finally:
                generator.set_state(state)
        item["index"] = index  # position in the full dataset (used to cache per-item features)
        return item


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one item's augmentation in one epoch."""
    return ((int(seed) * 1_000_003 + int(epoch)) * 2_654_435_761 + int(index)) % (2**63 - 1)


def own_split(split: dict[str, torch.Tensor], val_fraction: float, seed: int) -> dict:
    """The data's own split; without ``val``, a seeded ``val_fraction`` of train becomes val."""
    out = {name: torch.as_tensor(index).sort().values for name, index in split.items()}
    if "val" not in out:
        train = out["train"]
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(seed)))
        n_val = max(1, round(len(train) * val_fraction))
        out["val"], out["train"] = train[perm[:n_val]].sort().values, train[perm[n_val:]].sort().values
    for name in ("train", "val", "test"):
        if not len(out[name]):
            raise DataConfigError(f"the data's own {name} split is empty")
    return out


def seeded_split(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Indices of train/val/test drawn from a permutation seeded by ``seed`` alone."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    return {
        "test": perm[:n_test].sort().values,
        "val": perm[n_test:n_test + n_val].sort().values,
        "train": perm[n_test + n_val:].sort().values,
    }


def missing_classes(dataset: Dataset, split: dict, classes: list[str], task: str,
                    held_out: Sequence[int] = ()) -> list[str]:
    """One message per split that has no item of some class (single-label data only); the
    ``held_out`` classes are absent from train and val on purpose."""
    labels = getattr(dataset, "labels", None)
    if task != "multiclass" or labels is None:
        return []
    labels = torch.as_tensor(labels)
    messages = []
    for name in ("train", "val", "test"):
        present = set(labels[split[name]].tolist())
        if name != "test":
            present |= set(held_out)
        absent = [c for i, c in enumerate(classes) if i not in present]
        if absent:
            shown = ", ".join(absent[:8]) + (", ..." if len(absent) > 8 else "")
            messages.append(
                f"the {name} split ({len(split[name])} items) has no example of {len(absent)} of "
                f"{len(classes)} classes ({shown}); its metrics say nothing about them. Use more "
                "data (e.g. data.num_images) or larger split fractions")
    return messages


def _count(option: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, refusing floats such as 1.5 (which ``int()`` would silently floor)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataConfigError(f"{option}={value!r}: expected a whole number")
    if value < minimum:
        raise DataConfigError(f"{option} must be at least {minimum}, got {value}")
    return value


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    """Every item's label: the dataset's ``labels`` when it has them, else read item by item."""
    labels = getattr(dataset, "labels", None)
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
    for key in ("captions", "texts"):
        strings = getattr(dataset, key, None)
        if strings is None:
            continue
        for row, s in enumerate(strings):
            if not isinstance(s, str) or not s.strip():
                raise DataConfigError(f"{name}: row {row} has an empty {key[:-1]}")


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
