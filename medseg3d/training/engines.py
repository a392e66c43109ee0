"""The standard wiring of a bundle's MONAI engines: the trainer's handlers, the validation evaluator and the
evaluate overlay's handlers, named by ``_target_`` so every bundle shares them.

Rank-aware by construction: under ``torch.distributed`` every rank validates and takes part in the stop
decision, rank 0 alone writes (records, checkpoints, logs, TensorBoard), and validation runs the plain module,
without DDP's collectives per forward. In a single process (rank 0) every handler is attached.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import LrScheduleHandler, StatsHandler, TensorBoardStatsHandler, from_engine
from monai.inferers import Inferer, SimpleInferer
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from medseg3d.core.ranks import get_rank
from medseg3d.training.handlers import (
    Checkpoints,
    Curves,
    EvalReport,
    GracefulStop,
    GradientClipping,
    LoadWeights,
    MetricsCSV,
    MLflowTracking,
    RunRecord,
    TensorBoardMetrics,
    TimeBudget,
    TrainingProgress,
    ValidationSchedule,
)
from medseg3d.training.multitask import MultitaskLoss, MultitaskSchedule
from medseg3d.training.rank_handlers import handlers_for_rank
from medseg3d.training.validation import FixedPatches, patch_dice_metrics, postprocessing

KEY_METRIC = "val_mean_dice"


class TrainHandlers:
    """The handlers of a bundle's ``SupervisedTrainer``, built from a few objects, in the order they attach:

    ``RunRecord`` (config, overrides, versions, log file), ``LrScheduleHandler`` (the schedule steps every
    iteration), with ``max_minutes`` a ``TimeBudget`` (plans the epochs and the schedule's length to end within
    it), ``ValidationSchedule`` (``patch_evaluator`` every epoch; ``evaluator``, the full validation, within
    ``val_time_share`` of the wall time or every ``val_interval`` epochs, and at the last epoch),
    ``StatsHandler`` and ``TensorBoardStatsHandler`` (the training loss), ``MetricsCSV``, ``Curves``,
    ``Checkpoints`` and ``GracefulStop``. ``MetricsCSV`` comes after validation so that its row holds the
    epoch's validation metrics, and ``Checkpoints`` after ``MetricsCSV`` so that ``last.pt`` carries the
    half-done epoch's losses. ``best.pt`` follows the full validation's ``key_metric``.

    On ranks > 0 the writers are left out (``handlers_for_rank``) and TensorBoard's handler is not even built
    (it opens its events file when built); their ``Checkpoints`` object only restores a resumed run.

    Attributes:
        handlers: the list for ``SupervisedTrainer(train_handlers=...)`` (the bundle's ``train#handlers``).
        metrics_csv: the ``MetricsCSV`` handler (``train#metrics_csv``).
        checkpoints: the ``Checkpoints`` handler (``train#checkpoints``; its ``restore`` resumes a run).

    Args:
        output_dir: the run directory.
        network: the trained network (DDP-wrapped or not: checkpoints hold the plain module's weights).
        optimizer: the optimizer; ``metrics.csv`` records its first group's learning rate.
        lr_scheduler: the per-iteration learning-rate schedule.
        evaluator: the full validation engine (the sliding window over the validation cases).
        val_interval: run the full validation every this many epochs (and at the last); None: by
            ``val_time_share``.
        seed: the run's seed (recorded, and in the checkpoints).
        resume_hint: the command printed when a signal stops the run (``{run_dir}`` is filled in).
        key_metric: the evaluator's metric that picks ``best.pt``.
        rank: this process's rank; by default the process group's (0 outside one).
        patch_evaluator: the per-epoch check on fixed validation patches, or None.
        val_time_share: the largest share of wall time the full validations take (``ValidationSchedule``).
        max_minutes: a wall-clock budget for the run (``TimeBudget``), or None.
        run_start: the ``time.monotonic()`` reading the budget counts from (the bundles: when their workflow
            initializes); None: when the trainer starts.
        loss: the training loss; a ``MultitaskLoss`` gets its ``MultitaskSchedule`` (lambda follows the epochs).
        grad_clip_norm: clip the gradients' global norm to this before each optimizer step
            (``GradientClipping``); None: no clipping.
        tracking: ``mlflow``: also track the run in MLflow (``MLflowTracking``); None: TensorBoard and the run
            folder only (``TensorBoardMetrics`` always writes every metrics.csv column and a validation case).
        tracking_uri: MLflow's store (None: ``sqlite:///<output_dir>/../mlruns.db``).
        experiment_name: MLflow's experiment (the bundle's name).
        progress: a progress bar over each epoch's iterations (``TrainingProgress``); None: when stderr is a
            terminal.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        evaluator: Engine,
        val_interval: int | None = None,
        seed: int = 0,
        resume_hint: str = "medseg3d train --resume {run_dir}",
        key_metric: str = KEY_METRIC,
        rank: int | None = None,
        patch_evaluator: Engine | None = None,
        val_time_share: float = 0.1,
        max_minutes: float | None = None,
        run_start: float | None = None,
        loss: torch.nn.Module | None = None,
        grad_clip_norm: float | None = None,
        tracking: str | None = None,
        tracking_uri: str | None = None,
        experiment_name: str = "medseg3d",
        progress: bool | None = None,
    ) -> None:
        if tracking not in (None, "mlflow"):
            raise ValueError(f"experiment_tracking must be null or 'mlflow', got {tracking!r}")
        rank = get_rank() if rank is None else rank
        self.schedule = ValidationSchedule(
            evaluator, patch_evaluator=patch_evaluator, time_share=val_time_share, interval=val_interval
        )
        self.time_budget = (
            None
            if max_minutes is None
            else TimeBudget(
                max_minutes,
                lr_scheduler=lr_scheduler,
                schedule=self.schedule,
                time_share=val_time_share,
                start=run_start,
            )
        )
        self.metrics_csv = MetricsCSV(
            output_dir,
            optimizer=optimizer,
            evaluator=evaluator,
            patch_evaluator=patch_evaluator,
            schedule=self.schedule,
        )
        stateful: dict[str, Any] = {"metrics_csv": self.metrics_csv, "validation_schedule": self.schedule}
        if self.time_budget is not None:
            stateful["time_budget"] = self.time_budget
        self.checkpoints = Checkpoints(
            output_dir,
            network,
            optimizer,
            lr_scheduler=lr_scheduler,
            evaluator=evaluator,
            key_metric=key_metric,
            seed=seed,
            stateful=stateful,
            save=rank == 0,
        )
        loss = from_engine(["loss"], first=True)
        # one events file per run: MONAI's per-iteration loss and TensorBoardMetrics' epoch rows share the writer,
        # opened here on rank 0 only (other ranks write nothing)
        writer = None if rank > 0 else SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))
        every = [
            RunRecord(output_dir, seed=seed),
            LrScheduleHandler(lr_scheduler, epoch_level=False, print_lr=False),
            self.time_budget,
            self.schedule,
            # name None: the trainer's logger, through the root handlers (console and the run's log file)
            StatsHandler(name=None, tag_name="train_loss", output_transform=loss),
            TrainingProgress(progress),
            None
            if rank > 0
            else TensorBoardStatsHandler(summary_writer=writer, tag_name="train_loss", output_transform=loss),
            self.metrics_csv,
            None if rank > 0 else TensorBoardMetrics(output_dir, self.metrics_csv, evaluator, writer=writer),
            None
            if tracking is None or rank > 0
            else MLflowTracking(
                output_dir, self.metrics_csv, tracking_uri=tracking_uri, experiment_name=experiment_name
            ),
            Curves(output_dir),
            self.checkpoints,
            GracefulStop(self.checkpoints, resume_hint=resume_hint),
        ]
        if isinstance(loss, MultitaskLoss):
            every.insert(2, MultitaskSchedule(loss))  # every rank: each computes its own loss
        if grad_clip_norm is not None:
            every.insert(2, GradientClipping(grad_clip_norm))  # every rank: DDP has averaged the gradients
        self.handlers = handlers_for_rank(every, rank=rank)


