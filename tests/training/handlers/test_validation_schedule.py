"""ValidationSchedule: the patch check every epoch, the full validation within its share of the wall time and at
the end; TimeBudget: a run planned to end within its minutes, its learning rate annealed to zero at the end."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from ignite.engine import Events

from medseg3d.training.handlers import TimeBudget, ValidationSchedule
from medseg3d.training.optim import make_scheduler


class Clock:
    """Seconds that pass only when the test says so: one per training iteration, ``cost`` per validation."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedEvaluator:
    """An evaluator whose run takes ``cost`` seconds of the clock and records the epochs it validated."""

    def __init__(self, clock: Clock, cost: float, patches: int = 1) -> None:
        self.clock, self.cost, self.epochs = clock, cost, []
        self.data_loader = SimpleNamespace(dataset=[0] * patches)

    def run(self, epoch: int) -> None:
        self.clock.now += self.cost
        self.epochs.append(epoch)


def _train(make_trainer, clock: Clock, handlers, max_epochs: int, cases: int = 4):
    tiny = make_trainer(max_epochs=max_epochs, cases=cases, handlers=handlers)

    @tiny.trainer.on(Events.ITERATION_COMPLETED)
    def tick(engine) -> None:
        clock.now += 1.0

    tiny.trainer.run()
    return tiny


def test_full_validation_keeps_to_its_share_and_runs_at_the_end(make_trainer, caplog) -> None:
    caplog.set_level(logging.INFO, logger="medseg3d.training.handlers.validation_schedule")
    clock = Clock()
    full, patches = TimedEvaluator(clock, cost=3.0), TimedEvaluator(clock, cost=0.0)
    schedule = ValidationSchedule(full, patch_evaluator=patches, time_share=0.2, clock=clock)
    _train(make_trainer, clock, lambda tiny: [schedule], max_epochs=12)  # 4 s per epoch
    assert patches.epochs == list(range(1, 13))  # the patch check: every epoch
    # before any full validation its cost is guessed as an epoch's (4 s): first when 4 <= 0.2 * elapsed, at epoch 5
    # (20 s); then measured (3 s): at epoch 7 (3 + 3 <= 0.2 * 31). Epoch 10 would fit the time so far (6 + 3 <=
    # 0.2 * 46) but not the run's, the last epoch's validation counted (6 + 3 + 3 > 0.2 * (46 + 2 * 4 + 3)); the
    # last epoch, 12, validates whatever the share, and the run ends within it
    assert full.epochs == [5, 7, 12]
    assert schedule.spent == pytest.approx(9.0)
    assert schedule.share == pytest.approx(9.0 / (48 + 9.0)) and schedule.share <= 0.2
    logged = [r.getMessage() for r in caplog.records if "full validation took" in r.getMessage()]
    assert len(logged) == 3 and logged[-1] == (
        "epoch 12: full validation took 3.0 s; full validations so far 9 s, 15.8% of 57 s wall time"
    )


def test_interval_validates_every_n_epochs_and_at_the_end(make_trainer) -> None:
    clock = Clock()
    full = TimedEvaluator(clock, cost=100.0)
    schedule = ValidationSchedule(full, interval=3, clock=clock)
    _train(make_trainer, clock, lambda tiny: [schedule], max_epochs=7)
    assert full.epochs == [3, 6, 7]


def test_schedule_state_carries_over_a_resume(make_trainer) -> None:
    clock = Clock()
    full = TimedEvaluator(clock, cost=3.0)
    first = ValidationSchedule(full, time_share=0.2, clock=clock)
    _train(make_trainer, clock, lambda tiny: [first], max_epochs=6)
    resumed = ValidationSchedule(full, time_share=0.2, clock=Clock())
    resumed.load_state_dict(first.state_dict())
    assert (resumed.spent, resumed.last_cost) == (first.spent, 3.0)
    assert resumed.elapsed() == pytest.approx(first.elapsed())


@pytest.mark.parametrize("time_share, interval", [(0.0, None), (1.5, None), (0.1, 0)])
def test_schedule_refuses_bad_settings(time_share: float, interval: int | None) -> None:
    with pytest.raises(ValueError):
        ValidationSchedule(TimedEvaluator(Clock(), 1.0), time_share=time_share, interval=interval)


def _budget_run(make_trainer, minutes: float, max_epochs: int = 1000):
    """A run of 4 one-second iterations per epoch under a budget, the full validation costing 2 s."""
    clock = Clock()
    full = TimedEvaluator(clock, cost=2.0)
    holder = {}

    def handlers(tiny):
        scheduler = make_scheduler(tiny.optimizer, "poly", total_steps=max_epochs * 4)
        holder["scheduler"] = scheduler
        tiny.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: scheduler.step())
        schedule = ValidationSchedule(full, time_share=0.1, clock=clock)
        budget = TimeBudget(minutes, lr_scheduler=scheduler, schedule=schedule, time_share=0.1, start=0.0, clock=clock)
        holder["budget"], holder["schedule"] = budget, schedule
        return [budget, schedule]

    tiny = _train(make_trainer, clock, handlers, max_epochs=max_epochs)
    return tiny, clock, full, holder


def test_time_budget_ends_the_run_within_its_minutes_with_the_rate_at_zero(make_trainer) -> None:
    tiny, clock, full, holder = _budget_run(make_trainer, minutes=1.0)
    epochs = tiny.trainer.state.epoch
    assert epochs == holder["budget"].planned == tiny.trainer.state.max_epochs
    # 60 s: an epoch is 4 s, the final validation 2 s, a tenth of the rest left to validations on the way
    assert 10 <= epochs <= 14 and clock.now <= 60.0
    assert full.epochs[-1] == epochs  # the planned last epoch had its full validation
    assert tiny.optimizer.param_groups[0]["lr"] == 0.0  # the poly decay reached its end with the run
    assert holder["scheduler"].total_iters == 4 * epochs


def test_time_budget_never_exceeds_max_epochs(make_trainer) -> None:
    tiny, clock, full, holder = _budget_run(make_trainer, minutes=10.0, max_epochs=5)
    assert tiny.trainer.state.epoch == 5 and full.epochs[-1] == 5
    assert tiny.optimizer.param_groups[0]["lr"] == 0.0


def test_time_budget_keeps_its_plan_across_a_resume(make_trainer) -> None:
    tiny, clock, full, holder = _budget_run(make_trainer, minutes=1.0)
    state = holder["budget"].state_dict()
    resumed = TimeBudget(1.0, start=0.0, clock=Clock())
    resumed.load_state_dict(state)
    engine = SimpleNamespace(state=SimpleNamespace(max_epochs=1000, epoch_length=4, epoch=3))
    resumed._started(engine)
    assert engine.state.max_epochs == holder["budget"].planned
    assert resumed.elapsed() == pytest.approx(holder["budget"].elapsed())


@pytest.mark.parametrize("minutes", [0, -1, float("inf")])
def test_time_budget_refuses_a_budget_that_is_not_positive(minutes: float) -> None:
    with pytest.raises(ValueError, match="max_minutes"):
        TimeBudget(minutes)
