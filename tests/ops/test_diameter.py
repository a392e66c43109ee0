"""Maximum vessel diameter: the largest inscribed ball of synthetic tubes, arcs and bulges, within one voxel."""

from __future__ import annotations

import math
import time
import tracemalloc

import numpy as np
import pytest
from scipy import ndimage

from medseg3d.ops.diameter import label_diameters, max_diameter_mm

ISO = (1.0, 1.0, 1.0)
ANISO = (0.8, 0.8, 2.5)
OFFSET = np.array([0.37, -0.21, 0.13])  # the axis runs between voxel centres (in voxels)


def _unit(vector) -> np.ndarray:
    vector = np.asarray(vector, dtype=float)
    return vector / np.linalg.norm(vector)


def _tilted(degrees: float, azimuth: float = 20.0) -> np.ndarray:
    """A direction ``degrees`` away from Z, its projection ``azimuth`` degrees from X."""
    tilt, turn = math.radians(degrees), math.radians(azimuth)
    return _unit((math.sin(tilt) * math.cos(turn), math.sin(tilt) * math.sin(turn), math.cos(tilt)))


DIRECTIONS = {"z": _unit((0, 0, 1)), "x": _unit((1, 0, 0)), "oblique35": _tilted(35), "oblique45": _unit((1, 0, 1))}


