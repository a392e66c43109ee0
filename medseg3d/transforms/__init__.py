"""Transforms shared by dataset preparation, training and inference: array forms and dictionary wrappers."""

from __future__ import annotations

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
from medseg3d.transforms.brats import brats_preprocessing
from medseg3d.transforms.compose import TrainCompose
from medseg3d.transforms.decode import LogitsToLabels, LogitsToLabelsd, background_logits, logits_to_labels
from medseg3d.transforms.dictionary import (
    CentreSliced,
    CheckFinited,
    ConnectedComponentsd,
    CropPaddingd,
    LabelsToRegionsd,
    NormalizeNonZerod,
    PadToDivisibled,
    RandTorchGaussianNoised,
    RemapLabelsd,
    SliceStackd,
    SlicesToVolumed,
)
from medseg3d.transforms.slices import CentreSlice, SliceStack, SlicesToVolume, slab_size

__all__ = [
    "CentreSlice",
    "CentreSliced",
    "CheckFinite",
    "CheckFinited",
    "ConnectedComponents",
    "ConnectedComponentsd",
    "CropPadding",
    "CropPaddingd",
    "LabelsToRegions",
    "LabelsToRegionsd",
    "LogitsToLabels",
    "LogitsToLabelsd",
    "NormalizeNonZero",
    "NormalizeNonZerod",
    "PadToDivisible",
    "PadToDivisibled",
    "RandTorchGaussianNoise",
    "RandTorchGaussianNoised",
    "RemapLabels",
    "RemapLabelsd",
    "SliceStack",
    "SliceStackd",
    "SlicesToVolume",
    "SlicesToVolumed",
    "TrainCompose",
    "background_logits",
    "brats_preprocessing",
    "logits_to_labels",
    "slab_size",
]
