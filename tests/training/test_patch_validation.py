"""The per-epoch patch check: a fixed, seeded set of validation patches and Dice pooled over them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from medseg3d.training.augmentation import class_balanced_crop
from medseg3d.training.recipes import label_targets
from medseg3d.training.validation import FixedPatches, GlobalDice, patch_dice_metrics

SHAPE = (20, 16, 12)  # non-cubic


def _cases(count: int) -> list[dict]:
    """Cases with a tumour of three nested labels, each in its own place."""
    cases = []
    for i in range(count):
        image = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(i))
        label = torch.zeros(1, *SHAPE)
        x = 3 + i % 8
        label[0, x : x + 8, 4:12, 2:10] = 2
        label[0, x + 2 : x + 6, 6:10, 4:8] = 3
        label[0, x + 3 : x + 5, 7:9, 5:7] = 1
        cases.append({"image": image, "label": label, "case": i})
    return cases


def _patches(cases: list[dict], samples: int, seed: int = 0) -> FixedPatches:
    crop = Compose([*class_balanced_crop([8, 8, 6], num_classes=4, num_samples=2), label_targets("regions")])
    return FixedPatches(cases, load=dict, crop=crop, samples=samples, seed=seed)


def test_the_same_patches_every_time_and_spread_over_the_cases() -> None:
    cases = _cases(3)
    first, again = _patches(cases, 7), _patches(cases, 7)
    assert len(first) == 7 and first.shares() == [(0, 3), (1, 2), (2, 2)]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert set(a) == {"image", "label"} and type(a["image"]) is torch.Tensor  # plain tensors, no metadata
        assert tuple(a["image"].shape) == (4, 8, 8, 6) and tuple(a["label"].shape) == (3, 8, 8, 6)
    other = _patches(cases, 7, seed=1)
    assert any(not torch.equal(a["image"], b["image"]) for a, b in zip(first, other, strict=True))


def test_more_cases_than_patches_gives_one_patch_to_evenly_spaced_cases() -> None:
    patches = _patches(_cases(9), 3)
    assert patches.shares() == [(0, 1), (4, 1), (8, 1)]
    assert len(_patches(_cases(2), 0)) == 0
    with pytest.raises(ValueError, match="samples"):
        _patches(_cases(2), -1)


def test_global_dice_pools_the_voxels_of_every_patch() -> None:
    metric = GlobalDice(channels=[0, 1])
    pred = [torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0]])]
    true = [torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1]])]
    metric.update((pred, true))
    # channel 0: TP 1, FP 1, FN 0 -> 2/3; channel 1: TP 0, FN 2 -> 0; the mean of the two
    assert metric.compute() == pytest.approx((2 / 3 + 0) / 2)
    empty = GlobalDice(channels=[0])
    empty.update(([torch.zeros(1, 4)], [torch.zeros(1, 4)]))
    assert math.isnan(empty.compute())  # never defined: NaN, not a perfect score
    with pytest.raises(ValueError, match="differ in shape"):
        empty.update(([torch.zeros(1, 4)], [torch.zeros(1, 5)]))


def test_patch_metrics_score_a_perfect_prediction_one() -> None:
    metrics = patch_dice_metrics("regions")
    label = torch.from_numpy(np.random.default_rng(0).random((3, 6, 5, 4)) > 0.5)
    for metric in metrics.values():
        metric.update(([label], [label]))
    assert {name: metric.compute() for name, metric in metrics.items()} == {
        "patch_mean_dice": 1.0, "patch_dice_WT": 1.0, "patch_dice_TC": 1.0, "patch_dice_ET": 1.0,
    }  # fmt: skip
