"""Postprocessing chosen by cross-validation, as nnU-Net chooses it: rules kept only where they help.

After ``--folds all`` each fold's ``best.pt`` segments its own validation cases with postprocessing off (the
evaluate overlay with ``save_predictions``: ``fold_<k>/oof/predictions/``, prepared labels on the prepared
grid), so every training case has one out-of-fold prediction. Candidate rules (``medseg3d.ops.components``) are
then tried greedily on those predictions against the prepared labels:

1. keep the largest component of the whole foreground (``all: keep_largest 1``);
2. keep the largest component of each label, one label at a time;
3. remove components of the whole foreground below a size (10, 50, 200 voxels), the first that helps.

A candidate is added to the rules when it raises the mean Dice (over cases and regions: WT, TC, ET for a BraTS
dataset, each label otherwise) by more than ``MIN_GAIN`` and does not lower the lesion-wise F1 (components
found, missed and false: BraTS 2023's lesion-wise counts per region, or the detection counts per label, pooled
over the cases). The result is ``OUT/postprocessing.json``: the chosen rules, the score of no postprocessing,
of the bundle's own default and of each candidate. ``medseg3d infer`` with that cross-validation run (or any of
its folds) as checkpoint applies the chosen rules unless ``--postprocess`` is given, and says so.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg3d.bundle.workflow import make_workflow, run_workflow
from medseg3d.core.errors import InputError
from medseg3d.core.io import config_path, write_json
from medseg3d.data.dataset_json import read_dataset_json
from medseg3d.data.reader import read_label
from medseg3d.metrics import brats_region_masks, detection_counts, dice, lesion_wise, spacing_from_affine
from medseg3d.ops.components import ALL, parse_rules, postprocess_labels

logger = logging.getLogger(__name__)

POSTPROCESSING_FILE = "postprocessing.json"
OOF_DIR = "oof"  # per fold: the out-of-fold predictions without postprocessing
MIN_GAIN = 1e-4  # a rule must raise the mean Dice by more than this (nnU-Net keeps a rule on any gain)
MIN_SIZES = (10, 50, 200)  # voxels


def out_of_fold_predictions(
    cv_dir: str | os.PathLike, bundle_dir: str | os.PathLike, folds: Sequence[int], overrides: Mapping[str, Any]
) -> dict[int, Path]:
    """Each fold's validation cases segmented by its ``best.pt`` without postprocessing (kept when there)."""
    out = {}
    for fold in folds:
        run_dir = Path(cv_dir) / f"fold_{fold}"
        target = run_dir / OOF_DIR
        if not (target / "summary.json").is_file():
            settings = {
                **{k: v for k, v in overrides.items() if k not in ("max_minutes", "max_epochs")},
                "fold": fold,
                "output_dir": config_path(run_dir),
                "eval_dir": config_path(target),
                "save_predictions": True,
                "postprocess": {},
            }
            logger.info("fold %d: out-of-fold predictions into %s", fold, target)
            run_workflow(make_workflow(bundle_dir, "evaluate", settings))
        out[fold] = target / "predictions"
    return out


def candidate_rules(labels: Sequence[int]) -> list[tuple[str, dict[Any, dict[str, Any]]]]:
    """The candidates in the order they are tried, each a rule set to merge into the current one.

    >>> [name for name, _ in candidate_rules([1, 2])]
    ['keep_largest all', 'keep_largest 1', 'keep_largest 2', 'min_size 10 all', 'min_size 50 all', 'min_size 200 all']
    """
    out: list[tuple[str, dict[Any, dict[str, Any]]]] = [("keep_largest all", {ALL: {"keep_largest": 1}})]
    out += [(f"keep_largest {v}", {int(v): {"keep_largest": 1}}) for v in labels]
    out += [(f"min_size {n} all", {ALL: {"min_size": n}}) for n in MIN_SIZES]
    return out


def _merge(rules: Mapping[Any, Mapping[str, Any]], extra: Mapping[Any, Mapping[str, Any]]) -> dict[Any, dict]:
    merged = {key: dict(rule) for key, rule in rules.items()}
    for key, rule in extra.items():
        merged.setdefault(key, {}).update(rule)
    return merged


def score(
    cases: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]],
    rules: Mapping[Any, Mapping[str, Any]],
    regions: bool,
) -> dict[str, float]:
    """Mean Dice and lesion-wise F1 of ``cases`` ((prediction, truth, spacing) in prepared labels) after ``rules``.

    ``regions``: WT, TC, ET Dice and BraTS 2023 lesion-wise counts (prepared labels are the 2023 convention);
    otherwise each label's Dice and component detection counts. F1 = 2 TP / (2 TP + FP + FN), pooled over the
    cases per region or label, then averaged.
    """
    dices: list[float] = []
    counts: dict[str, list[int]] = {}
    for pred, truth, spacing in cases:
        processed = postprocess_labels(pred, rules) if rules else pred
        if regions:  # Dice and lesion counts only: HD95 and the rest of brats_case_metrics would be wasted here
            pred_masks, truth_masks = brats_region_masks(processed, "2023"), brats_region_masks(truth, "2023")
            found = {n: lesion_wise(pred_masks[n], truth_masks[n], spacing) for n in pred_masks}
            per_name = {n: (dice(pred_masks[n], truth_masks[n]), (f.tp, f.fp, f.fn)) for n, f in found.items()}
        else:
            per_name = {}
            for v in sorted((set(np.unique(truth).tolist()) | set(np.unique(processed).tolist())) - {0}):
                hits = detection_counts(processed == v, truth == v)
                per_name[str(v)] = (dice(processed == v, truth == v), (hits.hits, hits.fp_components, hits.misses))
        for name, (value, tp_fp_fn) in per_name.items():
            dices.append(float(value))
            counts[name] = [a + b for a, b in zip(counts.get(name, [0, 0, 0]), tp_fp_fn, strict=True)]
    f1 = [2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0 for tp, fp, fn in counts.values()]
    finite = [d for d in dices if np.isfinite(d)]
    return {"mean_dice": float(np.mean(finite)) if finite else float("nan"), "lesion_f1": float(np.mean(f1))}


