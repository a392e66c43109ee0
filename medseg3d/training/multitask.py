"""Training one network to segment and classify: the multitask loss, its schedule and the batches it needs.

The network's output is (B, C + K, ...): C segmentation logits, then K class logits broadcast over the patch
(``medseg3d.networks.classifier``). ``MultitaskLoss`` scores the first C channels with the segmentation loss
and the class logits with cross-entropy against the patch's class, then weighs the two:

- ``fixed``: ``L_seg + cls_weight * L_cls``;
- ``dynamic`` (the lab's notes): ``L = lambda*L_seg + sigma*(1 - lambda)*L_cls`` with
  ``lambda = 1 - epoch / max_epochs`` (``epoch`` counted from 0 at the first epoch, so the first epoch learns
  segmentation alone and classification takes over as the run ends; ``max_epochs`` is the trainer's, so a
  ``--max_minutes`` plan moves it); ``sigma`` keeps the classification loss, measured much larger than the
  segmentation loss, from dominating;
- ``uncertainty`` (Kendall, Gal and Cipolla 2018): ``L = sum_i exp(-s_i)*L_i + s_i / 2`` with ``s_i = log sigma_i^2``
  learnt with the network (``ClassificationHead.log_vars``, so the optimizer, DDP and checkpoints hold them).

A patch carries its case's class only when it holds tumour (any foreground voxel in its label): a patch of
healthy brain says nothing about the grade. ``tumour_free="count"`` counts those patches too. A case whose class
is unknown (index -1: null in ``dataset.json``) trains segmentation only. Rare classes: ``class_weights`` in
the cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import default_prepare_batch
from torch import nn

from medseg3d.core.constants import CLASS_KEY

WEIGHTINGS = ("fixed", "dynamic", "uncertainty")
TUMOUR_FREE = ("ignore", "count")


def dynamic_lambda(epoch: int, max_epochs: int) -> float:
    """``lambda = 1 - epoch / max_epochs`` for the ``epoch``-th epoch counted from 0: 1 in the first epoch.

    >>> [round(dynamic_lambda(e, 4), 2) for e in range(4)]
    [1.0, 0.75, 0.5, 0.25]
    """
    if max_epochs < 1 or not 0 <= epoch:
        raise ValueError(f"need max_epochs >= 1 and epoch >= 0, got {epoch} and {max_epochs}")
    return max(0.0, 1.0 - epoch / max_epochs)


class MultitaskLoss(nn.Module):
    """Segmentation loss on the first ``seg_channels`` output channels, cross-entropy on the class logits after
    them, weighed by ``weighting`` (module docstring).

    Called as the trainer calls a loss, ``loss(pred, target)``: ``target`` is ``(label, classes)`` (classes: (B,)
    long, -1 unknown; ``MultitaskBatch`` makes it), or a label alone (segmentation only, the class channels
    ignored).

    Args:
        seg_loss: the bundle's segmentation loss (``make_loss``).
        seg_channels: C, the segmentation channels.
        weighting: ``fixed`` (the bundles' measured default), ``dynamic`` or ``uncertainty``.
        cls_weight: the weight of L_cls (``fixed``).
        sigma: sigma of ``dynamic``.
        class_weights: a weight per class in the cross-entropy, or None.
        tumour_free: ``ignore`` (a patch without tumour has no class) or ``count``.
        network: the network (its ``classifier.log_vars``, DDP-wrapped or not), needed by ``uncertainty``.

    Attributes:
        progress: epochs done over ``max_epochs`` (``MultitaskSchedule`` sets it before each epoch).
        last: the last call's parts, detached tensors: ``seg``, ``cls``, ``classified`` (patches scored), and
            ``lambda``.
    """

    def __init__(
        self,
        seg_loss: nn.Module,
        seg_channels: int,
        weighting: str = "fixed",
        cls_weight: float = 1.0,
        sigma: float = 0.1,
        class_weights: Sequence[float] | None = None,
        tumour_free: str = "ignore",
        network: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if tumour_free not in TUMOUR_FREE:
            raise ValueError(f"tumour_free must be one of {TUMOUR_FREE}, got {tumour_free!r}")
        if seg_channels < 1 or cls_weight < 0 or sigma < 0:
            raise ValueError(f"need seg_channels >= 1, cls_weight >= 0, sigma >= 0; got {seg_channels}, "
                             f"{cls_weight}, {sigma}")  # fmt: skip
        head = getattr(getattr(network, "module", network), "classifier", None)
        if weighting == "uncertainty" and not (head is not None and head.log_vars.requires_grad):
            raise ValueError("weighting 'uncertainty' needs the network with its classification head built with "
                             "learn_loss_weights (the bundles set it from class_loss_weighting)")  # fmt: skip
        self.seg_loss, self.seg_channels = seg_loss, int(seg_channels)
        self.weighting, self.cls_weight, self.sigma, self.tumour_free = weighting, float(cls_weight), sigma, tumour_free
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.cross_entropy = nn.CrossEntropyLoss(weight=weight)
        self._network = [network]  # a list: not a submodule (its weights are the network's, not the loss's)
        self.progress = 0.0
        self.last: dict[str, Any] = {}

    def forward(self, pred: torch.Tensor, target: Any) -> torch.Tensor:
        label, classes = (target[0], target[1]) if isinstance(target, (tuple, list)) else (target, None)
        c = self.seg_channels
        l_seg = self.seg_loss(pred[:, :c], label)
        if classes is None or pred.shape[1] == c:
            self.last = {"seg": l_seg.detach(), "cls": float("nan"), "lambda": 1.0, "classified": 0}
            return l_seg
        # the class logits are constant over the patch: the first voxel's are the head's output
        logits = pred[(slice(None), slice(c, None)) + (0,) * (pred.ndim - 2)].float()
        classes = classes.to(device=logits.device, dtype=torch.long).view(-1)
        scored = classes >= 0
        if self.tumour_free == "ignore":
            scored &= label.flatten(1).amax(dim=1) > 0
        if scored.any():
            self.cross_entropy.to(logits.device)
            l_cls = self.cross_entropy(logits[scored], classes[scored])
        else:  # no patch says anything of its class: zero, still through the head (DDP needs every gradient)
            l_cls = logits.sum() * 0.0
        lam = 1.0
        if self.weighting == "fixed":
            total = l_seg + self.cls_weight * l_cls
        elif self.weighting == "dynamic":
            lam = 1.0 - self.progress
            total = lam * l_seg + self.sigma * (1.0 - lam) * l_cls
        else:
            s = self._log_vars().to(l_seg.device)
            total = torch.exp(-s[0]) * l_seg + s[0] / 2 + torch.exp(-s[1]) * l_cls + s[1] / 2
        # tensors, not Python numbers: reading them would wait for the device every iteration
        self.last = {"seg": l_seg.detach(), "cls": l_cls.detach(), "lambda": lam, "classified": scored.sum()}
        return total

    def _log_vars(self) -> torch.Tensor:
        network = self._network[0]
        return getattr(network, "module", network).classifier.log_vars


def training_loss(
    seg_loss: nn.Module,
    seg_channels: int,
    num_classes: int = 0,
    class_weights: Sequence[float] | None = None,
    **options: Any,
) -> nn.Module:
    """The bundle's training loss: ``seg_loss`` itself without classes (segmentation only, as before the head
    existed), else ``MultitaskLoss`` over it (``options``: its ``weighting``, ``cls_weight``, ``sigma``,
    ``tumour_free``, ``network``)."""
    if not num_classes:
        return seg_loss
    if class_weights is not None and len(class_weights) != num_classes:
        raise ValueError(f"class_loss_weights needs one weight per class ({num_classes}), got {list(class_weights)}")
    return MultitaskLoss(seg_loss, seg_channels, class_weights=class_weights, **options)


class MultitaskSchedule:
    """Sets ``MultitaskLoss.progress`` to ``(epoch - 1) / max_epochs`` as each epoch starts (ignite's
    ``epoch`` counts from 1; ``max_epochs`` the trainer's, as a time budget leaves it), so ``lambda`` follows the run
    and a resumed run continues the schedule where it stopped."""

    def __init__(self, loss: MultitaskLoss) -> None:
        self.loss = loss

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.loss.progress = 1.0 - dynamic_lambda(engine.state.epoch - 1, engine.state.max_epochs)


class MultitaskBatch:
    """``prepare_batch`` of a multitask trainer: ``(image, (label, classes))`` from a batch whose ``class`` entry
    holds each sample's class index (-1 unknown), so the loss gets both targets; MONAI's other keys stay in the
    batch. A batch without ``class`` gives ``(image, label)``."""

    def __call__(
        self, batchdata: dict, device: torch.device | str | None = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, Any]:
        image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata["label"].to(device=device, non_blocking=non_blocking, **kwargs)
        if CLASS_KEY not in batchdata:
            return image, label
        classes = torch.as_tensor(batchdata[CLASS_KEY]).to(device=device, dtype=torch.long).view(-1)
        return image, (label, classes)


def prepare_batch(classify: str | None = None) -> Any:
    """The trainer's ``prepare_batch``: ``MultitaskBatch`` when the run classifies, else MONAI's default."""
    return MultitaskBatch() if classify else default_prepare_batch


def parameter_groups(network: nn.Module, head_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the segmentation network's, and a classification head's with its
    learning rate scaled by ``head_lr_scale`` (``make_optimizer``'s ``lr_scale``). Without a head, one group.

    SGD with momentum 0.99 moves a parameter by about lr / (1 - 0.99) = 100 lr per unit of gradient: the
    convolutions' normalisation absorbs that, the head's MLP does not (a run with the head at the full rate
    diverged: docs/multitask.md)."""
    plain = getattr(network, "module", network)
    head = getattr(plain, "classifier", None)
    if head is None:
        return [{"params": list(network.parameters())}]
    head_ids = {id(p) for p in head.parameters()}
    seg = [p for p in network.parameters() if id(p) not in head_ids]
    return [{"params": seg}, {"params": list(head.parameters()), "lr_scale": float(head_lr_scale)}]
