"""A case's class from a multitask network's output: split, pooled over the predicted tumour."""

from __future__ import annotations

import pytest
import torch

from medseg3d.transforms.classes import (
    CLASS_LOGITS,
    POOLED_OVER,
    PoolClassLogitsd,
    SplitClassMapd,
    pool_class_logits,
)


def test_windows_count_by_the_tumour_they_cover() -> None:
    """Two windows side by side with their own class logits; the tumour lies 3 voxels in the first, 1 in the
    second: the pooled logits are the (3, 1)-weighted mean of the two windows' logits."""
    class_map = torch.zeros(2, 8, 2, 2)
    class_map[:, :4] = torch.tensor([1.0, 5.0])[:, None, None, None]
    class_map[:, 4:] = torch.tensor([3.0, -3.0])[:, None, None, None]
    labels = torch.zeros(8, 2, 2, dtype=torch.uint8)
    labels[1:4, 0, 0] = 2
    labels[4, 0, 0] = 3
    logits, over = pool_class_logits(class_map, labels)
    torch.testing.assert_close(logits, torch.tensor([(3 * 1.0 + 3.0) / 4, (3 * 5.0 - 3.0) / 4]))
    assert over == "tumour"


def test_no_tumour_falls_back_to_the_foreground() -> None:
    class_map = torch.zeros(2, 4, 1, 1)
    class_map[:, :2] = 4.0  # the foreground's windows
    class_map[:, 2:] = -8.0  # air outside the box
    foreground = torch.tensor([True, True, False, False])[:, None, None]
    logits, over = pool_class_logits(class_map, torch.zeros(4, 1, 1), foreground)
    assert logits.tolist() == [4.0, 4.0] and over == "foreground"
    with pytest.raises(ValueError, match="labels of shape"):
        pool_class_logits(class_map, torch.zeros(3, 1, 1))


def test_dictionary_transforms_split_then_pool() -> None:
    pred = torch.zeros(5, 4, 3, 2)
    pred[3:] = torch.tensor([-1.0, 2.0])[:, None, None, None]
    data = SplitClassMapd(keys="pred", seg_channels=3)({"pred": pred, "image": torch.ones(4, 4, 3, 2)})
    assert data["pred"].shape == (3, 4, 3, 2) and data["class_map"].shape == (2, 4, 3, 2)
    data["pred"] = torch.zeros(1, 4, 3, 2, dtype=torch.uint8)  # decoded: no tumour predicted
    out = PoolClassLogitsd(keys="pred")(data)
    assert out[CLASS_LOGITS].tolist() == [-1.0, 2.0] and out[POOLED_OVER] == "foreground"
    assert "class_map" not in out
    with pytest.raises(ValueError, match="class channels after them"):
        SplitClassMapd(keys="pred", seg_channels=5)({"pred": pred})
