"""``--max_minutes``: fit a training run into a wall-clock budget, with its learning rate annealed to the end.

A run stopped by Ctrl+C after 15 minutes still has the learning rate a 300-epoch schedule starts with; the
schedule's annealing, where much of the accuracy comes from, never happens. ``TimeBudget`` plans the number of
epochs from the time they take, and plans again after every epoch (machines are noisy), so the run ends, its
learning rate at zero and its final full validation done, within the budget. The budget counts from ``start`` (the
bundles pass the moment their workflow initializes, before the data are loaded and cached), across resumes.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from ignite.engine import Engine, Events

from medseg3d.core.ranks import from_rank_zero
from medseg3d.training.optim import rescale_schedule

logger = logging.getLogger(__name__)


class TimeBudget:
    """End the run within ``minutes`` of wall time: set the trainer's ``max_epochs`` and the learning-rate
    schedule's length from the measured cost of an epoch, after every epoch.

    The plan: the epochs that fit in what is left of the budget, once the expected final full validation is
    set aside and ``time_share`` of the rest is left to the full validations on the way
    (``ValidationSchedule``), at the mean cost of the epochs so far (training and patch check). Never more
    than the configured ``max_epochs``; the epoch just finished is the last when nothing more fits. The plan
    and the time used are saved in checkpoints: a resumed run continues it, its earlier sessions counted.

    Attach it before ``ValidationSchedule``, which validates at the planned last epoch.

    Args:
        minutes: the budget.
        lr_scheduler: the per-iteration schedule to fit to the planned length (``rescale_schedule``), or None.
        schedule: the ``ValidationSchedule`` (its measured full-validation cost), or None.
        time_share: the share of time left to full validations on the way (``ValidationSchedule``'s).
        start: the ``clock`` reading the budget counts from; None: when the trainer starts.
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        minutes: float,
        lr_scheduler: Any = None,
        schedule: Any = None,
        time_share: float = 0.1,
        start: float | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        if not minutes > 0 or not math.isfinite(minutes):
            raise ValueError(f"max_minutes must be a number > 0, got {minutes!r}")
        self.budget = 60.0 * float(minutes)
        self.lr_scheduler, self.schedule = lr_scheduler, schedule
        self.time_share, self.clock = float(time_share), clock
        self.start = start
        self.planned: int | None = None
        self.cap: int | None = None
        self.elapsed_before = 0.0  # seconds of the earlier sessions of a resumed run
        self.training_seconds = 0.0  # the epochs' training, all sessions
        self.epochs_timed = 0
        self._epoch_start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def elapsed(self) -> float:
        """Wall seconds of the run: this session's since ``start``, and those of the earlier sessions of a resumed
        run."""
        return self.elapsed_before + self.clock() - (self.start or 0.0)

    def state_dict(self) -> dict[str, float]:
        return {
            "planned": -1 if self.planned is None else self.planned,
            "elapsed": self.elapsed(),
            "training_seconds": self.training_seconds,
            "epochs_timed": self.epochs_timed,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.planned = None if int(state["planned"]) < 0 else int(state["planned"])
        self.elapsed_before = float(state["elapsed"])
        self.training_seconds, self.epochs_timed = float(state["training_seconds"]), int(state["epochs_timed"])

    def _started(self, engine: Engine) -> None:
        if self.start is None:
            self.start = self.clock()
        self.cap = self.cap or engine.state.max_epochs
        if self.planned is not None:
            self._apply(engine, self.planned)

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_start = self.clock()

    def _epoch_completed(self, engine: Engine) -> None:
        self.training_seconds += self.clock() - self._epoch_start
        self.epochs_timed += 1
        # the epoch's training, timed here, and the patch check that follows it (the schedule's last one)
        per_epoch = self.training_seconds / self.epochs_timed + getattr(self.schedule, "patch_seconds", 0.0)
        last_cost = getattr(self.schedule, "last_cost", None)
        final = per_epoch if last_cost is None else last_cost
        left = self.budget - self.elapsed() - final
        more = max(0, math.floor(left * (1 - self.time_share) / per_epoch)) if left > 0 else 0
        planned = engine.state.epoch + more
        if self.cap is not None:
            planned = min(planned, self.cap)
        planned = from_rank_zero(planned)  # under DDP, every rank keeps rank 0's plan
        if planned != self.planned:
            logger.info(
                "time budget %g min: %.0f s used, %.1f s per epoch; planned %d epochs",
                self.budget / 60,
                self.elapsed(),
                per_epoch,
                planned,
            )
        self._apply(engine, planned)

    def _apply(self, engine: Engine, planned: int) -> None:
        self.planned = planned
        engine.state.max_epochs = planned
        if self.lr_scheduler is not None and engine.state.epoch_length:
            rescale_schedule(self.lr_scheduler, planned * engine.state.epoch_length)
