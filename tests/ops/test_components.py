"""Connected-component postprocessing equals MONAI's and scipy's results on random masks, ties included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, KeepLargestConnectedComponent
from monai.transforms.utils import get_largest_connected_component_mask
from scipy import ndimage

from medseg3d.ops import components as postprocess
from medseg3d.ops.components import (
    LabelRule,
    fill_holes,
    flat_foreground,
    keep_largest,
    parse_rules,
    postprocess_labels,
    remove_small,
)
from medseg3d.transforms import ConnectedComponents, ConnectedComponentsd

RANK = {6: 1, 18: 2, 26: 3}  # MONAI/skimage connectivity and scipy structure rank of each connectivity
# (DENSE_RUNS_PER_VOXEL, DENSE_FOREGROUND) that force each path of postprocess_labels: the index paths (the
# graph of runs, cc3d on the foreground's box) and the mask path (a mask of the volume per rule, cc3d on its box)
PATHS = {"runs": (np.inf, np.inf), "dense": (0.0, np.inf), "mask": (0.0, 0.0)}


@pytest.fixture(params=sorted(PATHS))
def path(request, monkeypatch) -> str:
    """Runs the test once on each labelling path."""
    runs, foreground = PATHS[request.param]
    monkeypatch.setattr(postprocess, "DENSE_RUNS_PER_VOXEL", runs)
    monkeypatch.setattr(postprocess, "DENSE_FOREGROUND", foreground)
    monkeypatch.setattr(postprocess, "_CHUNK", 64)  # passes over the label volume in many chunks
    return request.param


def _speckled(shape, density, seed) -> np.ndarray:
    """Independent voxels: many tiny components, many of equal size."""
    return np.random.default_rng(seed).random(shape) < density


def _blobby(shape, density, seed, sigma=1.5) -> np.ndarray:
    """Smoothed noise above a quantile: components of many sizes, with holes and cavities."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return noise > np.quantile(noise, 1 - density)


def _label_map(shape, seed) -> np.ndarray:
    """Labels 1..3 from smoothed noise bands plus speckles of every label, uint8."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    labels = np.digitize(noise, np.quantile(noise, [0.55, 0.7, 0.85, 0.93])).astype(np.uint8)
    labels[labels == 4] = 0  # the top band becomes holes inside label 3's blobs
    specks = rng.random(shape) < 0.01
    labels[specks] = rng.integers(0, 4, int(specks.sum()))
    return labels


MASKS = [
    pytest.param(lambda: _speckled((20, 24, 28), 0.08, 0), id="sparse-speckles"),
    pytest.param(lambda: _speckled((23, 17, 30), 0.3, 1), id="dense-speckles"),
    pytest.param(lambda: _blobby((20, 24, 28), 0.15, 2), id="sparse-blobs"),
    pytest.param(lambda: _blobby((31, 18, 25), 0.5, 3), id="dense-blobs"),
    pytest.param(lambda: _blobby((16, 33, 21), 0.35, 4, sigma=0.8), id="mixed"),
    pytest.param(lambda: _blobby((24, 29, 17), 0.7, 8, sigma=1.0), id="cavities"),
    pytest.param(lambda: _speckled((19, 26, 22), 0.7, 6), id="porous"),
    pytest.param(lambda: _speckled((18, 21, 25), 0.92, 9), id="foam"),
]


def _remove_small_reference(mask: np.ndarray, min_voxels: int, connectivity: int) -> np.ndarray:
    components, _ = ndimage.label(mask, ndimage.generate_binary_structure(3, RANK[connectivity]))
    sizes = np.bincount(components.ravel())
    return mask & (sizes >= min_voxels)[components]


def _holes_reference(mask: np.ndarray, connectivity: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Hole voxels of ``mask`` (scipy) and the size of the background component each lies in."""
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    holes = ndimage.binary_fill_holes(mask, structure) & ~mask
    background, _ = ndimage.label(~mask, structure)
    return holes, np.bincount(background.ravel())[background]


