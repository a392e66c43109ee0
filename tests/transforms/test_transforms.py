"""Array and dictionary transforms: normalization, padding and its inverse, label remapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medseg3d.transforms import (
    CropPadding,
    CropPaddingd,
    LabelsToRegions,
    LabelsToRegionsd,
    NormalizeNonZero,
    NormalizeNonZerod,
    PadToDivisible,
    PadToDivisibled,
    RemapLabels,
    RemapLabelsd,
)


def _volume(shape=(2, 10, 20, 31), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.normal(500, 80, shape).astype(np.float32)
    image[:, :2] = 0  # background slab
    image[1, :, :3] = 0
    return image


def test_normalize_nonzero_per_channel() -> None:
    image = _volume()
    out = np.asarray(NormalizeNonZero()(image.copy()))
    for c in range(image.shape[0]):
        brain = image[c] != 0
        assert abs(out[c][brain].mean()) < 1e-4
        assert abs(out[c][brain].std() - 1) < 1e-3
        assert np.all(out[c][~brain] == 0)


@pytest.mark.parametrize(
    "shape, k, expected",
    [
        pytest.param((240, 240, 155), 16, ((0, 0), (0, 0), (2, 3)), id="brats"),
        pytest.param((10, 20, 31), 8, ((3, 3), (2, 2), (0, 1)), id="non-cubic"),
        pytest.param((10, 20, 31), (1, 1, 32), ((0, 0), (0, 0), (0, 1)), id="per-axis"),
    ],
)
def test_pad_width_and_inverse(shape, k, expected) -> None:
    pad = PadToDivisible(k)
    assert pad.pad_width(shape) == expected
    affine = torch.tensor([[0, -1.2, 0, 5], [0.9, 0, 0, -3], [0, 0, 2.5, 7], [0, 0, 0, 1]], dtype=torch.float64)
    image = MetaTensor(torch.arange(np.prod(shape), dtype=torch.float32).reshape(1, *shape), affine=affine)
    padded = pad(image)
    assert all(s % kk == 0 for s, kk in zip(padded.shape[1:], [k] * 3 if isinstance(k, int) else k, strict=True))
    restored = CropPadding(expected)(padded)
    assert torch.equal(restored.as_tensor(), image.as_tensor())
    torch.testing.assert_close(restored.affine, affine)
    # The padded origin moved by the 'before' widths, in world coordinates.
    before = torch.tensor([b for b, _ in expected], dtype=torch.float64)
    torch.testing.assert_close(padded.affine[:3, 3], affine[:3, 3] - affine[:3, :3] @ before)


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param((0,), "positive", id="zero"),
        pytest.param(((16, -1, 16),), "positive", id="negative"),
    ],
)
def test_pad_rejects_bad_arguments(args, message) -> None:
    with pytest.raises(ValueError, match=message):
        PadToDivisible(*args)


def test_crop_padding_errors() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        CropPadding(((0, -1), (0, 0), (0, 0)))
    with pytest.raises(ValueError, match="cannot crop"):
        CropPadding(((5, 5), (0, 0), (0, 0)))(np.zeros((1, 10, 4, 4)))
    with pytest.raises(ValueError, match="spatial axes"):
        CropPadding(((0, 0), (0, 0)))(np.zeros((1, 10, 4, 4)))


def test_remap_labels_and_inverse_are_identity() -> None:
    forward = {0: 0, 1: 1, 2: 2, 4: 3}
    rng = np.random.default_rng(1)
    seg = rng.choice([0, 1, 2, 4], size=(9, 7, 5)).astype(np.int16)
    prepared = np.asarray(RemapLabels(forward)(seg))
    assert prepared.dtype == np.uint8 and set(np.unique(prepared)) <= {0, 1, 2, 3}
    back = np.asarray(RemapLabels({v: k for k, v in forward.items()}, dtype=np.int16)(prepared))
    np.testing.assert_array_equal(back, seg)


@pytest.mark.parametrize(
    "values, message",
    [
        pytest.param([0, 1, 3], "unexpected label values 3", id="stray-label"),
        pytest.param([0, 1.5], "unexpected label values 1.5", id="non-integer"),
    ],
)
def test_remap_labels_refuses_unknown_values(values, message) -> None:
    with pytest.raises(ValueError, match=message):
        RemapLabels({0: 0, 1: 1, 2: 2, 4: 3})(np.array(values))


def test_dictionary_forms_match_array_forms() -> None:
    image = _volume()
    seg = np.zeros((1, *image.shape[1:]), dtype=np.uint8)
    seg[0, 4:6, 5:9, 10:20] = 4
    pipeline = Compose(
        [
            NormalizeNonZerod(keys="image"),
            RemapLabelsd(keys="label", mapping={0: 0, 4: 3}),
            PadToDivisibled(keys=["image", "label"], k=16),
            CropPaddingd(keys=["image", "label"], pad_width=PadToDivisible(16).pad_width(image.shape[1:])),
        ]
    )
    out = pipeline({"image": image.copy(), "label": seg})
    np.testing.assert_allclose(np.asarray(out["image"]), np.asarray(NormalizeNonZero()(image.copy())), atol=1e-6)
    assert np.array_equal(np.asarray(out["label"]) == 3, seg == 4)
    assert "missing" not in NormalizeNonZerod(keys=["image", "missing"], allow_missing_keys=True)({"image": image})


@pytest.mark.parametrize("as_tensor", [pytest.param(False, id="numpy"), pytest.param(True, id="torch")])
def test_labels_to_regions_nested_brats_regions(as_tensor: bool) -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, size=(1, 6, 5, 4))
    img = torch.as_tensor(labels) if as_tensor else labels
    out = np.asarray(LabelsToRegions()(img))
    assert out.shape == (3, 6, 5, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], labels[0] > 0)
    np.testing.assert_array_equal(out[1], np.isin(labels[0], [1, 3]))
    np.testing.assert_array_equal(out[2], labels[0] == 3)
    # Nesting: ET inside TC inside WT.
    assert np.all(out[2] <= out[1]) and np.all(out[1] <= out[0])
    d = LabelsToRegionsd(keys="label", regions={"tumour": [1, 2, 3]})({"label": img})
    np.testing.assert_array_equal(np.asarray(d["label"])[0], labels[0] > 0)


def test_labels_to_regions_errors() -> None:
    with pytest.raises(ValueError, match="single-channel"):
        LabelsToRegions()(np.zeros((2, 3, 3, 3)))
    with pytest.raises(ValueError, match="at least one label value"):
        LabelsToRegions({"WT": []})
