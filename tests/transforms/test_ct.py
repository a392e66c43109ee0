"""CT preprocessing: orientation, spacing, body crop and HU window, and their exact inverse at inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.inferers import SimpleInferer
from monai.transforms import Compose

from medseg3d.inference.predictor import Predictor, chunk_slices
from medseg3d.transforms.ct import ct_preprocessing


class _Bright(torch.nn.Module):
    """Label 1 where the windowed, scaled intensity is above 0.5 (HU > 300 with the default window)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # the predictor moves a module with parameters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x, x - 0.5], dim=1)


def _phantom(shape=(48, 40, 22)) -> np.ndarray:
    """HU: air around a soft-tissue body holding a bright (contrast) tube and a dense block."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[6:42, 5:36, :] = 40.0
    x, y = np.mgrid[: shape[0], : shape[1]]
    hu[((x - 20) ** 2 + (y - 18) ** 2) <= 36] = 600.0  # a tube along the last axis, radius 6 voxels
    hu[30:38, 24:32, 5:15] = 900.0
    return hu


AFFINES = {
    "ras-anisotropic": np.diag([0.7, 0.7, 2.5, 1.0]),
    "lps": np.diag([-0.8, -0.8, 2.0, 1.0]),
    "permuted": np.array([[0, 0, 2.2, 10], [-0.9, 0, 0, 5], [0, 0.9, 0, -3], [0, 0, 0, 1]], float),
    "oblique": np.array([[0.85, -0.2, 0, 0], [0.2, 0.85, 0, 0], [0, 0, 1.8, 0], [0, 0, 0, 1]], float),
}


@pytest.mark.parametrize("slab", [None, 7], ids=["invertd", "slabs"])
@pytest.mark.parametrize("name", sorted(AFFINES))
def test_inference_output_lies_on_the_input_grid(name: str, slab: int | None) -> None:
    affine = AFFINES[name]
    hu = _phantom()
    predictor = Predictor(
        network=_Bright(),
        inferer=SimpleInferer(),
        preprocessing=Compose(ct_preprocessing(spacing=(1.2, 1.2, 1.2))),
        output_mode="labels",
        inverse_slab=slab,
    )
    labels = predictor(hu[None], affine)
    assert labels.shape == hu.shape
    truth = hu > 300
    dice = 2 * np.sum((labels == 1) & truth) / (np.sum(labels == 1) + np.sum(truth))
    # resampled to 1.2 mm and back: the structures land where they were, up to the boundary voxels
    assert dice > 0.9, f"{name}: Dice {dice:.3f} to the input's bright voxels"
    assert not labels[hu < -500].any(), "air stays background (outside the body's box too)"


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_slab_inverse_equals_invertd(name: str) -> None:
    """The memory-bounded inverse (slabs of 5 slices) gives Invertd's labels, up to a few boundary voxels."""
    hu = _phantom()
    labels = {}
    for slab in (None, 5):
        predictor = Predictor(
            network=_Bright(),
            inferer=SimpleInferer(),
            preprocessing=Compose(ct_preprocessing(spacing=(1.3, 1.1, 1.7))),
            output_mode="labels",
            inverse_slab=slab,
        )
        labels[slab] = predictor(hu[None], AFFINES[name])
    differ = np.sum(labels[None] != labels[5])
    assert differ <= 0.002 * hu.size, f"{differ} voxels differ"
    assert labels[5].sum() > 1000


