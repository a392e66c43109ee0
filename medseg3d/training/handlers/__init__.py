"""Small ignite handlers, one per file, attached to MONAI's trainer instead of subclassing it."""

from __future__ import annotations

from medseg3d.training.handlers.checkpoints import Checkpoints
from medseg3d.training.handlers.curves import Curves, plot_curves
from medseg3d.training.handlers.eval_report import EvalReport
from medseg3d.training.handlers.graceful_stop import GracefulStop, exit_if_interrupted, ignore_stop_signals
from medseg3d.training.handlers.gradient_clipping import GradientClipping
from medseg3d.training.handlers.load_weights import LoadWeights
from medseg3d.training.handlers.metrics_csv import MetricsCSV
from medseg3d.training.handlers.run_record import RunRecord
from medseg3d.training.handlers.time_budget import TimeBudget
from medseg3d.training.handlers.tracking import MLflowTracking, TensorBoardMetrics, TrainingProgress
from medseg3d.training.handlers.validation_schedule import ValidationSchedule

__all__ = [
    "Checkpoints",
    "Curves",
    "EvalReport",
    "GracefulStop",
    "GradientClipping",
    "LoadWeights",
    "MLflowTracking",
    "MetricsCSV",
    "RunRecord",
    "TensorBoardMetrics",
    "TimeBudget",
    "TrainingProgress",
    "ValidationSchedule",
    "exit_if_interrupted",
    "ignore_stop_signals",
    "plot_curves",
]
