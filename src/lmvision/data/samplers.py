"""Seeded samplers, item views and the training loader that resumes mid-epoch.

Training batches are shuffled by a sampler seeded with the split seed and the epoch, and each
training image is augmented with a random state seeded by the split seed, the epoch and the
item (:class:`ItemView`): batches never depend on the global random state, on prefetching or
on the number of loader workers. :class:`ResumableLoader` is a ``DataLoader`` with Lightning's
stateful-loader interface (``state_dict`` / ``load_state_dict``): a checkpoint saved mid-epoch
(a preempted job) records how many of the epoch's batches were trained, and the resumed run
continues with the next batch, ending with the weights of a run that was never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lmvision.errors import UserError


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


class ItemView(Dataset):
    """A view of some items of a dataset with a transform on the image; adds ``index``.

    A key ``(i, epoch)`` (what the training samplers yield) runs the transform under a random
    state seeded by ``seed``, the epoch and the item, when ``seed`` is given: an item's
    augmentation is then the same whichever process, worker or batch loads it, and whatever
    the global random state is (it is left untouched).
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor, transform: Callable,
                 seed: int | None = None) -> None:
        self.dataset, self.indices, self.transform, self.seed = dataset, indices, transform, seed

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


def batches_trained(trainer) -> int:
    """Batches of the current training epoch already trained, from the Trainer's public
    counters: its optimiser steps less those of the finished epochs (every epoch has the same
    batches), times the batches per step. A checkpoint is saved at a step's end (lmvision's
    preemption saves only where no gradient is half accumulated)."""
    per_step = trainer.accumulate_grad_batches
    steps_per_epoch = math.ceil(trainer.num_training_batches / per_step)
    steps = trainer.global_step - trainer.current_epoch * steps_per_epoch
    return max(0, min(steps * per_step, trainer.num_training_batches))


class ResumableLoader(DataLoader):
    """The training ``DataLoader``, resumable mid-epoch through Lightning's stateful-loader
    interface.

    Args:
        *args, **kwargs: As ``DataLoader``'s; its sampler (or batch sampler) has ``skip``.
        position: Returns ``(epoch, batches trained in it, batches per epoch)`` when asked
            (at checkpoint time).
        layout: How the epoch is cut, ``{option: value}`` (processes, batch size, and for
            shards loader workers): a resume with another cut is refused, as the batches it
            skipped would not be the ones trained.
        items_per_batch: Items per batch (samplers skip items; batch samplers skip batches).
    """

    def __init__(self, *args: Any, position: Callable[[], tuple[int, int, int]],
                 layout: dict[str, int], items_per_batch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position, self.layout, self.items_per_batch = position, dict(layout), items_per_batch

    def __iter__(self) -> Iterator[Any]:
        # nothing is drawn before the first batch is asked for: Lightning may start the epoch's
        # iterator before it restores a checkpoint and sets the sampler's epoch, and loader
        # workers draw their first batches as soon as an iterator exists
        yield from super().__iter__()

    def state_dict(self) -> dict[str, Any]:
        epoch, done, total = self.position()
        if not 0 < done < total:  # at an epoch's boundary there is nothing to skip
            return {}
        return {"epoch": int(epoch), "batches_done": int(done), "layout": self.layout}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        for option, value in self.layout.items():
            saved = state["layout"].get(option)
            if saved is not None and saved != value:
                raise UserError(
                    f"this checkpoint was saved mid-epoch with {option}={saved} and is resumed "
                    f"with {value}: the rest of the epoch would not be the batches it skipped; "
                    f"resume with {option}={saved}, or from a checkpoint saved at the end of an "
                    "epoch")
        sampler = self.batch_sampler if self.sampler_skips_batches else self.sampler
        items = 1 if self.sampler_skips_batches else self.items_per_batch
        sampler.skip = (int(state["epoch"]), int(state["batches_done"]) * items)

    @property
    def sampler_skips_batches(self) -> bool:
        """Whether the batch sampler is lmvision's own (shards), which skips whole batches."""
        return hasattr(self.batch_sampler, "skip")


class LoaderState:
    """The datamodule's part in a mid-epoch resume: it saves its training loader's state (that
    of :class:`ResumableLoader`) and hands a checkpoint's to the loader it builds.

    Lightning saves and restores a stateful loader's state itself, but hands it back only when
    it builds the loader after restoring the checkpoint; a scheduler that reads
    ``trainer.estimated_stepping_batches`` makes it build the loader before, and the state is
    then never handed back (Lightning issue #20550). A datamodule's state is restored before
    anything is built.
    """

    _train_loader: ResumableLoader | None = None
    _loader_state: dict[str, Any] | None = None  # a checkpoint's, for the next training loader

    def state_dict(self) -> dict[str, Any]:
        return self._train_loader.state_dict() if self._train_loader is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._loader_state = dict(state)
        if self._train_loader is not None:  # built before the restore (some strategies)
            self.resumed(self._train_loader)

    def resumed(self, loader: ResumableLoader) -> ResumableLoader:
        """``loader``, this datamodule's training loader from now on, with the checkpoint's
        state (once)."""
        if self._loader_state:
            loader.load_state_dict(self._loader_state)
        self._train_loader, self._loader_state = loader, None
        return loader