def test_preprocessing_resamples_crops_and_windows() -> None:
    from monai.data import MetaTensor

    hu = _phantom()
    data = {"image": MetaTensor(torch.from_numpy(hu[None]), affine=torch.from_numpy(AFFINES["lps"]))}
    out = Compose(ct_preprocessing(spacing=(1.6, 1.6, 2.0), margin=0))(data)["image"]
    # the body (6:42, 5:36 at 0.8 mm = 28.8 x 24.8 mm) at 1.6 mm: 18 x 16 voxels (rounding), all 22 slices
    assert tuple(out.shape[1:3]) in {(18, 16), (18, 15), (17, 16), (17, 15)} and out.shape[3] == 22
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert np.allclose(np.diag(out.affine.numpy())[:3], [1.6, 1.6, 2.0])  # RAS, target spacing


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spacing": (1.0, 1.0)}, "spacing must be three positive numbers"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be three positive numbers"),
        ({"hu_window": (500, 100)}, "hu_window must be (low, high)"),
        ({"margin": -1}, "margin must be >= 0"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ct_preprocessing(**kwargs)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_slab_spacing_equals_monai_spacing(name: str) -> None:
    """The slab-wise resampling gives MONAI's ``Spacingd`` voxels, grid and record (so ``inverse`` undoes it)."""
    from monai.data import MetaTensor
    from monai.transforms import Spacingd

    from medseg3d.transforms.ct import SlabSpacingd

    hu = _phantom()
    affine = torch.as_tensor(AFFINES[name])
    labels = (hu > 300).astype(np.float32) + (hu > 800)

    def data():
        return {"image": MetaTensor(hu[None].copy(), affine=affine), "label": MetaTensor(labels[None], affine=affine)}

    keys, modes = ["image", "label"], ["bilinear", "nearest"]
    ours = SlabSpacingd(keys, (1.3, 1.1, 1.6), mode=modes, slab=5)
    ref = Spacingd(keys, (1.3, 1.1, 1.6), mode=modes, dtype=torch.float32)(data())
    out = ours(data())
    for key in keys:
        assert out[key].shape == ref[key].shape
        torch.testing.assert_close(out[key].affine, ref[key].affine)
    torch.testing.assert_close(out["image"].as_tensor(), ref["image"].as_tensor(), atol=0.05, rtol=1e-5)  # HU
    # labels: equal, but where an output voxel centre falls exactly halfway between two input voxels (float
    # rounding then decides the nearest neighbour differently in the two implementations)
    differ = torch.nonzero(out["label"].as_tensor()[0] != ref["label"].as_tensor()[0]).double()
    if len(differ):
        mapping = torch.linalg.inv(affine.double()) @ ref["label"].affine.double()
        source = differ @ mapping[:3, :3].T + mapping[:3, 3]
        assert ((source - source.floor() - 0.5).abs() < 1e-4).any(dim=1).all(), "a label differs away from a tie"
    back = ours.inverse(out)
    for key in keys:
        assert back[key].shape == (1, *hu.shape) and not back[key].applied_operations
        torch.testing.assert_close(back[key].affine, affine)


def _chunked_and_whole(hu: np.ndarray, affine: np.ndarray, spacing, chunk_voxels: int, overlap_mm: float):
    labels = {}
    for chunks in (None, chunk_voxels):
        predictor = Predictor(
            network=_Bright(),
            inferer=SimpleInferer(),
            preprocessing=Compose(ct_preprocessing(spacing=spacing)),
            output_mode="labels",
            inverse_slab=4,
            chunk_voxels=chunks,
            chunk_overlap_mm=overlap_mm,
        )
        labels[chunks] = predictor(hu[None], affine)
    return labels[None], labels[chunk_voxels]


def test_chunks_equal_the_whole_scan_for_a_voxelwise_network_on_an_unmoved_grid() -> None:
    """Target spacing = the scan's, RAS: nothing is interpolated, so chunks must give the whole scan's labels."""
    hu = _phantom((48, 40, 31))
    affine = np.diag([0.7, 0.6, 2.5, 1.0])
    chunk_voxels = 48 * 40 * 9  # chunks of 9 slices, overlapping by 2 (5 mm): 5 chunks
    assert len(chunk_slices(hu.shape, affine, chunk_voxels, 5.0)) == 5
    whole, chunked = _chunked_and_whole(hu, affine, (0.7, 0.6, 2.5), chunk_voxels, 5.0)
    assert chunked.shape == hu.shape and chunked.sum() > 1000
    np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_chunks_land_on_the_scan_grid_on_moved_grids(name: str) -> None:
    """Resampled (to 1.3 x 1.1 x 1.7 mm) and reoriented chunk by chunk: the labels are the whole scan's up to
    boundary voxels, and in the right place on the scan's grid."""
    hu = _phantom((48, 40, 40))
    whole, chunked = _chunked_and_whole(hu, AFFINES[name], (1.3, 1.1, 1.7), 48 * 40 * 12, 6.0)
    assert chunked.shape == hu.shape
    differ = np.sum(whole != chunked)
    assert differ <= 0.003 * hu.size, f"{name}: {differ} voxels differ from the whole scan's labels"
    truth = hu > 300
    dice = 2 * np.sum((chunked == 1) & truth) / (np.sum(chunked == 1) + np.sum(truth))
    assert dice > 0.9, f"{name}: Dice {dice:.3f} to the input's bright voxels"


@pytest.mark.parametrize(
    "shape, spacing, chunk_voxels, overlap_mm",
    [
        ((512, 512, 900), 0.8, 512 * 512 * 320, 100.0),
        ((30, 20, 97), 2.5, 30 * 20 * 10, 7.0),
        ((9, 7, 5), 1, 63 * 2, 50),
    ],
)
def test_chunk_slices_tile_the_scan(shape, spacing, chunk_voxels, overlap_mm) -> None:
    affine = np.diag([1.0, 1.0, spacing, 1.0])
    chunks = chunk_slices(shape, affine, chunk_voxels, overlap_mm)
    assert len(chunks) > 1
    kept = [(a, b) for _, _, a, b in chunks]
    assert kept[0][0] == 0 and kept[-1][1] == shape[2]
    assert all(b == a2 for (_, b), (a2, _) in zip(kept, kept[1:], strict=False)), (
        "kept ranges meet without gap or overlap"
    )
    size = max(2, chunk_voxels // (shape[0] * shape[1]))
    for (start, stop, keep_start, keep_stop), nxt in zip(chunks, chunks[1:] + [None], strict=True):
        assert stop - start == size and 0 <= start <= keep_start < keep_stop <= stop <= shape[2]
        if nxt is not None:
            overlap = stop - nxt[0]
            assert min(np.ceil(overlap_mm / spacing), size // 2) <= overlap
            assert keep_stop - nxt[0] >= overlap // 2 and stop - keep_stop >= overlap // 2, "seam mid-overlap"
    assert chunk_slices(shape, affine, int(np.prod(shape)), overlap_mm) == [(0, shape[2], 0, shape[2])]
    assert chunk_slices(shape, affine, None, overlap_mm) == [(0, shape[2], 0, shape[2])]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"chunk_voxels": 0}, "chunk_voxels must be None or an int >= 1"),
        ({"chunk_voxels": True}, "chunk_voxels must be None or an int >= 1"),
        ({"chunk_overlap_mm": -1.0}, "chunk_overlap_mm must be a number >= 0"),
        ({"chunk_overlap_mm": float("nan")}, "chunk_overlap_mm must be a number >= 0"),
    ],
)
def test_bad_chunk_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Predictor(_Bright(), SimpleInferer(), Compose([]), "labels", **kwargs)