def _postprocess_reference(labels: np.ndarray, rules: dict) -> np.ndarray:
    """The documented semantics, written plainly with scipy and MONAI, one full-volume mask at a time."""
    out = labels.copy()
    if "all" in rules:
        rule = rules["all"]
        conn = rule.get("connectivity", 26)
        mask = out != 0
        kept = _remove_small_reference(mask, rule.get("min_size", 1), conn)
        if "keep_largest" in rule:
            kept = get_largest_connected_component_mask(kept, RANK[conn], rule["keep_largest"])
        out[mask & ~kept] = 0
    masks = {}
    for label, rule in rules.items():
        if label == "all":
            continue
        conn = rule.get("connectivity", 26)
        mask = out == label
        kept = _remove_small_reference(mask, rule.get("min_size", 1), conn)
        if "keep_largest" in rule:
            kept = get_largest_connected_component_mask(kept, RANK[conn], rule["keep_largest"])
        out[mask & ~kept] = 0
        masks[label] = kept
    best_size = np.full(out.shape, np.iinfo(np.int64).max)
    best_label = np.zeros_like(out)
    for label in sorted(masks):
        if rules[label].get("fill_holes"):
            holes, size = _holes_reference(masks[label])
            better = holes & (size < best_size)  # strictly smaller: equal sizes stay with the lower label
            best_size[better] = size[better]
            best_label[better] = label
    fill = (best_label != 0) & (out == 0)
    out[fill] = best_label[fill]
    return out


@pytest.mark.parametrize("make_mask", MASKS)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_keep_largest_equals_monai(make_mask, connectivity, path) -> None:
    mask = make_mask()
    for k in (1, 2, 3):
        expected = get_largest_connected_component_mask(mask, connectivity=RANK[connectivity], num_components=k)
        result = keep_largest(mask, k=k, connectivity=connectivity)
        assert result.dtype == bool and result.shape == mask.shape
        np.testing.assert_array_equal(result, expected, err_msg=f"k={k}")
    # and through MONAI's transform, on a uint8 label map
    transform = KeepLargestConnectedComponent(applied_labels=[1], connectivity=RANK[connectivity], num_components=2)
    expected = transform(torch.from_numpy(mask[None].astype(np.uint8)))[0].numpy()
    np.testing.assert_array_equal(keep_largest(mask, 2, connectivity), expected.astype(bool))


@pytest.mark.parametrize("make_mask", MASKS)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_remove_small_equals_scipy(make_mask, connectivity, path) -> None:
    mask = make_mask()
    for min_voxels in (1, 2, 5, 40):
        expected = _remove_small_reference(mask, min_voxels, connectivity)
        np.testing.assert_array_equal(remove_small(mask, min_voxels, connectivity), expected, err_msg=str(min_voxels))


@pytest.mark.parametrize("make_mask", MASKS)
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_fill_holes_equals_scipy(make_mask, connectivity, path) -> None:
    mask = make_mask()
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    np.testing.assert_array_equal(fill_holes(mask, connectivity), ndimage.binary_fill_holes(mask, structure))


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_masks_exercise_every_case(connectivity) -> None:
    """The random masks hold what the comparisons need: many components, ties, holes."""
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    masks = [param.values[0]() for param in MASKS]
    counts = [np.bincount(ndimage.label(mask, structure)[0].ravel())[1:] for mask in masks]
    assert sum(c.size > 3 for c in counts) >= 4  # more components than k, so keep_largest removes some
    assert sum(c.size > 100 and np.any(np.bincount(c)[1:] > 1) for c in counts) >= 1  # many equal sizes
    assert sum(ndimage.binary_fill_holes(m, structure).sum() > m.sum() for m in masks) >= 2


def test_fill_holes_default_is_scipys_default() -> None:
    mask = _blobby((20, 24, 28), 0.6, 7)
    expected = ndimage.binary_fill_holes(mask)
    assert expected.sum() > mask.sum(), "the test mask must have holes"
    np.testing.assert_array_equal(fill_holes(mask), expected)


