"""Segmentation metrics on binary masks: Dice, HD95, sensitivity/specificity, BraTS lesion-wise scores, detection;
and case classification scores (accuracy, balanced accuracy, AUC, confusion matrix: ``classification_scores``).

Everything here works on numpy arrays of one case; reading files, pairing cases and reports live in
``medseg3d.evaluation``. Conventions (BraTS, for every task):

- both masks empty: Dice 1, HD95 0, sensitivity 1, specificity 1;
- one mask empty: Dice 0, HD95 ``HD95_EMPTY_MM`` (373.13 mm, the diagonal of the 240x240x155 mm BraTS volume);
- HD95 is MONAI's ``compute_hausdorff_distance(percentile=95)``: the edge voxels of each mask (the mask minus
  its 6-connected erosion), the Euclidean distance in mm (voxel spacing) from each edge voxel to the nearest
  edge voxel of the other mask, the 95th percentile (linear interpolation) of each direction, and the larger
  of the two directed values.

Lesion-wise scores follow the BraTS 2023 challenge code (github.com/rachitsaluja/BraTS-2023-Metrics); see
``lesion_wise`` and docs/evaluation.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cc3d
import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage
from scipy.stats import rankdata

from medseg3d.core.constants import EDITIONS, REGIONS
from medseg3d.data.reader import label_values
from medseg3d.ops.boxes import bounding_box

# BraTS convention for HD95 when exactly one of prediction and ground truth is empty (CaPTk / BraTS 2018-2021).
HD95_EMPTY_MM = 373.13
# BraTS 2023 lesion-wise penalty: HD95 of a missed lesion and of a false-positive prediction component.
LESION_HD95_PENALTY_MM = 374.0


@dataclass(frozen=True)
class LesionRules:
    """BraTS 2023 lesion-wise parameters of one challenge.

    Attributes:
        dilation_iterations: iterations of the 18-connected 3D dilation of each ground-truth lesion.
        volume_threshold_mm3: ground-truth lesions of at most this volume are left out of the score.
    """

    dilation_iterations: int
    volume_threshold_mm3: float


# The challenge parameters of the official BraTS 2023 code (get_challenge_parameters).
LESION_RULES: dict[str, LesionRules] = {
    "BraTS-GLI": LesionRules(3, 50.0),
    "BraTS-SSA": LesionRules(3, 50.0),
    "BraTS-MEN": LesionRules(1, 50.0),
    "BraTS-PED": LesionRules(3, 50.0),
    "BraTS-MET": LesionRules(1, 2.0),
}

# Source label values of each BraTS region, per label convention (legacy: 2019-2021, ET = 4; 2023: ET = 3).
BRATS_CONVENTIONS: dict[str, dict[str, tuple[int, ...]]] = {
    convention: {
        region: tuple(sorted(EDITIONS[edition].to_source[value] for value in values))
        for region, values in REGIONS.items()
    }
    for convention, edition in (("legacy", "2021"), ("2023", "2023"))
}
BRATS_LABEL_VALUES: dict[str, tuple[int, ...]] = {
    "legacy": EDITIONS["2021"].source_labels,
    "2023": EDITIONS["2023"].source_labels,
}


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the lengths of the affine's first three columns.

    >>> spacing_from_affine(np.diag([-0.5, 2.0, 3.0, 1.0]))
    (0.5, 2.0, 3.0)
    """
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient 2|P & G| / (|P| + |G|) of two binary masks of one shape; 1.0 when both are empty."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / total


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance in mm between two binary masks (MONAI's definition, see the module doc).

    Both masks are cropped to their joint bounding box plus one voxel first, so a 240x240x155 volume costs
    what its tumour costs.

    Args:
        pred: binary mask of shape (X, Y, Z).
        gt: binary mask of the same shape.
        spacing: voxel size in mm along X, Y, Z.

    Returns:
        The distance in mm; 0.0 when both are empty, ``HD95_EMPTY_MM`` when exactly one is.
    """

    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have one shape, got {pred.shape} and {gt.shape}")
    pred_any, gt_any = bool(pred.any()), bool(gt.any())
    if not pred_any and not gt_any:
        return 0.0
    if not pred_any or not gt_any:
        return HD95_EMPTY_MM
    box = bounding_box(pred | gt, margin=1)

    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated `always_return_as_numpy` internally; nothing for a user to act on.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None],
            torch.from_numpy(np.ascontiguousarray(gt[box]))[None, None],
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(distance.item())


def sensitivity_specificity(pred: np.ndarray, gt: np.ndarray, total_voxels: int | None = None) -> tuple[float, float]:
    """Voxel sensitivity TP / (TP + FN) and specificity TN / (TN + FP) over the whole volume.

    Conventions (BraTS 2023 code): an empty ground truth gives sensitivity 1 when the prediction is empty
    too, else 0; a volume without ground-truth background gives specificity 1.

    Args:
        pred: binary mask (any shape).
        gt: binary mask of the same shape.
        total_voxels: voxels of the whole volume when ``pred`` and ``gt`` are a crop holding all their
            foreground (the voxels outside the crop are true negatives); default ``pred.size``.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    total = pred.size if total_voxels is None else int(total_voxels)
    tp = int(np.count_nonzero(pred & gt))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(gt)) - tp
    tn = total - tp - fp - fn
    sensitivity = tp / (tp + fn) if tp + fn else (1.0 if fp == 0 else 0.0)
    specificity = tn / (tn + fp) if tn + fp else 1.0
    return sensitivity, specificity


