"""Metrics on hand-computed cases: Dice, HD95 in mm, empty-mask conventions, lesion-wise, detection, BraTS labels."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from medseg3d.metrics import (
    HD95_EMPTY_MM,
    LESION_HD95_PENALTY_MM,
    LESION_RULES,
    LesionRules,
    absent_label_metrics,
    brats_case_metrics,
    brats_convention,
    brats_region_masks,
    classification_scores,
    detection_counts,
    dice,
    hd95,
    labels_case_metrics,
    lesion_wise,
    overlap_metrics,
    roc_auc,
    sensitivity_specificity,
    spacing_from_affine,
    summary_statistics,
)

SPACING = (2.0, 1.0, 3.0)  # anisotropic on purpose: a swapped axis changes every distance below


def _box(shape: tuple[int, ...], *ranges: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


def _blobs(shape: tuple[int, ...], seed: int, fraction: float = 0.3) -> np.ndarray:
    """Smooth random blobs (several components, some touching the volume's faces)."""
    noise = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    return noise > np.quantile(noise, 1.0 - fraction)


# A 2x2x2 cube in a 6x7x8 volume and the same cube shifted by one voxel. A 2x2x2 cube is all surface,
# so the edge-to-edge distances are those between voxels: 0 for the shared voxels, one step otherwise.
CUBE = ((1, 3), (1, 3), (1, 3))


@pytest.mark.parametrize(
    "shift, expected_dice, expected_hd95, expected_sensitivity",
    [
        # x + 1: 4 of 8 voxels shared; the others are one x step (2 mm) away.
        pytest.param((1, 0, 0), 0.5, 2.0, 0.5, id="x-shift-2mm"),
        # y + 1: one y step is 1 mm.
        pytest.param((0, 1, 0), 0.5, 1.0, 0.5, id="y-shift-1mm"),
        # z + 1: one z step is 3 mm.
        pytest.param((0, 0, 1), 0.5, 3.0, 0.5, id="z-shift-3mm"),
        # x + 1 and y + 1: 2 shared voxels; distances 0, 1, 2 and sqrt(2^2 + 1^2) mm, two voxels each;
        # the 95th percentile of [0, 0, 1, 1, 2, 2, 2.236, 2.236] is 2.236 in both directions.
        pytest.param((1, 1, 0), 0.25, math.sqrt(5.0), 0.25, id="xy-shift"),
        pytest.param((0, 0, 0), 1.0, 0.0, 1.0, id="identical"),
    ],
)
def test_shifted_cube(shift, expected_dice, expected_hd95, expected_sensitivity) -> None:
    shape = (6, 7, 8)
    gt = _box(shape, *CUBE)
    pred = _box(shape, *((a + s, b + s) for (a, b), s in zip(CUBE, shift, strict=True)))
    assert dice(pred, gt) == pytest.approx(expected_dice)
    assert hd95(pred, gt, SPACING) == pytest.approx(expected_hd95, abs=1e-5)
    assert hd95(gt, pred, SPACING) == pytest.approx(expected_hd95, abs=1e-5)  # symmetric
    metrics = overlap_metrics(pred, gt, SPACING)
    false_positives = 8 - round(expected_sensitivity * 8)
    assert metrics["sensitivity"] == pytest.approx(expected_sensitivity)
    assert metrics["specificity"] == pytest.approx((6 * 7 * 8 - 8 - false_positives) / (6 * 7 * 8 - 8))
    assert metrics["gt_ml"] == pytest.approx(8 * 2.0 * 1.0 * 3.0 / 1000)


@pytest.mark.parametrize(
    "pred_empty, gt_empty, expected",
    [
        pytest.param(True, True, (1.0, 0.0, 1.0, 1.0), id="both-empty"),
        pytest.param(True, False, (0.0, HD95_EMPTY_MM, 0.0, 1.0), id="pred-empty"),
        # 8 false-positive voxels among the 336 - 0 negatives of an empty ground truth.
        pytest.param(False, True, (0.0, HD95_EMPTY_MM, 0.0, 328 / 336), id="gt-empty"),
        pytest.param(False, False, (1.0, 0.0, 1.0, 1.0), id="both-present"),
    ],
)
def test_empty_mask_conventions(pred_empty: bool, gt_empty: bool, expected: tuple[float, ...]) -> None:
    shape = (6, 7, 8)
    empty, cube = np.zeros(shape, dtype=bool), _box(shape, *CUBE)
    pred, gt = (empty if pred_empty else cube), (empty if gt_empty else cube)
    metrics = overlap_metrics(pred, gt, SPACING)
    got = (metrics["dice"], metrics["hd95"], metrics["sensitivity"], metrics["specificity"])
    assert got == pytest.approx(expected)
    assert HD95_EMPTY_MM == 373.13


def test_specificity_without_negatives_and_cropped_total() -> None:
    full = np.ones((2, 3, 4), dtype=bool)
    assert sensitivity_specificity(full, full) == (1.0, 1.0)
    # A crop holding all foreground, with the rest of a 1000-voxel volume counted as true negatives.
    pred, gt = np.array([True, True, False]), np.array([True, False, False])
    assert sensitivity_specificity(pred, gt, total_voxels=1000) == pytest.approx((1.0, 998 / 999))


def _reference_hd95(pred: np.ndarray, gt: np.ndarray, spacing) -> float:
    """The definition written out without MONAI: edge voxels, all pairwise distances in mm, max of the two
    directed 95th percentiles (numpy's default linear interpolation)."""
    edges = [np.argwhere(m & ~ndimage.binary_erosion(m)) * np.asarray(spacing) for m in (pred, gt)]
    distances = cdist(edges[0], edges[1])
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in (0, 1, 2)])
def test_hd95_matches_the_written_out_definition(seed: int) -> None:
    shape = (20, 24, 28)
    pred, gt = _blobs(shape, seed), _blobs(shape, seed + 100)
    assert pred[0].any() or pred[-1].any()  # blobs touch the volume's faces, where cropping could go wrong
    expected = _reference_hd95(pred, gt, (0.8, 1.3, 2.5))
    assert hd95(pred, gt, (0.8, 1.3, 2.5)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(5)])