@pytest.mark.parametrize(
    "step, count",
    [
        pytest.param(3, 7 * 8 * 10, id="560-single-voxels"),
        pytest.param(4, 5 * 6 * 7, id="210-single-voxels"),
    ],
)
def test_ties_are_broken_like_monai(step, count, path) -> None:
    """Hundreds of equal components: numpy's argsort is not stable there, so only the same call agrees."""
    mask = np.zeros((20, 24, 28), dtype=bool)
    mask[::step, ::step, ::step] = True
    assert int(mask.sum()) == count
    for k in (1, 2, 5, count - 1):
        expected = get_largest_connected_component_mask(mask, connectivity=3, num_components=k)
        np.testing.assert_array_equal(keep_largest(mask, k), expected, err_msg=f"k={k}")
    # a larger component outranks the ties; the second place is a tie again
    mask[1, 1, 1] = True  # joins the voxel at (0, 0, 0) (26-connected)
    expected = get_largest_connected_component_mask(mask, connectivity=3, num_components=2)
    result = keep_largest(mask, 2)
    np.testing.assert_array_equal(result, expected)
    assert result[0, 0, 0] and result[1, 1, 1]


def test_fortran_order_ties_fall_back_to_c_order(path, monkeypatch) -> None:
    """A Fortran-ordered map is labelled through its transpose, whose raster order is not MONAI's: where equal
    sizes meet keep_largest's cut, the C-ordered copy decides (and only there)."""
    copies = []
    real = postprocess._postprocess

    def counted(out, parsed, raster):
        copies.append(raster)
        return real(out, parsed, raster)

    monkeypatch.setattr(postprocess, "_postprocess", counted)
    mask = np.zeros((20, 24, 28), dtype=np.uint8)
    mask[::4, ::4, ::4] = 2  # 210 single voxels: every keep_largest cut is a tie
    for k in (1, 5):
        expected = get_largest_connected_component_mask(mask, connectivity=3, num_components=k)
        copies.clear()
        result = postprocess_labels(np.asfortranarray(mask), {2: {"keep_largest": k}})
        np.testing.assert_array_equal(result, expected.astype(np.uint8) * 2, err_msg=f"k={k}")
        assert copies == [False, True], "the transposed pass must give way to the C-ordered one on a tie"
        assert result.flags.c_contiguous
    mask[1, 1, 1] = 2  # a larger component: no tie at the cut of k=1, so the transpose decides alone
    copies.clear()
    result = postprocess_labels(np.asfortranarray(mask), {2: {"keep_largest": 1}})
    assert copies == [False] and result.flags.f_contiguous
    assert int(np.count_nonzero(result)) == 2 and result[0, 0, 0] == 2 and result[1, 1, 1] == 2


def test_dense_maps_take_the_mask_path(monkeypatch) -> None:
    """Above DENSE_FOREGROUND with few rules, no index array of the foreground is made; below, it is."""
    calls = []
    real = postprocess.flat_foreground
    monkeypatch.setattr(postprocess, "flat_foreground", lambda a: calls.append(a.size) or real(a))
    labels = _label_map((26, 21, 30), 5)
    assert np.count_nonzero(labels) > postprocess.DENSE_FOREGROUND * labels.size
    rules = {1: {"keep_largest": 1}, 3: {"min_size": 4}}
    dense = postprocess_labels(labels, rules)
    assert calls == []
    monkeypatch.setattr(postprocess, "DENSE_FOREGROUND", 1.0)
    np.testing.assert_array_equal(postprocess_labels(labels, rules), dense)
    assert calls == [labels.size]


def test_equal_sizes_in_multi_voxel_components(path) -> None:
    """Equal-sized cubes of 8 voxels at different raster positions, with 6-connectivity."""
    mask = np.zeros((22, 19, 26), dtype=bool)
    for x in range(0, 20, 4):
        for z in range(0, 24, 3 + x % 2):
            mask[x : x + 2, 5:7, z : z + 2] = True
    for k in (1, 2, 3, 10):
        expected = get_largest_connected_component_mask(mask, connectivity=1, num_components=k)
        np.testing.assert_array_equal(keep_largest(mask, k, 6), expected)


