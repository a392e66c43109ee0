"""``checkpoints/last.pt`` after every epoch and ``checkpoints/best.pt`` when validation improves."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from medseg3d.engine.checkpoint import rng_state, save_checkpoint

logger = logging.getLogger(__name__)


class Checkpoints:
    """Save the whole training state atomically, in types ``torch.load(weights_only=True)`` reads.

    ``last.pt`` holds the network, optimizer, lr scheduler and AMP scaler state dicts, the trainer's
    iteration/epoch, the best metric so far and the RNG states; it is written at the end of every epoch
    (after validation) and by ``save_last`` (on an interrupt). ``best.pt`` is the same, written when the
    evaluator's key metric beats every earlier one.

    Args:
        output_dir: the run directory (files go to ``output_dir/checkpoints``).
        network, optimizer: what to save.
        lr_scheduler, scaler: saved when given.
        evaluator: the validation engine, whose ``state.metrics[key_metric]`` selects ``best.pt``.
        key_metric: name of the metric to maximise.
        seed: the run's seed, recorded.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: Any,
        optimizer: Any,
        lr_scheduler: Any = None,
        scaler: Any = None,
        evaluator: Engine | None = None,
        key_metric: str = "val_mean_dice",
        seed: int = 0,
    ) -> None:
        self.folder = Path(output_dir) / "checkpoints"
        self.network, self.optimizer, self.lr_scheduler, self.scaler = network, optimizer, lr_scheduler, scaler
        self.evaluator = evaluator
        self.key_metric = key_metric
        self.seed = seed
        self.best_metric = -math.inf
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def state(self, engine: Engine) -> dict[str, Any]:
        """The checkpoint dict for ``engine``'s current position."""
        network = getattr(self.network, "module", self.network)  # unwrap DistributedDataParallel
        checkpoint: dict[str, Any] = {
            "network": network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": {
                "iteration": engine.state.iteration,
                "epoch": engine.state.epoch,
                "epoch_length": engine.state.epoch_length,
                "max_epochs": engine.state.max_epochs,
            },
            "best": {"metric": self.best_metric, "epoch": self.best_epoch, "key": self.key_metric},
            "rng": rng_state(),
            "seed": self.seed,
        }
        if self.lr_scheduler is not None:
            checkpoint["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.scaler is not None:
            checkpoint["scaler"] = self.scaler.state_dict()
        return checkpoint

    def save_last(self, engine: Engine) -> Path:
        """Write ``last.pt`` now (also used on an interrupt mid-epoch)."""
        return save_checkpoint(self.state(engine), self.folder / "last.pt")

    def _epoch_completed(self, engine: Engine) -> None:
        evaluator = self.evaluator
        improved = False
        if evaluator is not None and evaluator.state.epoch == engine.state.epoch:
            value = float(evaluator.state.metrics.get(self.key_metric, math.nan))
            if math.isfinite(value) and value > self.best_metric:
                self.best_metric, self.best_epoch, improved = value, engine.state.epoch, True
        checkpoint = self.state(engine)
        save_checkpoint(checkpoint, self.folder / "last.pt")
        if improved:
            save_checkpoint(checkpoint, self.folder / "best.pt")
            logger.info(
                "epoch %d: new best %s %.4f, saved best.pt", engine.state.epoch, self.key_metric, self.best_metric
            )
