"""A quick look at a prediction: three orthogonal slices through the largest structure, labels overlaid."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from medseg3d.core.io import atomic_path
from medseg3d.ops.components import keep_largest


def largest_structure_centre(labels: np.ndarray) -> tuple[int, int, int]:
    """Voxel (x, y, z) at the centre of mass of the largest 26-connected foreground component of ``labels``
    (shape (X, Y, Z)); the volume's centre when there is no foreground.

    >>> labels = np.zeros((9, 8, 7), dtype=np.uint8)
    >>> labels[0, 0, 0] = 1
    >>> labels[4:7, 2:5, 1:4] = 2
    >>> largest_structure_centre(labels)
    (5, 3, 2)
    """

    largest = keep_largest(labels > 0, k=1, connectivity=26)
    if not largest.any():
        return tuple(s // 2 for s in labels.shape)
    return tuple(int(round(c)) for c in np.argwhere(largest).mean(axis=0))


def save_preview(
    image: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    window: tuple[float, float] | None = None,
) -> Path:
    """Write a PNG of the three slices through ``largest_structure_centre(labels)``.

    Args:
        image: the scan, shape (C, X, Y, Z); the last channel is shown (FLAIR for BraTS, the CT itself).
        labels: the label map on the same grid, shape (X, Y, Z).
        path: the PNG to write (atomically; folders are created).
        title: shown above the slices (the case ID).
        window: (low, high) grey levels, e.g. a CT window in HU; None: the 0.5-99.5th percentiles (MRI).
    """
    if image.shape[1:] != labels.shape:
        raise ValueError(f"image of shape {image.shape} and labels of shape {labels.shape} are not on one grid")
    x, y, z = largest_structure_centre(labels)
    volume = image[-1]
    if window is not None:
        low, high = (float(v) for v in window)
        if not high > low:
            raise ValueError(f"window must be (low, high) with high > low, got {window!r}")
    else:
        low, high = np.percentile(volume, [0.5, 99.5]) if volume.size else (0.0, 1.0)
    views = [
        ("sagittal", volume[x], labels[x]),
        ("coronal", volume[:, y], labels[:, y]),
        ("axial", volume[:, :, z], labels[:, :, z]),
    ]
    fig = Figure(figsize=(12, 4.4))
    axes = fig.subplots(1, 3)
    cmap = matplotlib.colormaps["tab10"]
    for ax, (name, plane, mask) in zip(axes, views, strict=True):
        ax.imshow(plane.T, cmap="gray", origin="lower", vmin=low, vmax=high)
        overlay = np.ma.masked_where(mask.T == 0, mask.T)
        ax.imshow(overlay, cmap=cmap, origin="lower", alpha=0.45, vmin=0, vmax=9, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"{title}  (slices through voxel {x}, {y}, {z})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path