@pytest.mark.parametrize("fill", [True, False], ids=["all-ones", "all-zeros"])
def test_uniform_masks(fill, path) -> None:
    mask = np.full((9, 12, 7), fill)
    for result in (keep_largest(mask, 2), remove_small(mask, 3), fill_holes(mask, 26)):
        np.testing.assert_array_equal(result, mask)
    labels = mask.astype(np.int16) * 3
    rules = {"all": {"keep_largest": 1}, 3: {"min_size": 4, "keep_largest": 2, "fill_holes": True}}
    np.testing.assert_array_equal(postprocess_labels(labels, rules), labels)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "rules",
    [
        pytest.param({1: {"keep_largest": 1}, 2: {"keep_largest": 2}, 3: {"keep_largest": 1}}, id="keep-largest"),
        pytest.param({1: {"min_size": 3}, 3: {"min_size": 20, "connectivity": 6}}, id="min-size"),
        pytest.param({1: {"fill_holes": True}, 2: {"fill_holes": True}, 3: {"fill_holes": True}}, id="fill-holes"),
        pytest.param(
            {
                1: {"min_size": 5, "keep_largest": 2, "fill_holes": True, "connectivity": 18},
                3: {"keep_largest": 1, "fill_holes": True},
                2: {"min_size": 2, "connectivity": 6},
            },
            id="combined",
        ),
        pytest.param({"all": {"keep_largest": 1}}, id="all-keep-largest"),
        pytest.param({"all": {"min_size": 10, "keep_largest": 3, "connectivity": 6}}, id="all-min-size"),
        pytest.param(
            {"all": {"keep_largest": 2}, 3: {"fill_holes": True, "keep_largest": 1}, 1: {"fill_holes": True}},
            id="all-then-labels",
        ),
    ],
)
@pytest.mark.parametrize("order", ["C", "F"])
def test_postprocess_labels_equals_reference(rules, seed, path, order) -> None:
    labels = np.asarray(_label_map((26, 21, 30), seed), order=order)
    before = labels.copy()
    result = postprocess_labels(labels, rules)
    np.testing.assert_array_equal(labels, before, err_msg="the input must not change")
    assert result.dtype == labels.dtype
    np.testing.assert_array_equal(result, _postprocess_reference(labels, rules))
    # rules are independent of their order, and string keys (YAML/JSON) mean the same labels
    reordered = {str(key): value for key, value in reversed(list(rules.items()))}
    np.testing.assert_array_equal(postprocess_labels(labels, reordered), result)


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("order", ["C", "F"])
def test_rules_equal_monai_transform(seed, connectivity, path, order) -> None:
    labels = np.asarray(_label_map((18, 27, 22), seed), order=order)
    for independent, rules in (
        (True, {label: {"keep_largest": 1, "connectivity": connectivity} for label in (1, 2, 3)}),
        (False, {"all": {"keep_largest": 1, "connectivity": connectivity}}),
    ):
        monai = KeepLargestConnectedComponent(independent=independent, connectivity=RANK[connectivity])
        expected = monai(torch.from_numpy(labels[None].copy()))[0].numpy()
        np.testing.assert_array_equal(postprocess_labels(labels, rules), expected, err_msg=str(rules))


def test_nested_holes_go_to_the_innermost_label(path) -> None:
    """Label 2 shell inside label 1 shell; label 3 voxels inside holes keep their label."""
    labels = np.zeros((21, 19, 23), dtype=np.uint8)
    labels[2:19, 2:17, 2:21] = 1
    labels[4:17, 4:15, 4:19] = 0
    labels[6:15, 6:13, 6:17] = 2
    labels[8:13, 8:11, 8:15] = 0
    labels[10, 9, 10] = 3  # inside both holes
    labels[5, 5, 5] = 3  # between the shells
    rules = {1: {"fill_holes": True}, 2: {"fill_holes": True}}
    result = postprocess_labels(labels, rules)
    np.testing.assert_array_equal(result, _postprocess_reference(labels, rules))
    assert result[10, 9, 10] == 3 and result[5, 5, 5] == 3
    assert result[10, 9, 11] == 2  # inside label 2's shell
    assert result[4, 4, 4] == 1  # between the shells
    assert np.all(result[:2] == 0) and np.all(result[:, :, 21:] == 0)  # outside stays background
    only_outer = postprocess_labels(labels, {1: {"fill_holes": True}})
    assert only_outer[10, 9, 11] == 1 and only_outer[7, 7, 7] == 2


