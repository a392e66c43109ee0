"""CT preprocessing, shared by training and inference: canonical orientation, target spacing, body crop, HU window.

``ct_preprocessing`` returns the MONAI dictionary transforms a CT bundle applies to every case, in training
(image and label) and at inference (image alone), so both see exactly the same voxels:

1. ``Orientationd`` to ``axcodes`` (RAS by default), whatever the scanner wrote (LPS DICOM, permuted NIfTI);
2. ``SlabSpacingd`` to ``spacing`` mm (image linear, label nearest): MONAI's ``Spacingd`` decides the grid and
   records the step (so ``Invertd`` undoes it), and the voxels are then interpolated ``slab`` output slices at
   a time, so no sampling grid of the whole output volume is ever built (MONAI's needs 3 floats per output
   voxel: 2.3 GB for a 512x512x900 scan at 0.8 mm);
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

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, InvertibleTransform, Orientationd, ScaleIntensityRanged, Spacingd
from monai.utils import ensure_tuple

DEFAULT_SPACING = (1.5, 1.5, 1.5)
DEFAULT_HU_WINDOW = (-200.0, 800.0)
BODY_HU = -500.0


def sample_in_slabs(src, source_affine, target_affine, target_shape, slab: int, mode="bilinear", padding_mode="zeros"):
    """``src`` (C, X, Y, Z) sampled on another grid, ``slab`` target slices (last axis) at a time.

    Each target voxel centre is mapped into ``src``'s voxel space (``inv(source_affine) @ target_affine``, both
    voxel -> world matrices) and ``src`` is interpolated there with ``grid_sample`` (``mode``, ``padding_mode``).
    Yields ``(start, stop, part)``, ``part`` of shape (C, X', Y', stop - start): only one slab's sampling grid
    exists at a time (MONAI builds it for the whole target volume).
    """

    mapping = torch.as_tensor(
        np.linalg.inv(np.asarray(source_affine, np.float64)) @ np.asarray(target_affine, np.float64),
        dtype=torch.float64,
    )
    src = src[None]  # (1, C, X, Y, Z): grid_sample reads (N, C, D, H, W) with D = X, H = Y, W = Z
    size = torch.tensor(src.shape[2:], dtype=torch.float64)
    # The grid is affine in the target index: grid[i, j, k] = i * a + j * b + k * c + t in grid_sample's
    # normalized (z, y, x) coordinates. Each axis's term is computed once in float64 and the slab's grid is one
    # broadcast sum of three small arrays (a meshgrid and a matrix product per slab cost 7 s of a 512x512x300 CT).
    scale = 2.0 / (size - 1).clamp(min=1)
    columns = (mapping[:3, :3] * scale[:, None]).T[:, [2, 1, 0]]  # row d: the step along target axis d, (z, y, x)
    offset = (mapping[:3, 3] * scale - 1.0)[[2, 1, 0]]
    along = [torch.arange(n, dtype=torch.float64)[:, None] * columns[d] for d, n in enumerate(target_shape[:2])]
    along_x = along[0].float()[:, None, None, :]
    along_y = along[1].float()[None, :, None, :]
    for start in range(0, target_shape[2], slab):
        stop = min(start + slab, target_shape[2])
        along_z = torch.arange(start, stop, dtype=torch.float64)[:, None] * columns[2] + offset
        normalized = along_x + along_y + along_z.float()[None, None, :, :]  # (X, Y, s, 3)
        part = F.grid_sample(src, normalized[None], mode=mode, padding_mode=padding_mode, align_corners=True)
        yield start, stop, part[0]


class SlabSpacingd(InvertibleTransform):
    """``Spacingd(keys, pixdim, mode)``, with the resampling done ``slab`` output slices (last axis) at a time.

    The wrapped ``Spacingd`` runs lazily: it computes the output grid (affine, shape) and its record exactly as
    MONAI does, and its pending operation is then carried out here slab by slab with ``grid_sample`` (voxel
    centres mapped through ``inv(input affine) @ output affine``, border padding, float32, as ``Spacingd``
    with ``dtype=float32``) and pushed to the applied operations, so ``Invertd``/``inverse`` undo it as usual.
    Peak memory: the input, the output, and one slab's sampling grid.

    >>> import numpy as np
    >>> from monai.data import MetaTensor
    >>> from monai.transforms import Spacingd
    >>> x = MetaTensor(torch.rand(1, 20, 16, 12), affine=torch.diag(torch.tensor([0.8, 0.8, 2.5, 1.0])))
    >>> ours = SlabSpacingd("image", (1.5, 1.5, 1.5), slab=4)({"image": x})["image"]
    >>> ref = Spacingd("image", (1.5, 1.5, 1.5), dtype=torch.float32)({"image": x})["image"]
    >>> ours.shape == ref.shape, bool(torch.allclose(ours, ref, atol=1e-5)), torch.equal(ours.affine, ref.affine)
    (True, True, True)
    """

    def __init__(self, keys, pixdim: Sequence[float], mode="bilinear", slab: int = 32) -> None:
        self.keys = ensure_tuple(keys)
        self.modes = ensure_tuple(mode) if isinstance(mode, (list, tuple)) else (mode,) * len(self.keys)
        if len(self.modes) != len(self.keys):
            raise ValueError(f"one mode per key: {len(self.keys)} keys, modes {mode!r}")
        if int(slab) < 1:
            raise ValueError(f"slab must be >= 1, got {slab}")
        self.slab = int(slab)
        self.spacing = Spacingd(keys=self.keys, pixdim=pixdim, mode=list(self.modes), dtype=torch.float32)

    def __call__(self, data):
        d = self.spacing(dict(data), lazy=True)  # the grid and the record only: no voxel moved yet
        for key, mode in zip(self.keys, self.modes, strict=True):
            if key in d:
                d[key] = self._apply(d[key], mode)
        return d

    def _apply(self, img, mode: str):
        pending = img.pending_operations
        if not pending:
            return img
        target_affine = img.peek_pending_affine().to(torch.float64)
        shape = tuple(int(v) for v in img.peek_pending_shape())
        src = img.as_tensor().float()
        out = torch.empty((src.shape[0], *shape), dtype=torch.float32)
        for start, stop, part in sample_in_slabs(src, img.affine, target_affine, shape, self.slab, mode, "border"):
            out[:, :, :, start:stop] = part
        meta = {k: v for k, v in img.meta.items() if k != "affine"}
        result = MetaTensor(out, affine=target_affine.to(img.affine.dtype), meta=meta)
        result.applied_operations = list(img.applied_operations)
        for op in pending:
            result.push_applied_operation(op)
        return result

    def inverse(self, data):
        return self.spacing.inverse(data)  # eager (only the forward call above was lazy)


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
        SlabSpacingd(keys=keys, pixdim=pixdim, mode=modes),
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
