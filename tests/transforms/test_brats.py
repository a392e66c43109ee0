"""The BraTS preprocessing: one definition, what prep_brats writes and inference applies, undone by Invertd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medseg3d.transforms.array import NormalizeNonZero, PadToDivisible
from medseg3d.transforms.brats import brats_preprocessing


def _case(shape: tuple[int, ...] = (37, 30, 21)) -> np.ndarray:
    """4 modalities with a zero background around a non-cubic 'brain' of distinct intensities per channel."""
    rng = np.random.default_rng(0)
    image = np.zeros((4, *shape), np.float32)
    image[:, 4:30, 3:25, 2:19] = rng.normal([[[[10.0]]], [[[200.0]]], [[[30.0]]], [[[4.0]]]], 3.0, (4, 26, 22, 17))
    return image


@pytest.mark.parametrize("divisible", [16, 8, (16, 8, 4)])
def test_equals_normalize_then_pad(divisible) -> None:
    image = _case()
    expected = np.asarray(PadToDivisible(divisible)(NormalizeNonZero()(image.copy())))
    out = np.asarray(brats_preprocessing("image", divisible)({"image": image.copy()})["image"])
    np.testing.assert_array_equal(out, expected)  # what prep_brats wrote before the factory, bit for bit


def test_label_is_padded_alike_and_not_normalized() -> None:
    image, label = _case(), np.zeros((1, 37, 30, 21), np.uint8)
    label[0, 10:20, 5:9, 3:4] = 3
    out = brats_preprocessing("image", 16, label_keys="label")({"image": image, "label": label})
    widths = PadToDivisible(16).pad_width(label.shape[1:])
    padded = tuple(size + before + after for size, (before, after) in zip((37, 30, 21), widths, strict=True))
    assert tuple(out["label"].shape) == (1, 48, 32, 32) == (1, *padded)
    start = tuple(b for b, _ in widths)
    assert int(out["label"][0, 10 + start[0], 5 + start[1], 3 + start[2]]) == 3 and int(out["label"].sum()) == 120


def test_invertd_crops_predictions_back_to_the_case_grid() -> None:
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20, 7, 3]
    preprocessing = brats_preprocessing("image", 16)
    data = preprocessing({"image": MetaTensor(torch.from_numpy(_case()), affine=affine)})
    assert tuple(data["image"].shape[1:]) == (48, 32, 32)
    pred = MetaTensor(data["image"][:3].clone())  # logits on the padded grid
    pred.copy_meta_from(data["image"], copy_attr=True)
    data["pred"] = pred
    back = Invertd(keys="pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
    assert tuple(back.shape) == (3, 37, 30, 21)
    np.testing.assert_array_equal(np.asarray(back.affine), affine)
    normalized = np.asarray(NormalizeNonZero()(_case()))[:3]
    np.testing.assert_array_equal(np.asarray(back), normalized)


@pytest.mark.parametrize("divisible", [0, -16, (16, 0, 16), 2.5, True])
def test_bad_divisible_is_refused(divisible) -> None:
    with pytest.raises(ValueError, match="divisible must be a positive int"):
        brats_preprocessing("image", divisible)