def test_removed_voxels_inside_a_hole_are_filled(path) -> None:
    labels = np.zeros((15, 16, 17), dtype=np.uint8)
    labels[2:13, 2:14, 2:15] = 1
    labels[4:11, 4:12, 4:13] = 0
    labels[7, 7, 7] = 2  # a speck of label 2 inside label 1, removed by label 2's rule
    labels[0, 0, 0] = 2
    labels[0, 0, 1] = 2
    rules = {1: {"fill_holes": True}, 2: {"keep_largest": 1}}
    result = postprocess_labels(labels, rules)
    np.testing.assert_array_equal(result, _postprocess_reference(labels, rules))
    assert result[7, 7, 7] == 1 and np.all(result[4:11, 4:12, 4:13] == 1)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda a: torch.from_numpy(a), id="tensor"),
        pytest.param(
            lambda a: MetaTensor(torch.from_numpy(a).float(), affine=torch.diag(torch.tensor([2.0, 3, 4, 1]))),
            id="metatensor",
        ),
        pytest.param(lambda a: np.asfortranarray(a), id="fortran-order"),
        pytest.param(lambda a: np.pad(a, 2)[2:-2, 2:-2, 2:-2], id="non-contiguous"),
    ],
)
def test_input_types(make) -> None:
    labels = _label_map((17, 22, 19), 5)
    rules = {1: {"keep_largest": 2, "fill_holes": True}, 3: {"min_size": 4}}
    expected = postprocess_labels(labels, rules)
    given = make(labels)
    result = postprocess_labels(given, rules)
    assert type(result) is type(given)
    if isinstance(given, torch.Tensor):
        assert result.dtype == given.dtype and result.device == given.device
        if isinstance(given, MetaTensor):
            torch.testing.assert_close(result.affine, given.affine)
        result = result.numpy()
    np.testing.assert_array_equal(result, expected)
    mask = make((labels == 1).astype(np.uint8))
    largest = keep_largest(mask, 2)
    assert type(largest) is type(mask) and largest.dtype in (np.bool_, torch.bool)
    np.testing.assert_array_equal(np.asarray(largest), keep_largest(labels == 1, 2))


def _tied_mask(density: float, seed: int) -> np.ndarray:
    """Random noise of ``density`` next to 28 equal cubes of 8 voxels: the cubes tie for the places after the
    noise's components larger than 8 (``above + 1``, ``above + 2``, ...)."""
    mask = np.zeros((23, 31, 17), dtype=bool)
    mask[1:14, 2:29, 1:16] = np.random.default_rng(seed).random((13, 27, 15)) < density
    for y in range(1, 29, 4):
        for z in range(1, 15, 4):
            mask[16:18, y : y + 2, z : z + 2] = True
    return mask


def _check_against_references(mask: np.ndarray, connectivity: int) -> None:
    """keep_largest (k = 1, 2, 3 and the tied places), remove_small and fill_holes equal MONAI's and scipy's."""
    structure = ndimage.generate_binary_structure(3, RANK[connectivity])
    sizes = np.bincount(ndimage.label(mask, structure)[0].ravel())[1:]
    above = int(np.count_nonzero(sizes > 8))
    assert np.count_nonzero(sizes == 8) >= 28  # the cubes (and maybe some noise) tie
    for k in sorted({1, 2, 3, above + 1, above + 2}):
        expected = get_largest_connected_component_mask(mask, connectivity=RANK[connectivity], num_components=k)
        np.testing.assert_array_equal(keep_largest(mask, k, connectivity), expected, err_msg=f"k={k}")
    for min_voxels in (2, 9):
        expected = _remove_small_reference(mask, min_voxels, connectivity)
        np.testing.assert_array_equal(remove_small(mask, min_voxels, connectivity), expected)
    np.testing.assert_array_equal(fill_holes(mask, connectivity), ndimage.binary_fill_holes(mask, structure))


