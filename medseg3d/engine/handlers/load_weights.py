"""Network weights from a checkpoint, loaded when an evaluator starts, without running code from the file."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from medseg3d.engine.checkpoint import load_checkpoint
from medseg3d.errors import InputError

logger = logging.getLogger(__name__)


def network_state(checkpoint: Mapping[str, Any], key: str = "network") -> Mapping[str, torch.Tensor]:
    """The network state dict in ``checkpoint``: ``checkpoint[key]``, or ``checkpoint`` itself when it is one.

    A training checkpoint (``checkpoints/best.pt``) holds the weights under ``key``; a bare state dict
    (``torch.save(net.state_dict())``, the weights of an exported bundle) is all tensors.

    Raises:
        ValueError: neither layout.
    """
    state = checkpoint.get(key)
    if isinstance(state, Mapping):
        return state
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint
    raise ValueError(
        f"holds no {key!r} state dict and is not a bare state dict (keys: {', '.join(map(str, checkpoint))})"
    )


def state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], strict: bool = True) -> str:
    """What keeps ``given`` from loading where ``expected`` is: missing and unexpected names (when ``strict``),
    shape differences; empty when it fits.

    >>> state_mismatch({"w": torch.zeros(2), "b": torch.zeros(1)}, {"w": torch.zeros(3), "x": torch.zeros(1)})
    '1 missing (b), 1 unexpected (x), 1 of another shape (w: (3,) instead of (2,))'
    """
    missing = [name for name in expected if name not in given]
    unexpected = [name for name in given if name not in expected]
    shapes = [
        f"{name}: {tuple(given[name].shape)} instead of {tuple(value.shape)}"
        for name, value in expected.items()
        if name in given and given[name].shape != value.shape
    ]
    parts = [(missing, "missing"), (unexpected, "unexpected")] if strict else []
    parts.append((shapes, "of another shape"))
    return ", ".join(
        f"{len(items)} {what} ({', '.join(items[:2])}{', ...' if len(items) > 2 else ''})"
        for items, what in parts
        if items
    )


def load_into(
    network: torch.nn.Module, path: Path, key: str = "network", strict: bool = True, hint: str = ""
) -> Mapping[str, Any]:
    """Load the weights in checkpoint ``path`` into ``network`` (a DDP wrapper is unwrapped); return the checkpoint.

    Raises:
        InputError: naming the file: damaged, holding objects that would run code when loaded, of neither
            layout, or with weights that do not fit ``network`` (``hint`` says what to check).
    """
    checkpoint = load_checkpoint(path)
    try:
        state = network_state(checkpoint, key)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    network = getattr(network, "module", network)
    problem = state_mismatch(network.state_dict(), state, strict)
    if problem:
        raise InputError(path, f"the weights do not fit the network: {problem} ({hint})")
    network.load_state_dict(state, strict=strict)
    return checkpoint


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
