"""The datasets and DataLoaders of a fold: parts, budget shares, seeded resumable order, validation order."""

from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset, Dataset
from monai.transforms import Compose, Lambdad, RandLambdad

from medseg3d.training.handlers import ignore_stop_signals
from medseg3d.training.loaders import fold_dataset, training_loader, validation_loader
from medseg3d.training.sampling import ResumableSampler, SeededDataset

# 6 training and 2 validation "cases": plain numbers, no files
DATALISTS = [[{"image": float(i)} for i in range(6)], [{"image": float(i)} for i in range(10, 12)]]
DRAW = RandLambdad(keys="image", func=lambda x: x + 100, prob=0.5)  # seeded by SeededDataset through MONAI


@pytest.mark.parametrize("part, values", [("training", list(range(6))), ("validation", [10, 11])])
def test_fold_dataset_takes_its_part(part: str, values: list[int]) -> None:
    dataset = fold_dataset(DATALISTS, part, Compose([]), cache="none")
    assert isinstance(dataset, Dataset) and [dataset[i]["image"] for i in range(len(dataset))] == values


def test_fold_dataset_caches_within_its_share() -> None:
    dataset = fold_dataset(DATALISTS, "training", Compose([Lambdad("image", float)]), cache="memory")
    assert isinstance(dataset, CacheDataset) and dataset.cache_num == 6
    with pytest.raises(ValueError, match="part must be one of training, validation; got 'test'"):
        fold_dataset(DATALISTS, "test", Compose([]))


def _epoch(loader) -> list[float]:
    return [float(value) for batch in loader for value in batch["image"]]


def test_training_loader_is_seeded_and_resumable() -> None:
    dataset = fold_dataset(DATALISTS, "training", Compose([DRAW]), cache="none")
    loader = training_loader(dataset, batch_size=2, num_workers=0, seed=3)
    assert isinstance(loader.dataset, SeededDataset) and isinstance(loader.sampler, ResumableSampler)
    assert loader.worker_init_fn is ignore_stop_signals and loader.batch_size == 2
    state = torch.get_rng_state()
    first = _epoch(loader)
    assert torch.equal(torch.get_rng_state(), state)  # seeded per case: the global stream is untouched
    again = training_loader(dataset, batch_size=2, num_workers=0, seed=3)
    assert _epoch(again) == first  # the same order and the same draws
    loader.sampler.set_epoch(1)
    assert _epoch(loader) != first
    assert sorted(int(v) % 100 for v in first) == list(range(6)) and any(v >= 100 for v in first)


def test_validation_loader_reads_every_case_in_order() -> None:
    dataset = fold_dataset(DATALISTS, "validation", Compose([]), cache="none")
    loader = validation_loader(dataset, num_workers=0, seed=0)
    assert loader.batch_size == 1 and _epoch(loader) == [10.0, 11.0]
    only_second = validation_loader(dataset, num_workers=0, seed=0, sampler=[1])
    assert _epoch(only_second) == [11.0]
