"""Slice-stack transforms (2.5D): SliceStack against a naive loop, CentreSlice, SlicesToVolume, dictionary forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import RandCropByLabelClassesd

from medseg3d.transforms import (
    CentreSlice,
    CentreSliced,
    SliceStack,
    SliceStackd,
    SlicesToVolume,
    SlicesToVolumed,
)

SHAPE = (2, 12, 10, 7)  # non-cubic: swapped axes fail loudly


def _volume(shape=SHAPE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def naive_stack(volume: np.ndarray, index: int, k: int, axis: int, edge: str) -> np.ndarray:
    """The stack by explicit loops: channel c*(2k+1) + (j+k) is channel c at slice index+j, clamped or zero."""
    axis = axis % 3
    moved = np.moveaxis(volume, axis + 1, -1)  # (C, A, B, Z)
    size = moved.shape[-1]
    out = np.zeros((moved.shape[0] * (2 * k + 1), *moved.shape[1:3]), dtype=volume.dtype)
    for c in range(moved.shape[0]):
        for j in range(-k, k + 1):
            z = index + j
            if 0 <= z < size:
                out[c * (2 * k + 1) + j + k] = moved[c, :, :, z]
            elif edge == "replicate":
                out[c * (2 * k + 1) + j + k] = moved[c, :, :, min(max(z, 0), size - 1)]
    return out


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.mark.parametrize("edge", ["replicate", "zero"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_slice_stack_matches_naive_loop(k: int, axis: int, edge: str) -> None:
    volume = _volume()
    size = volume.shape[axis % 3 + 1]
    stack = SliceStack(k=k, axis=axis, edge=edge)
    everything_np, everything_t = stack.stack_all(volume), stack.stack_all(torch.from_numpy(volume))
    assert isinstance(everything_np, np.ndarray) and isinstance(everything_t, torch.Tensor)
    assert everything_np.shape == (size, SHAPE[0] * (2 * k + 1), *naive_stack(volume, 0, k, axis, edge).shape[1:])
    for index in range(size):  # first, last and everything between
        expected = naive_stack(volume, index, k, axis, edge)
        out_np, out_t = stack(volume, index), stack(torch.from_numpy(volume), index)
        assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
        assert out_np.dtype == np.float32 and out_t.dtype == torch.float32
        np.testing.assert_array_equal(out_np, expected)
        np.testing.assert_array_equal(_np(out_t), expected)
        np.testing.assert_array_equal(everything_np[index], expected)
        np.testing.assert_array_equal(_np(everything_t[index]), expected)
    np.testing.assert_array_equal(stack(volume), naive_stack(volume, size // 2, k, axis, edge))


def test_slice_stack_shape_dtype_and_meta() -> None:
    volume = np.arange(4 * 12 * 10 * 7).reshape(4, 12, 10, 7).astype(np.int16)
    assert SliceStack(k=2)(volume).shape == (20, 12, 10)
    assert SliceStack(k=2)(volume).dtype == np.int16
    assert SliceStack(k=1, axis=0).stack_all(volume).shape == (12, 12, 10, 7)
    assert SliceStack(k=1, axis=1).stack_all(torch.from_numpy(volume)).dtype == torch.int16
    affine = torch.diag(torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    meta = MetaTensor(torch.from_numpy(volume), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    out = SliceStack(k=1)(meta, 3)
    assert isinstance(out, MetaTensor) and out.shape == (12, 12, 10)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    np.testing.assert_array_equal(_np(out.as_tensor()), naive_stack(volume, 3, 1, 2, "replicate"))
    assert not isinstance(SliceStack(k=1).stack_all(meta), MetaTensor)
    assert meta.affine.equal(affine)  # the input is untouched


def test_slice_stack_does_not_modify_input() -> None:
    volume = _volume()
    before = volume.copy()
    SliceStack(k=2, edge="zero")(volume, 0)
    SliceStack(k=2, edge="zero").stack_all(volume)
    t = torch.from_numpy(volume.copy())
    SliceStack(k=2, edge="zero").stack_all(t)
    np.testing.assert_array_equal(volume, before)
    np.testing.assert_array_equal(t.numpy(), before)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"edge": "mirror"}, "edge"), ({"k": -1}, "k"), ({"k": 1.5}, "k"), ({"axis": 3}, "axis"), ({"axis": -4}, "axis")],
)
def test_slice_stack_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name) as info:
        SliceStack(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


@pytest.mark.parametrize("cls", [CentreSlice, SlicesToVolume])
def test_axis_checked(cls) -> None:
    with pytest.raises(ValueError, match="axis.*3"):
        cls(axis=3)


@pytest.mark.parametrize("index", [-1, 7, 100])
def test_index_out_of_range(index: int) -> None:
    for transform in (SliceStack(k=1), CentreSlice()):
        with pytest.raises(IndexError, match=rf"index {index}.*size 7"):
            transform(_volume(), index)


def test_not_a_volume() -> None:
    with pytest.raises(ValueError, match="C, X, Y, Z"):
        SliceStack()(np.zeros((12, 10, 7)))
    with pytest.raises(ValueError, match="Z, C, A, B"):
        SlicesToVolume()(np.zeros((12, 10, 7)))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_centre_slice_and_slices_to_volume_round_trip(axis: int, as_tensor: bool) -> None:
    volume = _volume()
    image = torch.from_numpy(volume) if as_tensor else volume
    size = volume.shape[axis % 3 + 1]
    centre = CentreSlice(axis)
    assert centre(image).shape[0] == SHAPE[0] and len(centre(image).shape) == 3
    np.testing.assert_array_equal(_np(centre(image)), np.take(volume, size // 2, axis=axis % 3 + 1))
    slices = [centre(image, z) for z in range(size)]
    per_slice = torch.stack(slices) if as_tensor else np.stack(slices)
    restored = SlicesToVolume(axis)(per_slice)
    assert type(restored) is type(image) and restored.shape == SHAPE
    np.testing.assert_array_equal(_np(restored), volume)
    # the centre channels of every stack (channel c*(2k+1)+k) are the volume itself
    k = 2
    everything = SliceStack(k=k, axis=axis).stack_all(image)
    centres = everything[:, k :: 2 * k + 1]
    np.testing.assert_array_equal(_np(SlicesToVolume(axis)(centres)), volume)


def test_centre_slice_is_a_copy() -> None:
    volume = _volume()
    out = CentreSlice()(volume)
    out[:] = 0
    assert volume[..., 3].any()


@pytest.mark.parametrize("k", [1, 2])
def test_dictionary_forms(k: int) -> None:
    image = _volume((2, 12, 10, 2 * k + 1))
    label = np.random.default_rng(1).integers(0, 3, (1, 12, 10, 2 * k + 1)).astype(np.uint8)
    out = SliceStackd("image", k=k, label_keys="label")({"image": image, "label": label, "other": 5})
    assert out["image"].shape == (2 * (2 * k + 1), 12, 10)
    assert out["label"].shape == (1, 12, 10)
    np.testing.assert_array_equal(out["label"], label[..., k])
    np.testing.assert_array_equal(out["image"], naive_stack(image, k, k, 2, "replicate"))
    assert out["other"] == 5
    back = SlicesToVolumed("x", axis=0)({"x": np.zeros((12, 3, 10, 5))})
    assert back["x"].shape == (3, 12, 10, 5)
    assert CentreSliced("label", axis=1)({"label": label})["label"].shape == (1, 12, 2 * k + 1)


def test_dictionary_missing_keys() -> None:
    data = {"image": _volume()}
    with pytest.raises(KeyError, match="label"):
        SliceStackd("image", label_keys="label")(data)
    assert SliceStackd("image", label_keys="label", allow_missing_keys=True)(data)["image"].shape == (10, 12, 10)
    with pytest.raises(ValueError, match="both"):
        SliceStackd("image", label_keys="image")
    with pytest.raises(ValueError, match="edge"):
        SliceStackd("image", edge="mirror")


@pytest.mark.parametrize("k", [1, 2])
def test_after_rand_crop_by_label_classes(k: int) -> None:
    """The 2.5D training pipeline: crop a (6, 5, 2k+1) slab around a labelled voxel, then stack its centre."""
    rng = np.random.default_rng(k)
    image = torch.from_numpy(rng.normal(size=(2, 16, 12, 9)).astype(np.float32))
    label = torch.from_numpy(rng.integers(0, 3, (1, 16, 12, 9)).astype(np.float32))
    crop = RandCropByLabelClassesd(
        ["image", "label"], "label", spatial_size=(6, 5, 2 * k + 1), num_classes=3, num_samples=4
    )
    crop.set_random_state(0)
    stack = SliceStackd("image", k=k, label_keys="label")
    for sample in crop({"image": image, "label": label}):
        assert sample["image"].shape == (2, 6, 5, 2 * k + 1)
        out = stack(sample)
        assert out["image"].shape == (2 * (2 * k + 1), 6, 5)
        assert out["label"].shape == (1, 6, 5)
        # the label is the slab's centre slice, aligned with the stacked centre channels of the image
        np.testing.assert_array_equal(_np(out["label"]), _np(sample["label"][..., k]))
        for c in range(2):
            np.testing.assert_array_equal(_np(out["image"][c * (2 * k + 1) + k]), _np(sample["image"][c, ..., k]))
        # and both come from the same place in the original volume
        centre = _np(out["image"][k])
        hits = [
            (x, y, z)
            for x in range(16 - 5)
            for y in range(12 - 4)
            for z in range(9)
            if np.array_equal(image[0, x : x + 6, y : y + 5, z].numpy(), centre)
        ]
        assert len(hits) == 1
        x, y, z = hits[0]
        np.testing.assert_array_equal(_np(out["label"][0]), label[0, x : x + 6, y : y + 5, z].numpy())
