"""``medseg3d evaluate PRED GT``: score folders of predicted label maps against ground truth.

Pairs files by case ID, checks that each pair shares one voxel grid (never resampling), computes the
metrics of ``medseg3d.metrics`` per case and per BraTS region (``task="brats"``) or per label value
(``task="labels"``), and writes ``report.csv`` (one row per case) and ``summary.json`` (mean, std, median
and n of every metric over the cases evaluated). A case that cannot be evaluated is a row with its reason;
the others go on. The on-disk contract is docs/evaluation.md.

With ``classes`` (``--classes FILE``), the case classes a multitask ``medseg3d infer`` wrote into PRED's
``summary.csv`` (``class``, ``p_<name>`` per class) are also scored against the true classes of FILE (a CSV
``case_id,<field>`` or a ``dataset.json``) with ``medseg3d.metrics.classification_scores``: accuracy, balanced
accuracy, AUC and the confusion matrix, under ``classification`` in ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from medseg3d.core.constants import IMAGE_EXTENSIONS, INFER_SUMMARY, PROBABILITY_PREFIX, REGIONS
from medseg3d.core.errors import InputError, check_output_folder
from medseg3d.core.io import write_json, write_text
from medseg3d.data.brats import find_cases
from medseg3d.data.dataset_json import DATASET_JSON, dataset_json_path, read_dataset_json
from medseg3d.data.pairs import CASE_ID_COLUMN, read_class_csv
from medseg3d.data.reader import Grid, check_same_grid, read_label
from medseg3d.metrics import (
    BRATS_CONVENTIONS,
    HD95_EMPTY_MM,
    LESION_HD95_PENALTY_MM,
    LESION_RULES,
    LesionRules,
    absent_label_metrics,
    brats_case_metrics,
    classification_scores,
    labels_case_metrics,
    spacing_from_affine,
    summary_statistics,
)

TASKS: tuple[str, ...] = ("brats", "labels")
CONVENTIONS: tuple[str, ...] = ("auto", *BRATS_CONVENTIONS)
REPORT_NAME = "report.csv"
SUMMARY_NAME = "summary.json"
ID_COLUMNS: tuple[str, ...] = ("case_id", "pred", "gt", "status", "error")
OVERLAP_METRICS: tuple[str, ...] = ("dice", "hd95", "sensitivity", "specificity", "gt_ml", "pred_ml")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "brats": (*OVERLAP_METRICS, "lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fn", "lesion_fp"),
    "labels": (*OVERLAP_METRICS, "gt_components", "hits", "misses", "fp_components"),
}
COUNT_METRICS = frozenset({"lesion_tp", "lesion_fn", "lesion_fp", "gt_components", "hits", "misses", "fp_components"})
# Statuses that make the command fail (exit code 1); a prediction without ground truth is only reported.
FAILING_STATUSES = frozenset({"failed", "missing_pred"})
# Case classes (``classes=``): what ``medseg3d infer`` writes beside its label maps, and report.csv's columns.
CLASS_REPORT_COLUMNS: tuple[str, ...] = ("class_true", "class_pred")
DEFAULT_CLASS_FIELD = "grade"  # of a dataset.json, where prep_brats writes the glioma grade

_SEG_SUFFIX = re.compile(r"[_-]seg$", re.IGNORECASE)


def split_extension(name: str) -> tuple[str, str] | None:
    """``(stem, extension)`` of a label-map file name, or None when it is not one.

    >>> split_extension("BraTS-GLI-00001-000-seg.nii.gz"), split_extension("summary.csv")
    (('BraTS-GLI-00001-000-seg', '.nii.gz'), None)
    """
    lower = name.lower()
    for extension in IMAGE_EXTENSIONS:
        if lower.endswith(extension) and len(name) > len(extension):
            return name[: -len(extension)], name[-len(extension) :]
    return None


def case_id_of(path: str | os.PathLike) -> str:
    """Case ID of a label-map file: its name without extension and without a ``_seg``/``-seg`` suffix.

    >>> case_id_of("gt/BraTS2021_00000_seg.nii.gz"), case_id_of("BraTS-GLI-00001-000-seg.nii"), case_id_of("a.mha")
    ('BraTS2021_00000', 'BraTS-GLI-00001-000', 'a')
    """
    split = split_extension(Path(path).name)
    stem = split[0] if split else Path(path).name
    return _SEG_SUFFIX.sub("", stem) or stem


def _label_map_files(folder: Path) -> list[Path]:
    # Hidden names are skipped: editors' and our own atomic writers' temporary files start with a dot.
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and split_extension(p.name))


def find_label_maps(folder: str | os.PathLike, raw_brats_tree: bool = False) -> dict[str, list[Path]]:
    """Label-map files of ``folder`` by case ID (a list, so that two files claiming one case are reported).

    Only files directly in ``folder`` count (``summary.csv``, ``previews/``, ``evaluation/`` are ignored).
    With ``raw_brats_tree`` and no label map at the top level, ``folder`` is read as a raw BraTS tree
    (``medseg3d.data.brats.find_cases``: case folders at any depth, segmentation found by its suffix).
    """
    folder = Path(folder)
    maps: dict[str, list[Path]] = {}
    files = _label_map_files(folder)
    if not files and raw_brats_tree:
        try:
            cases = find_cases(folder)
        except InputError:
            return maps
        return {case.case_id: [case.seg] for case in cases if case.seg is not None}
    for path in files:
        maps.setdefault(case_id_of(path), []).append(path)
    return maps


@dataclass(frozen=True)
class CasePair:
    """The files of one case; ``problem`` says why it cannot be evaluated (empty when it can)."""

    case_id: str
    pred: Path | None
    gt: Path | None
    status: str = "ok"
    problem: str = ""


def pair_cases(pred: str | os.PathLike, gt: str | os.PathLike) -> list[CasePair]:
    """Pair prediction and ground-truth files by case ID (two files, or two folders), sorted by case ID.

    Raises:
        InputError: a path that does not exist, a file beside a folder, a folder without label maps, or
            folders that share no case ID.
    """
    pred, gt = Path(pred), Path(gt)
    for path, what in ((pred, "predictions"), (gt, "ground truth")):
        if not path.exists():
            raise InputError(path, f"not found; expected a folder (or a file) of {what} label maps")
    if pred.is_file() and gt.is_file():
        return [CasePair(case_id_of(pred), pred, gt)]
    if pred.is_file() or gt.is_file():
        raise InputError(
            pred if pred.is_file() else gt, "is a file but the other path is a folder; give two folders or two files"
        )
    pred_maps, gt_maps = find_label_maps(pred), find_label_maps(gt, raw_brats_tree=True)
    expected = ", ".join(IMAGE_EXTENSIONS)
    for folder, maps in ((pred, pred_maps), (gt, gt_maps)):
        if not maps:
            raise InputError(folder, f"holds no label map; expected files ending in {expected}")
    if not set(pred_maps) & set(gt_maps):
        raise InputError(
            pred,
            f"no prediction matches a ground-truth case of {gt}: predictions {_some(pred_maps)}, ground truth "
            f"{_some(gt_maps)}; expected <case_id>.nii.gz beside <case_id>[_-]seg.nii.gz",
        )
    pairs = []
    for case_id in sorted(set(pred_maps) | set(gt_maps)):
        preds, gts = pred_maps.get(case_id, []), gt_maps.get(case_id, [])
        pred_path, gt_path = (preds[0] if preds else None), (gts[0] if gts else None)
        if len(preds) > 1 or len(gts) > 1:
            names = ", ".join(p.name for p in (preds if len(preds) > 1 else gts))
            problem = f"several files claim case {case_id} ({names}); expected one"
            pairs.append(CasePair(case_id, pred_path, gt_path, "failed", problem))
        elif pred_path is None:
            pairs.append(
                CasePair(case_id, None, gt_path, "missing_pred", f"no prediction for {gt_path.name} in {pred}")
            )
        elif gt_path is None:
            pairs.append(
                CasePair(case_id, pred_path, None, "missing_gt", f"no ground truth for {pred_path.name} in {gt}")
            )
        else:
            pairs.append(CasePair(case_id, pred_path, gt_path))
    return pairs


def _some(maps: dict[str, list[Path]], limit: int = 3) -> str:
    ids = sorted(maps)
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def read_label_map(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map (``medseg3d.data.reader``: NIfTI, NRRD, MHA/MHD) as non-negative integers.

    Returns:
        (labels, affine): labels of shape (X, Y, Z) in an integer dtype, affine the 4x4 voxel-to-RAS matrix.

    Raises:
        InputError: unreadable or not 3D, NaN/Inf, non-integer or negative values (an image, not a label map).
    """
    path = Path(path)
    label = read_label(path)
    data, affine = label.array[0], label.affine
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            raise InputError(path, "holds NaN or Inf voxels; expected a label map of integer values")
        fraction = data[data != np.round(data)]
        if fraction.size:
            raise InputError(
                path, f"holds non-integer values (e.g. {fraction.flat[0]:.4g}); expected a label map, not an image"
            )
        data = data.astype(np.int32)
    elif data.dtype.kind not in "iub":
        raise InputError(path, f"holds {data.dtype} voxels; expected a label map of integer values")
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if data.dtype.kind == "i" and data.size and int(data.min()) < 0:
        raise InputError(path, f"holds negative values (min {int(data.min())}); expected a label map, not an image")
    return data, affine


