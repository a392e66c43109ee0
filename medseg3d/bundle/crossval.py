"""Cross-validation: train a bundle on each fold in turn, then summarise the folds (mean +- std per region).

Layout of a cross-validation run (``OUT``, default ``runs/<bundle>/<timestamp>-cv``)::
    OUT/cv.json               the folds, the overrides, the bundle; what `--resume OUT` continues
    OUT/fold_<k>/             a full run directory per fold (config.json, metrics.csv, checkpoints/, ...)
    OUT/cv_summary.csv        one row per fold (best epoch and its validation metrics), then mean and std
    OUT/cv_summary.json       the same as numbers
    OUT/postprocessing.json   after all folds: the postprocessing rules the out-of-fold predictions chose
                              (``fold_<k>/oof/``; medseg3d/bundle/postprocessing.py), which `medseg3d infer` applies

A multitask run (``--classify``, docs/multitask.md) adds the case classification's ``val_class_*`` columns (AUC,
balanced accuracy, accuracy, confusion counts) to each fold's ``metrics.csv``; the summary then carries them too,
taken at the same best epoch as the Dice, so a fold's AUC is the one of the weights its ``best.pt`` holds.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg3d.bundle.postprocessing import POSTPROCESSING_FILE, choose_postprocessing
from medseg3d.bundle.workflow import make_workflow, resume_workflow, run_workflow
from medseg3d.core.checkpoint_format import load_checkpoint, training_complete
from medseg3d.core.errors import InputError
from medseg3d.core.io import config_path, write_json, write_text
from medseg3d.data.dataset_json import read_dataset_json
from medseg3d.metrics import summary_statistics

logger = logging.getLogger(__name__)


def parse_folds(text: str, available: Sequence[int]) -> list[int]:
    """``"all"`` or a comma-separated list (``"0,2"``) -> fold numbers, each checked against ``available``.

    >>> parse_folds("all", [0, 1, 2])
    [0, 1, 2]
    >>> parse_folds("2,0", [0, 1, 2])
    [2, 0]
    """
    if text.strip().lower() == "all":
        return sorted(available)
    try:
        folds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--folds expects 'all' or a list like 0,1,2; got {text!r}") from None
    unknown = [fold for fold in folds if fold not in available]
    if not folds or unknown or len(set(folds)) != len(folds):
        raise ValueError(f"--folds {text!r}: expected distinct folds among {sorted(available)}")
    return folds


def best_row(metrics_csv: str | os.PathLike, key: str = "val_mean_dice") -> dict[str, Any] | None:
    """The ``metrics.csv`` row with the highest ``key`` (the epoch ``best.pt`` holds), as numbers; None if no
    epoch was validated.

    As ``Checkpoints`` picks ``best.pt``: the first epoch of the highest finite value (an epoch whose Dice is
    ``nan`` never wins), so every metric of the row (Dice, ``val_class_auc``, ...) is the one of those weights.
    """
    with open(metrics_csv, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row.get(key) and math.isfinite(float(row[key]))]
    if not rows:
        return None
    row = max(rows, key=lambda r: float(r[key]))
    return {"epoch": int(row["epoch"]), **{k: float(v) for k, v in row.items() if k.startswith("val_") and v}}


def write_cv_summary(fold_dirs: Mapping[int, str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Write ``cv_summary.csv`` and ``cv_summary.json`` in ``out`` from each fold's best validation row.

    The metrics are every ``val_`` column any fold's best row holds, in the order the folds first show them: the
    Dice scores and, for a multitask run, ``val_class_auc``, ``val_class_balanced_accuracy`` and the rest of the
    case classification. A fold whose AUC is undefined (its validation cases hold one class only: ``nan``) or
    that lacks a column is left out of that metric's mean and std, and its cell is ``nan`` or empty.

    Returns:
        ``{"folds": {fold: row}, "mean": {metric: value}, "std": {metric: value}}`` over the folds where the metric
        is finite; std is the sample standard deviation (ddof 1; 0 for a single fold), NaN with no finite value.
    """
    rows: dict[int, dict[str, Any]] = {}
    for fold, run_dir in fold_dirs.items():
        metrics = Path(run_dir) / "metrics.csv"
        row = best_row(metrics) if metrics.is_file() else None
        if row is None:
            raise InputError(metrics, f"fold {fold} has no validated epoch to summarise")
        rows[fold] = row
    names = list(dict.fromkeys(name for row in rows.values() for name in row if name.startswith("val_")))
    stats = {name: summary_statistics([row.get(name) for row in rows.values()], ddof=1) for name in names}
    mean = {name: math.nan if s["mean"] is None else s["mean"] for name, s in stats.items()}
    std = {name: s["std"] if s["std"] is not None else 0.0 if s["n"] else math.nan for name, s in stats.items()}
    summary = {"folds": {str(fold): row for fold, row in rows.items()}, "mean": mean, "std": std}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["fold", "best_epoch", *names])
    for fold, row in rows.items():
        writer.writerow([fold, row["epoch"], *(f"{row[name]:.6g}" if name in row else "" for name in names)])
    writer.writerow(["mean", "", *(f"{mean[name]:.6g}" for name in names)])
    writer.writerow(["std", "", *(f"{std[name]:.6g}" for name in names)])
    write_text(buffer.getvalue(), Path(out) / "cv_summary.csv")
    write_json(summary, Path(out) / "cv_summary.json")
    return summary


