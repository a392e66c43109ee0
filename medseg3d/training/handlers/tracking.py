"""Experiment tracking: every number of ``metrics.csv`` to TensorBoard each epoch (with one validation case's
middle slices), and, when asked, to MLflow through MONAI's ``MLFlowHandler``.

Both read the row ``MetricsCSV`` has just written (they attach after it), so TensorBoard, MLflow, ``metrics.csv``
and ``curves.png`` hold the same numbers: training loss, learning rate, epoch and validation seconds, the patch
check and the full validation's Dice per region, a multitask run's class metrics. Their tags group by prefix:
``train/loss``, ``train/lr``, ``time/seconds``, ``val/dice_WT``, ``patch/dice_WT``, ``val/class_auc``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.handlers import MLFlowHandler
from torch.utils.tensorboard import SummaryWriter

from medseg3d.core.constants import IMAGE, LABEL
from medseg3d.training.handlers.metrics_csv import MetricsCSV

TENSORBOARD_DIR = "tensorboard"
# Run files MLflow receives when the run ends (checkpoints stay in the run folder: they are large, and a run
# directory holds them under the same names).
ARTIFACTS = ("metrics.csv", "curves.png", "config.json", "resolved.json", "run.json", "train.log")


def row_numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a ``metrics.csv`` row by column name, the epoch and iteration counters left out.

    >>> row_numbers({"epoch": "3", "train_loss": "0.5", "patch_mean_dice": "", "val_dice_ET": "nan"})
    {'train_loss': 0.5}
    """
    out = {}
    for key, value in row.items():
        if key in ("epoch", "iteration") or value in ("", None):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def metric_tags(row: Mapping[str, Any]) -> dict[str, float]:
    """``row_numbers`` under grouped TensorBoard tags.

    >>> metric_tags({"epoch": "3", "train_loss": "0.5", "lr": "0.01", "seconds": "4.2", "val_dice_WT": "0.9",
    ...              "patch_mean_dice": "", "validation_share": "0.05"})
    {'train/loss': 0.5, 'train/lr': 0.01, 'time/seconds': 4.2, 'val/dice_WT': 0.9, 'time/validation_share': 0.05}
    """
    out = {}
    for key, number in row_numbers(row).items():
        if key in ("train_loss", "lr"):
            tag = "train/" + key.removeprefix("train_")
        elif key in ("seconds", "validation_seconds", "validation_share"):
            tag = f"time/{key}"
        elif key.startswith(("val_", "patch_")):
            prefix, _, rest = key.partition("_")
            tag = f"{prefix}/{rest}"
        else:
            tag = f"other/{key}"
        out[tag] = number
    return out


def middle_slices(image: Any, label: Any, pred: Any) -> np.ndarray:
    """One (3, H, W) float image in [0, 1] of a validation case's axial slice through its labelled middle: the
    first channel of the image (min-max), the ground truth and the prediction (label values scaled to [0, 1]),
    side by side (H = X, W = 3 Y). ``pred`` may be one-hot or region channels (decoded by their argmax/sum)."""

    def volume(x: Any) -> np.ndarray:
        """A label map (X, Y, Z): one-hot channels by their argmax, nested region channels by their sum."""
        x = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
        if x.ndim == 4 and x.shape[0] > 1:
            return x.argmax(0).astype(np.float32) if np.allclose(x.sum(0), 1.0) else x.sum(0)
        return x[0] if x.ndim == 4 else x

    img = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float32)
    lab, out = volume(label), volume(pred)
    where = np.nonzero(lab)
    z = int(np.median(where[2])) if where[0].size else lab.shape[2] // 2
    first = img[0, :, :, z]
    low, high = float(first.min()), float(first.max())
    panels = [(first - low) / (high - low) if high > low else np.zeros_like(first)]
    top = max(float(lab.max()), float(out.max()), 1.0)
    panels += [lab[:, :, z] / top, out[:, :, z] / top]
    return np.repeat(np.concatenate(panels, axis=1)[None], 3, axis=0)


class TrainingProgress:
    """A progress bar over each epoch's iterations with the running loss (ignite's tqdm ``ProgressBar``), for a
    person watching a terminal; the log lines (``StatsHandler``) stay for log files and batch jobs.

    ``interactive``: None decides by whether stderr is a terminal (``sys.stderr.isatty()``), so a SLURM job's
    log gets no bar.
    """

    def __init__(self, interactive: bool | None = None) -> None:
        self.interactive = sys.stderr.isatty() if interactive is None else bool(interactive)

    def attach(self, engine: Engine) -> None:
        if self.interactive:
            ProgressBar(persist=False, desc="train").attach(engine, output_transform=lambda out: _loss_of(out))


