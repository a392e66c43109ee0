"""The small factories of ``medseg3d.training.recipes``: loading a prepared case, targets, schedule, AMP dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medseg3d.core.io import save_nifti
from medseg3d.data.dataset_json import read_dataset_json
from medseg3d.inferers.sliding_window import FastSlidingWindowInferer, foreground_box
from medseg3d.training.recipes import (
    amp_dtype,
    epoch_scheduler,
    label_targets,
    nonzero_box,
    prepared_load_transforms,
)


def test_prepared_load_transforms_give_plain_channel_first_tensors(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((10, 12, 7, 4)).astype(np.float32)
    label = np.zeros((10, 12, 7), np.uint8)
    label[2:5, 3:6, 1:4] = 3
    save_nifti(image, np.eye(4), tmp_path / "image.nii.gz")
    save_nifti(label, np.eye(4), tmp_path / "label.nii.gz")
    case = Compose(prepared_load_transforms())({"image": str(tmp_path / "image.nii.gz"),
                                                "label": str(tmp_path / "label.nii.gz")})  # fmt: skip
    assert case["image"].shape == (4, 10, 12, 7) and case["label"].shape == (1, 10, 12, 7)
    assert not isinstance(case["image"], MetaTensor)  # cached as plain tensors
    assert set(torch.unique(case["label"]).tolist()) == {0, 3}


def test_label_targets_refuses_an_unknown_mode() -> None:
    with pytest.raises(ValueError, match="output_mode must be 'regions' or 'labels', got 'classes'"):
        label_targets("classes")


def test_epoch_scheduler_without_room_for_warmup() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = epoch_scheduler(optimizer, "warmup_cosine", max_epochs=1, steps_per_epoch=4, warmup_epochs=1)
    assert schedule.warmup_steps == 0 and schedule.t_total == 4


def test_amp_dtype_is_a_half_precision() -> None:
    assert amp_dtype() in (torch.bfloat16, torch.float16)


def test_the_training_crop_is_the_box_inference_tiles(tiny_prepared: Path) -> None:
    """A BraTS training case is cropped to its non-zero box and the inferer's margin (``nonzero_box``); validation
    and ``medseg3d infer`` tile the same box of the whole case and write background outside it, on the input grid:
    the network sees at inference what it trained on, and the crop leaves no trace in the label maps' geometry."""
    entry = read_dataset_json(tiny_prepared)["training"][0]
    files = {"image": str(tiny_prepared / entry["image"]), "label": str(tiny_prepared / entry["label"])}
    case = Compose(prepared_load_transforms())(files)
    inferer = FastSlidingWindowInferer((16, 16, 16), 2, 0.5, crop_foreground=True, outside=-10.0)
    cropped = Compose(nonzero_box(margin=inferer.margin))(dict(case))
    box = foreground_box(case["image"], margin=inferer.margin)
    assert tuple(cropped["image"].shape[1:]) == tuple(s.stop - s.start for s in box)
    assert torch.equal(cropped["image"], case["image"][(slice(None), *box)])
    assert torch.equal(cropped["label"], case["label"][(slice(None), *box)])  # no tumour voxel lost
    assert case["label"].sum() == cropped["label"].sum()

    network = torch.nn.Conv3d(4, 3, 3, padding=1)
    logits = inferer(case["image"][None], network)[0]
    assert logits.shape[1:] == case["image"].shape[1:]  # on the input grid
    outside = torch.ones(case["image"].shape[1:], dtype=torch.bool)
    outside[box] = False
    assert outside.any() and (logits[:, outside] == -10.0).all()  # background outside the box
