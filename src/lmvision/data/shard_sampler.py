"""Batches of data stored in shards: each DDP process and each loader worker reads its own.

The items of a split are kept in shard order (a shard's items are consecutive). For training,
each epoch:

1. the shards are put in an order drawn from the seed and the epoch;
2. the items, in that order, are padded to a multiple of the number of processes (the first
   items repeated, as torch's ``DistributedSampler`` pads) and cut into one contiguous run per
   process: every item is seen once per epoch across the processes (the padding, fewer items
   than processes, excepted), and every process takes the same number of steps;
3. a process's run is cut into one contiguous run per loader worker, shuffled within windows
   of ``window`` items, and batched;
4. the batches are interleaved one worker at a time, the order in which a ``DataLoader`` hands
   batches to its workers (batch k to worker k mod workers): each worker reads its own shards
   front to back.

Evaluation does the same without shuffling or padding: every item exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardBatches(Sampler[list]):
    """The batches of one process (a ``DataLoader``'s ``batch_sampler``).

    Args:
        shard_of: The shard of each item of the split, in the split's order (shard order).
        batch_size: Items per batch.
        workers: The loader's worker processes (0 reads in the main process).
        rank: This process's rank; world: the number of processes.
        train: Shuffle (shards, then within windows) and pad; else keep the order, unpadded.
        seed: Seed of the shuffles (with the epoch, set by Lightning each epoch).
        window: Items shuffled together within a worker's run.
        skip: ``(epoch, batches)``: in that epoch, leave out the first batches (a run resumed
            from a checkpoint saved mid-epoch); once.
    """

    def __init__(self, shard_of: torch.Tensor, batch_size: int, workers: int, rank: int = 0,
                 world: int = 1, train: bool = False, seed: int = 0, window: int = 1000,
                 skip: tuple[int, int] | None = None) -> None:
        self.shard_of = torch.as_tensor(shard_of, dtype=torch.long)
        self.batch_size, self.workers = int(batch_size), max(1, int(workers))
        self.rank, self.world, self.train = int(rank), int(world), bool(train)
        self.seed, self.window, self.skip = int(seed), max(1, int(window)), skip
        self.epoch = 0
        # Lightning sets the epoch on `dataloader.batch_sampler.sampler`: this object
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def share(self) -> torch.Tensor:
        """This process's items (positions in the split), in reading order."""
        n = len(self.shard_of)
        if not self.train:
            return torch.arange(self.rank * n // self.world, (self.rank + 1) * n // self.world)
        generator = torch.Generator().manual_seed(self._seed())
        shards = torch.unique(self.shard_of)
        place = torch.zeros(int(shards.max()) + 1, dtype=torch.long)
        place[shards[torch.randperm(len(shards), generator=generator)]] = torch.arange(len(shards))
        order = torch.argsort(place[self.shard_of] * n + torch.arange(n))
        per = -(-n // self.world)
        order = order.repeat(-(-per * self.world // n))[:per * self.world]
        return order[self.rank * per:(self.rank + 1) * per]

    def worker_batches(self) -> list[list[torch.Tensor]]:
        """Per loader worker, its batches (positions in the split): a contiguous part of this
        process's share, shuffled within windows when training."""
        out = []
        for worker, part in enumerate(torch.tensor_split(self.share(), self.workers)):
            if self.train:
                generator = torch.Generator().manual_seed(self._seed(self.rank, worker))
                part = torch.cat([w[torch.randperm(len(w), generator=generator)]
                                  for w in part.split(self.window)] or [part])
            out.append(list(part.split(self.batch_size)))
        return out

    def _seed(self, *parts: int) -> int:
        """A seed from the run's seed, the epoch and ``parts``, within torch's range."""
        value = self.seed * 1_000_003 + self.epoch
        for part in parts:
            value = value * 65_537 + part
        return value % (2**63 - 1)

    def __iter__(self) -> Iterator[list]:
        per_worker = self.worker_batches()
        batches = [b[r] for r in range(max(map(len, per_worker))) for b in per_worker if r < len(b)]
        if self.skip is not None and self.skip[0] == self.epoch:
            batches, self.skip = batches[self.skip[1]:], None
        for batch in batches:  # training keys carry the epoch (it seeds each item's augmentation)
            yield [(i, self.epoch) for i in batch.tolist()] if self.train else batch.tolist()

    def __len__(self) -> int:
        n = len(self.shard_of)
        share = -(-n // self.world) if self.train else \
            (self.rank + 1) * n // self.world - self.rank * n // self.world
        sizes = [share // self.workers + (w < share % self.workers) for w in range(self.workers)]
        return sum(-(-size // self.batch_size) for size in sizes)