def _loss_of(output: Any) -> dict[str, float]:
    """The loss of a trainer's iteration output (a list of per-sample dicts, or one dict), for the bar."""
    first = output[0] if isinstance(output, list) and output else output
    loss = first.get("loss") if isinstance(first, Mapping) else None
    return {"loss": float(loss)} if loss is not None else {}


class TensorBoardMetrics:
    """Each epoch's ``metrics.csv`` row as TensorBoard scalars (step: the epoch), and after a full validation one
    case's middle axial slice (image, label, prediction) as ``val/case``.

    Args:
        output_dir: the run directory (events under ``tensorboard/``, beside the training loss MONAI logs there).
        metrics_csv: the run's ``MetricsCSV`` (attached before this handler).
        evaluator: the full validation engine; its first case of each run is the one drawn.
        writer: the events writer to share (``TrainHandlers`` gives MONAI's loss handler the same one: one events
            file per run); None: one of its own, opened at the first epoch's end. Closed when training completes.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metrics_csv: MetricsCSV,
        evaluator: Engine | None = None,
        writer: SummaryWriter | None = None,
    ) -> None:
        self.log_dir = Path(output_dir) / TENSORBOARD_DIR
        self.metrics_csv = metrics_csv
        self.evaluator = evaluator
        self._writer = writer
        self._image: np.ndarray | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._close)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.ITERATION_COMPLETED(once=1), self._keep_case)

    def _keep_case(self, evaluator: Engine) -> None:
        batch, output = evaluator.state.batch, evaluator.state.output
        item, out = (batch[0], output[0]) if isinstance(batch, list) else (batch, output)  # decollated or not
        try:
            self._image = middle_slices(item[IMAGE], out.get(LABEL, item.get(LABEL)), out["pred"])
        except (KeyError, TypeError, ValueError, IndexError):  # a layout without them: scalars only
            self._image = None

    def _epoch_completed(self, engine: Engine) -> None:
        if not self.metrics_csv.rows:
            return
        if self._writer is None:  # opened at the first epoch's end, on the rank that attached it
            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        epoch = engine.state.epoch
        for tag, value in metric_tags(self.metrics_csv.rows[-1]).items():
            self._writer.add_scalar(tag, value, epoch)
        if self._image is not None:
            self._writer.add_image("val/case", self._image, epoch)
            self._image = None
        self._writer.flush()

    def _close(self, engine: Engine) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a/b`` keys (MLflow's parameter names allow letters, digits, ``_-. :/``; MONAI's ``#``
    becomes ``/``) with string values of at most 500 characters (MLflow's limit).

    >>> _flatten({"network_def": {"channels": [4, 8]}, "lr#x": 0.1})
    {'network_def/channels': '[4, 8]', 'lr/x': '0.1'}
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        name = re.sub(r"[^A-Za-z0-9_\-. :/]", "/", f"{prefix}/{key}" if prefix else str(key))
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = (value if isinstance(value, str) else json.dumps(value, default=str))[:500]
    return out


class MLflowTracking(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` for a medseg3d run: the run's resolved configuration as parameters (``config.json``
    as written when the run started, nested keys joined by ``/``), every ``metrics.csv`` column per epoch (the
    names of ``metrics.csv``, step = epoch), and the run's files (``ARTIFACTS``) when training ends.

    Args:
        output_dir: the run directory.
        metrics_csv: the run's ``MetricsCSV``.
        tracking_uri: MLflow's store; None: a SQLite store beside the bundle's runs,
            ``<output_dir>/../mlruns.db`` (artifacts in ``../mlruns``).
        experiment_name: the experiment (the bundle's name).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metrics_csv: MetricsCSV,
        tracking_uri: str | None = None,
        experiment_name: str = "medseg3d",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.metrics_csv = metrics_csv
        uri = tracking_uri or "sqlite:///" + str(self.output_dir.resolve().parent / "mlruns.db")
        artifacts = [str(self.output_dir / name) for name in ARTIFACTS]
        super().__init__(
            tracking_uri=uri, iteration_log=False, epoch_logger=self._log_epoch, experiment_name=experiment_name,
            run_name=self.output_dir.name, artifacts=artifacts, close_on_complete=True,
        )  # fmt: skip

    def start(self, engine: Engine) -> None:
        config = self.output_dir / "config.json"
        if config.is_file() and not self.experiment_param:
            self.experiment_param = _flatten(json.loads(config.read_text()))
        super().start(engine)

    def _log_epoch(self, engine: Engine) -> None:
        if self.metrics_csv.rows:
            self._log_metrics(row_numbers(self.metrics_csv.rows[-1]), step=engine.state.epoch)

    def _parse_artifacts(self) -> list[str]:
        return [path for path in self.artifacts if path and os.path.isfile(path)]
