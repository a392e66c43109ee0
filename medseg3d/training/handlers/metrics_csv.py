"""``metrics.csv``: one row per training epoch, rewritten atomically, consistent after a resume."""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from medseg3d.core.io import write_text

FIXED_COLUMNS = ("epoch", "iteration", "train_loss", "lr", "seconds")
# the columns read off the clock: two runs that trained the same differ in these alone
TIME_COLUMNS = ("seconds", "validation_seconds", "validation_share")


def _default_loss(output: Any) -> float:
    """The loss of one iteration from MONAI's trainer output (a dict, or a list of per-sample dicts)."""
    if isinstance(output, Sequence) and output and isinstance(output[0], dict):
        output = output[0]
    loss = output["loss"] if isinstance(output, dict) else output
    return float(loss.item() if hasattr(loss, "item") else loss)


class MetricsCSV:
    """Write ``output_dir/metrics.csv``: epoch, iteration, mean train loss, learning rate, seconds, every metric
    the full validation ``evaluator`` computed at that epoch (``val_`` columns, blank when it did not run), every
    metric of the ``patch_evaluator`` (``patch_`` columns) and, with a ``schedule``, the seconds of the epoch's
    full validation and the full validations' share of the wall time so far (``validation_seconds``,
    ``validation_share``). ``seconds`` is the epoch's training and patch check, without the full validation.

    Attach it after the validation (``ValidationSchedule`` or MONAI's ``ValidationHandler``) so the evaluators
    have run when the row is written. When
    a run resumes, rows past the restored epoch (written before a crash, after the last checkpoint) are
    dropped, so the file always matches the weights; a run resumed mid-epoch carries the losses of that
    epoch's first part over from the checkpoint (``state_dict``, saved by ``Checkpoints``).

    Args:
        output_dir: the run directory.
        optimizer: its first parameter group's ``lr`` is recorded.
        evaluator: the (full) validation engine, or None.
        patch_evaluator: the per-epoch patch check, or None.
        schedule: the ``ValidationSchedule`` whose timing is recorded, or None.
        loss_transform: iteration output -> loss float.
        filename: name of the file in ``output_dir``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        optimizer: Any = None,
        evaluator: Engine | None = None,
        loss_transform: Callable[[Any], float] = _default_loss,
        filename: str = "metrics.csv",
        patch_evaluator: Engine | None = None,
        schedule: Any = None,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.patch_evaluator = patch_evaluator
        self.schedule = schedule
        self.loss_transform = loss_transform
        self.rows: list[dict[str, Any]] = []
        self._losses: list[float] = []
        self._epoch_start = 0.0
        self._carried: dict[str, Any] | None = None  # a half-done epoch's losses and seconds, from a checkpoint

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._load_existing)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _load_existing(self, engine: Engine) -> None:
        self.rows = []
        if self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = [row for row in csv.DictReader(f) if int(row["epoch"]) <= engine.state.epoch]

    def state_dict(self) -> dict[str, Any]:
        """The epoch in progress: its losses so far and the seconds spent on it (saved in checkpoints)."""
        return {"losses": list(self._losses), "seconds": time.perf_counter() - self._epoch_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Carry a half-done epoch's losses and seconds into the epoch the resumed run starts with."""
        self._carried = {"losses": [float(v) for v in state["losses"]], "seconds": float(state["seconds"])}

    def _epoch_started(self, engine: Engine) -> None:
        carried, self._carried = self._carried, None
        within = engine.state.iteration % engine.state.epoch_length if engine.state.epoch_length else 0
        if carried is not None and within:
            self._losses = carried["losses"]
            self._epoch_start = time.perf_counter() - carried["seconds"]
        else:
            self._losses = []
            self._epoch_start = time.perf_counter()

    def _iteration_completed(self, engine: Engine) -> None:
        self._losses.append(self.loss_transform(engine.state.output))

    def _epoch_completed(self, engine: Engine) -> None:
        losses = [v for v in self._losses if math.isfinite(v)]
        row: dict[str, Any] = {
            "epoch": engine.state.epoch,
            "iteration": engine.state.iteration,
            "train_loss": f"{sum(losses) / len(losses):.6g}" if losses else "",
            "lr": f"{self.optimizer.param_groups[0]['lr']:.6g}" if self.optimizer is not None else "",
        }
        full_seconds = float(getattr(self.schedule, "last_seconds", 0.0) or 0.0)
        row["seconds"] = f"{time.perf_counter() - self._epoch_start - full_seconds:.3f}"
        for evaluator, prefix in ((self.evaluator, "val_"), (self.patch_evaluator, "patch_")):
            if evaluator is not None and evaluator.state.epoch == engine.state.epoch:
                for name, value in evaluator.state.metrics.items():
                    if isinstance(value, int | float) or (hasattr(value, "numel") and value.numel() == 1):
                        row[name if name.startswith(prefix) else f"{prefix}{name}"] = f"{float(value):.6g}"
        if self.schedule is not None:
            row["validation_seconds"] = f"{full_seconds:.3f}"
            row["validation_share"] = f"{self.schedule.share:.4f}"
        self.rows = [r for r in self.rows if int(r["epoch"]) < engine.state.epoch] + [row]
        self._write()

    def _write(self) -> None:
        columns = list(FIXED_COLUMNS)
        for row in self.rows:
            columns += [key for key in row if key not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(buffer.getvalue(), self.path)