def train_folds(
    bundle_dir: str | os.PathLike | None,
    folds_text: str,
    overrides: Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
    resume_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train ``bundle_dir`` on each fold of ``folds_text`` in turn, then write the summary.

    With ``resume_dir`` (a cross-validation folder holding ``cv.json``), finished folds are kept, the
    interrupted one continues exactly from its ``last.pt`` and the rest start.
    """

    if resume_dir is not None:
        out = Path(resume_dir)
        try:
            plan = json.loads((out / "cv.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(out / "cv.json", f"not a cross-validation run to resume ({exc})") from None
        bundle_dir, folds = plan["bundle"], [int(f) for f in plan["folds"]]
        overrides = {**plan["overrides"], **dict(overrides)}
    else:
        if bundle_dir is None:
            raise ValueError("--folds needs --bundle (or --resume with a cross-validation folder)")
        probe = make_workflow(bundle_dir, "train", overrides)
        dataset_dir = probe.parser.get_parsed_content("dataset_dir")
        available = sorted({int(entry["fold"]) for entry in read_dataset_json(dataset_dir)["training"]})
        folds = parse_folds(folds_text, available)
        name = probe.parser.get_parsed_content("bundle_name")
        out = Path(output_dir or Path("runs") / name / (time.strftime("%Y%m%d-%H%M%S") + "-cv"))
        overrides = {k: v for k, v in overrides.items() if k != "output_dir"}
        write_json({"bundle": str(bundle_dir), "folds": folds, "overrides": overrides}, out / "cv.json")
    fold_dirs = {fold: out / f"fold_{fold}" for fold in folds}
    for fold, run_dir in fold_dirs.items():
        last = run_dir / "checkpoints" / "last.pt"
        if last.is_file():
            if training_complete(load_checkpoint(last)["trainer"], overrides.get("max_epochs")):
                logger.info("fold %d already trained in %s", fold, run_dir)
                continue
            logger.info("fold %d: resuming %s", fold, run_dir)
            run_workflow(resume_workflow(run_dir, {k: v for k, v in overrides.items() if k == "max_epochs"}))
        else:
            logger.info("fold %d: training into %s", fold, run_dir)
            fold_overrides = {**overrides, "fold": fold, "output_dir": config_path(run_dir)}
            run_workflow(make_workflow(bundle_dir, "train", fold_overrides))
    summary = write_cv_summary(fold_dirs, out)
    if len(folds) > 1 and not (out / POSTPROCESSING_FILE).is_file():  # every fold's cases have a prediction
        choose_postprocessing(out, bundle_dir, folds, overrides)
    mean, std = summary["mean"], summary["std"]
    print(f"cross-validation over folds {folds}: {out / 'cv_summary.csv'}")
    width = max(16, *map(len, mean))  # val_class_balanced_accuracy is longer than the Dice names
    for name in mean:
        print(f"  {name:<{width}} {mean[name]:.4f} +- {std[name]:.4f}")
    return summary
