"""Dictionary wrappers of ``medseg3d.transforms.array``: each ``Food`` holds a ``Foo`` and applies it to ``keys``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medseg3d.transforms.array import (
    ConnectedComponents,
    CropPadding,
    LabelsToRegions,
    NormalizeNonZero,
    PadToDivisible,
    RemapLabels,
)


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
