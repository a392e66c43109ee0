"""Gradient clipping between MONAI's backward pass and its optimizer step."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer

from medseg3d.training.handlers import GradientClipping


def _step(max_norm: float | None, accumulation_steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """One epoch of ``accumulation_steps`` iterations on a linear layer whose loss has a huge gradient, batch ``i``
    along axis ``i``; the change of its weights (SGD, lr 1, no momentum: minus the gradient the step used) and the
    gradient of the first batch."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1, bias=False)
    before = net.weight.detach().clone()
    data = [{"image": torch.eye(3)[i : i + 1] if accumulation_steps > 1 else torch.ones(1, 3),
             "label": torch.zeros(1, 1)} for i in range(accumulation_steps)]  # fmt: skip
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=1.0), loss_function=lambda p, y: 1000.0 * (p - y).sum(),
        accumulation_steps=accumulation_steps,
        train_handlers=[GradientClipping(max_norm)] if max_norm else None,
    )  # fmt: skip
    trainer.run()
    return net.weight.detach() - before, torch.full((1, 3), 1000.0)


def test_the_step_uses_the_clipped_gradient() -> None:
    change, gradient = _step(None)
    torch.testing.assert_close(change, -gradient)  # unclipped: norm 1732
    change, gradient = _step(12.0)
    assert float(change.norm()) == pytest.approx(12.0, rel=1e-5)
    torch.testing.assert_close(change / change.norm(), -gradient / gradient.norm())  # same direction


def test_with_accumulation_the_complete_gradient_is_clipped_once() -> None:
    """Three batches along three axes, 333 each (MONAI divides the loss by 3): the summed gradient (333, 333, 333)
    clipped to 400 stays equal along the axes; clipping each partial sum would have shrunk the first two more."""
    change, _ = _step(400.0, accumulation_steps=3)
    assert float(change.norm()) == pytest.approx(400.0, rel=1e-5)
    torch.testing.assert_close(change, torch.full((1, 3), -400.0 / 3**0.5))
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        GradientClipping(0)