@pytest.mark.parametrize("density", [0.05, 0.2, 0.4, 0.6])
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_dense_masks_with_ties_on_both_paths(density, connectivity, path) -> None:
    mask = _tied_mask(density, int(density * 100) + connectivity)
    _check_against_references(mask, connectivity)
    # the same inside a larger volume: the foreground's bounding box no longer touches the volume's faces
    padded = np.zeros((30, 36, 25), dtype=bool)
    padded[4:27, 2:33, 5:22] = mask
    _check_against_references(padded, connectivity)
    labels = padded.astype(np.uint8) + (np.random.default_rng(1).random(padded.shape) < 0.1).astype(np.uint8)
    rules = {1: {"keep_largest": 2, "fill_holes": True, "connectivity": connectivity}, 2: {"fill_holes": True}}
    np.testing.assert_array_equal(postprocess_labels(labels, rules), _postprocess_reference(labels, rules))


def test_dense_path_with_the_box_of_the_runs(monkeypatch) -> None:
    """A threshold between runs per voxel of the x planes and of the box: the runs' box is the one labelled."""
    mask = np.zeros((30, 36, 25), dtype=bool)
    mask[4:27, 2:33, 5:22] = _tied_mask(0.3, 5)
    idx = np.flatnonzero(mask)
    runs = postprocess._runs(idx, mask.shape[2])[0].size
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    planes, voxels = (box[0].stop - box[0].start) * 36 * 25, int(np.prod([s.stop - s.start for s in box]))
    assert voxels < planes / 2
    monkeypatch.setattr(postprocess, "DENSE_RUNS_PER_VOXEL", runs / np.sqrt(planes * voxels))
    assert postprocess._plan(idx, mask.shape) == (box, None)
    for connectivity in (6, 26):
        _check_against_references(mask, connectivity)


def test_default_threshold_picks_the_path() -> None:
    speckles = _speckled((40, 50, 60), 0.5, 0)  # what a network with random weights predicts
    assert postprocess._plan(np.flatnonzero(speckles), speckles.shape) == (None, None)
    cubes = np.zeros((40, 50, 60), dtype=bool)
    cubes[5:30, 10:40, 20:50] = True  # a trained model's output: few long runs
    cubes[35, 45, 55] = True
    box, runs = postprocess._plan(np.flatnonzero(cubes), cubes.shape)
    assert box is None and runs[0].size == 25 * 30 + 1


@pytest.mark.parametrize("density", [0.05, 0.3, 0.92])
@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_cc3d_numbers_components_in_raster_order(density, connectivity, monkeypatch) -> None:
    """Label j of cc3d on a C-contiguous array is the j-th component in raster order of first voxels."""
    monkeypatch.setattr(postprocess, "_CHUNK", 50)
    mask = _speckled((23, 31, 17), density, 7)
    counts = []
    for voxels in (mask, ~mask):  # the foreground, and the background that a hole search labels
        labels, n = postprocess._cc3d(voxels, connectivity)
        values, first = np.unique(labels.reshape(-1), return_index=True)
        assert values.tolist() == list(range(n + 1)) and np.all(np.diff(first[1:]) > 0)
        np.testing.assert_array_equal(postprocess._raster_order(labels, n), np.arange(1, n + 1))
        # any other numbering is put back in raster order
        permutation = np.concatenate([[0], np.random.default_rng(n).permutation(n) + 1]).astype(labels.dtype)
        np.testing.assert_array_equal(postprocess._raster_order(permutation[labels], n), permutation[1:])
        counts.append(n)
    assert max(counts) > 3


