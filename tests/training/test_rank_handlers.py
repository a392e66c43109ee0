"""Which trainer handlers each rank attaches under torchrun: every rank validates, only rank 0 writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.handlers import (
    CheckpointSaver,
    LrScheduleHandler,
    MetricsSaver,
    StatsHandler,
    TensorBoardStatsHandler,
    ValidationHandler,
)

from medseg3d.training import rank_handlers
from medseg3d.training.handlers import Checkpoints, Curves, GracefulStop, MetricsCSV, RunRecord

WRITERS = ("RunRecord", "MetricsCSV", "Curves", "Checkpoints", "StatsHandler", "TensorBoardStatsHandler")
WORKERS = ("LrScheduleHandler", "ValidationHandler", "Marker")


class Marker:
    """Stands for a handler that must run on every rank (``GracefulStop`` all-reduces its stop flag)."""


def _handlers(tmp_path: Path) -> dict[str, object]:
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    return {
        "RunRecord": RunRecord(tmp_path, config={}),
        "LrScheduleHandler": LrScheduleHandler(torch.optim.lr_scheduler.StepLR(optimizer, 1), print_lr=False),
        "ValidationHandler": ValidationHandler(interval=1, validator=None),
        "StatsHandler": StatsHandler(tag_name="train_loss"),
        "TensorBoardStatsHandler": TensorBoardStatsHandler(log_dir=str(tmp_path / "tb")),
        "MetricsCSV": MetricsCSV(tmp_path, optimizer=optimizer),
        "Curves": Curves(tmp_path),
        "Checkpoints": Checkpoints(tmp_path, network, optimizer),
        "Marker": Marker(),
    }


@pytest.mark.parametrize(
    "rank, order, expected",
    [
        pytest.param(0, list(WRITERS + WORKERS), list(WRITERS + WORKERS), id="rank0-keeps-all"),
        pytest.param(1, list(WRITERS + WORKERS), list(WORKERS), id="rank1-drops-writers"),
        pytest.param(3, list(WORKERS + WRITERS)[::-1], list(WORKERS)[::-1], id="rank3-any-order"),
        pytest.param(1, ["Checkpoints", "Marker", "StatsHandler", "Curves"], ["Marker"], id="rank1-interleaved"),
    ],
)
def test_handlers_for_rank_drops_writers_by_type(tmp_path: Path, rank: int, order: list[str], expected: list[str]):
    handlers = _handlers(tmp_path)
    kept = rank_handlers.handlers_for_rank([handlers[name] for name in order], rank=rank)
    assert [type(h).__name__ for h in kept] == expected
    assert all(h is handlers[name] for h, name in zip(kept, expected, strict=True))  # the same objects, in order


def test_handlers_for_rank_defaults_and_edges(tmp_path: Path) -> None:
    handlers = _handlers(tmp_path)
    everything = list(handlers.values())
    assert rank_handlers.handlers_for_rank(everything) == everything  # no process group: rank 0
    assert rank_handlers.handlers_for_rank(None, rank=1) is None
    assert rank_handlers.handlers_for_rank([None, handlers["Marker"], None], rank=0) == [handlers["Marker"]]
    assert rank_handlers.handlers_for_rank(everything, rank=1, writers=[Marker]) == everything[:-1]
    with pytest.raises(ValueError, match="rank must be >= 0, got -1"):
        rank_handlers.handlers_for_rank(everything, rank=-1)


def test_rank_zero_writers_are_the_file_writers() -> None:
    writers = rank_handlers.rank_zero_writers()
    assert {RunRecord, MetricsCSV, Curves, Checkpoints, StatsHandler, CheckpointSaver} <= set(writers)
    assert issubclass(TensorBoardStatsHandler, writers)
    # these take part in collective operations: dropping them on one rank would hang the others
    assert not {GracefulStop, ValidationHandler, LrScheduleHandler, MetricsSaver} & set(writers)
