"""A quick look at a prediction: three orthogonal slices through the largest structure, labels overlaid, in
radiological orientation with a legend of the label names and colours.

Radiological convention, as a PACS shows them whatever the scan's voxel order: axial and coronal views have
the patient's right on the image's left; axial has anterior at the top, coronal and sagittal superior at the
top; sagittal has anterior on the left. Each view's edges carry their direction letters, and pixels keep the
scan's aspect (voxel spacing).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

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


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``volume`` (X, Y, Z) with its axes permuted and flipped so that index i, j, k grow towards the patient's
    Right, Anterior and Superior (the closest canonical orientation; no resampling), and its spacing then.

    >>> v = np.arange(8).reshape(2, 2, 2)
    >>> ras, spacing = to_ras(v, np.diag([-1.0, 2.0, 3.0, 1.0]))  # i grows to the left: flipped
    >>> ras[:, 0, 0].tolist(), spacing
    ([4, 0], (1.0, 2.0, 3.0))
    """
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
    out = nib.orientations.apply_orientation(volume, ornt)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    order = [int(axis) for axis in ornt[:, 0]]  # input axis a becomes output axis order[a]
    ras_spacing = [0.0, 0.0, 0.0]
    for axis, target in enumerate(order):
        ras_spacing[target] = float(spacing[axis])
    return out, tuple(ras_spacing)  # type: ignore[return-value]


# view name -> (the RAS axis the slice is cut across, (left, right, top, bottom) letters)
VIEWS: dict[str, tuple[int, tuple[str, str, str, str]]] = {
    "axial": (2, ("R", "L", "A", "P")),
    "coronal": (1, ("R", "L", "S", "I")),
    "sagittal": (0, ("A", "P", "S", "I")),
}


def radiological_views(
    volume: np.ndarray, labels: np.ndarray, affine: np.ndarray
) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """The axial, coronal and sagittal slices through the largest structure, as displayed (row 0 at the top):
    view -> (image plane, label plane, aspect = row spacing / column spacing).

    On the RAS volume every plane is the transposed slice flipped on both axes: columns run from the patient's
    right (axial, coronal) or front (sagittal) to the other side, rows from anterior (axial) or superior down.
    """
    vol, spacing = to_ras(volume, affine)
    lab, _ = to_ras(labels, affine)
    centre = largest_structure_centre(lab)
    out = {}
    for name, (axis, _) in VIEWS.items():
        index = [slice(None)] * 3
        index[axis] = centre[axis]
        in_plane = [a for a in range(3) if a != axis]  # (column axis, row axis) before the transpose
        aspect = spacing[in_plane[1]] / spacing[in_plane[0]]
        out[name] = (vol[tuple(index)].T[::-1, ::-1], lab[tuple(index)].T[::-1, ::-1], aspect)
    return out


def save_preview(
    image: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    window: tuple[float, float] | None = None,
    affine: np.ndarray | None = None,
    segments: Sequence[Any] = (),
) -> Path:
    """Write a PNG of the three radiological views through ``largest_structure_centre`` of the labels.

    Args:
        image: the scan, shape (C, X, Y, Z); the last channel is shown (FLAIR for BraTS, the CT itself).
        labels: the label map on the same grid, shape (X, Y, Z), in the values ``segments`` name.
        path: the PNG to write (atomically; folders are created).
        title: shown above the slices (the case ID).
        window: (low, high) grey levels, e.g. a CT window in HU; None: the 0.5-99.5th percentiles (MRI).
        affine: voxel -> RAS mm of the scan (None: the identity, the voxel axes taken as R, A, S).
        segments: the label table (``label_formats.SegmentSpec``: ``value``, ``name``, ``colour`` 0-255): each
            label drawn in its colour, listed in the legend; values without one take a tab10 colour.
    """
    if image.shape[1:] != labels.shape:
        raise ValueError(f"image of shape {image.shape} and labels of shape {labels.shape} are not on one grid")
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    volume = image[-1]
    if window is not None:
        low, high = (float(v) for v in window)
        if not high > low:
            raise ValueError(f"window must be (low, high) with high > low, got {window!r}")
    else:
        low, high = np.percentile(volume, [0.5, 99.5]) if volume.size else (0.0, 1.0)
    top = max(int(labels.max(initial=0)), max((int(s.value) for s in segments), default=0), 1)
    tab10 = matplotlib.colormaps["tab10"]
    colours = [tab10((value - 1) % 10) for value in range(top + 1)]
    for spec in segments:
        colours[int(spec.value)] = tuple(c / 255.0 for c in spec.colour) + (1.0,)
    cmap = ListedColormap(colours)
    views = radiological_views(volume, labels, affine)
    fig = Figure(figsize=(12, 4.8))
    axes = fig.subplots(1, 3)
    for ax, (name, (plane, mask, aspect)) in zip(axes, views.items(), strict=True):
        ax.imshow(plane, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        overlay = np.ma.masked_where(mask == 0, mask)
        ax.imshow(overlay, cmap=cmap, vmin=-0.5, vmax=top + 0.5, alpha=0.45, aspect=aspect, interpolation="nearest")
        left, right, up, down = VIEWS[name][1]
        for text, xy, align in ((left, (0.01, 0.5), "left"), (right, (0.99, 0.5), "right")):
            ax.text(*xy, text, transform=ax.transAxes, color="yellow", ha=align, va="center", fontsize=11)
        for text, xy, align in ((up, (0.5, 0.99), "top"), (down, (0.5, 0.01), "bottom")):
            ax.text(*xy, text, transform=ax.transAxes, color="yellow", ha="center", va=align, fontsize=11)
        ax.set_title(name)
        ax.axis("off")
    present = set(np.unique(labels).tolist())
    handles = [Patch(color=colours[int(s.value)], label=f"{s.value} {s.name}") for s in segments if s.value in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(f"{title}  (radiological views through the largest structure)")
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path