def test_dice_equals_monai_dice_metric(seed: int) -> None:
    import torch
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(seed)
    shape = (20, 24, 28)
    pred, gt = _blobs(shape, seed, rng.uniform(0.05, 0.5)), _blobs(shape, seed + 50, rng.uniform(0.05, 0.5))
    metric = DiceMetric(include_background=True, reduction="none")
    expected = metric(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(gt)[None, None].float())
    assert dice(pred, gt) == pytest.approx(float(expected.item()), rel=1e-6)


def test_spacing_from_a_rotated_affine() -> None:
    angle = 0.3
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.9, 1.1, 5.5])
    affine[:3, 3] = [-100, 20, 3]
    assert spacing_from_affine(affine) == pytest.approx((0.9, 1.1, 5.5))


# Lesion-wise, hand-computed (1 mm voxels, so mm^3 = voxels; BraTS-GLI: dilation 3, threshold 50 mm^3):
#   A: 4x4x4 = 64 voxel lesion, predicted shifted by one x step -> Dice 2 * 48 / 128 = 0.75; HD95 1 mm
#      (20 of the 56 edge voxels are one step from the other surface in each direction, the rest 0).
#   B: 64 voxel lesion, no prediction near it -> Dice 0, HD95 374 (a miss).
#   C: 27 voxel lesion (<= 50) exactly predicted -> left out; its prediction is not a false positive.
#   D: 8 voxel lesion (<= 50), not predicted -> left out, not a miss.
#   FP: a 27 voxel prediction far from every lesion -> Dice 0, HD95 374.
# Score: Dice (0.75 + 0 + 0) / 3 = 0.25; HD95 (1 + 374 + 374) / 3.
LESION_SHAPE = (30, 34, 38)