def select_rules(
    cases: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float, float]]],
    labels: Sequence[int],
    regions: bool,
    default: Mapping[Any, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Greedy selection over ``candidate_rules``; returns the record ``postprocessing.json`` holds."""
    current: dict[Any, dict[str, Any]] = {}
    best = score(cases, current, regions)
    record: dict[str, Any] = {"none": best, "candidates": []}
    if default is not None:
        record["bundle_default"] = {"rules": _plain(default), **score(cases, default, regions)}
    took_min_size = False
    for name, extra in candidate_rules(labels):
        if name.startswith("min_size") and took_min_size:
            continue
        trial = _merge(current, extra)
        parse_rules(trial)  # every candidate is a valid rule set
        result = score(cases, trial, regions)
        accepted = result["mean_dice"] > best["mean_dice"] + MIN_GAIN and result["lesion_f1"] >= best["lesion_f1"]
        record["candidates"].append({"name": name, "rules": _plain(trial), **result, "accepted": accepted})
        logger.info("postprocessing candidate %-18s Dice %.4f F1 %.4f %s", name, result["mean_dice"],
                    result["lesion_f1"], "kept" if accepted else "")  # fmt: skip
        if accepted:
            current, best = trial, result
            took_min_size = took_min_size or name.startswith("min_size")
    record.update(rules=_plain(current), chosen=best, cases=len(cases))
    return record


def label_values_of(labels: Mapping[str, Any]) -> list[int]:
    """The foreground label values of a ``dataset.json`` ``labels`` field in either form: name -> value
    (``prep_brats``, nnU-Net) or value -> name (``medseg3d datalist``).

    >>> label_values_of({"background": 0, "NCR": 1, "ED": 2}), label_values_of({"0": "background", "1": "aorta"})
    ([1, 2], [1])
    """
    if labels and all(str(key).isdigit() for key in labels):
        values = [int(key) for key in labels]
    else:
        values = [int(v) for v in labels.values() if isinstance(v, int) or str(v).isdigit()]
    return sorted(v for v in set(values) if v != 0)


def _plain(rules: Mapping[Any, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(key): dict(rule) for key, rule in rules.items()}


def choose_postprocessing(
    cv_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    folds: Sequence[int],
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """Out-of-fold predictions of every fold, then ``select_rules`` on them: writes and returns
    ``cv_dir/postprocessing.json``."""
    probe = make_workflow(bundle_dir, "train", {k: v for k, v in overrides.items() if k != "output_dir"})
    dataset_dir = Path(probe.parser.get_parsed_content("dataset_dir"))
    default = probe.parser.get_parsed_content("postprocess") or {}
    dataset = read_dataset_json(dataset_dir)
    predictions = out_of_fold_predictions(cv_dir, bundle_dir, folds, overrides)
    cases = []
    for entry in dataset["training"]:
        if int(entry["fold"]) not in predictions:
            continue
        path = predictions[int(entry["fold"])] / f"{entry['case_id']}.nii.gz"
        if not path.is_file():
            raise InputError(path, "the out-of-fold prediction of this validation case is missing")
        pred, truth = read_label(path), read_label(dataset_dir / entry["label"])
        cases.append(
            (pred.array[0].astype(np.uint8), truth.array[0].astype(np.uint8), spacing_from_affine(truth.affine))
        )
    regions = bool(dataset.get("regions"))
    labels = label_values_of(dataset.get("labels", {}))
    record = select_rules(cases, labels, regions, default=default)
    record.update(folds=list(folds), dataset_dir=str(dataset_dir))
    write_json(record, Path(cv_dir) / POSTPROCESSING_FILE)
    logger.info("postprocessing chosen by cross-validation: %s (%s)", record["rules"] or "none",
                Path(cv_dir) / POSTPROCESSING_FILE)  # fmt: skip
    return record


def find_postprocessing(checkpoint: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[Path, dict] | None:
    """The ``postprocessing.json`` that goes with ``checkpoint``: in the cross-validation run folder given, or the
    one of the run a checkpoint file belongs to (``<cv>/fold_<k>/checkpoints/best.pt``); None when there is none.

    Raises:
        InputError: the file exists but is not a readable rule set.
    """
    items = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    for item in items:
        path = Path(item)
        for folder in (path, *list(path.parents)[:3]):
            found = folder / POSTPROCESSING_FILE
            if found.is_file():
                try:
                    rules = json.loads(found.read_text())["rules"]
                    parse_rules(rules)
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise InputError(found, f"not a postprocessing record with valid rules ({exc})") from None
                return found, rules
    return None