def overlap_metrics(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], total_voxels: int | None = None
) -> dict[str, float]:
    """Dice, HD95 (mm), sensitivity, specificity and both volumes (mL) of one binary mask pair.

    Args:
        pred: binary mask of shape (X, Y, Z).
        gt: binary mask of the same shape.
        spacing: voxel size in mm along X, Y, Z.
        total_voxels: see ``sensitivity_specificity``.

    Returns:
        ``{"dice", "hd95", "sensitivity", "specificity", "gt_ml", "pred_ml"}``.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    sensitivity, specificity = sensitivity_specificity(pred, gt, total_voxels)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return {
        "dice": dice(pred, gt),
        "hd95": hd95(pred, gt, spacing),
        "sensitivity": sensitivity,
        "specificity": specificity,
        "gt_ml": int(np.count_nonzero(gt)) * voxel_ml,
        "pred_ml": int(np.count_nonzero(pred)) * voxel_ml,
    }


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a binary mask (cc3d): labels 1..N of shape (X, Y, Z), and N."""

    labels, count = cc3d.connected_components(np.asarray(mask, dtype=bool), connectivity=26, return_N=True)
    return labels, int(count)


@dataclass(frozen=True)
class Detection:
    """Component-level detection counts of one label (26-connected components).

    Attributes:
        gt_components: ground-truth components.
        hits: ground-truth components overlapped by the prediction (at least one voxel).
        misses: ground-truth components the prediction does not touch.
        fp_components: prediction components that overlap no ground-truth voxel.
    """

    gt_components: int
    hits: int
    misses: int
    fp_components: int


def detection_counts(pred: np.ndarray, gt: np.ndarray) -> Detection:
    """Hits, misses and false-positive components of ``pred`` (binary, (X, Y, Z)) against ``gt`` (same shape)."""
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    box = bounding_box(pred | gt, margin=1)
    if box is None:
        return Detection(0, 0, 0, 0)
    pred, gt = pred[box], gt[box]
    gt_labels, gt_count = connected_components(gt)
    pred_labels, pred_count = connected_components(pred)
    both = pred & gt
    hits = int(np.count_nonzero(np.unique(gt_labels[both])))
    touching = int(np.count_nonzero(np.unique(pred_labels[both])))
    return Detection(gt_count, hits, gt_count - hits, pred_count - touching)


