"""``checkpoints/last.pt`` after every epoch, ``checkpoints/best.pt`` when validation improves, and resuming."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from medseg3d.core.checkpoint_format import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_complete,
)
from medseg3d.core.errors import InputError

logger = logging.getLogger(__name__)


def _unwrap(network: Any) -> Any:
    """The module inside ``DistributedDataParallel``/``DataParallel``, so keys never start with ``module.``."""
    return getattr(network, "module", network)


class Checkpoints:
    """Save the whole training state atomically, in types ``torch.load(weights_only=True)`` reads; restore it.

    ``last.pt`` holds the network, optimizer, lr scheduler and AMP scaler state dicts, the trainer's
    iteration/epoch, the best metric so far, the state of every object in ``stateful`` and the RNG
    states; it is written at the end of every epoch (after validation) and by ``save_last`` (on an
    interrupt, mid-epoch). ``best.pt`` is the same, written when the evaluator's key metric beats every
    earlier one. ``restore`` puts all of it back before ``trainer.run()`` continues.

    Attach it after MONAI's ``ValidationHandler`` and ``MetricsCSV`` so that the epoch's validation and
    records are complete when ``last.pt`` is written.

    Args:
        output_dir: the run directory (files go to ``output_dir/checkpoints``).
        network, optimizer: what to save.
        lr_scheduler: saved when given.
        evaluator: the validation engine, whose ``state.metrics[key_metric]`` selects ``best.pt``.
        key_metric: name of the metric to maximise.
        seed: the run's seed, recorded.
        stateful: more objects with ``state_dict``/``load_state_dict`` to save and restore by name (the
            ``MetricsCSV`` handler keeps the losses of a half-done epoch this way).
        save: write files (False on DDP ranks other than 0, which only restore).

    The AMP scaler is the trainer's own (``engine.scaler``), saved when the trainer has one.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: Any,
        optimizer: Any,
        lr_scheduler: Any = None,
        evaluator: Engine | None = None,
        key_metric: str = "val_mean_dice",
        seed: int = 0,
        stateful: Mapping[str, Any] | None = None,
        save: bool = True,
    ) -> None:
        self.folder = Path(output_dir) / "checkpoints"
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.evaluator = evaluator
        self.key_metric = key_metric
        self.seed = seed
        self.stateful = dict(stateful or {})
        self.save = save
        self.best_metric = -math.inf
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def state(self, engine: Engine) -> dict[str, Any]:
        """The checkpoint dict for ``engine``'s current position."""
        checkpoint: dict[str, Any] = {
            "network": _unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": {
                "iteration": engine.state.iteration,
                "epoch": engine.state.epoch,
                "epoch_length": engine.state.epoch_length,
                "max_epochs": engine.state.max_epochs,
            },
            "best": {"metric": self.best_metric, "epoch": self.best_epoch, "key": self.key_metric},
            "stateful": {name: obj.state_dict() for name, obj in self.stateful.items()},
            "rng": rng_state(),
            "seed": self.seed,
        }
        if self.lr_scheduler is not None:
            checkpoint["lr_scheduler"] = self.lr_scheduler.state_dict()
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            checkpoint["scaler"] = scaler.state_dict()
        if self.evaluator is not None:
            checkpoint["evaluator"] = {
                "best_metric": float(self.evaluator.state.best_metric),
                "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            }
        return checkpoint

    def save_last(self, engine: Engine) -> Path:
        """Write ``last.pt`` now (also used on an interrupt mid-epoch)."""
        path = self.folder / "last.pt"
        if self.save:
            save_checkpoint(self.state(engine), path)
        return path

    def _epoch_completed(self, engine: Engine) -> None:
        evaluator = self.evaluator
        improved = False
        if evaluator is not None and evaluator.state.epoch == engine.state.epoch:
            value = float(evaluator.state.metrics.get(self.key_metric, math.nan))
            if math.isfinite(value) and value > self.best_metric:
                self.best_metric, self.best_epoch, improved = value, engine.state.epoch, True
        if not self.save:
            return
        checkpoint = self.state(engine)
        save_checkpoint(checkpoint, self.folder / "last.pt")
        if improved:
            save_checkpoint(checkpoint, self.folder / "best.pt")
            logger.info(
                "epoch %d: new best %s %.4f, saved best.pt", engine.state.epoch, self.key_metric, self.best_metric
            )

    def restore(self, engine: Engine, resume: bool | str | os.PathLike = True) -> bool:
        """Put the state of ``last.pt`` (or the checkpoint file ``resume`` names) back, before ``engine.run()``.

        Restores the network, optimizer, scheduler, scaler, ``stateful`` objects, best metric, RNG states
        and the trainer's position. A run stopped mid-epoch continues with the next batch of that epoch:
        the trainer's ``ResumableSampler`` skips the samples already trained on.

        Args:
            engine: the trainer (a MONAI ``SupervisedTrainer``).
            resume: False (do nothing), True (``output_dir/checkpoints/last.pt``) or a checkpoint path; the
                strings "true"/"false" as command lines give them are accepted.

        Returns:
            whether a checkpoint was restored.

        Raises:
            InputError: no checkpoint to resume from, a damaged one, or one from another dataset size.
        """
        if isinstance(resume, str) and resume.lower() in ("true", "false", ""):
            resume = resume.lower() == "true"
        if resume is False or resume is None:
            return False
        path = self.folder / "last.pt" if resume is True else Path(resume)
        if not path.is_file():
            raise InputError(
                path, "nothing to resume: no checkpoint here (a run writes checkpoints/last.pt after its first epoch)"
            )
        device = next(_unwrap(self.network).parameters()).device
        checkpoint = load_checkpoint(path, map_location=device)
        position = checkpoint["trainer"]
        epoch_length = engine.state.epoch_length
        if epoch_length is not None and position["epoch_length"] != epoch_length:
            raise InputError(
                path,
                f"saved with {position['epoch_length']} iterations per epoch, but this run has {epoch_length}: "
                "iterations_per_epoch or the batch size changed (or, with one pass over the cases per epoch, the "
                "dataset or fold), so it cannot continue exactly",
            )
        max_epochs = engine.state.max_epochs or position["max_epochs"]
        if training_complete(position, max_epochs):
            raise InputError(
                path,
                f"the run is complete: it trained {position['epoch']} of max_epochs={max_epochs} epochs "
                "(to train longer, resume with a larger --max_epochs)",
            )
        _unwrap(self.network).load_state_dict(checkpoint["network"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in checkpoint:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        for name, obj in self.stateful.items():
            if name in checkpoint.get("stateful", {}):
                obj.load_state_dict(checkpoint["stateful"][name])
        best = checkpoint.get("best", {})
        self.best_metric, self.best_epoch = float(best.get("metric", -math.inf)), int(best.get("epoch", -1))
        if self.evaluator is not None and "evaluator" in checkpoint:
            self.evaluator.state.best_metric = checkpoint["evaluator"]["best_metric"]
            self.evaluator.state.best_metric_epoch = checkpoint["evaluator"]["best_metric_epoch"]
        engine.load_state_dict(
            {"iteration": position["iteration"], "epoch_length": position["epoch_length"], "max_epochs": max_epochs}
        )
        within = position["iteration"] % position["epoch_length"]
        if within:
            self._skip_trained_samples(engine, within)
        set_rng_state(checkpoint["rng"])
        logger.info(
            "resumed from %s at epoch %d, iteration %d (best %s %.4f at epoch %d)",
            path,
            engine.state.epoch,
            engine.state.iteration,
            self.key_metric,
            self.best_metric,
            self.best_epoch,
        )
        return True

    @staticmethod
    def _skip_trained_samples(engine: Engine, iterations: int) -> None:
        loader = engine.data_loader
        sampler = getattr(loader, "sampler", None)
        if not hasattr(sampler, "skip_next"):
            raise InputError(
                None,
                "cannot resume mid-epoch: the training DataLoader needs a medseg3d.training.sampling.ResumableSampler",
            )
        sampler.skip_next(iterations * loader.batch_size)
