"""The evaluation report: Dice per case and region (``per_case.csv``), mean +- std (``summary.json``), predictions."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from medseg3d.core.constants import CASE_ID
from medseg3d.core.io import save_nifti, write_json, write_text
from medseg3d.data.reader import read_info
from medseg3d.metrics import summary_statistics
from medseg3d.transforms.array import regions_to_labels

logger = logging.getLogger(__name__)


def _cell(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else ""


class EvalReport:
    """Write the evaluation of a validation fold into ``output_dir`` when the evaluator completes.

    - ``per_case.csv``: one row per case, ``case_id`` and every metric of the evaluator for that case, named
      without the ``val_`` prefix (``dice_WT, dice_TC, dice_ET, mean_dice``); a region absent from the
      ground truth has no Dice (MONAI's ``ignore_empty``): its cell is empty and ``mean_dice`` averages the rest.
    - ``summary.json``: ``mean``, ``std`` (ddof 0) and ``n`` of every column over the cases where it is defined,
      ``evaluator_metrics`` as MONAI aggregates them (the ``val_`` numbers of training's ``metrics.csv``),
      the number of cases, and ``info`` (checkpoint, fold, ... as given).
    - ``predictions/<case_id>.nii.gz`` with ``save_predictions``: the predicted label map (prepared labels
      0..3) in the geometry of the case's prepared label file.

    The per-case values are the ones the evaluator's metrics store (``engine.state.metric_details``, MONAI
    metrics' ``save_details``), so the report and the evaluator cannot disagree.

    Args:
        output_dir: where the files go.
        info: plain values recorded in ``summary.json``.
        save_predictions: write the predicted label maps.
        datalist: the evaluated entries (``case_id``, ``label`` path): the geometry of the predictions.
        output_mode: ``regions`` (WT, TC, ET channels) or ``labels`` (one-hot labels), to decode predictions.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        info: Mapping[str, Any] | None = None,
        save_predictions: bool = False,
        datalist: Sequence[Mapping[str, Any]] | None = None,
        output_mode: str = "regions",
    ) -> None:
        if save_predictions and datalist is None:
            raise ValueError("save_predictions needs the datalist (the label files give the geometry)")
        self.output_dir = Path(output_dir)
        self.info = dict(info or {})
        self.save_predictions = save_predictions
        self.label_files = {entry[CASE_ID]: entry["label"] for entry in datalist or ()}
        self.output_mode = output_mode
        self.case_ids: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        self.case_ids = []

    def _iteration_completed(self, engine: Engine) -> None:
        batch = engine.state.batch  # decollated by MONAI's workflow: one dict per case
        outputs = engine.state.output
        for number, (item, output) in enumerate(zip(batch, outputs, strict=True)):
            case_id = str(item.get(CASE_ID, f"case{len(self.case_ids) + number:04d}"))
            self.case_ids.append(case_id)
            if self.save_predictions:
                self._save_prediction(case_id, output["pred"])

    def _save_prediction(self, case_id: str, pred: Any) -> None:
        pred = np.asarray(pred.detach().cpu() if hasattr(pred, "detach") else pred)
        labels = regions_to_labels(pred) if self.output_mode == "regions" else pred.argmax(0).astype(np.uint8)
        reference = read_info(self.label_files[case_id]).grid
        if reference.shape != labels.shape:
            raise ValueError(f"{case_id}: prediction of shape {labels.shape} does not match {reference.shape}")
        save_nifti(labels, reference.affine, self.output_dir / "predictions" / f"{case_id}.nii.gz")

    def per_case(self, engine: Engine) -> tuple[list[str], list[dict[str, Any]]]:
        """The columns and rows of ``per_case.csv`` (each value a float, NaN where undefined)."""
        details = getattr(engine.state, "metric_details", None) or {}
        key = getattr(engine.state, "key_metric_name", None)
        names = [name for name in details if name != key] + ([key] if key in details else [])
        columns = [name.removeprefix("val_") for name in names]
        rows = [{CASE_ID: case_id} for case_id in self.case_ids]
        for name, column in zip(names, columns, strict=True):
            values = np.asarray(details[name].detach().cpu(), dtype=np.float64).reshape(len(self.case_ids), -1)
            for row, case_values in zip(rows, values, strict=True):
                finite = case_values[np.isfinite(case_values)]
                row[column] = float(finite.mean()) if finite.size else math.nan
        return columns, rows

    def _completed(self, engine: Engine) -> None:
        columns, rows = self.per_case(engine)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([CASE_ID, *columns])
        writer.writerows([row[CASE_ID], *(_cell(row[c]) for c in columns)] for row in rows)
        write_text(buffer.getvalue(), self.output_dir / "per_case.csv")
        summary = {
            "cases": len(rows),
            "metrics": {column: summary_statistics([row[column] for row in rows]) for column in columns},
            "evaluator_metrics": {k: float(v) for k, v in engine.state.metrics.items() if np.ndim(v) == 0},
            "info": self.info,
        }
        write_json(summary, self.output_dir / "summary.json")
        means = ", ".join(f"{c} {s['mean']:.4f} +- {s['std']:.4f}" for c, s in summary["metrics"].items() if s["n"])
        logger.info("evaluated %d cases: %s; report in %s", len(rows), means, self.output_dir)