@dataclass(frozen=True)
class Lesion:
    """One ground-truth lesion of the lesion-wise score.

    Attributes:
        volume_mm3: its volume.
        matched: prediction components matched to it (inside its dilation).
        dice: Dice of the lesion against the union of its matched components (0 when none).
        hd95: HD95 in mm against them (``LESION_HD95_PENALTY_MM`` when none).
        counted: False when its volume is at most the threshold (left out of the score).
    """

    volume_mm3: float
    matched: int
    dice: float
    hd95: float
    counted: bool


@dataclass(frozen=True)
class LesionWise:
    """BraTS 2023 lesion-wise result of one region.

    Attributes:
        dice: sum of the counted lesions' Dice / (counted lesions + false positives); 1 when both are 0.
        hd95: (sum of the counted lesions' HD95 + 374 x false positives) / (the same count); 0 when it is 0.
        tp: counted lesions with at least one matched prediction component.
        fn: counted lesions without one.
        fp: prediction components matched to no ground-truth lesion (small ones included).
        lesions: every ground-truth lesion, counted or not.
    """

    dice: float
    hd95: float
    tp: int
    fn: int
    fp: int
    lesions: list[Lesion] = field(default_factory=list)


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    if iterations <= 0:
        return mask.copy()
    # generate_binary_structure(3, 2): the 18-connected ball the challenge code dilates with.
    return ndimage.binary_dilation(mask, structure=ndimage.generate_binary_structure(3, 2), iterations=iterations)


def _union(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _grow(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape, strict=True))


