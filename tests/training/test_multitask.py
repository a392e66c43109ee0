"""The multitask loss: its weightings, the lambda schedule, which patches carry a class, the batches it gets."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from medseg3d.networks import res_unet
from medseg3d.training.multitask import (
    MultitaskBatch,
    MultitaskLoss,
    MultitaskSchedule,
    dynamic_lambda,
    parameter_groups,
    prepare_batch,
    training_loss,
)
from medseg3d.training.optim import make_loss


def _outputs(class_logits: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    maps = class_logits[:, :, None, None, None].expand(-1, -1, *seg.shape[2:])
    return torch.cat([seg, maps], dim=1)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three patches (regions mode): 0 and 1 hold tumour, 2 none; class logits favour class 1 for all."""
    torch.manual_seed(0)
    label = torch.zeros(3, 3, 8, 6, 4)
    label[:2, :, 2:5, 2:4, 1:3] = 1
    seg = torch.randn(3, 3, 8, 6, 4)
    logits = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    return _outputs(logits, seg), label, logits


def test_lambda_schedule_values() -> None:
    assert [dynamic_lambda(e, 5) for e in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert dynamic_lambda(7, 5) == 0.0  # past the planned end (a resumed run with fewer epochs)
    with pytest.raises(ValueError):
        dynamic_lambda(0, 0)


def test_dynamic_weighting_and_which_patches_count(batch) -> None:
    pred, label, logits = batch
    seg_loss = make_loss("dice_ce", "regions")
    loss = MultitaskLoss(seg_loss, 3, weighting="dynamic", sigma=0.5)
    classes = torch.tensor([0, 1, 0])  # patch 2 has no tumour: its class 0 must not count
    l_seg = seg_loss(pred[:, :3], label)
    l_cls = torch.nn.functional.cross_entropy(logits[:2], classes[:2])
    assert torch.allclose(loss(pred, (label, classes)), l_seg)  # progress 0: lambda = 1, segmentation alone
    loss.progress = 0.75
    expected = 0.25 * l_seg + 0.5 * 0.75 * l_cls
    assert torch.allclose(loss(pred, (label, classes)), expected)
    assert loss.last["classified"] == 2 and loss.last["lambda"] == 0.25
    counting = MultitaskLoss(seg_loss, 3, weighting="fixed", cls_weight=2.0, tumour_free="count")
    all_three = torch.nn.functional.cross_entropy(logits, classes)
    assert torch.allclose(counting(pred, (label, classes)), l_seg + 2.0 * all_three)
    unknown = torch.tensor([-1, -1, 0])  # unknown classes and a tumour-free patch: nothing to classify
    out = MultitaskLoss(seg_loss, 3, weighting="fixed")(pred, (label, unknown))
    assert torch.allclose(out, l_seg)
    assert torch.allclose(loss(pred, label), l_seg)  # a label alone: segmentation only


def test_uncertainty_weighting_learns_its_log_variances(batch) -> None:
    pred, label, logits = batch
    net = res_unet(4, 3, channels=(4, 8), strides=(2,), num_classes=2, classifier={"learn_loss_weights": True})
    with torch.no_grad():
        net.classifier.log_vars.copy_(torch.tensor([0.5, -1.0]))
    seg_loss = make_loss("dice_ce", "regions")
    loss = training_loss(seg_loss, 3, num_classes=2, weighting="uncertainty", network=net)
    classes = torch.tensor([1, 0, 1])
    l_seg, l_cls = seg_loss(pred[:, :3], label), torch.nn.functional.cross_entropy(logits[:2], classes[:2])
    value = loss(pred, (label, classes))
    expected = math.exp(-0.5) * l_seg + 0.25 + math.exp(1.0) * l_cls - 0.5
    assert torch.allclose(value, expected)
    value.backward()
    assert net.classifier.log_vars.grad is not None and net.classifier.log_vars.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs the network"):
        MultitaskLoss(seg_loss, 3, weighting="uncertainty")


def test_without_classes_the_loss_is_the_segmentation_loss() -> None:
    seg_loss = make_loss("dice_ce", "regions")
    assert training_loss(seg_loss, 3, num_classes=0) is seg_loss
    with pytest.raises(ValueError, match="one weight per class"):
        training_loss(seg_loss, 3, num_classes=2, class_weights=[1.0])
    with pytest.raises(ValueError, match="weighting must be one of"):
        MultitaskLoss(seg_loss, 3, weighting="greedy")


def test_the_schedule_follows_the_trainers_epochs() -> None:
    loss = MultitaskLoss(make_loss("dice_ce", "regions"), 3)
    seen = []
    engine = Engine(lambda e, b: seen.append(round(loss.progress, 3)))
    MultitaskSchedule(loss).attach(engine)
    engine.run([0], max_epochs=4)
    assert seen == [0.0, 0.25, 0.5, 0.75]


def test_batches_carry_both_targets() -> None:
    data = {"image": torch.zeros(2, 4, 8, 8, 8), "label": torch.ones(2, 3, 8, 8, 8), "class": torch.tensor([1, -1])}
    image, (label, classes) = MultitaskBatch()(data, "cpu")
    assert image.shape == (2, 4, 8, 8, 8) and label.shape == (2, 3, 8, 8, 8)
    assert classes.tolist() == [1, -1] and classes.dtype == torch.long
    assert len(MultitaskBatch()({"image": data["image"], "label": data["label"]})) == 2
    assert prepare_batch(None) is not prepare_batch("grade")
    assert isinstance(prepare_batch("grade"), MultitaskBatch)


def test_the_head_gets_its_own_learning_rate() -> None:
    from medseg3d.training.optim import make_optimizer

    net = res_unet(4, 3, channels=(4, 8), strides=(2,), num_classes=2)
    optimizer = make_optimizer(parameter_groups(net, 0.01), "sgd", lr=0.1)
    seg, head = optimizer.param_groups
    assert seg["lr"] == 0.1 and head["lr"] == pytest.approx(0.001)
    assert {id(p) for p in head["params"]} == {id(p) for p in net.classifier.parameters()}
    assert len(seg["params"]) + len(head["params"]) == len(list(net.parameters()))
    plain = res_unet(4, 3, channels=(4, 8), strides=(2,))
    (group,) = parameter_groups(plain, 0.01)  # no head: one group, every parameter at the base rate
    assert len(group["params"]) == len(list(plain.parameters())) and "lr_scale" not in group
