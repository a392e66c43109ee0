"""The training patch sampling and nnU-Net's augmentation, as transform lists the bundles name by ``_target_``.

The ranges (rotation, zoom, elastic deformation, brightness, gamma, noise, blur) are nnU-Net's and live here
once, for 3D patches and for 2D images (a 2.5D slice stack); a bundle gives the probabilities, its documented
settings, and overrides a range only where it differs. The lists are plain MONAI transforms, to be flattened
into one ``Compose`` (``medseg3d.transforms.TrainCompose``): each random transform then draws its seed from
the ``Compose`` in list order, as ``medseg3d.training.sampling.SeededDataset`` expects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.transforms import (
    ClassesToIndicesd,
    DeleteItemsd,
    MapTransform,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianSmoothd,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandZoomd,
    SpatialPadd,
)

from medseg3d.transforms.dictionary import RandTorchGaussianNoised

# nnU-Net's default ranges by number of spatial dimensions. Rotation in radians: 30 degrees about each axis of a
# 3D patch, any angle in the plane of a 2D image. Elastic deformation: Gaussian sigma (3D) or control-point
# spacing (2D) in voxels, and the displacement's magnitude.
ROTATE_RANGE = {3: 0.52, 2: 3.14159}
ZOOM_RANGE = (0.7, 1.4)
ELASTIC = {
    3: {"sigma_range": [9, 13], "magnitude_range": [0, 300]},
    2: {"spacing": [20, 20], "magnitude_range": [0, 2]},
}
BRIGHTNESS_FACTOR = 0.25  # intensities times 1 + U(-f, f)
BRIGHTNESS_OFFSET = 0.1  # plus U(-o, o)
GAMMA_RANGE = (0.7, 1.5)
NOISE_STD = 0.1
BLUR_SIGMA = (0.5, 1.0)


def class_balanced_crop(
    spatial_size: Sequence[int],
    num_classes: int,
    num_samples: int,
    ratios: Sequence[float] | None = None,
    max_samples_per_class: int | None = None,
    keys: Sequence[str] = ("image", "label"),
    label_key: str = "label",
) -> list[MapTransform]:
    """Patches of ``spatial_size`` centred on a voxel of a drawn class, ``num_samples`` per case, so that rare
    classes are centred as often as common ones (nnU-Net oversamples foreground to the same end).

    A volume smaller than the patch is first padded with background (as nnU-Net does), never refused. Each
    class's voxel positions are found once per case (``ClassesToIndicesd``, deterministic, so a cached
    dataset keeps them) instead of on every draw: at most ``max_samples_per_class`` per class, evenly spaced,
    so no random number is used. The positions are dropped once the patches are cut.

    Args:
        spatial_size: the patch size, one entry per spatial axis.
        num_classes: label values 0..num_classes-1.
        num_samples: patches per case.
        ratios: how often each class is a centre, relative to the others; by default all equally often.
        max_samples_per_class: positions kept per class and case (memory: 8 bytes each); None keeps all.
        keys: the entries cropped together (image and label).
        label_key: the label map's entry, of shape (1, X, Y, Z).

    Returns:
        ``[SpatialPadd, ClassesToIndicesd, RandCropByLabelClassesd, DeleteItemsd]``.

    >>> [type(t).__name__ for t in class_balanced_crop([32, 32, 32], num_classes=4, num_samples=2)]
    ['SpatialPadd', 'ClassesToIndicesd', 'RandCropByLabelClassesd', 'DeleteItemsd']
    """
    if num_classes < 1 or num_samples < 1:
        raise ValueError(f"num_classes and num_samples must be >= 1, got {num_classes} and {num_samples}")
    if ratios is None:
        ratios = [1] * num_classes
    if len(ratios) != num_classes:
        raise ValueError(f"ratios needs one entry per class ({num_classes}), got {list(ratios)}")
    keys = list(keys)
    indices_key = f"{label_key}_class_indices"
    return [
        SpatialPadd(keys=keys, spatial_size=spatial_size),
        ClassesToIndicesd(
            keys=label_key,
            num_classes=num_classes,
            indices_postfix="_class_indices",
            max_samples_per_class=max_samples_per_class,
        ),
        RandCropByLabelClassesd(
            keys=keys,
            label_key=label_key,
            spatial_size=spatial_size,
            num_classes=num_classes,
            ratios=ratios,
            num_samples=num_samples,
            indices_key=indices_key,
            warn=False,
        ),
        DeleteItemsd(keys=indices_key),
    ]


def nnunet_augmentation(
    *,
    prob_rotate: float,
    prob_zoom: float,
    prob_elastic: float,
    prob_flip: float,
    prob_brightness: float,
    prob_gamma: float,
    prob_gamma_inverted: float,
    prob_noise: float,
    prob_blur: float,
    spatial_dims: int = 3,
    rotate_range: float | None = None,
    zoom_range: Sequence[float] = ZOOM_RANGE,
    elastic: Mapping[str, Any] | None = None,
    brightness_factor: float = BRIGHTNESS_FACTOR,
    brightness_offset: float = BRIGHTNESS_OFFSET,
    gamma_range: Sequence[float] = GAMMA_RANGE,
    noise_std: float = NOISE_STD,
    blur_sigma: Sequence[float] = BLUR_SIGMA,
    keys: Sequence[str] = ("image", "label"),
    image_key: str = "image",
) -> list[MapTransform]:
    """nnU-Net's data augmentation as MONAI transforms, each applied with its own probability.

    Spatial transforms move image and label together (image interpolated, label nearest neighbour, so labels
    stay class values); intensity transforms touch the image alone. In order: rotation, zoom (one factor
    per axis), elastic deformation (left out when ``prob_elastic`` is 0: MONAI would resample through an
    identity grid even when it does not apply; nnU-Net v2 has it off), a flip along each axis, brightness
    (scale, then shift), gamma, gamma on the inverted image (statistics kept), Gaussian noise (MONAI's,
    drawn by torch in float32: ``RandTorchGaussianNoised``) and Gaussian blur.

    With ``spatial_dims=2`` the image is 2D with any number of channels (a slice stack: every channel, i.e.
    every slice, moves together), rotated in its plane by any angle, as nnU-Net's 2D configuration does.

    Args:
        prob_rotate, prob_zoom, prob_elastic, prob_flip, prob_brightness, prob_gamma, prob_gamma_inverted,
            prob_noise, prob_blur: each transform's probability (brightness: of scale and of shift each;
            flip: per axis).
        spatial_dims: 3 (patches of shape (C, X, Y, Z)) or 2 (images of shape (C, H, W)).
        rotate_range: the largest angle in radians, about each axis in 3D, in the plane in 2D; by default
            ``ROTATE_RANGE[spatial_dims]``.
        zoom_range: (smallest, largest) zoom factor, the same for every axis.
        elastic: keyword arguments of ``Rand3DElasticd`` (``sigma_range``, ``magnitude_range``) or
            ``Rand2DElasticd`` (``spacing``, ``magnitude_range``) that replace ``ELASTIC[spatial_dims]``'s.
        brightness_factor: intensities are multiplied by 1 + U(-factor, factor).
        brightness_offset: then shifted by U(-offset, offset).
        gamma_range: the gamma's range.
        noise_std: the noise's largest standard deviation.
        blur_sigma: the range of the blur's sigma, per axis.
        keys: the entries spatial transforms move together (image, then label).
        image_key: the entry intensity transforms change.

    Returns:
        the transforms, in the order above.

    >>> probs = dict(prob_rotate=0.2, prob_zoom=0.2, prob_elastic=0.0, prob_flip=0.5, prob_brightness=0.15,
    ...              prob_gamma=0.3, prob_gamma_inverted=0.1, prob_noise=0.1, prob_blur=0.2)
    >>> [type(t).__name__ for t in nnunet_augmentation(**probs, spatial_dims=2)][:5]
    ['RandRotated', 'RandZoomd', 'RandFlipd', 'RandFlipd', 'RandScaleIntensityd']
    >>> len(nnunet_augmentation(**probs)), len(nnunet_augmentation(**{**probs, "prob_elastic": 0.1}))
    (11, 12)
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    rotate = ROTATE_RANGE[spatial_dims] if rotate_range is None else rotate_range
    low, high = zoom_range
    keys = list(keys)
    interpolation = "trilinear" if spatial_dims == 3 else "bilinear"
    rotation = {"range_x": rotate, "range_y": rotate, "range_z": rotate} if spatial_dims == 3 else {"range_x": rotate}
    sigmas = dict(zip(("sigma_x", "sigma_y", "sigma_z"), [list(blur_sigma)] * spatial_dims, strict=False))
    transforms: list[MapTransform] = [
        RandRotated(keys=keys, **rotation, prob=prob_rotate, mode=["bilinear", "nearest"], padding_mode="zeros"),
        RandZoomd(
            keys=keys,
            min_zoom=[low] * spatial_dims,
            max_zoom=[high] * spatial_dims,
            prob=prob_zoom,
            mode=[interpolation, "nearest"],
            padding_mode="constant",
        ),
    ]
    if prob_elastic != 0:
        elastic_type = Rand3DElasticd if spatial_dims == 3 else Rand2DElasticd
        deformation = {**ELASTIC[spatial_dims], **(elastic or {})}
        transforms.append(
            elastic_type(
                keys=keys, **deformation, prob=prob_elastic, mode=["bilinear", "nearest"], padding_mode="zeros"
            )
        )
    transforms += [RandFlipd(keys=keys, spatial_axis=axis, prob=prob_flip) for axis in range(spatial_dims)]
    return transforms + [
        RandScaleIntensityd(keys=image_key, factors=brightness_factor, prob=prob_brightness),
        RandShiftIntensityd(keys=image_key, offsets=brightness_offset, prob=prob_brightness),
        RandAdjustContrastd(keys=image_key, gamma=list(gamma_range), prob=prob_gamma),
        RandAdjustContrastd(
            keys=image_key, gamma=list(gamma_range), invert_image=True, retain_stats=True, prob=prob_gamma_inverted
        ),
        RandTorchGaussianNoised(keys=image_key, std=noise_std, prob=prob_noise),
        RandGaussianSmoothd(keys=image_key, **sigmas, prob=prob_blur),
    ]
