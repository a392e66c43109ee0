"""ResumableSampler and SeededDataset: each epoch's order and each case's augmentation depend on (seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, RandGaussianNoised, RandSpatialCropd

from medseg3d.training.sampling import ResumableSampler, SeededDataset


def _epoch(sampler: ResumableSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_and_seeds_depend_on_seed_and_epoch_only() -> None:
    a, b = ResumableSampler(range(10), seed=3), ResumableSampler(range(10), seed=3)
    _epoch(a, 1)  # a has been iterated before; b has not
    assert _epoch(a, 2) == _epoch(b, 2)
    assert _epoch(a, 2) != _epoch(a, 3)
    assert _epoch(a, 2) != _epoch(ResumableSampler(range(10), seed=4), 2)
    assert sorted(index for index, _ in _epoch(a, 5)) == list(range(10))


def test_skip_next_drops_the_trained_samples_once() -> None:
    sampler = ResumableSampler(range(7), seed=0)
    full = _epoch(sampler, 4)
    sampler.skip_next(3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full
    with pytest.raises(ValueError, match="count must be >= 0"):
        sampler.skip_next(-1)


def test_ranks_share_the_epoch_between_them() -> None:
    ranks = [ResumableSampler(range(9), seed=1, num_replicas=3, rank=r) for r in range(3)]
    shards = [_epoch(sampler, 2) for sampler in ranks]
    assert sorted(index for shard in shards for index, _ in shard) == list(range(9))
    seeds = dict(pair for shard in shards for pair in shard)
    assert seeds == dict(_epoch(ResumableSampler(range(9), seed=1), 2))  # a case's seed is the same on any rank


def test_a_fixed_epoch_draws_every_case_equally_often_with_its_own_seeds() -> None:
    sampler = ResumableSampler(range(3), seed=2, epoch_samples=10)
    first, again = _epoch(sampler, 1), _epoch(ResumableSampler(range(3), seed=2, epoch_samples=10), 1)
    assert first == again and len(sampler) == 10
    counts = np.bincount([index for index, _ in first], minlength=3)
    assert counts.max() - counts.min() <= 1  # whole passes laid end to end
    assert len({seed for _, seed in first}) == 10  # a case drawn twice gets two different patches
    assert _epoch(sampler, 2) != first
    sampler.set_epoch(1)
    sampler.skip_next(4)
    assert list(sampler) == first[4:]  # resuming mid-epoch, as with one pass


def test_ranks_share_a_fixed_epoch() -> None:
    ranks = [ResumableSampler(range(5), seed=1, num_replicas=2, rank=r, epoch_samples=6) for r in range(2)]
    shards = [_epoch(sampler, 3) for sampler in ranks]
    assert [len(shard) for shard in shards] == [6, 6]
    single = _epoch(ResumableSampler(range(5), seed=1, num_replicas=1, rank=0, epoch_samples=12), 3)
    assert sorted(shards[0] + shards[1]) == sorted(single)  # the ranks split the single process's draws


@pytest.mark.parametrize("samples", [0, -3, True])
def test_a_fixed_epoch_needs_a_positive_length(samples) -> None:
    with pytest.raises(ValueError, match="epoch_samples"):
        ResumableSampler(range(3), epoch_samples=samples)


def test_seeded_dataset_gives_a_case_the_same_augmentation_whatever_came_before() -> None:
    data = [{"image": torch.arange(2 * 12 * 10 * 6, dtype=torch.float32).reshape(2, 12, 10, 6) + i} for i in range(3)]
    transform = Compose(
        [RandSpatialCropd(keys="image", roi_size=(5, 4, 3), random_size=False), RandGaussianNoised("image", prob=1.0)]
    )
    dataset = SeededDataset(Dataset(data, transform))
    first = dataset[(1, 1234)]["image"]
    dataset[(0, 99)], dataset[(2, 7)]  # other cases drawn in between
    torch.set_num_threads(2)
    again = dataset[(1, 1234)]["image"]
    assert first.shape == (2, 5, 4, 3) and torch.equal(first, again)
    assert torch.get_num_threads() == 2  # restored after single-threaded loading
    assert not torch.equal(first, dataset[(1, 1235)]["image"])
    assert np.array_equal(dataset[0]["image"].shape, (2, 5, 4, 3))  # a plain index passes through
