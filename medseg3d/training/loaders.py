"""The datasets and DataLoaders of a fold, as the bundles' ``train#dataset``/``train#dataloader`` and
``validate#dataset``/``validate#dataloader`` name them by ``_target_``.

Each side of the fold is cached within its share of the run's memory budget. Training data is wrapped so that
each epoch's order and each case's augmentation seed depend on ``(seed, epoch)`` alone
(``medseg3d.training.sampling``) and is loaded by workers that leave stop signals to the trainer; validation
data is read in order, one case per batch. Both DataLoaders draw from their own generator, never from the
global one, so loading does not move the network's random stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader
from torch.utils.data import Dataset, Sampler

from medseg3d.training.datasets import budget_share, make_dataset
from medseg3d.training.handlers import ignore_stop_signals
from medseg3d.training.sampling import ResumableSampler, SeededDataset

PARTS = {"training": 0, "validation": 1}  # the order of ``medseg3d.data.dataset_json.fold_datalists``


def fold_dataset(
    datalists: Sequence[Sequence[Mapping[str, Any]]],
    part: str,
    transform: Callable,
    cache: str = "memory",
    cache_memory_gb: float = 8.0,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
) -> Dataset:
    """The cached dataset of one part of a fold: ``make_dataset`` over its datalist, with the part's share of
    the run's memory budget (``budget_share``: training and validation split it by case count, so that
    together they stay inside it).

    Args:
        datalists: (training, validation) datalists of one fold, e.g. ``fold_datalists(dataset_dir, fold)``.
        part: ``training`` or ``validation``.
        transform: the part's preprocessing; what precedes its first random transform is cached.
        cache: ``memory``, ``disk`` or ``none`` (``make_dataset``).
        cache_memory_gb: the run's memory budget in GiB, per process.
        cache_dir: the folder of the disk cache.
        num_workers: threads that fill the memory cache.

    Raises:
        ValueError: an unknown ``part``.

    >>> from monai.transforms import Compose
    >>> len(fold_dataset([[{"image": "a.nii.gz"}], []], "training", Compose([]), cache="none"))
    1
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}; got {part!r}")
    index = PARTS[part]
    return make_dataset(
        data=datalists[index],
        transform=transform,
        cache=cache,
        memory_budget_gb=budget_share(cache_memory_gb, datalists, index),
        cache_dir=cache_dir,
        num_workers=num_workers,
    )


def training_loader(
    dataset: Dataset, batch_size: int, num_workers: int, seed: int, iterations_per_epoch: int | None = None
) -> DataLoader:
    """The training DataLoader: ``ResumableSampler`` orders each epoch (sharded by rank under
    ``torch.distributed``) and hands each draw its seed for the epoch, and ``SeededDataset`` seeds the random
    transforms with it, so a resumed run draws exactly the patches the uninterrupted one would, with any
    number of workers. Workers ignore SIGINT/SIGTERM/SIGHUP: the trainer alone decides when to stop.

    Args:
        dataset: the training dataset (``fold_dataset``); its ``transform`` is the one seeded.
        batch_size: cases per batch (each may give several patches).
        num_workers: worker processes.
        seed: the run's seed.
        iterations_per_epoch: a fixed epoch of this many batches per process, whatever the number of cases
            (nnU-Net's 250); 0 or None: one pass over the cases (0 also where a runner drops None overrides, as
            ``python -m monai.bundle run`` does).
    """
    if iterations_per_epoch is not None and (isinstance(iterations_per_epoch, bool) or iterations_per_epoch < 0):
        raise ValueError(f"iterations_per_epoch must be None or >= 0, got {iterations_per_epoch!r}")
    seeded = SeededDataset(dataset)
    samples = iterations_per_epoch * batch_size if iterations_per_epoch else None
    return DataLoader(
        seeded,
        sampler=ResumableSampler(seeded, shuffle=True, seed=seed, epoch_samples=samples),
        batch_size=batch_size,
        num_workers=num_workers,
        worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(seed),
    )


def validation_loader(dataset: Dataset, num_workers: int, seed: int, sampler: Sampler | None = None) -> DataLoader:
    """The validation DataLoader: one whole case per batch, in datalist order.

    Args:
        dataset: the validation dataset (``fold_dataset``).
        num_workers: worker processes.
        seed: the run's seed (the DataLoader's own generator).
        sampler: which cases this process reads, e.g. a ``DistributedSampler`` under DDP; None: all, in order.
    """
    return DataLoader(
        dataset,
        batch_size=1,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