def lesion_wise(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], rules: LesionRules = LESION_RULES["BraTS-GLI"]
) -> LesionWise:
    """BraTS 2023 lesion-wise Dice and HD95 of one region.

    1. Ground-truth lesions are the 26-connected components of ``gt``; components whose dilations
       (``rules.dilation_iterations`` x the 18-connected ball) touch are merged into one lesion.
    2. Each lesion is dilated the same way; every 26-connected prediction component intersecting the
       dilated lesion is matched to it. Its Dice and HD95 are computed against the union of those
       components (Dice 0 and HD95 374 mm when there are none).
    3. Lesions of volume at most ``rules.volume_threshold_mm3`` are left out (a prediction matched only to
       them is not a false positive either).
    4. Prediction components matched to no lesion are false positives: Dice 0 and HD95 374 mm each.

    Args:
        pred: binary mask of shape (X, Y, Z).
        gt: binary mask of the same shape.
        spacing: voxel size in mm along X, Y, Z.
        rules: the challenge's dilation and volume threshold.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have one shape, got {pred.shape} and {gt.shape}")
    # Dilation reaches `iterations` voxels, so a crop with that margin gives the uncropped result exactly.
    margin = rules.dilation_iterations + 1
    box = bounding_box(pred | gt, margin=margin)
    if box is None:
        return LesionWise(1.0, 0.0, 0, 0, 0)
    pred, gt = pred[box], gt[box]
    voxel_mm3 = float(np.prod(spacing))

    gt_components, _ = connected_components(gt)
    merged, _ = connected_components(_dilate(gt, rules.dilation_iterations))
    lesion_labels = np.where(gt_components > 0, merged, 0)
    pred_labels, pred_count = connected_components(pred)
    pred_boxes = ndimage.find_objects(pred_labels)

    lesions: list[Lesion] = []
    matched_any: set[int] = set()
    for number, lesion_box in enumerate(ndimage.find_objects(lesion_labels), start=1):
        if lesion_box is None:  # a dilated component without ground truth cannot occur; kept safe
            continue
        region = _grow(lesion_box, rules.dilation_iterations, lesion_labels.shape)
        lesion = lesion_labels[region] == number
        reach = _dilate(lesion, rules.dilation_iterations)
        matched = [int(i) for i in np.unique(pred_labels[region][reach]) if i]
        matched_any.update(matched)
        volume = int(np.count_nonzero(lesion)) * voxel_mm3
        if matched:
            joint = lesion_box
            for i in matched:
                joint = _union(joint, pred_boxes[i - 1])
            joint_pred = np.isin(pred_labels[joint], matched)
            joint_gt = lesion_labels[joint] == number
            lesion_dice, lesion_hd95 = dice(joint_pred, joint_gt), hd95(joint_pred, joint_gt, spacing)
        else:
            lesion_dice, lesion_hd95 = 0.0, LESION_HD95_PENALTY_MM
        lesions.append(Lesion(volume, len(matched), lesion_dice, lesion_hd95, volume > rules.volume_threshold_mm3))

    counted = [lesion for lesion in lesions if lesion.counted]
    fp = pred_count - len(matched_any)
    denominator = len(counted) + fp
    if denominator == 0:
        score_dice, score_hd95 = 1.0, 0.0
    else:
        score_dice = sum(lesion.dice for lesion in counted) / denominator
        score_hd95 = (sum(lesion.hd95 for lesion in counted) + fp * LESION_HD95_PENALTY_MM) / denominator
    tp = sum(1 for lesion in counted if lesion.matched)
    return LesionWise(score_dice, score_hd95, tp, len(counted) - tp, fp, lesions)


def brats_convention(gt_values: Sequence[int], pred_values: Sequence[int] = ()) -> str:
    """The BraTS label convention of a case from the label values present: ``"legacy"`` or ``"2023"``.

    A 4 (ET in 2019-2021) means legacy, a 3 (ET since 2023) means 2023; with neither, both conventions
    agree on 1 (NCR) and 2 (ED), so legacy is returned. Prediction values count too, so a prediction in
    the other convention is caught rather than scored as a missing ET.

    >>> brats_convention([0, 1, 2, 4]), brats_convention([0, 2, 3]), brats_convention([0, 1])
    ('legacy', '2023', 'legacy')

    Raises:
        ValueError: both 3 and 4 present (naming where each one is), or a value neither convention has.
    """
    gt_set, pred_set = {int(v) for v in gt_values}, {int(v) for v in pred_values}
    for name, values in (("ground truth", gt_set), ("prediction", pred_set)):
        unknown = sorted(values - {0, 1, 2, 3, 4})
        if unknown:
            raise ValueError(
                f"the {name} holds label values {unknown}; expected BraTS labels 0/1/2/4 (2019-2021) or "
                "0/1/2/3 (2023) (use --task labels for other label maps)"
            )
    present = gt_set | pred_set
    if 3 in present and 4 in present:
        where = ", ".join(
            f"{value} in the {name}"
            for value in (3, 4)
            for name, values in (("ground truth", gt_set), ("prediction", pred_set))
            if value in values
        )
        raise ValueError(
            f"BraTS label conventions clash ({where}): ET is 4 in 2019-2021 and 3 since 2023; expected one "
            "convention for the ground truth and the prediction of a case"
        )
    return "2023" if 3 in present else "legacy"


def brats_region_masks(labels: np.ndarray, convention: str) -> dict[str, np.ndarray]:
    """Binary WT, TC, ET masks (each of the shape of ``labels``) of a label map in ``convention``.

    >>> {k: v.tolist() for k, v in brats_region_masks(np.array([0, 1, 2, 4]), "legacy").items()}
    {'WT': [False, True, True, True], 'TC': [False, True, False, True], 'ET': [False, False, False, True]}
    """
    masks = {}
    for region, values in BRATS_CONVENTIONS[convention].items():
        mask = labels == values[0]
        for value in values[1:]:  # == per value is several times faster than np.isin on large volumes
            mask |= labels == value
        masks[region] = mask
    return masks


def brats_case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    rules: LesionRules = LESION_RULES["BraTS-GLI"],
    convention: str = "auto",
) -> dict[str, float | int | str]:
    """Every BraTS metric of one case: ``convention`` and ``<region>_<metric>`` for WT, TC and ET.

    Metrics: those of ``overlap_metrics``, then ``lesion_dice``, ``lesion_hd95``, ``lesion_tp``,
    ``lesion_fn``, ``lesion_fp`` (``lesion_wise``).

    Args:
        pred: predicted label map of shape (X, Y, Z) in a BraTS source convention.
        gt: ground-truth label map of the same shape.
        spacing: voxel size in mm along X, Y, Z.
        rules: the lesion-wise parameters.
        convention: ``auto`` (``brats_convention`` of the values present), ``legacy`` or ``2023``.

    Raises:
        ValueError: labels outside the convention, or the two conventions mixed.
    """
    # The values present, background 0 always listed (medseg3d.data.reader.label_values: the one scan of labels).
    gt_values, pred_values = sorted({0, *label_values(gt)}), sorted({0, *label_values(pred)})
    detected = brats_convention(gt_values, pred_values)
    if convention != "auto":
        for name, values in (("ground truth", gt_values), ("prediction", pred_values)):
            extra = sorted(set(values) - set(BRATS_LABEL_VALUES[convention]))
            if extra:
                raise ValueError(f"the {name} holds {extra}, not labels of the {convention} BraTS convention")
        detected = convention
    row: dict[str, float | int | str] = {"convention": detected}
    gt_masks, pred_masks = brats_region_masks(gt, detected), brats_region_masks(pred, detected)
    for region in BRATS_CONVENTIONS[detected]:
        for key, value in overlap_metrics(pred_masks[region], gt_masks[region], spacing).items():
            row[f"{region}_{key}"] = value
        lesions = lesion_wise(pred_masks[region], gt_masks[region], spacing, rules)
        row[f"{region}_lesion_dice"], row[f"{region}_lesion_hd95"] = lesions.dice, lesions.hd95
        row[f"{region}_lesion_tp"], row[f"{region}_lesion_fn"] = lesions.tp, lesions.fn
        row[f"{region}_lesion_fp"] = lesions.fp
    return row


def labels_case_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float | int]:
    """Metrics of every non-zero label value present in either map: ``<value>_<metric>``.

    Metrics: those of ``overlap_metrics``, then the ``detection_counts`` (``gt_components``, ``hits``,
    ``misses``, ``fp_components``). Each label is scored inside its own bounding box, so a map of a
    hundred organs costs two passes over the volume plus the organs.

    Args:
        pred: predicted label map of shape (X, Y, Z), non-negative integers.
        gt: ground-truth label map of the same shape.
        spacing: voxel size in mm along X, Y, Z.
    """
    row: dict[str, float | int] = {}
    gt_boxes, pred_boxes = ndimage.find_objects(gt), ndimage.find_objects(pred)
    for value in sorted((set(label_values(gt)) | set(label_values(pred))) - {0}):
        boxes = [b[value - 1] for b in (gt_boxes, pred_boxes) if value <= len(b) and b[value - 1] is not None]
        joint = _grow(boxes[0] if len(boxes) == 1 else _union(*boxes), 1, gt.shape)
        gt_mask, pred_mask = gt[joint] == value, pred[joint] == value
        for key, number in overlap_metrics(pred_mask, gt_mask, spacing, total_voxels=gt.size).items():
            row[f"{value}_{key}"] = number
        found = detection_counts(pred_mask, gt_mask)
        row[f"{value}_gt_components"], row[f"{value}_hits"] = found.gt_components, found.hits
        row[f"{value}_misses"], row[f"{value}_fp_components"] = found.misses, found.fp_components
    return row


def absent_label_metrics() -> dict[str, float | int]:
    """``labels_case_metrics`` of a label absent from both maps of a case (the both-empty conventions)."""
    both_empty = {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0, "gt_ml": 0.0, "pred_ml": 0.0}
    return {**both_empty, "gt_components": 0, "hits": 0, "misses": 0, "fp_components": 0}


def summary_statistics(
    values: Iterable[float | None], ddof: int = 0, median: bool = False, total: bool = False
) -> dict[str, float | int | None]:
    """Mean, standard deviation and count of the finite values: the summary of every report (``summary.json`` of
    ``medseg3d evaluate`` and of the evaluate overlay, ``cv_summary.csv``/``.json`` of a cross-validation).

    Args:
        values: numbers; None, NaN and infinities (an undefined score) are left out.
        ddof: delta degrees of freedom of the standard deviation: 0 for the population's (a report over cases), 1
            for the sample's (folds of a cross-validation).
        median: add ``median``.
        total: add ``total``, the sum as an integer (counts: lesions, components).

    Returns:
        ``mean``, ``std``, (``median``), ``n``, (``total``) in this order; the statistics are None without a finite
        value (``total`` 0), and ``std`` is None when ``n <= ddof``.

    >>> summary_statistics([0.5, 1.0, float("nan"), None])
    {'mean': 0.75, 'std': 0.25, 'n': 2}
    >>> summary_statistics([1.0, 2.0, 6.0], ddof=1, median=True, total=True)
    {'mean': 3.0, 'std': 2.6457513110645907, 'median': 2.0, 'n': 3, 'total': 9}
    >>> summary_statistics([0.5], ddof=1)
    {'mean': 0.5, 'std': None, 'n': 1}
    """
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}")
    finite = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    empty = not finite.size
    stats: dict[str, float | int | None] = {
        "mean": None if empty else float(finite.mean()),
        "std": None if finite.size <= ddof else float(finite.std(ddof=ddof)),
    }
    if median:
        stats["median"] = None if empty else float(np.median(finite))
    stats["n"] = int(finite.size)
    if total:
        stats["total"] = int(finite.sum()) if not empty else 0
    return stats


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` (N,) for the binary truth ``positive`` (N,): the probability that
    a positive case scores above a negative one, ties counting half (the Mann-Whitney statistic). None when
    one of the two is absent.

    >>> roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_scores(probabilities: np.ndarray, targets: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Case-level scores of class ``probabilities`` (N, K) against class indices ``targets`` (N,); cases whose
    target is negative (unknown) are left out.

    Returns:
        ``cases``; ``accuracy``; ``balanced_accuracy`` (the mean of the recalls of the classes present);
        ``auc``: two classes, the ROC AUC of the last class's probability (HGG in grade's order); more, the mean
        of the one-vs-rest AUCs of the classes present (None where not computable); ``confusion``: counts
        ``[true][predicted]`` in ``names`` order, the prediction being the most probable class.

    >>> p = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    >>> s = classification_scores(p, np.array([0, 1, 1, 1]), ["LGG", "HGG"])
    >>> s["accuracy"], round(s["balanced_accuracy"], 3), round(s["auc"], 3), s["confusion"]
    (0.75, 0.833, 1.0, [[1, 0], [1, 2]])
    """
    probabilities, targets = np.asarray(probabilities, dtype=np.float64), np.asarray(targets).astype(int)
    k = len(names)
    if probabilities.ndim != 2 or probabilities.shape[1] != k or len(probabilities) != len(targets):
        raise ValueError(f"expected probabilities (N, {k}) and targets (N,), got {probabilities.shape} and "
                         f"{targets.shape}")  # fmt: skip
    known = targets >= 0
    probabilities, targets = probabilities[known], targets[known]
    if targets.size and targets.max() >= k:
        raise ValueError(f"a target class index is {targets.max()}, beyond the {k} classes {list(names)}")
    predicted = probabilities.argmax(axis=1) if len(targets) else targets
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (targets, predicted), 1)
    present = [c for c in range(k) if confusion[c].sum()]
    recalls = [confusion[c, c] / confusion[c].sum() for c in present]
    if k == 2:
        auc = roc_auc(probabilities[:, 1], targets == 1)
    else:
        aucs = [roc_auc(probabilities[:, c], targets == c) for c in present]
        aucs = [a for a in aucs if a is not None]
        auc = float(np.mean(aucs)) if aucs else None
    return {
        "cases": int(len(targets)),
        "accuracy": float((predicted == targets).mean()) if len(targets) else None,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else None,
        "auc": auc,
        "confusion": confusion.tolist(),
    }
