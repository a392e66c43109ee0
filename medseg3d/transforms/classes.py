"""From a multitask network's output to one class prediction per case.

The network's output (C + K, ...) holds C segmentation logits, then K class logits that the sliding window (or
the slice stacks) blended like any channel: at each voxel, the Gaussian-weighted mean of the class logits of
the windows that cover it (``medseg3d.networks.classifier``). The case's class logits are the mean of those K
channels over the predicted tumour: each window counts by how many predicted tumour voxels it covers (weighted
by its blending weight there), so windows that saw the tumour decide and windows of healthy tissue do not. A
case with no predicted tumour gets the mean over its foreground (the image's non-zero voxels: the brain, the
body), i.e. over every window alike, and ``pooled_over`` says ``"foreground"`` instead of ``"tumour"``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

CLASS_LOGITS = "class_logits"
CLASS_MAP = "class_map"
POOLED_OVER = "class_pooled_over"


def split_class_map(pred: torch.Tensor, seg_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(segmentation logits (C, ...), class map (K, ...))`` of an output (C + K, ...).

    >>> seg, classes = split_class_map(torch.zeros(5, 4, 3, 2), 3)
    >>> tuple(seg.shape), tuple(classes.shape)
    ((3, 4, 3, 2), (2, 4, 3, 2))
    """
    if pred.shape[0] <= seg_channels:
        raise ValueError(f"expected {seg_channels} segmentation channels and class channels after them, got "
                         f"{pred.shape[0]} channels")  # fmt: skip
    return pred[:seg_channels], pred[seg_channels:]


class ClassPool:
    """Running sums behind ``pool_class_logits``, so a scan segmented in chunks pools over all of them: the class
    logits summed over predicted tumour voxels and over foreground voxels, with their counts.

    >>> pool = ClassPool(2)
    >>> pool.add(torch.full((2, 3), 1.0), torch.tensor([1, 0, 0]))
    >>> pool.add(torch.full((2, 3), 4.0), torch.tensor([1, 1, 0]))
    >>> pool.result()  # 1 tumour voxel at 1.0, 2 at 4.0
    (tensor([3., 3.]), 'tumour')
    """

    def __init__(self, num_classes: int) -> None:
        self.tumour_sum, self.tumour_count = torch.zeros(num_classes, dtype=torch.float64), 0
        self.foreground_sum, self.foreground_count = torch.zeros(num_classes, dtype=torch.float64), 0
        self.all_sum, self.all_count = torch.zeros(num_classes, dtype=torch.float64), 0

    def add(
        self, class_map: torch.Tensor, labels: torch.Tensor | np.ndarray, foreground: torch.Tensor | None = None
    ) -> None:
        """Add a class map (K, *spatial), its decoded labels (*spatial) and foreground (*spatial, bool; None:
        every voxel)."""
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if tuple(labels.shape) != tuple(class_map.shape[1:]):
            raise ValueError(f"labels of shape {tuple(labels.shape)} for a class map of {tuple(class_map.shape)}")
        flat = class_map.reshape(class_map.shape[0], -1).double().cpu()
        tumour = labels.reshape(-1).cpu() != 0
        self.tumour_sum += flat[:, tumour].sum(dim=1)
        self.tumour_count += int(tumour.sum())
        if foreground is not None:
            fg = foreground.reshape(-1).cpu().bool()
            self.foreground_sum += flat[:, fg].sum(dim=1)
            self.foreground_count += int(fg.sum())
        self.all_sum += flat.sum(dim=1)
        self.all_count += flat.shape[1]

    def result(self) -> tuple[torch.Tensor, str]:
        """The case's class logits (K,), float32, and what they were pooled over (``tumour`` or ``foreground``)."""
        if self.tumour_count:
            return (self.tumour_sum / self.tumour_count).float(), "tumour"
        if self.foreground_count:
            return (self.foreground_sum / self.foreground_count).float(), "foreground"
        return (self.all_sum / max(self.all_count, 1)).float(), "foreground"


def pool_class_logits(
    class_map: torch.Tensor, labels: torch.Tensor | np.ndarray, foreground: torch.Tensor | None = None
) -> tuple[torch.Tensor, str]:
    """The case's class logits (K,) from a class map (K, *spatial): the mean over the voxels where ``labels``
    (*spatial) is non-zero; without any, over ``foreground`` (*spatial, bool; None: every voxel).

    >>> m = torch.zeros(2, 4, 1, 1); m[1, :2] = 3.0; m[1, 2:] = -1.0
    >>> pool_class_logits(m, torch.tensor([1, 1, 0, 0])[:, None, None])
    (tensor([0., 3.]), 'tumour')
    >>> pool_class_logits(m, torch.zeros(4, 1, 1))
    (tensor([0., 1.]), 'foreground')
    """
    pool = ClassPool(class_map.shape[0])
    pool.add(class_map, labels, foreground)
    return pool.result()


class SplitClassMapd(MapTransform):
    """``pred`` (C + K, ...) -> ``pred`` (C, ...) and ``class_map`` (K, ...), before the segmentation logits are
    decoded."""

    def __init__(self, keys: KeysCollection = "pred", seg_channels: int = 3, map_key: str = CLASS_MAP) -> None:
        super().__init__(keys)
        self.seg_channels, self.map_key = int(seg_channels), map_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[self.map_key] = split_class_map(d[key], self.seg_channels)
        return d


class PoolClassLogitsd(MapTransform):
    """``class_logits`` (K,) and ``class_pooled_over`` of a case from its ``class_map`` and its decoded label map
    in ``keys`` (``pool_class_logits``); the foreground for a case without predicted tumour is where ``image``
    is non-zero in any channel. The class map is dropped (it is as large as the case)."""

    def __init__(self, keys: KeysCollection = "pred", map_key: str = CLASS_MAP, image_key: str | None = "image"):
        super().__init__(keys)
        self.map_key, self.image_key = map_key, image_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = torch.as_tensor(d[key])
            labels = labels[0] if labels.ndim == d[self.map_key].ndim else labels  # (1, ...) label maps too
            image = d.get(self.image_key) if self.image_key else None
            foreground = None if image is None else (torch.as_tensor(image) != 0).any(dim=0)
            d[CLASS_LOGITS], d[POOLED_OVER] = pool_class_logits(d.pop(self.map_key), labels, foreground)
        return d
