"""The training and validation datasets, cached in memory within a budget, on disk, or not at all.

``make_dataset`` is the bundle's ``_target_`` for ``train#dataset`` and ``validate#dataset``:

- ``cache="memory"``: MONAI ``CacheDataset`` holding the output of the transform's deterministic prefix
  (everything before the first random transform) for as many cases as ``memory_budget_gb`` allows; the
  other cases are read from disk every time they are drawn.
- ``cache="disk"``: MONAI ``PersistentDataset``: the same prefix written once per case to ``cache_dir``
  as ``.pt`` files and read back per sample; memory holds only the cases in flight.
- ``cache="none"``: MONAI ``Dataset``: every sample runs the whole transform from the NIfTI files.

How much a cached case costs is estimated without reading every case: the prefix is run on the first
case and its tensors' bytes are measured, then every other case is scaled by its voxel count read
from the NIfTI headers (header shape, channels included, summed over the files the case names). For
this bundle's prefix (``LoadImaged`` as float32, channels first, no resampling) a prepared case of
X x Y x Z voxels costs ``(4 image channels + 1 label channel) x 4 bytes x X*Y*Z`` in training, and
``(4 + 3 regions) x 4 bytes x X*Y*Z`` in validation, whose whole transform is deterministic. A
prefix that resamples or crops is measured on the first case all the same; the scaling assumes the
other cases change size in proportion.

DataLoader workers do not copy the cache. The cache is filled in the parent process before the
DataLoader starts its workers; on Linux the workers are forked, so they see the parent's memory
copy-on-write. Each cached volume is one large tensor storage in its own pages; a worker only reads
those pages (it ``deepcopy``s the case it is about to augment, a private copy of one case at a time),
and reference counting writes only to the small Python objects around them. The cache pages therefore
stay shared: each worker's RSS counts them, but they exist once (the sum of PSS over the process and
its workers counts them once). ``benchmarks/bench_train.py`` measures both, and how many of the cached
pages sit on the same physical pages in every worker as in the parent. Two limits: under the ``spawn``
or ``forkserver`` start methods the dataset is pickled to every worker, and under DDP every rank is a
separate process with its own cache, so the budget applies per process. Once the cache is filled, the
C heap's free pages are handed back (``release_free_heap``), so that the process grows by what the cache
holds and the workers inherit no leftovers of loading.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import json_hashing
from monai.transforms import Compose

from medseg3d.core.errors import InputError
from medseg3d.data.reader import image_extension, read_info
from medseg3d.transforms.compose import is_random

logger = logging.getLogger(__name__)

CACHE_MODES = ("memory", "disk", "none")
GIB = 2**30


def cache_num_for_budget(case_bytes: Sequence[int], budget_bytes: float) -> int:
    """The number of leading cases whose bytes add up to at most ``budget_bytes``.

    ``CacheDataset`` caches the first ``cache_num`` items of its data, so the budget is spent in order.

    >>> cache_num_for_budget([10, 10, 10], 25)
    2
    >>> cache_num_for_budget([10, 10, 10], 30)
    3
    >>> cache_num_for_budget([40, 10], 25)
    0
    """
    total, count = 0, 0
    for size in case_bytes:
        total += size
        if total > budget_bytes:
            break
        count += 1
    return count


def _image_paths(value: Any) -> list[Path]:
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        return [path] if image_extension(path) else []
    if isinstance(value, list | tuple):
        return [path for v in value for path in _image_paths(v)]
    return []


def header_voxels(item: Mapping[str, Any]) -> int | None:
    """Voxels (times channels) of every image file ``item`` names, from the headers alone.

    The files are those ``medseg3d.data.reader`` reads (NIfTI, NRRD, MHA/MHD), through its ``read_info`` (no voxel
    data read); a DICOM series folder is not counted (its grid needs every slice).

    Args:
        item: a datalist entry such as ``{"image": "a.nii.gz", "label": "b.nii.gz", "case_id": "x"}``;
            a value may also be a list of paths.

    Returns:
        the sum of the product of each header's data shape, or None when the item names no such file
        or a header cannot be read.
    """

    paths = [path for value in item.values() for path in _image_paths(value)]
    if not paths:
        return None
    total = 0
    for path in paths:
        try:
            info = read_info(path, channels=None)
        except InputError:
            return None
        total += math.prod(info.grid.shape) * info.channels
    return total


def cached_nbytes(item: Any) -> int:
    """Bytes held by the tensors and arrays in a transformed item (dicts and lists are walked).

    >>> cached_nbytes({"image": torch.zeros(4, 2, 3, 5), "label": np.zeros((1, 2, 3, 5), np.uint8), "id": "a"})
    510
    """
    if isinstance(item, torch.Tensor):
        return item.element_size() * item.numel()
    if isinstance(item, np.ndarray):
        return int(item.nbytes)
    if isinstance(item, Mapping):
        return sum(cached_nbytes(v) for v in item.values())
    if isinstance(item, list | tuple):
        return sum(cached_nbytes(v) for v in item)
    return 0


def _as_compose(transform: Sequence[Callable] | Callable | None):
    if isinstance(transform, Compose):
        return transform
    return Compose(transform)


def _deterministic_prefix(transform: Any, item: Mapping[str, Any]) -> Any:
    """``item`` through the transforms ``CacheDataset`` caches: those before the first random one."""

    compose = _as_compose(transform)
    first_random = compose.get_index_of_first(is_random)
    return compose(deepcopy(item), end=first_random, threading=True)


def estimate_cached_bytes(data: Sequence[Mapping[str, Any]], transform: Any) -> list[int]:
    """Estimated bytes ``CacheDataset`` holds for each case of ``data`` (see the module docstring).

    The first case is run through the deterministic prefix and measured; the others are scaled by their
    header voxel counts. Where a header cannot be read, every case is taken to be the first one's size.

    Args:
        data: datalist entries (dicts of file paths).
        transform: the dataset's transform (a ``Compose`` or a list of transforms).

    Returns:
        one integer per case, in the order of ``data``.
    """
    if not data:
        return []
    first_bytes = cached_nbytes(_deterministic_prefix(transform, data[0]))
    voxels = [header_voxels(item) for item in data]
    if any(v is None or v == 0 for v in voxels):
        logger.warning("cache estimate: some headers could not be read; every case is taken as large as the first")
        return [first_bytes] * len(data)
    return [round(first_bytes * v / voxels[0]) for v in voxels]


def _size(nbytes: float) -> str:
    """``3.5 GiB`` or ``120.0 MiB``.

    >>> _size(1.5 * GIB), _size(3 * 2**20)
    ('1.50 GiB', '3.0 MiB')
    """
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.1f} MiB"


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``); False where there is none.

    Loading a case leaves freed decompression and conversion buffers between the cached volumes; glibc
    keeps them resident. Trimming after the cache is filled makes the process grow by what the cache
    holds, not more (``bench_train.py`` measures it), and forked workers inherit no resident garbage.
    """

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):  # no C library found, or not glibc
        return False
    trim(0)
    return True


