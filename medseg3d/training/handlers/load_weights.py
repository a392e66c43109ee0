"""Network weights from a checkpoint, loaded when an evaluator starts, without running code from the file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from medseg3d.core.checkpoint_format import load_into
from medseg3d.core.errors import InputError

logger = logging.getLogger(__name__)


class LoadWeights:
    """Load ``network``'s weights from ``checkpoint`` at ``Events.STARTED`` (MONAI's ``CheckpointLoader``,
    network only, through ``load_checkpoint``: ``torch.load(weights_only=True)``).

    The file must exist when the handler is built, so a wrong path fails before the data is cached.

    Args:
        checkpoint: a training checkpoint (weights under ``key``) or a bare state dict.
        network: the module to load into (a ``DistributedDataParallel`` wrapper is unwrapped).
        key: where a training checkpoint keeps the weights.
        strict: every parameter must match by name and shape.

    Raises:
        InputError: naming the file: missing, damaged, holding objects that would run code when loaded,
            of neither layout, or with weights that do not fit ``network``.
    """

    def __init__(
        self, checkpoint: str | os.PathLike, network: torch.nn.Module, key: str = "network", strict: bool = True
    ):
        self.path = Path(checkpoint)
        if not self.path.is_file():
            raise InputError(self.path, "checkpoint not found (pass --checkpoint PATH or the run's --output_dir)")
        self.network = network
        self.key = key
        self.strict = strict

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        hint = "train and evaluate with the same network_def, in_channels and output_mode overrides"
        checkpoint = load_into(self.network, self.path, self.key, self.strict, hint)
        trainer = checkpoint.get("trainer", {})
        where = f" (epoch {trainer['epoch']})" if isinstance(trainer, dict) and "epoch" in trainer else ""
        logger.info("loaded network weights from %s%s", self.path, where)