def _lesion_case() -> tuple[np.ndarray, np.ndarray]:
    gt = _box(LESION_SHAPE, (3, 7), (3, 7), (3, 7))  # A
    gt |= _box(LESION_SHAPE, (3, 7), (20, 24), (3, 7))  # B
    gt |= _box(LESION_SHAPE, (20, 23), (3, 6), (20, 23))  # C
    gt |= _box(LESION_SHAPE, (10, 12), (28, 30), (30, 32))  # D
    pred = _box(LESION_SHAPE, (4, 8), (3, 7), (3, 7))  # A shifted
    pred |= _box(LESION_SHAPE, (20, 23), (3, 6), (20, 23))  # C
    pred |= _box(LESION_SHAPE, (22, 25), (22, 25), (28, 31))  # FP
    return pred, gt


def test_lesion_wise_hand_computed() -> None:
    pred, gt = _lesion_case()
    result = lesion_wise(pred, gt, (1.0, 1.0, 1.0), LESION_RULES["BraTS-GLI"])
    assert (result.tp, result.fn, result.fp) == (1, 1, 1)
    assert result.dice == pytest.approx(0.25)
    assert result.hd95 == pytest.approx((1.0 + 2 * LESION_HD95_PENALTY_MM) / 3)
    assert sorted((lesion.volume_mm3, lesion.counted) for lesion in result.lesions) == [
        (8.0, False),
        (27.0, False),
        (64.0, True),
        (64.0, True),
    ]
    counted = sorted((lesion.dice, lesion.hd95) for lesion in result.lesions if lesion.counted)
    assert counted == [(0.0, LESION_HD95_PENALTY_MM), pytest.approx((0.75, 1.0))]


def test_lesion_threshold_is_in_mm3() -> None:
    """With 2 mm^3 voxels the 27 voxel lesion C is 54 mm^3, above the threshold: counted, and detected."""
    pred, gt = _lesion_case()
    result = lesion_wise(pred, gt, (1.0, 1.0, 2.0), LESION_RULES["BraTS-GLI"])
    assert (result.tp, result.fn, result.fp) == (2, 1, 1)


def _naive_lesion_wise(pred: np.ndarray, gt: np.ndarray, rules: LesionRules) -> tuple[float, float, int, int, int]:
    """The challenge's steps on the whole volume, without the crops of ``lesion_wise`` (1 mm voxels)."""
    import cc3d

    ball = ndimage.generate_binary_structure(3, 2)
    steps = rules.dilation_iterations
    merged = cc3d.connected_components(ndimage.binary_dilation(gt, ball, iterations=steps), connectivity=26)
    lesions = np.where(gt, merged, 0)
    pred_labels = cc3d.connected_components(pred, connectivity=26)
    scores, tp, fn, matched_any = [], 0, 0, set()
    for number in range(1, int(lesions.max()) + 1):
        lesion = lesions == number
        matched = set(np.unique(pred_labels[ndimage.binary_dilation(lesion, ball, iterations=steps)])) - {0}
        matched_any |= matched
        if lesion.sum() <= rules.volume_threshold_mm3:
            continue
        joint = np.isin(pred_labels, list(matched))
        scores.append((dice(joint, lesion), hd95(joint, lesion, (1, 1, 1)) if matched else LESION_HD95_PENALTY_MM))
        tp, fn = tp + bool(matched), fn + (not matched)
    fp = len(set(np.unique(pred_labels)) - {0} - matched_any)
    count = len(scores) + fp
    if not count:
        return 1.0, 0.0, tp, fn, fp
    lesion_dice = sum(d for d, _ in scores) / count
    return lesion_dice, (sum(h for _, h in scores) + fp * LESION_HD95_PENALTY_MM) / count, tp, fn, fp


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(4)])
@pytest.mark.parametrize("challenge", ["BraTS-GLI", "BraTS-MET"])
def test_lesion_wise_equals_the_uncropped_steps(seed: int, challenge: str) -> None:
    shape = (20, 24, 28)
    gt = _blobs(shape, seed + 10, 0.04)
    # A prediction overlapping the lesions in part, with false positives of its own.
    pred = (np.roll(gt, 1, axis=0) & ~_blobs(shape, seed + 20, 0.3)) | _blobs(shape, seed, 0.02)
    result = lesion_wise(pred, gt, (1.0, 1.0, 1.0), LESION_RULES[challenge])
    got = (result.dice, result.hd95, result.tp, result.fn, result.fp)
    assert got == pytest.approx(_naive_lesion_wise(pred, gt, LESION_RULES[challenge]))
    assert result.tp + result.fn + result.fp > 1  # the seeds give several lesions and components