def budget_share(total_gb: float, datalists: Sequence[Sequence[Any]], index: int) -> float:
    """Part ``index``'s share of ``total_gb``, in proportion to its number of cases.

    The bundle gives one memory budget for the run; training and validation split it by case count so
    that together they stay inside it.

    >>> budget_share(10.0, [range(8), range(2)], 0)
    8.0
    >>> budget_share(10.0, [range(8), range(2)], 1)
    2.0
    """
    total_cases = sum(len(d) for d in datalists)
    if total_cases == 0:
        return float(total_gb)
    return float(total_gb) * len(datalists[index]) / total_cases


def make_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Sequence[Callable] | Callable,
    cache: str = "memory",
    memory_budget_gb: float = 8.0,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    progress: bool = True,
):
    """A MONAI dataset over ``data`` that caches the deterministic part of ``transform`` as ``cache`` says.

    Args:
        data: datalist entries, e.g. ``{"image": path of shape (X, Y, Z, 4), "label": path of shape (X, Y, Z)}``.
        transform: the dataset's transform; what precedes its first random transform is cached.
        cache: ``memory`` (``CacheDataset`` within ``memory_budget_gb``), ``disk`` (``PersistentDataset`` in
            ``cache_dir``) or ``none`` (``Dataset``).
        memory_budget_gb: the most memory the cache may take, in GiB (2**30 bytes), per process. The first
            cases that fit are cached; the others are read from disk when drawn. Interpreter, network
            and the cases DataLoader workers have in flight come on top.
        cache_dir: the folder of the disk cache (created if missing). Its files are keyed by the datalist
            entry and the names of the cached transforms: point several runs at one folder only while the
            prepared files and the deterministic transforms stay the same.
        num_workers: threads that fill the memory cache (not DataLoader workers).
        progress: show a progress bar while the memory cache fills.

    Returns:
        a ``monai.data.CacheDataset``, ``PersistentDataset`` or ``Dataset``.

    Raises:
        ValueError: an unknown ``cache``, a budget that is not > 0, or ``cache="disk"`` without ``cache_dir``.

    Example:
        >>> from monai.transforms import Compose, LoadImaged
        >>> ds = make_dataset([], Compose([LoadImaged(keys="image")]), cache="none")
        >>> type(ds).__name__, len(ds)
        ('Dataset', 0)
    """

    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}; got {cache!r}")
    if isinstance(memory_budget_gb, bool) or not memory_budget_gb > 0:
        raise ValueError(f"memory_budget_gb must be a number of GiB > 0; got {memory_budget_gb!r}")
    if cache == "none":
        return Dataset(data=data, transform=transform)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir (a folder for the cached cases); got None")
        logger.info("disk cache in %s for %d datalist entries (each written on first use)", cache_dir, len(data))
        # json_hashing cannot serialise transforms, so MONAI keys the files by the transforms' class names.
        return PersistentDataset(data=data, transform=transform, cache_dir=cache_dir, hash_transform=json_hashing)

    case_bytes = estimate_cached_bytes(data, transform)
    cache_num = cache_num_for_budget(case_bytes, memory_budget_gb * GIB)
    logger.info(
        "memory cache: %d of %d cases, about %s (budget %s, all cases %s); %d read from disk when drawn",
        cache_num,
        len(data),
        _size(sum(case_bytes[:cache_num])),
        _size(memory_budget_gb * GIB),
        _size(sum(case_bytes)),
        len(data) - cache_num,
    )
    dataset = CacheDataset(
        data=data, transform=transform, cache_num=cache_num, cache_rate=1.0, num_workers=num_workers, progress=progress
    )
    release_free_heap()
    return dataset
