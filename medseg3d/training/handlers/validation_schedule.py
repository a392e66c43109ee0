"""When a training run validates: the patch check every epoch, the full validation within a share of the wall time.

The full validation (the sliding window over every validation case, what ``medseg3d infer`` ships) picks
``best.pt``; it is worth its cost, but at full size and on a CPU one costs as much as an epoch of training, and on
a real dataset (hundreds of validation cases) several epochs. ``ValidationSchedule`` runs it only while the time
spent on it stays within ``time_share`` of the run's wall time, and always at the last epoch; in between, the
patch evaluator (``medseg3d.training.validation.FixedPatches``) gives a cheap Dice every epoch. With
``interval`` instead, the full validation runs every ``interval`` epochs (and at the last), as MONAI's
``ValidationHandler`` does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ignite.engine import Engine, Events

from medseg3d.core.ranks import from_rank_zero

logger = logging.getLogger(__name__)


class ValidationSchedule:
    """Run ``patch_evaluator`` every epoch and ``evaluator`` when its cost fits ``time_share`` of the wall time.

    After each epoch: the full validation runs when the time spent on full validations so far plus the
    expected cost of one more is at most ``time_share`` of the time since the run started (across resumes),
    and, counting the validation the last epoch will run, at most ``time_share`` of the run's projected
    length (so that a short run, e.g. under ``--max_minutes``, ends within its share too); or when the epoch
    is the last (``max_epochs``); or with ``interval`` every ``interval`` epochs. Its expected cost is the
    last one measured; before the first, the seconds of the epoch just trained.
    ``last_seconds`` (this epoch's full validation, 0 when none ran) and ``share`` (the full validations'
    share of the wall time so far) are what ``MetricsCSV`` records; each full validation logs both.
    ``patch_seconds`` is the last patch check's (``TimeBudget`` counts it in an epoch's cost).

    Args:
        evaluator: the full validation (``best.pt`` follows its key metric).
        patch_evaluator: the per-epoch patch check, or None.
        time_share: the largest share of wall time the full validation may take, in (0, 1].
        interval: validate every this many epochs instead (None: by ``time_share``).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        evaluator: Engine,
        patch_evaluator: Engine | None = None,
        time_share: float = 0.1,
        interval: int | None = None,
        clock: Any = time.perf_counter,
    ) -> None:
        if interval is not None and (isinstance(interval, bool) or interval < 1):
            raise ValueError(f"interval must be None or >= 1, got {interval!r}")
        if interval is None and not 0 < time_share <= 1:
            raise ValueError(f"time_share must be in (0, 1], got {time_share!r}")
        self.evaluator, self.patch_evaluator = evaluator, patch_evaluator
        self.time_share, self.interval, self.clock = float(time_share), interval, clock
        self.spent = 0.0  # seconds of full validation so far, resumed runs included
        self.elapsed_before = 0.0  # wall seconds of the earlier sessions of a resumed run
        self.last_cost: float | None = None
        self.last_seconds = 0.0
        self.patch_seconds = 0.0  # the last patch check's
        self._started = 0.0
        self._epoch_started = 0.0
        self._epoch_total, self._epochs = 0.0, 0  # this session's epochs: seconds of training and patch check

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._run_started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def elapsed(self) -> float:
        """Wall seconds of the run so far, earlier sessions of a resumed run included."""
        return self.elapsed_before + self.clock() - self._started

    @property
    def share(self) -> float:
        """The full validations' share of the wall time so far."""
        elapsed = self.elapsed()
        return self.spent / elapsed if elapsed > 0 else 0.0

    def state_dict(self) -> dict[str, float]:
        """Time so far and time spent validating, saved in checkpoints so a resumed run keeps to its share."""
        return {
            "spent": self.spent,
            "elapsed": self.elapsed(),
            "last_cost": -1.0 if self.last_cost is None else self.last_cost,
        }

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.spent, self.elapsed_before = float(state["spent"]), float(state["elapsed"])
        self.last_cost = None if float(state["last_cost"]) < 0 else float(state["last_cost"])

    def _run_started(self, engine: Engine) -> None:
        self._started = self.clock()

    def _epoch_start(self, engine: Engine) -> None:
        self._epoch_started = self.clock()

    def due(self, engine: Engine, epoch_seconds: float) -> bool:
        """Whether the full validation runs after this epoch."""
        epoch = engine.state.epoch
        if engine.state.max_epochs is not None and epoch >= engine.state.max_epochs:
            return True
        if self.interval is not None:
            return epoch % self.interval == 0
        cost = self.last_cost if self.last_cost is not None else epoch_seconds
        elapsed = self.elapsed()
        if self.spent + cost > self.time_share * elapsed:
            return False
        if engine.state.max_epochs is None or not self._epochs:
            return True
        per_epoch = self._epoch_total / self._epochs
        projected = elapsed + (engine.state.max_epochs - epoch) * per_epoch + cost
        return self.spent + 2 * cost <= self.time_share * projected

    def _epoch_completed(self, engine: Engine) -> None:
        start = self.clock()
        if self.patch_evaluator is not None and len(self.patch_evaluator.data_loader.dataset):
            self.patch_evaluator.run(engine.state.epoch)
        self.patch_seconds = self.clock() - start
        epoch_seconds = self.clock() - self._epoch_started  # training and patch check
        self._epoch_total, self._epochs = self._epoch_total + epoch_seconds, self._epochs + 1
        self.last_seconds = 0.0
        if not from_rank_zero(self.due(engine, epoch_seconds)):  # under DDP, every rank as rank 0 decides
            return
        start = self.clock()
        self.evaluator.run(engine.state.epoch)
        self.last_seconds = self.last_cost = self.clock() - start
        self.spent += self.last_seconds
        logger.info(
            "epoch %d: full validation took %.1f s; full validations so far %.0f s, %.1f%% of %.0f s wall time",
            engine.state.epoch,
            self.last_seconds,
            self.spent,
            100 * self.share,
            self.elapsed(),
        )
