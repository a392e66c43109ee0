"""Training order and augmentation randomness that depend on (seed, epoch, case) alone, so a run resumes exactly.

A resumed run must draw the same patches, flips and noise as the run it continues, wherever it
stopped, with any number of DataLoader workers. Two pieces make that so:

- ``ResumableSampler`` orders each epoch by ``(seed, epoch)`` (as ``DistributedSampler`` does, and
  sharded by rank under DDP) and hands each draw its own augmentation seed drawn from
  ``(seed, epoch)``: it yields ``(index, sample_seed)`` pairs. An epoch is one pass over the cases, or
  with ``epoch_samples`` a fixed number of draws whatever the number of cases (nnU-Net's fixed epoch
  of 250 iterations): seeded passes over the cases, concatenated, so every case is drawn as often as
  the others, give or take one. ``skip_next(n)`` drops the first ``n`` of the next epoch's samples,
  which is how a run interrupted mid-epoch picks up where it stopped.
- ``SeededDataset`` wraps a MONAI dataset; given ``(index, sample_seed)`` it seeds the random
  transforms with ``sample_seed`` and returns ``dataset[index]``, single-threaded as in a DataLoader
  worker. Which worker process draws a case, what it drew before, and whether there are workers at all
  (``num_workers=0``) no longer matters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import numpy as np
import torch
from monai.data.utils import set_rnd
from torch.utils.data import Dataset, DistributedSampler

from medseg3d.core.ranks import get_rank, is_distributed


class ResumableSampler(DistributedSampler):
    """Yield ``(index, sample_seed)`` for one epoch; the order and the seeds are functions of (seed, epoch).

    MONAI's trainer calls ``set_epoch`` at the start of every epoch for any ``DistributedSampler``. Under
    ``torch.distributed`` each rank takes its share (``num_replicas`` and ``rank`` default to the process
    group's); in a single process it is a seeded shuffle of the whole dataset.

    With ``epoch_samples`` an epoch is that many draws per rank instead of one pass: seeded shuffles of the
    whole dataset are laid end to end until ``epoch_samples * num_replicas`` draws, which the ranks share as
    ``DistributedSampler`` shares one pass (rank ``r`` takes draws ``r, r + num_replicas, ...``). Every draw
    has its own seed, so a case drawn twice in an epoch gets two different patches.

    Args:
        dataset: the dataset to sample (only its length is used).
        shuffle: draw a new order every epoch; otherwise ``0..N-1``.
        seed: the run's seed.
        num_replicas, rank: as ``DistributedSampler``; default to the process group, else 1 and 0.
        drop_last: as ``DistributedSampler``.
        epoch_samples: draws per rank and epoch; None: one pass over the dataset.

    Example:
        >>> sampler = ResumableSampler(range(5), seed=0, num_replicas=1, rank=0)
        >>> sampler.set_epoch(3)
        >>> first = list(sampler)
        >>> sampler.skip_next(2)
        >>> list(sampler) == first[2:]
        True
        >>> sorted(index for index, _ in first)
        [0, 1, 2, 3, 4]
        >>> fixed = ResumableSampler(range(3), seed=0, num_replicas=1, rank=0, epoch_samples=7)
        >>> draws = list(fixed)
        >>> counts = [sum(index == case for index, _ in draws) for case in range(3)]
        >>> len(draws), sorted(counts), len({seed for _, seed in draws})
        (7, [2, 2, 3], 7)
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        epoch_samples: int | None = None,
    ) -> None:
        if epoch_samples is not None and (isinstance(epoch_samples, bool) or epoch_samples < 1):
            raise ValueError(f"epoch_samples must be None or >= 1, got {epoch_samples!r}")
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if is_distributed() else 1
        if rank is None:
            rank = get_rank()
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._skip = 0
        self.epoch_samples = epoch_samples
        if epoch_samples is not None:
            self.num_samples = epoch_samples
            self.total_size = epoch_samples * self.num_replicas

    def skip_next(self, count: int) -> None:
        """Leave out the first ``count`` samples of the next epoch's iteration (once)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        self._skip = count

    def sample_seeds(self) -> np.ndarray:
        """One augmentation seed per dataset index for the current epoch, shape (len(dataset),)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        return rng.integers(0, 2**31 - 1, size=len(self.dataset), dtype=np.int64)

    def epoch_draws(self) -> list[tuple[int, int]]:
        """All ``(index, sample_seed)`` draws of the current epoch on this rank, before any skip."""
        if self.epoch_samples is None:
            seeds = self.sample_seeds()
            return [(int(index), int(seeds[index])) for index in super().__iter__()]
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        count = len(self.dataset)
        passes = -(-self.total_size // count)
        order = [rng.permutation(count) if self.shuffle else np.arange(count) for _ in range(passes)]
        indices = np.concatenate(order)[: self.total_size]
        seeds = rng.integers(0, 2**31 - 1, size=self.total_size, dtype=np.int64)
        mine = slice(self.rank, self.total_size, self.num_replicas)
        return [(int(i), int(s)) for i, s in zip(indices[mine], seeds[mine], strict=True)]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        draws = self.epoch_draws()[self._skip :]
        self._skip = 0
        return iter(draws)

    def __len__(self) -> int:
        return self.num_samples


class SeededDataset(Dataset):
    """Index ``dataset`` with ``(index, sample_seed)``: the random transforms are seeded first.

    Plain integer indices pass through unchanged (no reseeding), so the wrapper can stand anywhere a
    dataset does.

    Args:
        dataset: a MONAI ``Dataset``/``CacheDataset``/``PersistentDataset`` (its ``transform`` is seeded).
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if not isinstance(key, tuple):
            return self.dataset[key]
        index, seed = key
        set_rnd(getattr(self.dataset, "transform", self.dataset), int(seed))
        # DataLoader workers run single-threaded; so does loading in the main process (num_workers=0), because
        # interpolation and smoothing round differently with more threads. Any num_workers, the same samples.
        threads = torch.get_num_threads()
        if threads == 1:
            return self.dataset[index]
        torch.set_num_threads(1)
        try:
            return self.dataset[index]
        finally:
            torch.set_num_threads(threads)
