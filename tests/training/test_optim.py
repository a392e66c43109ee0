"""Losses, optimizers and schedules chosen by name."""

from __future__ import annotations

import pytest
import torch

from medseg3d.training.optim import make_loss, make_optimizer, make_scheduler


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal", "focal"])
@pytest.mark.parametrize("mode", ["regions", "labels"])
def test_losses_prefer_the_right_answer(name: str, mode: str) -> None:
    torch.manual_seed(0)
    labels = torch.randint(0, 4, (2, 1, 8, 6, 4))
    if mode == "regions":
        target = torch.cat([labels > 0, (labels == 1) | (labels == 3), labels == 3], dim=1).float()
        right = (target * 2 - 1) * 6.0
    else:
        target = labels
        right = torch.nn.functional.one_hot(labels[:, 0], 4).permute(0, 4, 1, 2, 3).float() * 12.0 - 6.0
    loss = make_loss(name, mode, class_weights=[1.0] * right.shape[1])
    good, bad = loss(right, target), loss(-right, target)
    assert torch.isfinite(good) and good < bad


@pytest.mark.parametrize("name", ["dice_ce", "dice_focal"])
def test_batch_dice_does_not_punish_a_patch_without_the_region(name: str) -> None:
    """Patch 0 holds the region and is predicted right; patch 1 has none and 2 false-positive voxels. Per patch,
    patch 1 scores Dice 0 (loss 1) for 2 voxels; over the batch they are 2 voxels among 100."""
    target = torch.zeros(2, 1, 10, 10, 10)
    target[0, 0, :5, :5, :4] = 1
    logits = (target * 2 - 1) * 12.0
    logits[1, 0, 0, 0, :2] = 12.0
    per_patch = make_loss(name, "regions", batch_dice=False)(logits, target)
    batch = make_loss(name, "regions", batch_dice=True)(logits, target)
    assert per_patch > 0.45 and batch < 0.05


@pytest.mark.parametrize("mode", ["regions", "labels"])
def test_deep_supervision_weights_each_head_by_its_level(mode: str) -> None:
    """Outputs stacked on dim 1 (a deeply supervised DynUNet in training): the full-resolution output weighs 1,
    the heads 1/2, 1/4; a plain output (eval mode) is scored as the plain loss scores it."""
    torch.manual_seed(0)
    labels = torch.randint(0, 2, (2, 1, 8, 6, 4))
    target = labels.float() if mode == "regions" else labels
    channels = 1 if mode == "regions" else 2
    outputs = [torch.randn(2, channels, 8, 6, 4) for _ in range(3)]
    plain, deep = make_loss("dice_ce", mode), make_loss("dice_ce", mode, deep_supervision=True)
    expected = sum(w * plain(o, target) for w, o in zip((1.0, 0.5, 0.25), outputs, strict=True))
    torch.testing.assert_close(deep(torch.stack(outputs, dim=1), target), expected)
    torch.testing.assert_close(deep(outputs[0], target), plain(outputs[0], target))


@pytest.mark.parametrize("mode", ["regions", "labels"])
def test_float16_logits_give_the_float32_loss(mode: str) -> None:
    """AMP hands the loss float16 logits. Over a batch of two 128x128x96 patches (3.1 M voxels) a float16 sum
    of the sigmoid overflows (> 65504): the Dice term would be a constant 1 without gradient."""
    torch.manual_seed(0)
    shape = (2, 1, 128, 128, 96)
    labels = (torch.rand(shape) < 0.3).long()
    logits = torch.randn((2, 2, *shape[2:])) + 2.0 * torch.cat([labels, 1 - labels], 1)
    target = labels.float() if mode == "regions" else labels
    if mode == "regions":
        logits = logits[:, :1]
    loss = make_loss("dice_ce", mode)
    reference = loss(logits, target)
    half = logits.half().requires_grad_()
    value = loss(half, target)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, atol=2e-3, rtol=2e-3)
    value.backward()
    assert torch.isfinite(half.grad).all() and half.grad.abs().sum() > 0


def test_scheduler_shapes() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = make_optimizer(params, "adamw", lr=1.0)
    sched = make_scheduler(opt, "warmup_cosine", total_steps=10, warmup_steps=3)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < lrs[2] < lrs[3] and lrs[3] > lrs[6] > lrs[9]
    opt = make_optimizer(params, "sgd", lr=1.0)
    assert opt.param_groups[0]["nesterov"] is True
    sched = make_scheduler(opt, "poly", total_steps=4)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "call, message",
    [
        pytest.param(lambda: make_loss("mse"), "loss must be one of", id="loss"),
        pytest.param(lambda: make_loss("dice_ce", "voxels"), "output_mode must be", id="mode"),
        pytest.param(lambda: make_optimizer([], "adam"), "optimizer must be one of", id="optimizer"),
        pytest.param(lambda: make_optimizer([], "sgd", lr=0), "lr must be > 0", id="lr"),
        pytest.param(
            lambda: make_scheduler(make_optimizer([torch.nn.Parameter(torch.zeros(1))]), "step", 5),
            "lr schedule must be one of",
            id="schedule",
        ),
        pytest.param(
            lambda: make_scheduler(make_optimizer([torch.nn.Parameter(torch.zeros(1))]), "poly", 5, 5),
            "warmup_steps < total_steps",
            id="warmup",
        ),
    ],
)
def test_bad_names(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
