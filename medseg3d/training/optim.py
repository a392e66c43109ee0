"""Losses, optimizers and learning-rate schedules chosen by name from a bundle config."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, DiceFocalLoss, FocalLoss
from monai.optimizers import WarmupCosineSchedule

LOSSES = ("dice_ce", "dice_focal", "focal")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup_cosine", "poly", "constant")


class Float32Loss(torch.nn.Module):
    """``loss`` computed in float32, outside autocast, whatever precision the network's output has.

    Under AMP the network returns float16 logits, and MONAI's Dice sums the sigmoid of them over the whole
    batch (``batch=True``): ``torch.sum`` of a float16 tensor is float16, so beyond 65504 (a batch of two
    128^3 patches has 4.2 M voxels) the denominator is ``inf``, the Dice term a constant 1 with no gradient,
    and the network learns from the cross-entropy alone (on a GPU it then predicted nothing). Casting the
    logits costs one float32 copy of the output.
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (MONAI's names)
        with torch.autocast(device_type=input.device.type, enabled=False):
            return self.loss(input.float(), target)


class DeepSupervised(torch.nn.Module):
    """``loss`` summed over the outputs of a deeply supervised network, weighted 1, 1/2, 1/4, ... (MONAI's
    ``DeepSupervisionLoss``, nnU-Net's weighting without its renormalization).

    A deeply supervised DynUNet in training mode returns its outputs stacked on dim 1, (B, 1 + heads, C, ...):
    one more dimension than the target. Any other output (eval mode, a network without heads) is scored as is.
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss = DeepSupervisionLoss(loss, weight_mode="exp")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 (MONAI's names)
        if input.ndim == target.ndim + 1:
            return self.loss(list(torch.unbind(input, dim=1)), target)
        return self.loss(input, target)


def make_loss(
    name: str = "dice_ce",
    output_mode: str = "regions",
    class_weights: Sequence[float] | None = None,
    batch_dice: bool = True,
    deep_supervision: bool = False,
):
    """The training loss.

    Args:
        name: ``dice_ce`` (Dice + cross-entropy, BCE for regions), ``dice_focal`` or ``focal``.
        output_mode: ``regions`` (one sigmoid per overlapping region; labels as one-hot regions) or
            ``labels`` (softmax over labels; labels as one channel of class indices).
            The loss is computed in float32 also under AMP (``Float32Loss``).
        class_weights: optional weight per output channel, for rare classes.
        batch_dice: Dice over all patches of the batch at once (nnU-Net's batch Dice), not per patch. A
            patch without a region (most background patches) then adds to the denominator instead of
            scoring 0 whatever the prediction, which keeps small regions (ET) from being pushed to zero.
        deep_supervision: the network returns several stacked outputs in training (``res_unet(deep_supervision=
            heads)``); the loss is summed over them (``DeepSupervised``).
    """

    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    if output_mode not in ("regions", "labels"):
        raise ValueError(f"output_mode must be 'regions' or 'labels', got {output_mode!r}")
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    sigmoid = output_mode == "regions"
    one_hot = {"to_onehot_y": not sigmoid}
    if name == "dice_ce":
        loss = DiceCELoss(sigmoid=sigmoid, softmax=not sigmoid, weight=weight, batch=batch_dice, **one_hot)
    elif name == "dice_focal":
        loss = DiceFocalLoss(sigmoid=sigmoid, softmax=not sigmoid, weight=weight, batch=batch_dice, **one_hot)
    else:
        loss = FocalLoss(use_softmax=not sigmoid, weight=weight, **one_hot)
    return Float32Loss(DeepSupervised(loss) if deep_supervision else loss)


def make_optimizer(
    params: Iterable[torch.nn.Parameter], name: str = "adamw", lr: float = 1e-3, weight_decay: float = 1e-5
) -> torch.optim.Optimizer:
    """AdamW, or SGD with Nesterov momentum 0.99 (nnU-Net's). ``params``: parameters, or parameter groups (dicts)
    where an ``lr_scale`` entry sets the group's learning rate to ``lr * lr_scale`` (the schedule then scales every
    group alike)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{k: v for k, v in g.items() if k != "lr_scale"} | ({"lr": lr * g["lr_scale"]} if "lr_scale" in g
                  else {}) for g in params]  # fmt: skip
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=0.99, nesterov=True, weight_decay=weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int = 0, power: float = 0.9
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-iteration schedule: linear warmup then cosine decay, polynomial decay, or constant."""

    if name not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {SCHEDULES}, got {name!r}")
    if total_steps < 1 or not 0 <= warmup_steps < max(total_steps, 1):
        raise ValueError(
            f"need total_steps >= 1 and 0 <= warmup_steps < total_steps, got {total_steps}, {warmup_steps}"
        )
    if name == "warmup_cosine":
        return WarmupCosineSchedule(optimizer, warmup_steps=warmup_steps, t_total=total_steps)
    if name == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_steps, power=power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def rescale_schedule(scheduler: torch.optim.lr_scheduler.LRScheduler, total_steps: int) -> None:
    """Make a running ``make_scheduler`` schedule end after ``total_steps`` steps instead: a time budget
    (``medseg3d.training.handlers.TimeBudget``) plans how many epochs fit only once it has timed some.

    The polynomial decay continues from the current learning rate and reaches 0 at the new end (PyTorch's
    ``PolynomialLR`` steps by ratios); warmup-cosine follows its curve for the new length; constant is left as
    it is. The new length is part of the scheduler's ``state_dict``, so a resumed run keeps it.

    >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> schedule = make_scheduler(opt, "poly", total_steps=100)
    >>> for _ in range(5):
    ...     opt.step(); schedule.step()
    >>> rescale_schedule(schedule, 10)
    >>> for _ in range(5):
    ...     opt.step(); schedule.step()
    >>> opt.param_groups[0]["lr"]
    0.0
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if isinstance(scheduler, torch.optim.lr_scheduler.PolynomialLR):
        scheduler.total_iters = int(total_steps)
    elif isinstance(scheduler, WarmupCosineSchedule):
        scheduler.t_total = int(total_steps)
        scheduler.warmup_steps = min(scheduler.warmup_steps, max(int(total_steps) - 1, 0))
