"""make_dataset: a memory cache that holds the cases its budget fits, a disk cache, no cache, and bad settings."""

from __future__ import annotations

import logging
import math
import platform
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import set_rnd
from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, RandSpatialCropd

from medseg3d.core.io import save_nifti
from medseg3d.training.datasets import (
    GIB,
    cached_nbytes,
    estimate_cached_bytes,
    header_voxels,
    make_dataset,
    release_free_heap,
)
from medseg3d.transforms import LabelsToRegionsd

# Non-cubic and each case a different size, so that an estimate that ignores the headers fails.
SHAPES = [(12, 10, 7), (14, 10, 9), (10, 12, 7), (16, 9, 8)]
CHANNELS = 4


def _write_cases(root: Path, shapes=SHAPES) -> list[dict]:
    rng = np.random.default_rng(0)
    data = []
    for number, shape in enumerate(shapes):
        image = rng.normal(0, 1, (*shape, CHANNELS)).astype(np.float32)
        label = rng.integers(0, 4, shape).astype(np.uint8)
        entry = {"case_id": f"case{number}", "fold": 0}
        entry["image"] = str(save_nifti(image, np.eye(4), root / f"case{number}_image.nii.gz"))
        entry["label"] = str(save_nifti(label, np.eye(4), root / f"case{number}_label.nii.gz"))
        data.append(entry)
    return data


def _load() -> list:
    """The bundle's deterministic prefix: float32 tensors, channels first."""
    return [
        LoadImaged(keys=["image", "label"], image_only=True),
        EnsureChannelFirstd(keys=["image", "label"]),
        EnsureTyped(keys=["image", "label"], track_meta=False),
    ]


def _train_transform() -> Compose:
    return Compose([*_load(), RandSpatialCropd(keys=["image", "label"], roi_size=(6, 5, 4), random_size=False)])


def _train_bytes(shape: tuple[int, ...]) -> int:
    """What one cached training case holds: 4 image channels and 1 label channel, all float32."""
    return (CHANNELS + 1) * 4 * math.prod(shape)


@pytest.fixture
def cases(tmp_path: Path) -> list[dict]:
    return _write_cases(tmp_path / "cases")


@pytest.mark.parametrize(
    "budget_bytes, expected",
    [
        pytest.param(sum(_train_bytes(s) for s in SHAPES[:2]), 2, id="exactly-2-of-4"),
        pytest.param(sum(_train_bytes(s) for s in SHAPES[:3]) - 1, 2, id="one-byte-short-of-3"),
        pytest.param(sum(_train_bytes(s) for s in SHAPES[:3]), 3, id="exactly-3-of-4"),
        pytest.param(_train_bytes(SHAPES[0]) - 1, 0, id="not-even-the-first"),
        pytest.param(10 * GIB, 4, id="all"),
    ],
)
def test_memory_cache_holds_the_cases_the_budget_fits(cases: list[dict], budget_bytes: int, expected: int) -> None:
    dataset = make_dataset(cases, _train_transform(), cache="memory", memory_budget_gb=budget_bytes / GIB)
    assert isinstance(dataset, CacheDataset)
    assert dataset.cache_num == expected
    cached = list(dataset._cache)
    assert len(cached) == expected
    # The estimate is what the cache really holds.
    assert sum(cached_nbytes(item) for item in cached) == sum(_train_bytes(s) for s in SHAPES[:expected])
    assert sum(cached_nbytes(item) for item in cached) <= budget_bytes
    # Cached or not, every case gives a training sample.
    for index in range(len(cases)):
        sample = dataset[index]
        assert sample["image"].shape == (CHANNELS, 6, 5, 4) and sample["label"].shape == (1, 6, 5, 4)


def test_memory_cache_logs_what_it_holds(cases: list[dict], caplog: pytest.LogCaptureFixture) -> None:
    budget_gb = sum(_train_bytes(s) for s in SHAPES[:2]) / GIB
    with caplog.at_level(logging.INFO, logger="medseg3d.training.datasets"):
        make_dataset(cases, _train_transform(), cache="memory", memory_budget_gb=budget_gb, progress=False)
    assert "memory cache: 2 of 4 cases" in caplog.text and "2 read from disk when drawn" in caplog.text


def test_estimate_follows_the_cached_prefix_not_the_files(cases: list[dict]) -> None:
    # Validation's transform is deterministic to the end: labels become 3 float32 region channels.
    transform = Compose([*_load(), LabelsToRegionsd(keys="label")])
    estimate = estimate_cached_bytes(cases, transform)
    assert estimate == [(CHANNELS + 3) * 4 * math.prod(s) for s in SHAPES]
    dataset = make_dataset(cases, transform, cache="memory", memory_budget_gb=1.0, progress=False)
    assert [cached_nbytes(item) for item in dataset._cache] == estimate


def test_header_voxels(cases: list[dict]) -> None:
    x, y, z = SHAPES[1]
    assert header_voxels(cases[1]) == x * y * z * CHANNELS + x * y * z
    assert header_voxels({"image": [cases[0]["label"], cases[1]["label"]], "case_id": "a"}) == 12 * 10 * 7 + x * y * z
    assert header_voxels({"case_id": "no files"}) is None


def test_release_free_heap_where_glibc_is() -> None:
    assert release_free_heap() is (platform.libc_ver()[0] == "glibc")


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in ("image", "label"):
        assert isinstance(a[key], torch.Tensor) and a[key].dtype == b[key].dtype
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key]))
    assert a["case_id"] == b["case_id"]


def test_disk_cache_writes_files_and_gives_the_same_samples(cases: list[dict], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    disk = make_dataset(cases, _train_transform(), cache="disk", cache_dir=cache_dir)
    plain = make_dataset(cases, _train_transform(), cache="none")
    assert isinstance(disk, PersistentDataset) and type(plain) is Dataset
    for attempt in ("writes the cache", "reads the cache"):
        for index, seed in enumerate((3, 1, 4, 1)):
            set_rnd(disk.transform, seed)
            set_rnd(plain.transform, seed)
            _assert_same(disk[index], plain[index])
        assert len(list(cache_dir.glob("*.pt"))) == len(cases), attempt


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"cache": "ram"}, "cache must be one of memory, disk, none; got 'ram'", id="unknown-cache"),
        pytest.param({"cache": None}, "cache must be one of memory, disk, none; got None", id="cache-none-value"),
        pytest.param({"memory_budget_gb": 0}, "memory_budget_gb must be a number of GiB > 0; got 0", id="zero"),
        pytest.param({"memory_budget_gb": -2.0}, r"> 0; got -2.0", id="negative"),
        pytest.param({"memory_budget_gb": float("nan")}, r"> 0; got nan", id="nan"),
        pytest.param({"cache": "disk"}, "cache='disk' needs a cache_dir", id="disk-without-dir"),
    ],
)
def test_bad_settings(cases: list[dict], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_dataset(cases, _train_transform(), **kwargs)
