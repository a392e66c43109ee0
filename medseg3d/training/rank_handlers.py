"""Which trainer handlers each rank attaches under ``torchrun``: every rank validates, only rank 0 writes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.handlers import CheckpointSaver, MLFlowHandler, StatsHandler, TensorBoardHandler

from medseg3d.core.ranks import get_rank
from medseg3d.training.handlers import (
    Checkpoints,
    Curves,
    MetricsCSV,
    RunRecord,
    TensorBoardMetrics,
    TrainingProgress,
)


def rank_zero_writers() -> tuple[type, ...]:
    """Handler types that write files or logs and so run on rank 0 only.

    MONAI's ``MetricsSaver`` and ``ClassificationSaver`` are not among them: they gather across ranks
    themselves and must run on every rank. A TensorBoard handler opens its events file when it is built,
    before any filtering: the config builds it on rank 0 only (``_disabled_`` on the other ranks).
    """
    writers = (RunRecord, MetricsCSV, Curves, Checkpoints, TensorBoardMetrics, TrainingProgress)
    return (*writers, StatsHandler, TensorBoardHandler, CheckpointSaver, MLFlowHandler)


def handlers_for_rank(
    handlers: Sequence[Any] | None, rank: int | None = None, writers: Sequence[type] | None = None
) -> list[Any] | None:
    """The handlers this rank attaches: all of them on rank 0, all but the ``writers`` on the other ranks.

    Selecting by type, not by position, keeps the right handlers wherever the list puts them; handlers
    that take part in collective operations (validation, ``GracefulStop``) stay on every rank. ``None``
    entries (a handler switched off with ``_disabled_`` and referenced by id) are left out on every rank.

    Args:
        handlers: the trainer's handler objects (None: none).
        rank: this process's rank; by default ``get_rank()``.
        writers: the types to drop on ranks > 0; by default ``rank_zero_writers()``.

    >>> class Log: ...
    >>> class Step: ...
    >>> [type(h).__name__ for h in handlers_for_rank([Log(), Step()], rank=1, writers=[Log])]
    ['Step']
    """
    if handlers is None:
        return None
    rank = get_rank() if rank is None else rank
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    present = [handler for handler in handlers if handler is not None]
    if rank == 0:
        return present
    drop = tuple(writers) if writers is not None else rank_zero_writers()
    return [handler for handler in present if not isinstance(handler, drop)]
