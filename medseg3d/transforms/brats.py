"""The BraTS preprocessing, defined once: ``prep_brats`` applies it to build a prepared dataset, and the BraTS
bundles' ``inference.yaml`` applies it to every new case, so a network sees at inference exactly what it saw in
training and validation.

Each modality is z-scored over its non-zero (brain) voxels with the background kept at 0
(``NormalizeNonZerod``), then every spatial axis is padded with zeros, symmetrically, to a multiple of
``divisible`` (BraTS 240x240x155 -> 240x240x160). The padding is MONAI's invertible ``DivisiblePadd``, so
``Invertd`` crops predictions back to the case's own grid; its widths are those ``PadToDivisible.pad_width``
reports (the same ``DivisiblePad`` settings), which ``prep_brats`` records in ``dataset.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.config import KeysCollection
from monai.transforms import Compose, DivisiblePadd
from monai.utils import ensure_tuple

from medseg3d.transforms.dictionary import NormalizeNonZerod


def brats_preprocessing(
    keys: KeysCollection = "image",
    divisible: Sequence[int] | int | None = 16,
    label_keys: KeysCollection = (),
) -> Compose:
    """The BraTS preprocessing of a case: z-score of ``keys`` over non-zero voxels, then zero-padding of
    ``keys`` and ``label_keys`` to a multiple of ``divisible``.

    Args:
        keys: the image entries, each of shape (C, X, Y, Z) with one channel per modality.
        divisible: the multiple every spatial axis is padded to, one int or one per axis; None: no padding.
        label_keys: label maps (1, X, Y, Z) padded alike (never normalized); none at inference.

    Returns:
        A MONAI ``Compose`` of dictionary transforms; on ``MetaTensor`` inputs the padding is recorded and
        ``Invertd`` undoes it.

    Raises:
        ValueError: ``divisible`` is not a positive int or a sequence of positive ints.

    Example:
        >>> import torch
        >>> image = torch.zeros(4, 10, 20, 15)
        >>> image[:, 2:8, 5:15, 3:12] = torch.arange(1.0, 5.0)[:, None, None, None]
        >>> out = brats_preprocessing(divisible=16)({"image": image})["image"]
        >>> tuple(out.shape), float(out[0, 2, 5, 3]), float(out[:, 0, 0, 0].abs().sum())
        ((4, 16, 32, 16), 0.0, 0.0)
    """
    image_keys = ensure_tuple(keys)
    transforms = [NormalizeNonZerod(keys=image_keys)]
    if divisible is not None:
        values = list(divisible) if isinstance(divisible, Sequence) else [divisible]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"divisible must be a positive int or a sequence of positive ints, got {divisible!r}")
        pad_keys = (*image_keys, *ensure_tuple(label_keys))
        transforms.append(DivisiblePadd(keys=pad_keys, k=divisible, method="symmetric", mode="constant"))
    return Compose(transforms)