def check_same_geometry(
    pred_path: str | os.PathLike,
    pred_shape: Sequence[int],
    pred_affine: np.ndarray,
    gt_path: str | os.PathLike,
    gt_shape: Sequence[int],
    gt_affine: np.ndarray,
) -> None:
    """Raise ``InputError`` naming both files unless the prediction lies on the ground truth's voxel grid.

    The one grid check of ``medseg3d.data.reader.check_same_grid``: equal shapes, every voxel centre within the
    reader's ``position_tolerance`` (1 % of the smallest voxel, at least 0.01 mm).
    """
    check_same_grid(
        pred_path,
        Grid(tuple(int(n) for n in pred_shape), np.asarray(pred_affine, dtype=np.float64)),
        gt_path,
        Grid(tuple(int(n) for n in gt_shape), np.asarray(gt_affine, dtype=np.float64)),
        relation="not on the voxel grid of the ground truth",
        expected="expected the prediction in the ground truth's geometry (evaluate never resamples)",
        reference_name=os.fspath(gt_path),
    )


def evaluate_case(
    pred_path: str | os.PathLike,
    gt_path: str | os.PathLike,
    task: str = "brats",
    rules: LesionRules = LESION_RULES["BraTS-GLI"],
    convention: str = "auto",
) -> dict[str, Any]:
    """Metrics of one prediction file against its ground-truth file.

    Returns:
        ``{"<name>_<metric>": value}`` for every region (``brats``: WT, TC, ET, plus ``convention``) or
        label value present in either file (``labels``), metrics as in ``TASK_METRICS``.

    Raises:
        InputError: unreadable file, not a label map, different voxel grids, labels outside the convention.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    gt, gt_affine = read_label_map(gt_path)
    pred, pred_affine = read_label_map(pred_path)
    check_same_geometry(pred_path, pred.shape, pred_affine, gt_path, gt.shape, gt_affine)
    spacing = spacing_from_affine(gt_affine)
    if task == "labels":
        return labels_case_metrics(pred, gt, spacing)
    try:
        return brats_case_metrics(pred, gt, spacing, rules, convention)
    except ValueError as exc:  # a label convention problem involves both files
        raise InputError(gt_path, f"{exc} (prediction {pred_path})") from None


# ----------------------------------------------------------------------------------------------------- case classes


@dataclass(frozen=True)
class ClassPredictions:
    """The case classes of a multitask ``medseg3d infer`` (its ``summary.csv``).

    Attributes:
        path: the ``summary.csv``.
        names: the classes in index order: the order of its ``p_<name>`` columns.
        probabilities: case ID -> the K class probabilities, for every row that has them.
        without: case IDs of the rows without probabilities (a failed case, a case skipped by ``--resume``).
    """

    path: Path
    names: list[str]
    probabilities: dict[str, np.ndarray]
    without: list[str]


def read_class_predictions(pred: str | os.PathLike) -> ClassPredictions:
    """Read the case classes from ``summary.csv`` in ``pred`` (beside it when ``pred`` is a file).

    Raises:
        InputError: no ``summary.csv``, or one without ``case_id`` or ``p_<name>`` columns (naming the PRED folder
            and saying to run ``medseg3d infer --classify``); an unreadable file, a row with some probabilities
            missing or a probability that is not a number in [0, 1] (naming the file, the case and the column).
    """
    pred = Path(pred)
    folder = pred if pred.is_dir() else pred.parent
    path = folder / INFER_SUMMARY
    hint = (
        "expected the summary.csv of a multitask model's predictions, with class and p_<name> columns: run "
        "`medseg3d infer --bundle BUNDLE --classify <field> ...` with a checkpoint trained with --classify"
    )
    if not path.is_file():
        raise InputError(folder, f"holds no {INFER_SUMMARY}; {hint}")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header, rows = list(reader.fieldnames or []), list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"cannot be read ({exc}); {hint}") from None
    columns = [name for name in header if name.startswith(PROBABILITY_PREFIX) and len(name) > len(PROBABILITY_PREFIX)]
    if CASE_ID_COLUMN not in header or not columns:
        found = ", ".join(header) or "none"
        raise InputError(folder, f"{INFER_SUMMARY} has no case classes (columns: {found}); {hint}")
    names = [name[len(PROBABILITY_PREFIX) :] for name in columns]
    probabilities: dict[str, np.ndarray] = {}
    without: list[str] = []
    for number, row in enumerate(rows, 2):
        case_id = (row.get(CASE_ID_COLUMN) or "").strip()
        cells = [(row.get(column) or "").strip() for column in columns]
        if not case_id or not any(cells):
            if case_id:
                without.append(case_id)
            continue
        values = []
        for column, cell in zip(columns, cells, strict=True):
            try:
                value = float(cell)
            except ValueError:
                value = math.nan
            if not 0.0 <= value <= 1.0:
                raise InputError(path, f"line {number} (case {case_id}): {column} is {cell!r}; expected a "
                                 "probability from 0 to 1 in every p_<name> column")  # fmt: skip
            values.append(value)
        probabilities[case_id] = np.array(values)
    return ClassPredictions(path, names, probabilities, without)


def _truth_text(value: Any) -> str | None:
    """A true class as text; None (unknown) for null and empty values."""
    if value is None:
        return None
    return str(value).strip() or None


def read_class_truth(path: str | os.PathLike, field: str | None = None) -> tuple[Path, str, dict[str, str | None]]:
    """The true class of each case: from a CSV ``case_id,<field>[,...]`` or a ``dataset.json`` (or its folder).

    Args:
        path: the CSV (read by ``medseg3d.data.pairs.read_class_csv``), or the ``dataset.json`` file or folder
            (read by ``medseg3d.data.dataset_json.read_dataset_json``: its ``training`` and ``test`` cases).
        field: the column holding the class. Default: a CSV's one column besides ``case_id``; a ``dataset.json``'s
            ``grade`` (``DEFAULT_CLASS_FIELD``).

    Returns:
        (the file read, the field, case ID compared ignoring case (``casefold``) -> class, None where unknown).

    Raises:
        InputError: naming the file: missing, unreadable, a CSV with several columns and no ``field``, a ``field``
            no column or case holds, a ``.json`` file not named ``dataset.json``.
    """
    path = Path(path)
    if path.is_dir() or path.name == DATASET_JSON:
        folder = path if path.is_dir() else path.parent
        content = read_dataset_json(folder)
        source = dataset_json_path(folder)
        field = field or DEFAULT_CLASS_FIELD
        cases = [*content["training"], *content.get("test", [])]
        if not any(field in case for case in cases):
            held = ", ".join(sorted({key for case in cases for key in case} - {"case_id", "image", "label", "fold"}))
            raise InputError(source, f"no case holds {field!r}; expected --class-field naming a per-case column "
                             f"(other columns the cases hold: {held or 'none'})")  # fmt: skip
        return source, field, {case["case_id"].casefold(): _truth_text(case.get(field)) for case in cases}
    if not path.is_file():
        raise InputError(path, "not found; expected a CSV case_id,<field> or a dataset.json (or its folder) holding "
                         "the true class of each case")  # fmt: skip
    if path.suffix.lower() == ".json":
        raise InputError(path, f"is a .json file not named {DATASET_JSON}; expected a dataset.json (prep_brats, "
                         "medseg3d datalist) or a CSV case_id,<field>")  # fmt: skip
    table = read_class_csv(path)
    if field is None:
        if len(table.columns) != 1:
            raise InputError(path, f"has {len(table.columns)} columns besides case_id ({', '.join(table.columns)}); "
                             "expected one, or --class-field naming the one that holds the true class")  # fmt: skip
        field = table.columns[0]
    elif field not in table.columns:
        raise InputError(path, f"has no column {field!r} (columns: {', '.join(table.columns)}); expected the "
                         "--class-field column beside case_id")  # fmt: skip
    return path, field, {case_id.casefold(): _truth_text(row[field]) for case_id, row in table.rows.items()}


def score_classes(
    case_ids: Sequence[str], predictions: ClassPredictions, truth_path: Path, field: str, truth: dict[str, str | None]
) -> tuple[dict[str, Any], dict[str, dict[str, str]]]:
    """Score the predicted case classes against the true ones.

    Every case of ``case_ids`` (the evaluated label maps) and of ``predictions`` counts once: a case without
    predicted probabilities, or whose true class is unknown (absent, null or empty), is left out and listed.

    Returns:
        (the ``classification`` entry of ``summary.json``: ``field``, ``truth``, ``predictions``, ``classes``,
        ``cases``, ``accuracy``, ``balanced_accuracy``, ``auc``, ``auc_of``, ``confusion``, ``left_out``;
        case ID -> ``class_true``/``class_pred`` for report.csv).

    Raises:
        InputError: naming ``truth_path``: a true class of a predicted case that is not one of the classes, or no
            predicted case with a known true class at all.
    """
    names = predictions.names
    probabilities, targets = [], []
    unknown, no_prediction = [], []
    per_case: dict[str, dict[str, str]] = {}
    for case_id in sorted({*case_ids, *predictions.probabilities, *predictions.without}):
        true = truth.get(case_id.casefold())
        found = predictions.probabilities.get(case_id)
        per_case[case_id] = {
            "class_true": true or "",
            "class_pred": names[int(np.argmax(found))] if found is not None else "",
        }
        if found is None:
            no_prediction.append(case_id)
        elif true is None:
            unknown.append(case_id)
        elif true not in names:
            raise InputError(truth_path, f"case {case_id}: {field} is {true!r}; expected one of {names} (the "
                             f"p_<name> columns of {predictions.path}) or empty for unknown")  # fmt: skip
        else:
            probabilities.append(found)
            targets.append(names.index(true))
    if not targets:
        raise InputError(truth_path, f"no case of {predictions.path} has a known {field} here ({len(unknown)} "
                         f"predicted cases unknown); expected their case IDs with a {field} value")  # fmt: skip
    scores = classification_scores(np.stack(probabilities), np.array(targets), names)
    summary = {
        "field": field,
        "truth": str(truth_path),
        "predictions": str(predictions.path),
        "classes": list(names),
        **scores,
        "auc_of": f"{names[-1]} vs {names[0]}" if len(names) == 2 else "mean one-vs-rest AUC of the classes present",
        "left_out": {"unknown_truth": unknown, "no_prediction": no_prediction},
    }
    return summary, per_case


def format_classification(scores: dict[str, Any]) -> str:
    """The ``classification`` entry of ``summary.json`` as text: the scores, then the confusion matrix."""
    left = scores["left_out"]
    lines = [
        f"classification of {scores['field']} (truth {scores['truth']}): {scores['cases']} cases scored, "
        f"{len(left['unknown_truth'])} with unknown truth and {len(left['no_prediction'])} without predicted "
        "class left out",
        f"accuracy {_number(scores['accuracy'])}  balanced accuracy {_number(scores['balanced_accuracy'])}  "
        f"AUC {_number(scores['auc'])} ({scores['auc_of']})",
    ]
    names = scores["classes"]
    lines.append("confusion (a row per true class, a column per predicted class):")
    cells = [["", *names]]
    cells += [[name, *map(str, counts)] for name, counts in zip(names, scores["confusion"], strict=True)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines += ["  ".join(cell.rjust(width) if i else cell.ljust(width) for i, (cell, width) in
                        enumerate(zip(row, widths, strict=True))).rstrip() for row in cells]  # fmt: skip
    return "\n".join(lines)


@dataclass
class EvaluationResult:
    """What ``evaluate_folders`` found and wrote.

    Attributes:
        rows: one dict per case (``report.csv``'s rows: ``ID_COLUMNS``, ``convention`` for BraTS, metrics).
        names: the regions or label values scored, in column order.
        summary: the content of ``summary.json``.
        table: the fixed-width table of the summary (what the command prints).
        report_path: the written ``report.csv``.
        summary_path: the written ``summary.json``.
    """

    rows: list[dict[str, Any]]
    names: list[str]
    summary: dict[str, Any]
    table: str
    report_path: Path
    summary_path: Path

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Rows that make the command fail: a case that could not be evaluated or has no prediction."""
        return [row for row in self.rows if row["status"] in FAILING_STATUSES]

    @property
    def exit_code(self) -> int:
        """0 when every ground-truth case was evaluated, 1 otherwise."""
        return 1 if self.failures else 0


def statistics_per_metric(rows: list[dict[str, Any]], names: Sequence[str], task: str) -> dict[str, dict[str, dict]]:
    """Per name and metric: mean, std (ddof 0), median and n over the ok rows (``total`` too for counts)."""
    ok = [row for row in rows if row["status"] == "ok"]
    return {
        name: {
            metric: summary_statistics(
                [row.get(f"{name}_{metric}") for row in ok], median=True, total=metric in COUNT_METRICS
            )
            for metric in TASK_METRICS[task]
        }
        for name in names
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a fixed-width table: one row per region or label, the headline metrics as columns; then the
    case classification scores, when the summary holds them."""
    task, metrics, cases = summary["task"], summary["metrics"], summary["cases"]
    extra = ("lesion_dice", "lesion_hd95", "lesion_tp", "lesion_fn", "lesion_fp")
    if task == "labels":
        extra = ("gt_components", "hits", "misses", "fp_components")
    headers = {"lesion_dice": "LW Dice", "lesion_hd95": "LW HD95", "lesion_tp": "LW TP", "lesion_fn": "LW FN"}
    headers.update({"lesion_fp": "LW FP", "gt_components": "GT comp", "fp_components": "FP comp"})
    header = ["region" if task == "brats" else "label", "Dice mean+-std", "HD95 median", "Sens mean", "Spec mean"]
    header += [headers.get(name, name) for name in extra]
    lines = [header]
    for name, stats in metrics.items():
        dice = stats["dice"]
        cells = [name, "-" if dice["mean"] is None else f"{dice['mean']:.3f}+-{dice['std']:.3f}"]
        cells += [_number(stats["hd95"]["median"], 2), _number(stats["sensitivity"]["mean"])]
        cells += [_number(stats["specificity"]["mean"], 4)]
        for metric in extra:
            cells.append(str(stats[metric]["total"]) if metric in COUNT_METRICS else _number(stats[metric]["mean"], 3))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        f"{cases['total']} cases: {cases['ok']} evaluated, {cases['failed']} failed, "
        f"{cases['missing_pred']} without prediction, {cases['missing_gt']} without ground truth"
    ]
    text += ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines]
    if task == "brats":
        text.append("LW: BraTS 2023 lesion-wise scores (means over cases); TP/FN/FP: lesion counts summed over cases")
    else:
        text.append("GT comp/hits/misses/FP comp: 26-connected components summed over cases")
    if "classification" in summary:
        text.append(format_classification(summary["classification"]))
    return "\n".join(text)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)


def _report_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def evaluate_folders(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    task: str = "brats",
    out: str | os.PathLike | None = None,
    challenge: str = "BraTS-GLI",
    convention: str = "auto",
    progress: bool = False,
    classes: str | os.PathLike | None = None,
    class_field: str | None = None,
) -> EvaluationResult:
    """Evaluate every prediction of ``pred`` against ``gt`` and write ``report.csv`` and ``summary.json``.

    Args:
        pred: folder of predicted label maps (``<case_id>.nii.gz``), or one file.
        gt: folder of ground-truth label maps (``<case_id>[_-]seg.nii.gz`` too, or a raw BraTS tree of case
            folders), or one file.
        task: ``brats`` (WT, TC, ET of BraTS labels, lesion-wise scores) or ``labels`` (every label value
            found in either folder, detection counts).
        out: folder for the reports; default ``<pred>/evaluation`` (beside the file for a single file).
        challenge: the BraTS 2023 challenge whose lesion-wise rules apply (``LESION_RULES``).
        convention: BraTS label convention, ``auto`` (per case, from the values present), ``legacy`` or ``2023``.
        progress: show a progress bar on stderr.
        classes: the true case classes (a CSV ``case_id,<field>`` or a ``dataset.json``: ``read_class_truth``);
            the classes a multitask ``medseg3d infer`` wrote into ``pred``'s ``summary.csv`` are then scored
            (``score_classes``): ``classification`` in ``summary.json``, ``class_true`` and ``class_pred`` columns
            in ``report.csv``, and the scores under the table.
        class_field: the column of ``classes`` holding the class (``read_class_truth``'s default when None).

    Returns:
        The rows, the summary and the table; ``exit_code`` is 1 when a case failed or has no prediction.

    Raises:
        InputError: the folders cannot be paired at all (see ``pair_cases``), or ``out`` cannot be written; with
            ``classes``: no case classes in ``pred`` (``read_class_predictions``), a bad ``classes`` file
            (``read_class_truth``) or a true class that is not one of the predicted classes (``score_classes``).
            All of these before any case is scored.
        ValueError: unknown ``task``, ``challenge`` or ``convention``; ``class_field`` without ``classes``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if challenge not in LESION_RULES:
        raise ValueError(f"challenge must be one of {tuple(LESION_RULES)}, got {challenge!r}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if class_field is not None and classes is None:
        raise ValueError(f"class_field {class_field!r} names a column of classes, but no classes file was given")

    pred, gt = Path(pred), Path(gt)
    pairs = pair_cases(pred, gt)
    out = Path(out) if out is not None else (pred if pred.is_dir() else pred.parent) / "evaluation"
    check_output_folder(out)  # before any case is scored in vain
    classification, class_columns = None, {}
    if classes is not None:  # before any case is scored too: it needs the case IDs only
        truth_path, field, truth = read_class_truth(classes, class_field)
        predictions = read_class_predictions(pred)
        case_ids = [pair.case_id for pair in pairs]
        classification, class_columns = score_classes(case_ids, predictions, truth_path, field, truth)
    rows = []
    for pair in tqdm(pairs, desc="evaluate", unit="case", disable=not progress, file=sys.stderr):
        row: dict[str, Any] = {"case_id": pair.case_id, "pred": pair.pred or "", "gt": pair.gt or ""}
        row.update(status=pair.status, error=pair.problem)
        if pair.status == "ok":
            try:
                row.update(evaluate_case(pair.pred, pair.gt, task, LESION_RULES[challenge], convention))
            except Exception as exc:  # one bad case is a failed row with its reason; the others go on
                reason = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                row.update(status="failed", error=reason)
        row.update(class_columns.get(pair.case_id, {}))
        rows.append(row)

    if task == "brats":
        names = list(REGIONS)
    else:  # every label value found in any evaluated case; a case without it scores the both-empty rule
        values = {int(key.split("_", 1)[0]) for row in rows if row["status"] == "ok" for key in row if key[0].isdigit()}
        names = [str(value) for value in sorted(values)]
        for row in rows:
            if row["status"] == "ok":
                for name in names:
                    for metric, value in absent_label_metrics().items():
                        row.setdefault(f"{name}_{metric}", value)
    columns = [*ID_COLUMNS, *(["convention"] if task == "brats" else [])]
    columns += [f"{name}_{metric}" for name in names for metric in TASK_METRICS[task]]
    if classification is not None:
        columns += CLASS_REPORT_COLUMNS
    statuses = [row["status"] for row in rows]
    rules = LESION_RULES[challenge]
    summary = {
        "task": task,
        "pred": str(pred),
        "gt": str(gt),
        "cases": {"total": len(rows), **{s: statuses.count(s) for s in ("ok", "failed", "missing_pred", "missing_gt")}},
        "conventions": {
            "both_empty": {"dice": 1.0, "hd95": 0.0, "sensitivity": 1.0, "specificity": 1.0},
            "one_empty": {"dice": 0.0, "hd95": HD95_EMPTY_MM},
            "hd95": "max of the two directed 95th percentiles of edge-voxel distances in mm (MONAI)",
        },
        "names": names,
        "metrics": statistics_per_metric(rows, names, task),
        "failed": {row["case_id"]: row["error"] for row in rows if row["status"] != "ok"},
    }
    if task == "brats":
        summary["lesion_wise"] = {
            "challenge": challenge,
            "dilation_iterations": rules.dilation_iterations,
            "volume_threshold_mm3": rules.volume_threshold_mm3,
            "hd95_penalty_mm": LESION_HD95_PENALTY_MM,
        }
    if classification is not None:
        summary["classification"] = classification
    table = format_table(summary)
    report_path = write_text(_report_csv(rows, columns), out / REPORT_NAME)
    summary_path = write_json(summary, out / SUMMARY_NAME)
    return EvaluationResult(rows, names, summary, table, report_path, summary_path)


def run_evaluation(
    pred: str | os.PathLike,
    gt: str | os.PathLike,
    task: str = "brats",
    out: str | os.PathLike | None = None,
    classes: str | os.PathLike | None = None,
    class_field: str | None = None,
) -> int:
    """The ``medseg3d evaluate`` command: evaluate, print the table (with the case classification scores when
    ``classes`` is given) and the failures, return the exit code."""
    result = evaluate_folders(
        pred, gt, task=task, out=out, progress=sys.stderr.isatty(), classes=classes, class_field=class_field
    )
    print(result.table)
    for row in result.rows:
        if row["status"] != "ok":
            print(f"{row['status']}: {row['case_id']}: {row['error']}", file=sys.stderr)
    print(f"report: {result.report_path}\nsummary: {result.summary_path}")
    return result.exit_code