@pytest.mark.parametrize(
    "extra_voxel, counted",
    [pytest.param(False, False, id="50-voxels-left-out"), pytest.param(True, True, id="51-voxels-counted")],
)
def test_lesion_volume_threshold_is_inclusive(extra_voxel: bool, counted: bool) -> None:
    """The challenge code leaves out lesions of volume <= 50 mm^3, not < 50."""
    gt = _box(LESION_SHAPE, (5, 10), (5, 10), (5, 7))  # 50 voxels
    gt[10, 5, 5] = extra_voxel
    pred = np.zeros(LESION_SHAPE, dtype=bool)  # missed: an FN only when the lesion counts
    result = lesion_wise(pred, gt, (1.0, 1.0, 1.0), LESION_RULES["BraTS-GLI"])
    assert result.fn == int(counted) and result.lesions[0].counted is counted
    assert (result.dice, result.hd95) == ((0.0, LESION_HD95_PENALTY_MM) if counted else (1.0, 0.0))


@pytest.mark.parametrize(
    "gap, rules, matched",
    [
        # 2 empty voxels between lesion and prediction: inside a 3-step dilation, so matched.
        pytest.param(2, LESION_RULES["BraTS-GLI"], True, id="gap2-dilation3"),
        pytest.param(3, LESION_RULES["BraTS-GLI"], False, id="gap3-dilation3"),
        pytest.param(2, LESION_RULES["BraTS-MET"], False, id="gap2-dilation1"),
        pytest.param(0, LESION_RULES["BraTS-MET"], True, id="touching-dilation1"),
    ],
)
def test_prediction_near_a_lesion_is_matched_within_the_dilation(gap: int, rules: LesionRules, matched: bool) -> None:
    gt = _box(LESION_SHAPE, (5, 10), (5, 10), (5, 10))
    pred = _box(LESION_SHAPE, (10 + gap, 13 + gap), (5, 8), (5, 8))
    result = lesion_wise(pred, gt, (1.0, 1.0, 1.0), rules)
    assert (result.tp, result.fn, result.fp) == ((1, 0, 0) if matched else (0, 1, 1))
    assert result.dice == 0.0  # no overlap either way
    if matched:
        assert result.hd95 < LESION_HD95_PENALTY_MM
    else:
        assert result.hd95 == LESION_HD95_PENALTY_MM


def test_lesions_closer_than_the_dilation_merge() -> None:
    # A 4-voxel gap: two 3-step dilations bridge it (one lesion), two 1-step ones do not.
    gt = _box(LESION_SHAPE, (5, 10), (5, 10), (5, 10)) | _box(LESION_SHAPE, (14, 19), (5, 10), (5, 10))
    assert len(lesion_wise(gt, gt, (1.0, 1.0, 1.0), LESION_RULES["BraTS-GLI"]).lesions) == 1
    assert len(lesion_wise(gt, gt, (1.0, 1.0, 1.0), LESION_RULES["BraTS-MET"]).lesions) == 2


@pytest.mark.parametrize(
    "pred_empty, gt_empty, expected",
    [
        pytest.param(True, True, (1.0, 0.0, 0, 0, 0), id="both-empty"),
        pytest.param(True, False, (0.0, LESION_HD95_PENALTY_MM, 0, 1, 0), id="pred-empty"),
        pytest.param(False, True, (0.0, LESION_HD95_PENALTY_MM, 0, 0, 1), id="gt-empty"),
    ],
)
def test_lesion_wise_empty_masks(pred_empty: bool, gt_empty: bool, expected: tuple) -> None:
    empty, lesion = np.zeros(LESION_SHAPE, dtype=bool), _box(LESION_SHAPE, (3, 7), (3, 7), (3, 7))
    result = lesion_wise(empty if pred_empty else lesion, empty if gt_empty else lesion, (1.0, 1.0, 1.0))
    assert (result.dice, result.hd95, result.tp, result.fn, result.fp) == pytest.approx(expected)


