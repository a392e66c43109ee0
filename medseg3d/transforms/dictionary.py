"""Dictionary wrappers of ``medseg3d.transforms.array``: each ``Food`` holds a ``Foo`` and applies it to ``keys``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandGaussianNoised
from monai.utils import ensure_tuple

from medseg3d.transforms.array import (
    CheckFinite,
    ConnectedComponents,
    CropPadding,
    LabelsToRegions,
    NormalizeNonZero,
    PadToDivisible,
    RandTorchGaussianNoise,
    RemapLabels,
)
from medseg3d.transforms.slices import CentreSlice, SliceStack, SlicesToVolume


class _KeyedWrapper(MapTransform):
    """Apply ``self.transform`` to every key present."""

    transform: object

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class NormalizeNonZerod(_KeyedWrapper):
    """Dictionary form of ``NormalizeNonZero``."""

    backend = NormalizeNonZero.backend

    def __init__(self, keys: KeysCollection, dtype: type = np.float32, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = NormalizeNonZero(dtype=dtype)


class CheckFinited(_KeyedWrapper):
    """Dictionary form of ``CheckFinite``."""

    backend = CheckFinite.backend

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CheckFinite()


class PadToDivisibled(_KeyedWrapper):
    """Dictionary form of ``PadToDivisible``: image and label are padded alike."""

    backend = PadToDivisible.backend

    def __init__(self, keys: KeysCollection, k: Sequence[int] | int = 16, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = PadToDivisible(k)


class CropPaddingd(_KeyedWrapper):
    """Dictionary form of ``CropPadding``."""

    backend = CropPadding.backend

    def __init__(
        self, keys: KeysCollection, pad_width: Sequence[Sequence[int]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CropPadding(pad_width)


class RemapLabelsd(_KeyedWrapper):
    """Dictionary form of ``RemapLabels``."""

    backend = RemapLabels.backend

    def __init__(
        self,
        keys: KeysCollection,
        mapping: Mapping[int, int],
        dtype: type = np.uint8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = RemapLabels(mapping, dtype=dtype)


class LabelsToRegionsd(_KeyedWrapper):
    """Dictionary form of ``LabelsToRegions``."""

    backend = LabelsToRegions.backend

    def __init__(
        self,
        keys: KeysCollection,
        regions: Mapping[str, Sequence[int]] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LabelsToRegions(regions)


class ConnectedComponentsd(_KeyedWrapper):
    """Dictionary form of ``ConnectedComponents``."""

    backend = ConnectedComponents.backend

    def __init__(
        self,
        keys: KeysCollection,
        rules: Mapping[Any, Mapping[str, Any]],
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = ConnectedComponents(rules)


class SliceStackd(MapTransform):
    """Dictionary form of ``SliceStack`` for 2.5D training: images become the stack of their centre slice, labels
    their centre slice.

    After a crop of spatial size (X', Y', 2k+1) along ``axis`` (e.g. MONAI's ``RandCropByLabelClassesd`` with
    ``spatial_size=(X', Y', 2k+1)`` for ``axis=2``) an image (C, X', Y', 2k+1) becomes (C*(2k+1), X', Y') and a
    label (1, X', Y', 2k+1) becomes (1, X', Y'): the label of the centre slice of the stack.

    Args:
        keys: image keys, each turned into ``SliceStack(k, axis, edge)`` of its centre slice.
        k: neighbours on each side, >= 0.
        axis: spatial axis to slice along, 0, 1, 2 (X, Y, Z) or negative (-1 == 2).
        edge: ``"replicate"`` or ``"zero"``, for neighbours past the ends of a slab thinner than ``2k+1``.
        label_keys: keys turned into their centre slice (``CentreSlice(axis)``).
        allow_missing_keys: skip keys and label keys that are absent instead of raising ``KeyError``.

    Raises:
        ValueError: an argument out of range, or a key in both ``keys`` and ``label_keys``.
    """

    backend = SliceStack.backend

    def __init__(
        self,
        keys: KeysCollection,
        k: int = 2,
        axis: int = 2,
        edge: str = "replicate",
        label_keys: KeysCollection = (),
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple(label_keys)
        both = set(self.keys) & set(self.label_keys)
        if both:
            raise ValueError(f"keys and label_keys must not share keys, got {sorted(map(str, both))} in both")
        self.stack = SliceStack(k=k, axis=axis, edge=edge)
        self.centre = CentreSlice(axis=axis)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.stack(d[key])
        for key in self.label_keys:
            if key in d:
                d[key] = self.centre(d[key])
            elif not self.allow_missing_keys:
                raise KeyError(f"label key {key!r} is not in the data (keys: {list(d)}) and allow_missing_keys=False")
        return d


class CentreSliced(_KeyedWrapper):
    """Dictionary form of ``CentreSlice``: the centre slice along ``axis`` of every key."""

    backend = CentreSlice.backend

    def __init__(self, keys: KeysCollection, axis: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = CentreSlice(axis=axis)


class SlicesToVolumed(_KeyedWrapper):
    """Dictionary form of ``SlicesToVolume``: per-slice outputs (Z, C, A, B) back into volumes (C, X, Y, Z)."""

    backend = SlicesToVolume.backend

    def __init__(self, keys: KeysCollection, axis: int = 2, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SlicesToVolume(axis=axis)


class RandTorchGaussianNoised(RandGaussianNoised):
    """MONAI's ``RandGaussianNoised`` (same arguments, one noise shared by the keys) drawing its noise with
    ``RandTorchGaussianNoise``: torch, float32."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.1,
        mean: float = 0.0,
        std: float = 0.1,
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
        sample_std: bool = True,
    ) -> None:
        super().__init__(keys, prob, mean, std, dtype, allow_missing_keys, sample_std)
        self.rand_gaussian_noise = RandTorchGaussianNoise(
            mean=mean, std=std, prob=1.0, dtype=dtype, sample_std=sample_std
        )
