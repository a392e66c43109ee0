"""The standard trainer handlers, the validation evaluator and the evaluate overlay's handlers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, StatsHandler
from monai.inferers import SimpleInferer
from torch.nn.parallel import DistributedDataParallel

from medseg3d.core.errors import InputError
from medseg3d.training.engines import TrainHandlers, evaluation_handlers, plain_module, supervised_evaluator
from medseg3d.training.handlers import EvalReport, LoadWeights

ORDER = ["RunRecord", "LrScheduleHandler", "ValidationSchedule", "StatsHandler", "TrainingProgress",
         "TensorBoardStatsHandler", "MetricsCSV", "TensorBoardMetrics", "Curves", "Checkpoints",
         "GracefulStop"]  # fmt: skip


def _train_handlers(tmp_path: Path, rank: int) -> TrainHandlers:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    evaluator = supervised_evaluator("cpu", [], torch.nn.Conv3d(1, 2, 1), SimpleInferer(), lambda x: x, _metrics())
    return TrainHandlers(tmp_path, network, optimizer, scheduler, evaluator, val_interval=2, seed=7, rank=rank)


def test_rank0_attaches_every_handler_in_order(tmp_path: Path) -> None:
    built = _train_handlers(tmp_path, rank=0)
    assert [type(h).__name__ for h in built.handlers] == ORDER
    assert built.handlers[6] is built.metrics_csv and built.handlers[9] is built.checkpoints
    assert built.handlers[7].metrics_csv is built.metrics_csv  # TensorBoard gets metrics.csv's row
    assert built.checkpoints.save and built.checkpoints.seed == 7
    assert built.handlers[2].interval == 2 and built.handlers[2] is built.schedule  # ValidationSchedule
    assert built.time_budget is None  # no max_minutes: no TimeBudget
    assert built.handlers[10].checkpoints is built.checkpoints  # GracefulStop saves through them
    assert (tmp_path / "tensorboard").is_dir()


def test_other_ranks_keep_the_communicating_handlers_and_write_nothing(tmp_path: Path) -> None:
    built = _train_handlers(tmp_path, rank=1)
    assert [type(h).__name__ for h in built.handlers] == ["LrScheduleHandler", "ValidationSchedule", "GracefulStop"]
    assert not built.checkpoints.save  # only restores a resumed run
    assert not (tmp_path / "tensorboard").exists()  # TensorBoard's handler was never built


def test_val_interval_must_be_positive(tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="interval must be None or >= 1, got 0"):
        TrainHandlers(tmp_path, network, optimizer, None, None, val_interval=0, rank=0)


def test_a_time_budget_comes_before_the_validation_it_plans_for(tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    evaluator = supervised_evaluator("cpu", [], torch.nn.Conv3d(1, 2, 1), SimpleInferer(), lambda x: x, _metrics())
    built = TrainHandlers(tmp_path, network, optimizer, None, evaluator, max_minutes=5, rank=0)
    names = [type(h).__name__ for h in built.handlers]
    assert names.index("TimeBudget") == names.index("ValidationSchedule") - 1
    assert built.checkpoints.stateful["time_budget"] is built.time_budget  # its plan is saved and resumed


def _metrics() -> dict:
    return {"val_mean_dice": MeanDice(), "val_dice_WT": MeanDice(), "val_dice_TC": MeanDice()}


def test_evaluator_key_metric_and_the_others() -> None:
    network = torch.nn.Conv3d(1, 2, 1)
    evaluator = supervised_evaluator("cpu", [], network, SimpleInferer(), lambda x: x, _metrics())
    assert isinstance(evaluator, SupervisedEvaluator)
    assert evaluator.network is network and evaluator.amp is False
    assert list(evaluator.state.metrics) == [] and evaluator.state.key_metric_name == "val_mean_dice"
    with pytest.raises(ValueError, match="key_metric 'val_dice' is not among the metrics val_mean_dice"):
        supervised_evaluator("cpu", [], network, SimpleInferer(), lambda x: x, _metrics(), key_metric="val_dice")


def test_evaluator_runs_the_plain_module_under_ddp(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        network = torch.nn.Conv3d(1, 2, 1)
        wrapped = DistributedDataParallel(network)
        assert plain_module(wrapped) is network
        assert supervised_evaluator("cpu", [], wrapped, SimpleInferer(), lambda x: x, _metrics()).network is network
    finally:
        dist.destroy_process_group()


def test_evaluation_handlers(tmp_path: Path) -> None:
    network = torch.nn.Linear(2, 1)
    checkpoint = tmp_path / "best.pt"
    torch.save(network.state_dict(), checkpoint)
    load, stats, report = evaluation_handlers(
        checkpoint, network, tmp_path / "eval", [], "labels", dataset_dir=tmp_path / "data", fold=1
    )
    assert isinstance(load, LoadWeights) and load.network is network
    assert isinstance(stats, StatsHandler) and isinstance(report, EvalReport)
    assert report.info == {
        "checkpoint": str(checkpoint), "dataset_dir": str(tmp_path / "data"), "fold": 1, "output_mode": "labels"
    }  # fmt: skip
    with pytest.raises(InputError, match="checkpoint not found"):
        evaluation_handlers(tmp_path / "missing.pt", network, tmp_path, [], "labels", tmp_path, 0)