def test_dense_path_does_not_trust_the_numbering(monkeypatch) -> None:
    """With cc3d's labels shuffled, the ties are still broken as MONAI breaks them."""
    label_with_cc3d = postprocess._cc3d

    def shuffled(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
        labels, n = label_with_cc3d(mask, connectivity)
        permutation = np.concatenate([[0], np.random.default_rng(n).permutation(n) + 1]).astype(labels.dtype)
        return permutation[labels], n

    monkeypatch.setattr(postprocess, "_cc3d", shuffled)
    monkeypatch.setattr(postprocess, "DENSE_RUNS_PER_VOXEL", 0.0)
    mask = np.zeros((20, 24, 28), dtype=bool)
    mask[::3, ::3, ::3] = True
    mask[1, 1, 1] = True
    for k in (1, 2, 5, 100):
        expected = get_largest_connected_component_mask(mask, connectivity=3, num_components=k)
        np.testing.assert_array_equal(keep_largest(mask, k), expected, err_msg=f"k={k}")
    _check_against_references(_tied_mask(0.2, 3), 18)


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int16, np.float32, np.float64])
def test_flat_foreground_of_dense_arrays(dtype) -> None:
    values = (np.random.default_rng(3).random(1003) < 0.6).astype(dtype)
    if values.dtype.kind == "f":
        values[[3, 4]] = -0.0
    np.testing.assert_array_equal(flat_foreground(values), np.flatnonzero(values))
    np.testing.assert_array_equal(flat_foreground(values.reshape(17, 59).T), np.flatnonzero(values.reshape(17, 59).T))


@pytest.mark.parametrize(
    "dtype, size",
    [
        pytest.param(np.bool_, 1001, id="bool-tail"),
        pytest.param(np.uint8, 4096, id="uint8"),
        pytest.param(np.int16, 999, id="int16-tail"),
        pytest.param(np.float32, 1003, id="float32"),
        pytest.param(np.float64, 257, id="float64"),
        pytest.param(np.int64, 5, id="tiny"),
    ],
)
def test_flat_foreground_equals_flatnonzero(dtype, size) -> None:
    values = (np.random.default_rng(size).random(size) < 0.05).astype(dtype)
    if values.dtype.kind == "f":
        values[3] = -0.0  # zero, though not a zero word
    np.testing.assert_array_equal(flat_foreground(values), np.flatnonzero(values))
    volume = values[: size - size % 6].reshape(2, 3, -1)
    np.testing.assert_array_equal(flat_foreground(np.asfortranarray(volume)), np.flatnonzero(volume))


def test_transform_pair() -> None:
    labels = _label_map((16, 20, 24), 6)
    rules = {"1": {"keep_largest": 1}, 2: {"fill_holes": True, "min_size": 3}}
    expected = postprocess_labels(labels, rules)
    image = MetaTensor(torch.from_numpy(labels[None]).float(), affine=torch.diag(torch.tensor([1.5, 1, 2, 1])))
    out = ConnectedComponents(rules)(image)
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == (1, 16, 20, 24)
    torch.testing.assert_close(out.affine, image.affine)
    np.testing.assert_array_equal(out[0].numpy(), expected)
    np.testing.assert_array_equal(ConnectedComponents(rules)(labels[None]), expected[None])
    pipeline = Compose([ConnectedComponentsd(keys=["pred", "extra"], rules=rules, allow_missing_keys=True)])
    data = pipeline({"pred": torch.from_numpy(labels[None]), "image": 7})
    np.testing.assert_array_equal(data["pred"][0].numpy(), expected)
    assert data["image"] == 7
    with pytest.raises(ValueError, match=r"shape \(1, X, Y, Z\)"):
        ConnectedComponents(rules)(np.stack([labels, labels]))
    with pytest.raises(ValueError, match="unknown rule name"):
        ConnectedComponentsd(keys="pred", rules={1: {"keep_larges": 1}})


def test_parse_rules() -> None:
    parsed = parse_rules({"2": {"keep_largest": True}, "all": {"min_size": 5, "connectivity": 6}, 3: {}})
    assert parsed == {2: LabelRule(keep_largest=1), "all": LabelRule(min_size=5, connectivity=6), 3: LabelRule()}
    assert parse_rules(parsed) == parsed
    assert parse_rules(None) == {} and parse_rules({1: {"keep_largest": False}}) == {1: LabelRule()}


