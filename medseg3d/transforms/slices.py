"""Slice-stack transforms for 2.5D models: a 2D network that sees a slice and its neighbours.

A 2.5D model segments one slice of a volume at a time, but its input holds the ``2k+1`` slices around it
(along ``axis``) as extra channels, so it sees some 3D context at the cost of a 2D network. ``SliceStack``
builds that input from a (C, X, Y, Z) volume, ``CentreSlice`` gives the matching label (the centre slice)
and ``SlicesToVolume`` puts per-slice predictions back into a volume.

Channel order (every class here and ``medseg3d.inferers.slice_stack``): channel-major, output channel
``c * (2k+1) + (j+k)`` is input channel ``c`` at slice ``index + j``, ``j = -k..k``. Neighbours outside the
volume repeat the edge slice (``edge="replicate"``) or are zeros (``edge="zero"``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import Transform
from monai.utils import TransformBackends

EDGES = ("replicate", "zero")
# Meta entries that describe the 3D grid and mean nothing for a 2D slice: dropped from a MetaTensor's meta.
_SPATIAL_META = ("affine", "original_affine", "spatial_shape")


def check_axis(axis: Any) -> int:
    """``axis`` (a spatial axis of a (C, X, Y, Z) volume, -3..2) as 0, 1 or 2; ValueError naming it otherwise.

    >>> check_axis(-1)
    2
    """
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not -3 <= int(axis) <= 2:
        raise ValueError(f"axis must be a spatial axis 0, 1, 2 (X, Y, Z) or -3..-1, got {axis!r}")
    return int(axis) % 3


def slab_size(roi_size: Sequence[int], k: int, axis: int = 2) -> list[int]:
    """The 3D crop size that gives a stack: ``roi_size`` (the in-plane size, the two axes other than ``axis``,
    in order) with ``2k+1`` slices inserted along ``axis``. A training pipeline crops slabs of this size
    (``RandCropByLabelClassesd``) and turns each into a stack with ``SliceStackd``.

    >>> slab_size([128, 96], k=2, axis=2), slab_size([128, 96], k=1, axis=0)
    ([128, 96, 5], [3, 128, 96])
    """
    plane = [int(v) for v in roi_size]
    if len(plane) != 2:
        raise ValueError(f"roi_size must have two values (the in-plane size), got {roi_size!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    plane.insert(check_axis(axis), 2 * int(k) + 1)
    return plane


def _check_volume(img: NdarrayOrTensor, name: str = "img") -> None:
    if img.ndim != 4:
        raise ValueError(f"{name} must be a channel-first volume (C, X, Y, Z), got shape {tuple(img.shape)}")


def _check_index(index: Any, size: int, axis: int) -> int:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise IndexError(f"index must be an int, got {index!r}")
    if not 0 <= int(index) < size:
        raise IndexError(f"index {int(index)} is out of range for axis {axis} of size {size} (expected 0..{size - 1})")
    return int(index)


def _slice_index(img: NdarrayOrTensor, axis: int, index: Any) -> tuple[int, int]:
    """(size of ``axis``, ``index`` checked; None: the centre ``size // 2``) of a volume (C, X, Y, Z)."""
    _check_volume(img)
    size = int(img.shape[axis + 1])
    return size, size // 2 if index is None else _check_index(index, size, axis)


def _plain(img: NdarrayOrTensor) -> NdarrayOrTensor:
    """``img`` without MetaTensor tracking (a plain tensor sharing the data), numpy arrays as they are."""
    return img.as_tensor() if isinstance(img, MetaTensor) else img


def _like(out: NdarrayOrTensor, img: NdarrayOrTensor) -> NdarrayOrTensor:
    """``out`` as a MetaTensor when ``img`` is one: the input's meta without its 3D grid entries (affine,
    original affine, spatial shape) and without ``applied_operations`` (a slice cannot be inverted)."""
    if not isinstance(img, MetaTensor):
        return out
    meta: Mapping[Hashable, Any] = {k: v for k, v in img.meta.items() if k not in _SPATIAL_META}
    return MetaTensor(out, meta=dict(meta))


def _take(img: NdarrayOrTensor, indices: np.ndarray, axis: int) -> NdarrayOrTensor:
    """``img`` indexed with ``indices`` (ints, 1D) along dimension ``axis``: a copy, numpy or torch."""
    if isinstance(img, torch.Tensor):
        return img.index_select(axis, torch.as_tensor(indices, dtype=torch.long, device=img.device))
    return np.take(img, indices, axis=axis)


class SliceStack(Transform):
    """The stack of ``2k+1`` neighbouring slices along ``axis`` as one 2D channel-first image.

    A volume (C, X, Y, Z) and a slice ``index`` along ``axis`` give (C*(2k+1), A, B), where A, B are the two
    other spatial axes in their order; channel ``c*(2k+1) + (j+k)`` is channel ``c`` of slice ``index+j``
    (``j = -k..k``). Neighbours past either end repeat the edge slice (``edge="replicate"``) or are zeros
    (``"zero"``). The result has the input's type and dtype; a MetaTensor keeps its meta except the 3D
    affine, original affine and spatial shape (the slice has a default affine) and ``applied_operations``.

    Args:
        k: neighbours on each side, >= 0 (``k=0``: the slice alone).
        axis: spatial axis to slice along, 0, 1, 2 (X, Y, Z) or negative (-1 == 2).
        edge: ``"replicate"`` or ``"zero"``.

    Raises:
        ValueError: an argument out of range, naming it.

    Example:
        >>> import numpy as np
        >>> volume = np.random.rand(4, 12, 10, 7).astype(np.float32)
        >>> SliceStack(k=2)(volume).shape  # the centre slice 3 and its neighbours 1..5
        (20, 12, 10)
        >>> bool((SliceStack(k=2)(volume)[2] == volume[0, :, :, 3]).all())
        True
        >>> SliceStack(k=1, axis=0, edge="zero")(volume, index=0).shape
        (12, 10, 7)
        >>> SliceStack(k=1).stack_all(volume).shape
        (7, 12, 12, 10)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, k: int = 2, axis: int = 2, edge: str = "replicate") -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be an int >= 0 (neighbours on each side), got {k!r}")
        if edge not in EDGES:
            raise ValueError(f"edge must be one of {EDGES}, got {edge!r}")
        self.k = int(k)
        self.axis = check_axis(axis)
        self.edge = edge

    @property
    def depth(self) -> int:
        """Slices per stack, ``2k+1``."""
        return 2 * self.k + 1

    def __call__(self, img: NdarrayOrTensor, index: int | None = None) -> NdarrayOrTensor:
        """The stack (C*(2k+1), A, B) of slice ``index`` along ``axis`` of ``img`` (C, X, Y, Z).

        Args:
            img: channel-first volume, numpy or torch.
            index: slice along ``axis``, 0..size-1; None: the centre slice ``size // 2``.

        Raises:
            ValueError: ``img`` is not 4D.
            IndexError: ``index`` out of range.
        """
        size, index = _slice_index(img, self.axis, index)
        offsets = np.arange(index - self.k, index + self.k + 1)
        slices = _take(_plain(img), np.clip(offsets, 0, size - 1), self.axis + 1)  # (C, .., 2k+1, ..)
        outside = [j for j, offset in enumerate(offsets) if not 0 <= offset < size]
        if self.edge == "zero" and outside:
            slices[(slice(None),) * (self.axis + 1) + (outside,)] = 0
        # (C, .., 2k+1, ..) -> (C, 2k+1, A, B) -> (C*(2k+1), A, B): channel-major
        shape = (int(img.shape[0]) * self.depth, *self._plane(img.shape))
        if isinstance(slices, torch.Tensor):
            out = slices.movedim(self.axis + 1, 1).reshape(shape)
        else:
            out = np.moveaxis(slices, self.axis + 1, 1).reshape(shape)
        return _like(out, img)

    def stack_all(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The stacks of every slice at once: (Z, C*(2k+1), A, B) for ``img`` (C, X, Y, Z), Z the size along
        ``axis``; item ``z`` equals ``self(img, z)``. A plain tensor for a MetaTensor input (no meta)."""
        windows = self.windows(img)
        return windows.reshape(windows.shape[0], -1, *windows.shape[3:])

    def windows(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """The stacks as (Z, C, 2k+1, A, B), a strided view into ``img`` padded once along ``axis``, so a
        part of it can be reshaped to (n, C*(2k+1), A, B) without building all Z stacks (the inferer does)."""
        _check_volume(img)
        img = _plain(img)
        size = int(img.shape[self.axis + 1])
        offsets = np.arange(-self.k, size + self.k)
        # (C, A, B, Z + 2k): the slicing axis last, padded by k on each side (one copy of the volume)
        padded = _take(img, np.clip(offsets, 0, size - 1), self.axis + 1)
        if isinstance(padded, torch.Tensor):
            padded = padded.movedim(self.axis + 1, -1)
        else:
            padded = np.moveaxis(padded, self.axis + 1, -1)
        if self.edge == "zero" and self.k > 0:
            padded[..., : self.k] = 0
            padded[..., size + self.k :] = 0
        if isinstance(padded, torch.Tensor):
            return padded.unfold(-1, self.depth, 1).permute(3, 0, 4, 1, 2)  # (C, A, B, Z, 2k+1) -> (Z, C, 2k+1, A, B)
        view = np.lib.stride_tricks.sliding_window_view(padded, self.depth, axis=-1)
        return view.transpose(3, 0, 4, 1, 2)

    def _plane(self, shape: tuple[int, ...] | torch.Size) -> tuple[int, int]:
        """The in-plane size (A, B) of a volume of ``shape`` (C, X, Y, Z)."""
        spatial = [int(s) for s in shape[1:]]
        del spatial[self.axis]
        return spatial[0], spatial[1]


class CentreSlice(Transform):
    """One slice along ``axis`` of a volume, the centre one by default: (C, X, Y, Z) -> (C, A, B).

    The label of a slice stack in 2.5D training: a slab of ``2k+1`` slices cropped around a voxel becomes
    ``SliceStack(k)`` of its centre slice, and its label slab becomes the centre slice. Type and dtype are the
    input's; a MetaTensor loses its 3D affine, original affine, spatial shape and ``applied_operations``.

    Args:
        axis: spatial axis to slice along, 0, 1, 2 (X, Y, Z) or negative (-1 == 2).

    Raises:
        ValueError: ``axis`` out of range.

    Example:
        >>> import numpy as np
        >>> label = np.random.randint(0, 3, (1, 12, 10, 7))
        >>> CentreSlice()(label).shape
        (1, 12, 10)
        >>> bool((CentreSlice()(label) == label[..., 3]).all()), CentreSlice(axis=0)(label, index=11).shape
        (True, (1, 10, 7))
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, axis: int = 2) -> None:
        self.axis = check_axis(axis)

    def __call__(self, img: NdarrayOrTensor, index: int | None = None) -> NdarrayOrTensor:
        """Slice ``index`` (None: ``size // 2``) along ``axis`` of ``img`` (C, X, Y, Z), as (C, A, B).

        Raises:
            ValueError: ``img`` is not 4D.
            IndexError: ``index`` out of range.
        """
        _, index = _slice_index(img, self.axis, index)
        out = _plain(img)[(slice(None),) * (self.axis + 1) + (index,)]
        out = out.clone() if isinstance(out, torch.Tensor) else out.copy()  # not a view into the volume
        return _like(out, img)


class SlicesToVolume(Transform):
    """Per-slice 2D outputs back into a volume: (Z, C, A, B) -> (C, X, Y, Z), slice ``z`` at ``z`` along ``axis``.

    The inverse of slicing along ``axis``: ``SlicesToVolume(axis)`` of the per-slice outputs of
    ``SliceStack(k, axis).stack_all(volume)`` is a volume on the grid of ``volume``. The result is a contiguous
    array or tensor (a plain tensor for a MetaTensor input) of the input's dtype.

    Args:
        axis: spatial axis the slices were taken along, 0, 1, 2 (X, Y, Z) or negative (-1 == 2).

    Raises:
        ValueError: ``axis`` out of range.

    Example:
        >>> import numpy as np
        >>> volume = np.random.rand(4, 12, 10, 7)
        >>> slices = np.stack([volume[:, :, :, z] for z in range(7)])  # (7, 4, 12, 10)
        >>> bool((SlicesToVolume(axis=2)(slices) == volume).all())
        True
        >>> SlicesToVolume(axis=0)(np.zeros((12, 3, 10, 7))).shape
        (3, 12, 10, 7)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, axis: int = 2) -> None:
        self.axis = check_axis(axis)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Place the slices of ``img`` (Z, C, A, B) along ``axis``: (C, X, Y, Z).

        Raises:
            ValueError: ``img`` is not 4D.
        """
        if img.ndim != 4:
            raise ValueError(f"img must be per-slice outputs (Z, C, A, B), got shape {tuple(img.shape)}")
        img = _plain(img)
        if isinstance(img, torch.Tensor):
            return img.movedim(0, self.axis + 1).contiguous()
        return np.ascontiguousarray(np.moveaxis(img, 0, self.axis + 1))
