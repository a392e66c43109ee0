"""Transforms shared by dataset preparation, training and inference: array forms and dictionary wrappers."""

from __future__ import annotations

from medseg3d.transforms.array import CropPadding, NormalizeNonZero, PadToDivisible, RemapLabels
from medseg3d.transforms.dictionary import CropPaddingd, NormalizeNonZerod, PadToDivisibled, RemapLabelsd

__all__ = [
    "CropPadding",
    "CropPaddingd",
    "NormalizeNonZero",
    "NormalizeNonZerod",
    "PadToDivisible",
    "PadToDivisibled",
    "RemapLabels",
    "RemapLabelsd",
]
