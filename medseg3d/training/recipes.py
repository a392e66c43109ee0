"""Factories the bundles' training configs name with ``_target_``: what was a long config expression, tested.

A bundle's YAML keeps the numbers and short references; how they combine into MONAI objects lives here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.transforms import (
    CropForegroundd,
    EnsureChannelFirstd,
    EnsureTyped,
    Identityd,
    LoadImaged,
    MapTransform,
)

from medseg3d.core.checkpoint_format import load_into
from medseg3d.core.errors import InputError
from medseg3d.data.sitk_reader import load_scans
from medseg3d.networks.classifier import HEAD_PREFIX
from medseg3d.training.optim import make_scheduler
from medseg3d.transforms.array import NonZero
from medseg3d.transforms.ct import ct_preprocessing
from medseg3d.transforms.dictionary import CheckFinited, LabelsToRegionsd


def amp_dtype() -> torch.dtype:
    """The autocast dtype of mixed-precision training: bfloat16 where the GPU has it (Ampere and later), else
    float16. bfloat16 has float32's range, so activations cannot overflow to inf (float16 did, at learning rate
    1e-2 on an H100, and the loss stayed NaN); float16 is trained with loss scaling."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def label_targets(output_mode: str, key: str = "label") -> MapTransform:
    """The training target of a prepared label map (1, X, Y, Z): BraTS regions WT, TC, ET (``regions``) or the
    labels themselves (``labels``).

    >>> type(label_targets("regions")).__name__, type(label_targets("labels")).__name__
    ('LabelsToRegionsd', 'Identityd')
    """
    if output_mode == "regions":
        return LabelsToRegionsd(keys=key)
    if output_mode == "labels":
        return Identityd(keys=key)
    raise ValueError(f"output_mode must be 'regions' or 'labels', got {output_mode!r}")


def prepared_load_transforms(keys: Sequence[str] = ("image", "label")) -> list:
    """The deterministic loading of a prepared case (``prep_brats`` output): read the NIfTI files, channel
    first, metadata dropped so the cached case holds plain tensors; labels keep their prepared values.

    >>> [type(t).__name__ for t in prepared_load_transforms()]
    ['LoadImaged', 'EnsureChannelFirstd', 'EnsureTyped']
    """
    keys = list(keys)
    return [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        EnsureTyped(keys=keys, track_meta=False),
    ]


def nonzero_box(keys: Sequence[str] = ("image", "label"), margin: int | Sequence[int] = 0) -> list:
    """Crop a training case to the box of its non-zero image voxels (any channel), plus ``margin``: nnU-Net's
    crop to the non-zero region. With the inferer's margin of 8, the box is 44% of a prepared 240x240x160 BraTS
    phantom: the cache holds less than half of each case and no background patch is centred in the air outside.
    Training only: validation and ``medseg3d infer`` tile
    the same box themselves (``FastSlidingWindowInferer(crop_foreground=True)``, whose ``margin`` the bundles
    pass here, so training sees the band of air inference sees) and write the label map on the whole input grid,
    background outside the box.

    >>> import torch
    >>> image = torch.zeros(1, 6, 5, 4); image[0, 2:4, 1:3, 1] = -1.0
    >>> out = nonzero_box()[0]({"image": image, "label": torch.zeros(1, 6, 5, 4)})
    >>> tuple(out["image"].shape[1:]), tuple(out["label"].shape[1:])
    ((2, 2, 1), (2, 2, 1))
    """
    return [
        CropForegroundd(keys=list(keys), source_key=keys[0], select_fn=NonZero(), margin=margin, allow_smaller=True)
    ]


def ct_load_transforms(
    spacing: Sequence[float], hu_window: Sequence[float], body_hu: float, keys: Sequence[str] = ("image", "label")
) -> list:
    """The deterministic loading of a CT training case: read (NIfTI, NRRD, MHA or a DICOM series folder, with
    SimpleITK: ``medseg3d.data.sitk_reader``), channel first, refuse NaN/Inf voxels, the CT preprocessing on
    image and label together (``medseg3d.transforms.ct.ct_preprocessing``: RAS, ``spacing`` mm, body crop,
    ``hu_window``), then metadata dropped so the cached case holds plain tensors.

    Args:
        spacing: target voxel size in mm, three values.
        hu_window: (low, high) HU mapped to [0, 1].
        body_hu: HU threshold of the body, for the crop.
        keys: the image and label entries.
    """
    image, label = keys
    return [
        load_scans(keys=[image, label], image_only=True),
        EnsureChannelFirstd(keys=[image, label]),
        CheckFinited(keys=image),
        *ct_preprocessing(image, label, spacing, hu_window, body_hu=body_hu),
        EnsureTyped(keys=[image, label], track_meta=False),
    ]


def epoch_scheduler(
    optimizer: torch.optim.Optimizer, name: str, max_epochs: int, steps_per_epoch: int, warmup_epochs: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """``medseg3d.training.optim.make_scheduler`` with its lengths in epochs: the schedule steps every
    iteration over ``max_epochs * steps_per_epoch`` steps, with ``warmup_epochs`` of warmup (none when the run
    is not longer than the warmup).

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> schedule = epoch_scheduler(opt, "warmup_cosine", max_epochs=3, steps_per_epoch=2, warmup_epochs=1)
    >>> schedule.warmup_steps, schedule.t_total
    (2, 6)
    """
    warmup = warmup_epochs * steps_per_epoch if max_epochs > warmup_epochs else 0
    return make_scheduler(optimizer, name, max_epochs * steps_per_epoch, warmup)


def start_from(network: torch.nn.Module, checkpoint: str | os.PathLike | None) -> None:
    """Start training from the network weights in ``checkpoint`` (a run's ``best.pt`` or a bare state dict), not
    from a random initialisation: fine-tuning, or adding classification to a trained segmentation model (its
    checkpoint has no ``classifier.*`` weights: the head keeps its fresh initialisation). None: nothing. The
    bundles run this before ``restore``, so a resumed run still continues from its own ``last.pt``.

    Raises:
        InputError: naming the file: missing, damaged, or weights that do not fit (``load_into``).
    """
    if checkpoint is None or checkpoint == "":
        return
    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(path, "init_weights names no file; expected a checkpoint (a run's checkpoints/best.pt)")
    hint = "start from a checkpoint of the same network_def, in_channels and output_mode"
    load_into(network, path, hint=hint, optional=(HEAD_PREFIX,))
