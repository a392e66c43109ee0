"""CT preprocessing, shared by training and inference: canonical orientation, target spacing, body crop, HU window.

``ct_preprocessing`` returns the MONAI dictionary transforms a CT bundle applies to every case, in training
(image and label) and at inference (image alone), so both see exactly the same voxels:

1. ``Orientationd`` to ``axcodes`` (RAS by default), whatever the scanner wrote (LPS DICOM, permuted NIfTI);
2. ``Spacingd`` to ``spacing`` mm (image linear, label nearest);
3. ``CropForegroundd`` to the body: the box of the voxels above ``body_hu`` (-500 HU: fat, soft tissue and bone,
   not air or lung) plus ``margin`` voxels, so the network never tiles the air around the patient;
4. ``ScaleIntensityRanged``: HU clipped to ``hu_window`` and mapped to [0, 1].

Steps 1-3 are invertible: at inference ``Invertd`` (``medseg3d.inference.predictor.Predictor``) puts the
logits back on the scan's own grid (shape, spacing, orientation, origin), so the label map lines up voxel for
voxel with the input.

Example:
    >>> import numpy as np, torch
    >>> from monai.data import MetaTensor
    >>> from monai.transforms import Compose
    >>> hu = np.full((1, 40, 30, 10), -1000.0, np.float32)
    >>> hu[:, 10:30, 5:25, 2:8] = 40.0
    >>> affine = np.diag([-0.8, -0.8, 3.0, 1.0])  # LPS-like in-plane flips, 0.8 x 0.8 x 3 mm
    >>> out = Compose(ct_preprocessing(spacing=(1.6, 1.6, 3.0), margin=0))({"image": MetaTensor(hu, affine=affine)})
    >>> tuple(out["image"].shape), round(float(out["image"].max()), 3)
    ((1, 10, 10, 6), 0.24)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_SPACING = (1.5, 1.5, 1.5)
DEFAULT_HU_WINDOW = (-200.0, 800.0)
BODY_HU = -500.0


class AboveThreshold:
    """``x > threshold`` as a picklable callable (``CropForegroundd``'s ``select_fn`` in cached datasets).

    >>> AboveThreshold(0.5)(torch.tensor([0.0, 1.0])).tolist()
    [False, True]
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold

    def __repr__(self) -> str:
        return f"AboveThreshold({self.threshold})"


def ct_preprocessing(
    image_key: str = "image",
    label_key: str | None = None,
    spacing: Sequence[float] = DEFAULT_SPACING,
    hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
    axcodes: str = "RAS",
    crop_body: bool = True,
    body_hu: float = BODY_HU,
    margin: int = 4,
) -> list:
    """The CT preprocessing transforms (see the module text), for ``image_key`` and, in training, ``label_key``.

    Args:
        image_key: the CT image (HU, channel first, with its affine: a MONAI ``MetaTensor``).
        label_key: the label map resampled and cropped alike (nearest neighbour); None at inference.
        spacing: target voxel size in mm, three values.
        hu_window: (low, high) HU: clipped, then mapped linearly to [0, 1].
        axcodes: target orientation (``"RAS"``).
        crop_body: crop to the box of the voxels above ``body_hu`` (plus ``margin`` voxels).
        body_hu: HU threshold of the body (air and lung below, fat and denser above).
        margin: voxels kept around the body's box, at the target spacing.

    Raises:
        ValueError: a spacing that is not three positive numbers, or a window with high <= low.
    """
    from monai.transforms import CropForegroundd, Orientationd, ScaleIntensityRanged, Spacingd

    pixdim = tuple(float(s) for s in spacing)
    if len(pixdim) != 3 or min(pixdim) <= 0:
        raise ValueError(f"spacing must be three positive numbers (mm), got {spacing!r}")
    low, high = (float(v) for v in hu_window)
    if not high > low:
        raise ValueError(f"hu_window must be (low, high) with high > low, got {hu_window!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ["bilinear"] if label_key is None else ["bilinear", "nearest"]
    transforms = [
        # labels: MONAI's RAS convention for affines (named to keep it when MONAI's default changes)
        Orientationd(keys=keys, axcodes=axcodes, labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=pixdim, mode=modes),
    ]
    if crop_body:
        transforms.append(
            CropForegroundd(
                keys=keys,
                source_key=image_key,
                select_fn=AboveThreshold(body_hu),
                margin=int(margin),
                allow_smaller=True,
            )
        )
    transforms.append(ScaleIntensityRanged(keys=image_key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    return transforms
