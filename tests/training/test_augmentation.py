"""The patch sampling and nnU-Net augmentation lists: the transforms, their default ranges, overrides, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, Rand2DElasticd, Rand3DElasticd, RandGaussianSmoothd, RandRotated, RandZoomd

from medseg3d.training.augmentation import ROTATE_RANGE, class_balanced_crop, nnunet_augmentation

PROBS = dict(
    prob_rotate=0.2, prob_zoom=0.2, prob_elastic=0.0, prob_flip=0.5, prob_brightness=0.15, prob_gamma=0.3,
    prob_gamma_inverted=0.1, prob_noise=0.1, prob_blur=0.2,
)  # fmt: skip
INTENSITY = ["RandScaleIntensityd", "RandShiftIntensityd", "RandAdjustContrastd", "RandAdjustContrastd",
             "RandTorchGaussianNoised", "RandGaussianSmoothd"]  # fmt: skip


def _names(transforms) -> list[str]:
    return [type(t).__name__ for t in transforms]


def _one(transforms, kind):
    (found,) = [t for t in transforms if isinstance(t, kind)]
    return found


@pytest.mark.parametrize(
    "dims, elastic, names",
    [
        pytest.param(3, 0.0, ["RandRotated", "RandZoomd", *["RandFlipd"] * 3, *INTENSITY], id="3d"),
        pytest.param(3, 0.5, ["RandRotated", "RandZoomd", "Rand3DElasticd", *["RandFlipd"] * 3, *INTENSITY],
                     id="3d-elastic"),
        pytest.param(2, 0.0, ["RandRotated", "RandZoomd", *["RandFlipd"] * 2, *INTENSITY], id="2d"),
        pytest.param(2, 0.5, ["RandRotated", "RandZoomd", "Rand2DElasticd", *["RandFlipd"] * 2, *INTENSITY],
                     id="2d-elastic"),
    ],
)  # fmt: skip
def test_the_transforms_in_order(dims: int, elastic: float, names: list[str]) -> None:
    assert _names(nnunet_augmentation(**{**PROBS, "prob_elastic": elastic}, spatial_dims=dims)) == names


def test_default_ranges_by_dimension() -> None:
    three, two = (nnunet_augmentation(**{**PROBS, "prob_elastic": 0.1}, spatial_dims=d) for d in (3, 2))
    rotate3, rotate2 = _one(three, RandRotated).rand_rotate, _one(two, RandRotated).rand_rotate
    assert rotate3.range_x == rotate3.range_y == rotate3.range_z == (-ROTATE_RANGE[3], ROTATE_RANGE[3])
    assert rotate2.range_x == (-ROTATE_RANGE[2], ROTATE_RANGE[2]) and rotate2.range_y == (0.0, 0.0)
    assert _one(three, RandZoomd).rand_zoom.min_zoom == (0.7, 0.7, 0.7)
    assert _one(two, RandZoomd).rand_zoom.max_zoom == (1.4, 1.4)
    assert _one(three, Rand3DElasticd).rand_3d_elastic.sigma_range == [9, 13]
    assert _one(two, Rand2DElasticd).rand_2d_elastic.deform_grid.magnitude == [0, 2]
    assert tuple(_one(three, RandGaussianSmoothd).rand_smooth.sigma_z) == (0.5, 1.0)
    assert tuple(_one(two, RandGaussianSmoothd).rand_smooth.sigma_y) == (0.5, 1.0)


def test_a_bundle_overrides_only_the_range_that_differs() -> None:
    transforms = nnunet_augmentation(
        **{**PROBS, "prob_elastic": 0.1}, rotate_range=0.1, zoom_range=(0.9, 1.1), elastic={"sigma_range": [5, 7]}
    )
    assert _one(transforms, RandRotated).rand_rotate.range_z == (-0.1, 0.1)
    assert _one(transforms, RandZoomd).rand_zoom.max_zoom == (1.1, 1.1, 1.1)
    elastic = _one(transforms, Rand3DElasticd).rand_3d_elastic
    assert list(elastic.sigma_range) == [5, 7] and list(elastic.magnitude_range) == [0, 300]  # the default kept


def test_probabilities_are_the_given_ones() -> None:
    transforms = nnunet_augmentation(**{**PROBS, "prob_flip": 0.25, "prob_brightness": 0.75})
    flips = [t.prob for t in transforms if type(t).__name__ == "RandFlipd"]
    assert flips == [0.25] * 3
    assert [t.prob for t in transforms[5:7]] == [0.75, 0.75]


def test_spatial_transforms_keep_image_and_label_together() -> None:
    """Everything on: the label stays a set of class values and the image follows it (seeded, repeatable)."""
    label = torch.zeros(1, 24, 20, 16)
    label[:, 6:18, 5:15, 4:12] = 2
    sample = {"image": label.repeat(2, 1, 1, 1) * 10.0, "label": label}
    transform = Compose(nnunet_augmentation(**{k: 1.0 for k in PROBS}, noise_std=0.0))
    results = []
    for _ in range(2):
        transform.set_random_state(seed=3)
        results.append(transform(dict(sample)))
    out = results[0]
    assert set(np.unique(np.asarray(out["label"]))) <= {0.0, 2.0}
    assert out["image"].shape == (2, 24, 20, 16) and out["label"].shape == (1, 24, 20, 16)
    assert torch.equal(torch.as_tensor(results[1]["image"]), torch.as_tensor(out["image"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"spatial_dims": 1}, "spatial_dims must be 2 or 3", id="dims"),
    ],
)
def test_bad_augmentation_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nnunet_augmentation(**PROBS, **kwargs)


def test_class_balanced_crop_draws_patches_of_the_size() -> None:
    label = torch.zeros(1, 20, 18, 9)
    label[:, 2:5, 2:5, 2:5] = 1
    crop = Compose(class_balanced_crop([8, 8, 12], num_classes=2, num_samples=3, max_samples_per_class=50))
    crop.set_random_state(seed=0)
    samples = crop({"image": torch.rand(4, 20, 18, 9), "label": label})
    assert len(samples) == 3
    for sample in samples:
        assert sample["image"].shape == (4, 8, 8, 12) and sample["label"].shape == (1, 8, 8, 12)
        assert "label_class_indices" not in sample  # the positions are dropped after the crop
    assert sum(float(s["label"].sum()) > 0 for s in samples) >= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"num_classes": 0}, "num_classes and num_samples must be >= 1", id="classes"),
        pytest.param({"num_samples": 0}, "num_classes and num_samples must be >= 1", id="samples"),
        pytest.param({"ratios": [1, 1]}, r"ratios needs one entry per class \(4\)", id="ratios"),
    ],
)
def test_bad_crop_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_balanced_crop(**{"spatial_size": [8, 8, 8], "num_classes": 4, "num_samples": 2, **kwargs})
