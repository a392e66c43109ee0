"""Gradient-norm clipping between MONAI's backward pass and its optimizer step (nnU-Net clips at 12)."""

from __future__ import annotations

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents


class GradientClipping:
    """Clip the global norm of the trained network's gradients to ``max_norm`` after each backward pass that
    the optimizer step follows (with gradient accumulation, once the accumulated gradients are complete).

    MONAI's ``SupervisedTrainer`` fires ``IterationEvents.BACKWARD_COMPLETED`` between ``backward()`` and
    ``optimizer.step()``. Under AMP the gradients are unscaled first (``GradScaler.unscale_``), so the norm is
    the true one and the scaler still skips a step whose gradients are not finite. The bundles' ``grad_clip_norm``
    (null by default: the measured recipes run without it). It did not keep a multitask run with ``fixed``
    weighting from diverging (docs/multitask.md).

    Args:
        max_norm: the largest global L2 norm of the gradients.
    """

    def __init__(self, max_norm: float = 12.0) -> None:
        if not max_norm > 0:
            raise ValueError(f"max_norm must be > 0, got {max_norm}")
        self.max_norm = float(max_norm)

    def attach(self, engine: Engine) -> None:
        """Attach to a MONAI trainer (which registers ``IterationEvents``)."""
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        acc = int(getattr(engine, "accumulation_steps", 1) or 1)
        if acc > 1:
            length = engine.state.epoch_length
            local = (engine.state.iteration - 1) % length if length else engine.state.iteration - 1
            if not ((local + 1) % acc == 0 or (length and local + 1 == length)):
                return  # the gradients are still accumulating: the step that uses them clips them
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        torch.nn.utils.clip_grad_norm_(engine.network.parameters(), self.max_norm)