def test_detection_counts() -> None:
    shape = (20, 24, 28)
    gt = _box(shape, (2, 6), (2, 6), (2, 6))  # hit by one voxel
    gt |= _box(shape, (10, 11), (10, 11), (10, 11)) | _box(shape, (11, 12), (11, 12), (11, 12))  # 26-connected
    gt |= _box(shape, (15, 18), (2, 5), (20, 23))  # missed
    pred = _box(shape, (5, 9), (5, 9), (5, 9))  # touches the first at voxel (5, 5, 5) only
    pred |= _box(shape, (11, 12), (11, 12), (11, 12))  # hits the diagonal pair
    pred |= _box(shape, (2, 4), (18, 20), (2, 4)) | _box(shape, (18, 20), (20, 24), (24, 28))  # two false positives
    found = detection_counts(pred, gt)
    assert (found.gt_components, found.hits, found.misses, found.fp_components) == (3, 2, 1, 2)
    empty = np.zeros(shape, dtype=bool)
    assert detection_counts(empty, empty).gt_components == 0
    assert detection_counts(pred, empty).fp_components == 4


@pytest.mark.parametrize(
    "gt_values, pred_values, expected",
    [
        pytest.param([0, 1, 2, 4], [0, 2, 4], "legacy", id="legacy"),
        pytest.param([0, 1, 2, 3], [0, 1], "2023", id="2023"),
        pytest.param([0, 1, 2], [0, 2], "legacy", id="neither-3-nor-4"),
        pytest.param([0, 2], [0, 2, 3], "2023", id="3-only-in-prediction"),
        pytest.param([0], [0], "legacy", id="empty"),
    ],
)
def test_brats_convention(gt_values, pred_values, expected) -> None:
    assert brats_convention(gt_values, pred_values) == expected


@pytest.mark.parametrize(
    "gt_values, pred_values, message",
    [
        pytest.param([0, 1, 3, 4], [0], r"clash \(3 in the ground truth, 4 in the ground truth\)", id="clash-gt"),
        pytest.param([0, 4], [0, 3], r"3 in the prediction, 4 in the ground truth", id="clash-pred"),
        pytest.param([0, 1, 5], [0], r"ground truth holds label values \[5\]", id="unknown"),
    ],
)
def test_brats_convention_errors(gt_values, pred_values, message) -> None:
    with pytest.raises(ValueError, match=message):
        brats_convention(gt_values, pred_values)


@pytest.mark.parametrize(
    "labels, convention",
    [pytest.param([0, 1, 2, 4], "legacy", id="legacy"), pytest.param([0, 1, 2, 3], "2023", id="2023")],
)
def test_brats_regions(labels: list[int], convention: str) -> None:
    masks = brats_region_masks(np.array(labels), convention)
    assert {k: v.tolist() for k, v in masks.items()} == {
        "WT": [False, True, True, True],  # NCR + ED + ET
        "TC": [False, True, False, True],  # NCR + ET
        "ET": [False, False, False, True],
    }


def test_brats_case_metrics_regions_and_forced_convention() -> None:
    shape = (20, 24, 28)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[4:14, 4:14, 4:14] = 2
    gt[6:12, 6:12, 6:12] = 1
    gt[7:11, 7:11, 7:11] = 4
    pred = gt.copy()
    pred[7:11, 7:11, 7:11] = 1  # ET predicted as NCR: WT and TC perfect, ET missed
    row = brats_case_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert row["convention"] == "legacy"
    assert (row["WT_dice"], row["TC_dice"], row["ET_dice"]) == (1.0, 1.0, 0.0)
    assert (row["ET_hd95"], row["ET_lesion_fn"], row["ET_lesion_tp"]) == (HD95_EMPTY_MM, 1, 0)
    assert row["ET_sensitivity"] == 0.0 and row["WT_lesion_dice"] == 1.0
    with pytest.raises(ValueError, match=r"ground truth holds \[4\], not labels of the 2023"):
        brats_case_metrics(pred, gt, (1.0, 1.0, 1.0), convention="2023")