@pytest.mark.parametrize(
    "rules, message",
    [
        pytest.param({1: {"keep_larges": 1}}, r"label 1: unknown rule name\(s\) \['keep_larges'\]", id="unknown-name"),
        pytest.param({1: {"keep_largest": 0}}, "label 1: keep_largest .* positive int, got 0", id="keep-zero"),
        pytest.param({2: {"keep_largest": 1.5}}, "label 2: keep_largest .* got 1.5", id="keep-float"),
        pytest.param({1: {"min_size": 0}}, "label 1: min_size .* positive int", id="min-size-zero"),
        pytest.param({1: {"min_size": True}}, "label 1: min_size", id="min-size-bool"),
        pytest.param({1: {"fill_holes": "yes"}}, "label 1: fill_holes must be true or false", id="fill-string"),
        pytest.param({1: {"connectivity": 8}}, r"label 1: connectivity must be one of \(6, 18, 26\)", id="conn"),
        pytest.param({"all": {"fill_holes": True}}, "'all' rule cannot fill holes", id="all-fill"),
        pytest.param({"all": {"connectivity": True}}, "'all' rule: connectivity", id="all-conn-bool"),
        pytest.param({"one": {"keep_largest": 1}}, "label values .* or 'all', got 'one'", id="key-word"),
        pytest.param({1.0: {"keep_largest": 1}}, "label values", id="key-float"),
        pytest.param({0: {"keep_largest": 1}}, "label 0 is the background", id="key-background"),
        pytest.param({1: {}, "1": {"min_size": 2}}, "label 1 is given twice", id="duplicate"),
        pytest.param({1: 2}, "label 1 must be a mapping", id="rule-not-mapping"),
        pytest.param([1, 2], "rules must map", id="rules-not-mapping"),
    ],
)
def test_bad_rules(rules, message) -> None:
    with pytest.raises(ValueError, match=message):
        postprocess_labels(np.zeros((2, 3, 4), dtype=np.uint8), rules)


@pytest.mark.parametrize(
    "call, message",
    [
        pytest.param(lambda m: keep_largest(m, k=0), "k must be a positive int", id="k-zero"),
        pytest.param(lambda m: keep_largest(m, connectivity=4), r"connectivity must be one of", id="conn-4"),
        pytest.param(lambda m: remove_small(m, min_voxels=-2), "min_voxels must be a positive int", id="min-neg"),
        pytest.param(lambda m: fill_holes(m, connectivity=1), "connectivity must be one of", id="fill-conn-1"),
        pytest.param(lambda m: keep_largest(m[0]), r"3D array of shape \(X, Y, Z\), got shape \(4, 5\)", id="2d"),
        pytest.param(lambda m: postprocess_labels(m[None], {}), r"got shape \(1, 3, 4, 5\)", id="4d-labels"),
        pytest.param(lambda m: keep_largest(m.astype(str)), "booleans or numbers", id="strings"),
    ],
)
def test_bad_arguments(call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call(np.ones((3, 4, 5), dtype=bool))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_come_back_on_their_device() -> None:
    labels = _label_map((20, 24, 28), 10)
    rules = {1: {"keep_largest": 1, "fill_holes": True}, "all": {"min_size": 3}}
    result = postprocess_labels(torch.from_numpy(labels).cuda(), rules)
    assert result.is_cuda and result.dtype == torch.uint8
    np.testing.assert_array_equal(result.cpu().numpy(), postprocess_labels(labels, rules))
    mask = keep_largest(torch.from_numpy(labels == 2).cuda(), 2)
    assert mask.is_cuda and mask.dtype == torch.bool


@pytest.mark.slow
@pytest.mark.parametrize("connectivity", [6, 26])
def test_large_label_map_equals_references(connectivity, path) -> None:
    """A 160x144x120 map: long runs, many rows, thousands of speckles."""
    labels = _label_map((160, 144, 120), 11)
    rules = {
        1: {"min_size": 10, "keep_largest": 2, "fill_holes": True, "connectivity": connectivity},
        2: {"keep_largest": 1, "connectivity": connectivity},
        3: {"fill_holes": True, "min_size": 4},
    }
    np.testing.assert_array_equal(postprocess_labels(labels, rules), _postprocess_reference(labels, rules))
    union = {"all": {"keep_largest": 3, "connectivity": connectivity}}
    monai = KeepLargestConnectedComponent(independent=False, connectivity=RANK[connectivity], num_components=3)
    expected = monai(torch.from_numpy(labels[None].copy()))[0].numpy()
    np.testing.assert_array_equal(postprocess_labels(labels, union), expected)