def _grid(half_mm, spacing, offset=OFFSET) -> np.ndarray:
    """Voxel centres (X, Y, Z, 3) in mm of a box of half-sizes ``half_mm`` around 0, shifted by ``offset`` voxels."""
    shape = [int(math.ceil(2 * h / s)) + 1 for h, s in zip(np.broadcast_to(half_mm, 3), spacing, strict=True)]
    axes = [(np.arange(n) - (n - 1) / 2 + o) * s for n, s, o in zip(shape, spacing, offset, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _from_axis(points: np.ndarray, direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of ``points`` from the line through 0 along ``direction``, and position along it."""
    along = points @ direction
    return np.linalg.norm(points - along[..., None] * direction, axis=-1), along


def tube(radius: float, direction: np.ndarray, spacing, offset=OFFSET) -> np.ndarray:
    """A straight tube through the origin, cut by a box that holds a whole ball of its radius."""
    distance, _ = _from_axis(_grid(radius + 4 * max(spacing), spacing, offset), direction)
    return distance <= radius


def _one_voxel(direction: np.ndarray, spacing) -> float:
    """The largest voxel size of the cross-section (the axes not parallel to the tube)."""
    return max(s for s, d in zip(spacing, direction, strict=True) if abs(d) < 0.999)


@pytest.mark.parametrize("spacing", [ISO, ANISO], ids=["iso", "aniso"])
@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
@pytest.mark.parametrize("radius", [4.0, 7.5, 12.0])
def test_straight_tubes_within_one_voxel(radius: float, direction: str, spacing) -> None:
    d = DIRECTIONS[direction]
    error = max_diameter_mm(tube(radius, d, spacing), spacing) - 2 * radius
    assert abs(error) <= _one_voxel(d, spacing)  # the requirement
    assert abs(error) <= 0.5 * _one_voxel(d, spacing)  # what the method gives (at most 0.25 voxel here)


def test_an_axis_between_voxel_centres_is_not_under_measured() -> None:
    """Twice the deepest voxel's distance misses the ball centred between voxels: about one voxel low here."""
    mask = tube(5.0, DIRECTIONS["z"], ISO, offset=(0.5, 0.5, 0.0))
    naive = 2 * ndimage.distance_transform_edt(np.pad(mask, 1)).max()
    assert naive - 10.0 < -0.5
    assert abs(max_diameter_mm(mask, ISO) - 10.0) <= 0.25


@pytest.mark.parametrize("spacing", [ISO, ANISO], ids=["iso", "aniso"])
def test_curved_tube_like_the_aortic_arch(spacing) -> None:
    """Half a torus (centreline radius 30 mm, tube radius 8 mm) standing on the XY plane, bending in XZ."""
    arch, radius = 30.0, 8.0
    points = _grid((arch + radius + 4, radius + 4, (arch + radius + 4) / 2), spacing)
    points[..., 2] += (arch + radius) / 2  # z from about -4 to arch + radius + 4
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    mask = (np.hypot(np.hypot(x, z) - arch, y) <= radius) & (z >= 0)
    assert abs(max_diameter_mm(mask, spacing) - 2 * radius) <= max(spacing)


@pytest.mark.parametrize("spacing", [ISO, ANISO], ids=["iso", "aniso"])
def test_a_bulge_gives_its_own_diameter(spacing) -> None:
    """Radius 6 mm widening to 10 mm over a short section (Gaussian, sigma 8 mm), oblique.

    The ball of radius R at the bulge's centre touches the wall only there when R (R - r) < sigma^2, so the
    largest inscribed ball has the bulge's diameter exactly.
    """
    small, big, sigma = 6.0, 10.0, 8.0
    direction = _tilted(40)
    distance, along = _from_axis(_grid(big + 4 * max(spacing), spacing), direction)
    mask = distance <= small + (big - small) * np.exp(-(along**2) / (2 * sigma**2))
    measured = max_diameter_mm(mask, spacing)
    assert abs(measured - 2 * big) <= _one_voxel(direction, spacing)
    assert measured > 2 * small + 6


@pytest.mark.parametrize("dtype", [bool, np.uint8, np.int16, np.float32])
def test_empty_mask_gives_none(dtype) -> None:
    assert max_diameter_mm(np.zeros((5, 6, 7), dtype), ANISO) is None


def test_the_maximum_is_over_every_component_not_the_largest() -> None:
    """A long thin tube (most voxels), a ball of radius 6 mm, and noise: the ball's diameter is reported."""
    x, y, z = np.meshgrid(np.arange(40), np.arange(40), np.arange(120), indexing="ij")
    thin = (np.hypot(x - 20.3, y - 19.8) <= 2.0) & (z < 100)
    ball = np.sqrt((x - 20.3) ** 2 + (y - 19.8) ** 2 + (z - 110.2) ** 2) <= 6.0
    mask = thin | ball
    mask[0, 0, 0] = mask[39, 39, 40] = mask[5, 35, 60] = True  # single-voxel islands
    labelled, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert count == 5
    largest = labelled == 1 + int(np.argmax(np.bincount(labelled.ravel())[1:]))
    assert np.array_equal(largest, thin)
    assert abs(max_diameter_mm(thin, ISO) - 4.0) <= 1.0
    assert abs(max_diameter_mm(mask, ISO) - 12.0) <= 1.0
    assert max_diameter_mm(mask, ISO) == max_diameter_mm(ball, ISO)


def test_labels_are_measured_separately() -> None:
    """A lumen (label 1, radius 4 mm) inside a thrombus ring (label 2, out to 9 mm); label 3 is absent.

    The ring is a wall: the largest ball touches it at two opposite points only, and is then up to one voxel
    too wide (the 1D digitisation bias the tube correction does not remove; see ``medseg3d.ops.diameter``).
    """
    distance, _ = _from_axis(_grid(13, ISO), DIRECTIONS["z"])
    labels = np.zeros(distance.shape, np.int16)
    labels[distance <= 9.0] = 2
    labels[distance <= 4.0] = 1
    names = {"lumen": 1, "thrombus": 2, "absent": 3}
    found = label_diameters(labels, ISO, names)
    assert found["absent"] is None
    assert abs(found["lumen"] - 8.0) <= 0.5
    assert 0 <= found["thrombus"] - 5.0 <= 1.0  # the ring's thickness
    assert abs(max_diameter_mm(labels > 0, ISO) - 18.0) <= 0.5  # both together
    assert found == {name: max_diameter_mm(labels == value, ISO) for name, value in names.items()}
    assert label_diameters(labels.astype(np.float32), ISO, names) == found  # float labels: same answer


def test_a_small_structure_in_a_large_volume_is_cropped_first() -> None:
    """512 x 512 x 64 uint8 with a small tube: same answer as on the tube alone, memory of the tube's box only."""
    small = tube(4.0, DIRECTIONS["oblique35"], ANISO).astype(np.uint8)
    big = np.zeros((512, 512, 64), np.uint8)
    big[300 : 300 + small.shape[0], 100 : 100 + small.shape[1], 20 : 20 + small.shape[2]] = small
    tracemalloc.start()
    try:
        start = time.perf_counter()
        measured = max_diameter_mm(big, ANISO)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert measured == max_diameter_mm(small, ANISO)
    assert peak < 40 * small.size + 2**20  # a float64 copy of the volume would be 8 x 16.8e6 bytes
    assert peak < big.nbytes / 4
    assert seconds < 1.0


@pytest.mark.parametrize(
    ("mask", "spacing", "message"),
    [
        (np.ones((4, 4)), ISO, r"expected a 3D mask \(X, Y, Z\), got shape \(4, 4\)"),
        (np.ones((4, 4, 4, 1)), ISO, "got shape"),
        (np.ones((4, 4, 4)), (1.0, 1.0), r"expected 3 positive voxel sizes in mm .*got spacing \(1.0, 1.0\)"),
        (np.ones((4, 4, 4)), (1.0, 0.0, 1.0), "got spacing"),
        (np.ones((4, 4, 4)), (1.0, float("nan"), 1.0), "got spacing"),
        (np.ones((4, 4, 4)), "abc", "got spacing 'abc'"),
    ],
)
def test_bad_arguments_are_refused(mask: np.ndarray, spacing, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        max_diameter_mm(mask, spacing)


def test_a_mask_filling_the_whole_scan_is_bounded_by_the_scan() -> None:
    """Outside the scan counts as background: a full 10 x 10 x 30 mm block gives about its 10 mm width."""
    assert abs(max_diameter_mm(np.ones((10, 10, 30), bool), ISO) - 10.0) <= 1.0


def _blob(shape, seed: int, sigma: float = 3.0) -> np.ndarray:
    """Smoothed noise thresholded at its mean: blobs and holes of a few voxels, many components."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    return ndimage.gaussian_filter(noise, sigma) > 0


@pytest.mark.parametrize(
    ("shape", "spacing", "slab_voxels"),
    [
        ((30, 26, 70), ISO, 30 * 26 * 3 * 4),  # 4-slice cores: margins double until they hold the deepest balls
        ((24, 31, 57), ANISO, 24 * 31 * 3 * 9),
        ((20, 20, 45), (0.6, 0.9, 1.2), 1),  # one slice per core
        ((16, 18, 40), ANISO, 16 * 18 * 3 * 39),  # two slabs, the second one slice
    ],
)
def test_the_distance_transform_in_slabs_finds_the_same_deepest_voxel(shape, spacing, slab_voxels) -> None:
    from medseg3d.ops.diameter import _deepest_voxel

    sizes = np.asarray(spacing, dtype=np.float64)
    for seed in range(3):
        padded = np.pad(_blob(shape, seed, sigma=2.0 + seed), 1)
        whole = _deepest_voxel(padded, sizes, slab_voxels=padded.size)
        sliced = _deepest_voxel(padded, sizes, slab_voxels=slab_voxels)
        assert sliced[0] == whole[0] > 0
        assert sliced[1].tolist() == whole[1].tolist()


def test_a_blob_over_most_of_the_scan_is_measured_in_slabs(monkeypatch) -> None:
    """What a random network labels: one blob over half of a 192 x 160 x 120 scan. The distance transform is
    held a slab at a time, and the diameter is the one of the whole box."""
    import medseg3d.ops.diameter as measure

    mask = np.pad(_blob((190, 158, 118), seed=5, sigma=4.0), 1)
    expected = max_diameter_mm(mask, ANISO)  # 3.6e6 voxels: under EDT_SLAB_VOXELS, in one piece
    monkeypatch.setattr(measure, "EDT_SLAB_VOXELS", 192 * 160 * 3 * 8)
    tracemalloc.start()
    try:
        measured = max_diameter_mm(mask, ANISO)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert measured == expected
    # 15.6 bytes a voxel here (component labels and boolean copies of the box, one slab's transform); the
    # distance transform of the whole box takes 56 (scipy's feature transform and its float64 differences)
    assert peak < 20 * mask.size