def test_labels_case_metrics_equal_whole_volume_metrics() -> None:
    """Each label is scored in its own box; the numbers must equal those on the whole volume."""
    shape = (20, 24, 28)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[_blobs(shape, 3, 0.2)] = 1
    gt[2:6, 3:9, 20:27] = 7
    pred = np.zeros(shape, dtype=np.uint8)
    pred[_blobs(shape, 4, 0.2)] = 1
    pred[15:19, 15:19, 1:4] = 9  # only in the prediction
    row = labels_case_metrics(pred, gt, SPACING)
    assert sorted({key.split("_", 1)[0] for key in row}, key=int) == ["1", "7", "9"]
    for value in (1, 7, 9):
        expected = overlap_metrics(pred == value, gt == value, SPACING)
        assert {k: row[f"{value}_{k}"] for k in expected} == pytest.approx(expected)
    assert (row["7_gt_components"], row["7_misses"], row["9_fp_components"], row["9_dice"]) == (1, 1, 1, 0.0)
    assert set(absent_label_metrics()) == {key.split("_", 1)[1] for key in row if key.startswith("7_")}


@pytest.mark.parametrize(
    "values, kwargs, expected",
    [
        pytest.param([0.5, 1.0], {}, {"mean": 0.75, "std": 0.25, "n": 2}, id="population-std"),
        pytest.param([0.5, 1.0], {"ddof": 1}, {"mean": 0.75, "std": math.sqrt(0.125), "n": 2}, id="sample-std"),
        pytest.param(
            [0.2, None, math.nan, 0.9, -math.inf, 0.4], {"median": True},
            {"mean": 0.5, "std": float(np.std([0.2, 0.9, 0.4])), "median": 0.4, "n": 3}, id="undefined-left-out",
        ),
        pytest.param([3, 0, 2], {"total": True}, {"mean": 5 / 3, "std": float(np.std([3, 0, 2])), "n": 3, "total": 5},
                     id="counts-total"),
        pytest.param([0.7], {"ddof": 1}, {"mean": 0.7, "std": None, "n": 1}, id="one-value-no-sample-std"),
        pytest.param([0.7], {}, {"mean": 0.7, "std": 0.0, "n": 1}, id="one-value-population-std"),
        pytest.param([math.nan, None], {"median": True, "total": True},
                     {"mean": None, "std": None, "median": None, "n": 0, "total": 0}, id="nothing-finite"),
    ],
)  # fmt: skip
def test_summary_statistics(values: list, kwargs: dict, expected: dict) -> None:
    stats = summary_statistics(values, **kwargs)
    assert list(stats) == list(expected), "key order is the order of the summary.json files"
    assert stats == pytest.approx(expected)


def test_summary_statistics_matches_the_standard_library() -> None:
    values = list(np.random.default_rng(3).random(9))
    assert summary_statistics(values, ddof=1)["std"] == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert summary_statistics(values)["std"] == pytest.approx(statistics.pstdev(values), rel=1e-12)
    assert summary_statistics(values, median=True)["median"] == statistics.median(values)


def test_summary_statistics_rejects_negative_ddof() -> None:
    with pytest.raises(ValueError, match="ddof must be >= 0, got -1"):
        summary_statistics([1.0], ddof=-1)


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_is_the_share_of_ordered_pairs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 5, 40).astype(float)  # ties on purpose
    truth = rng.random(40) < 0.4
    pairs = [(p, n) for p in scores[truth] for n in scores[~truth]]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert roc_auc(scores, truth) == pytest.approx(expected)
    assert roc_auc(scores, np.zeros(40, bool)) is None


def test_classification_scores_leave_unknown_cases_out() -> None:
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    scores = classification_scores(p, np.array([0, 1, 2, 2, -1]), ["a", "b", "c"])
    assert scores["cases"] == 4 and scores["accuracy"] == 0.75
    assert scores["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert scores["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    one_vs_rest = [roc_auc(p[:4, c], np.array([0, 1, 2, 2]) == c) for c in range(3)]
    assert scores["auc"] == pytest.approx(np.mean(one_vs_rest))
    with pytest.raises(ValueError, match="expected probabilities"):
        classification_scores(p[:, :2], np.zeros(5), ["a", "b", "c"])
