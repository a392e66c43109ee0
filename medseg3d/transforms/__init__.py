"""Transforms shared by dataset preparation, training and inference: array forms and dictionary wrappers."""

from __future__ import annotations

from medseg3d.transforms.array import (
    ConnectedComponents,
    CropPadding,
    LabelsToRegions,
    NormalizeNonZero,
    PadToDivisible,
    RemapLabels,
)
from medseg3d.transforms.dictionary import (
    ConnectedComponentsd,
    CropPaddingd,
    LabelsToRegionsd,
    NormalizeNonZerod,
    PadToDivisibled,
    RemapLabelsd,
)

__all__ = [
    "ConnectedComponents",
    "ConnectedComponentsd",
    "CropPadding",
    "CropPaddingd",
    "LabelsToRegions",
    "LabelsToRegionsd",
    "NormalizeNonZero",
    "NormalizeNonZerod",
    "PadToDivisible",
    "PadToDivisibled",
    "RemapLabels",
    "RemapLabelsd",
]