def plain_module(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel``, else ``network``: inference needs no gradient sync.

    >>> net = torch.nn.Linear(1, 1)
    >>> plain_module(net) is net
    True
    """
    return network.module if isinstance(network, DistributedDataParallel) else network


def supervised_evaluator(
    device: torch.device | str,
    val_data_loader: Any,
    network: torch.nn.Module,
    inferer: Inferer,
    postprocessing: Callable,
    metrics: Mapping[str, Any],
    key_metric: str = KEY_METRIC,
    val_handlers: Sequence[Any] | None = None,
    amp: bool = False,
) -> SupervisedEvaluator:
    """MONAI's ``SupervisedEvaluator`` for validation: ``metrics[key_metric]`` is its key metric (the one
    ``best.pt`` follows), the other ``metrics`` are computed beside it, and the network runs as ``medseg3d
    infer`` runs it: the bundle's ``inferer`` and ``postprocessing``, no autocast of the evaluator's own
    (``amp``: the inferer decides it), the plain module under DDP.

    Args:
        device: where the network runs.
        val_data_loader: the validation DataLoader (one case per batch).
        network: the network, DDP-wrapped or not.
        inferer: the whole-volume inferer (sliding window or slice stacks).
        postprocessing: logits to what the metrics score (``medseg3d.training.validation.postprocessing``).
        metrics: metric name -> MONAI ``IgniteMetricHandler`` (``medseg3d.training.validation.dice_metrics``).
        key_metric: the name of the key metric in ``metrics``.
        val_handlers: the evaluator's handlers (the evaluate overlay's), or None.
        amp: autocast in the evaluator itself.

    Raises:
        ValueError: ``key_metric`` is not in ``metrics``.
    """
    if key_metric not in metrics:
        raise ValueError(f"key_metric {key_metric!r} is not among the metrics {', '.join(metrics)}")
    return SupervisedEvaluator(
        device=device,
        val_data_loader=val_data_loader,
        network=plain_module(network),
        inferer=inferer,
        postprocessing=postprocessing,
        key_val_metric={key_metric: metrics[key_metric]},
        additional_metrics={name: metric for name, metric in metrics.items() if name != key_metric},
        val_handlers=val_handlers,
        amp=amp,
    )


def patch_evaluator(
    device: torch.device | str,
    network: torch.nn.Module,
    patches: FixedPatches,
    output_mode: str,
    label_names: Sequence[str] | None = None,
    amp: bool = False,
    batch_size: int = 1,
    num_classes: int = 0,
) -> SupervisedEvaluator:
    """The per-epoch check: the network segments each of the fixed validation ``patches`` whole (MONAI's
    ``SimpleInferer``, the patch being the training patch size), the logits are decoded as inference decodes
    them but without connected-component rules (a patch is not a case), and ``patch_mean_dice`` and
    ``patch_dice_<name>`` pool every patch's voxels (``patch_dice_metrics``).

    Args:
        device: where the network runs.
        network: the network, DDP-wrapped or not.
        patches: the fixed validation patches (``medseg3d.training.validation.FixedPatches``).
        output_mode: ``regions`` or ``labels``.
        label_names: the foreground labels in value order (labels mode).
        amp: autocast (as in training).
        batch_size: patches per network call.
        num_classes: class channels after the segmentation logits (a multitask network): dropped here, the
            patch check scores segmentation.
    """
    loader = DataLoader(patches, batch_size=batch_size, shuffle=False, num_workers=0)
    return supervised_evaluator(
        device=device,
        val_data_loader=loader,
        network=network,
        inferer=SimpleInferer(),
        postprocessing=postprocessing(output_mode, label_names, num_classes=num_classes, pool_classes=False),
        metrics=patch_dice_metrics(output_mode, label_names),
        key_metric="patch_mean_dice",
        amp=amp,
    )


def evaluation_handlers(
    checkpoint: str | os.PathLike,
    network: torch.nn.Module,
    output_dir: str | os.PathLike,
    datalist: Sequence[Mapping[str, Any]],
    output_mode: str,
    dataset_dir: str | os.PathLike,
    fold: int,
    save_predictions: bool = False,
) -> list[Any]:
    """The evaluate overlay's evaluator handlers: load ``checkpoint`` into ``network`` when the evaluator
    starts (``LoadWeights``; a missing file fails here, before any case is read), log the metrics, and write
    the report (``EvalReport``: ``per_case.csv``, ``summary.json`` with checkpoint, dataset, fold and
    output mode, and with ``save_predictions`` the label maps) into ``output_dir``.

    Args:
        checkpoint: a training checkpoint or a bare state dict.
        network: the evaluator's network.
        output_dir: the report's folder.
        datalist: the validation datalist (its label files give the predictions' geometry).
        output_mode: ``regions`` or ``labels``.
        dataset_dir, fold: recorded in ``summary.json``.
        save_predictions: also write ``predictions/<case_id>.nii.gz``.
    """
    info = {"checkpoint": str(checkpoint), "dataset_dir": str(dataset_dir), "fold": fold, "output_mode": output_mode}
    return [
        LoadWeights(checkpoint, network),
        # name None: the evaluator's logger, through the root handlers (console and the run's log file)
        StatsHandler(name=None, iteration_log=False),
        EvalReport(
            output_dir, info=info, save_predictions=save_predictions, datalist=datalist, output_mode=output_mode
        ),
    ]
