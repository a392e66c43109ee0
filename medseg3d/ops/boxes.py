"""Bounding boxes of masks: the region a metric, a diameter or a crop needs to look at."""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every non-zero voxel of ``mask``, grown by ``margin`` and clipped.

    Args:
        mask: array of shape (X, Y, Z).
        margin: voxels added on every side (clipped to the array).

    Returns:
        One slice per axis, or None when ``mask`` is all zero.

    >>> bounding_box(np.pad(np.ones((2, 1, 1)), 2), margin=1)
    (slice(1, 5, None), slice(1, 4, None), slice(1, 4, None))
    """
    slices = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=others))
        if not hits.size:
            return None
        slices.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(slices)
