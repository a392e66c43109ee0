"""The BraTS bundles with ``--classify grade``: one network segments and classifies; validation scores both."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medseg3d.bundle.workflow import run_bundle
from medseg3d.core.checkpoint_format import load_checkpoint, save_checkpoint
from medseg3d.networks import res_unet

RUN = {"max_epochs": 2, "val_interval": 1, "iterations_per_epoch": 2, "num_workers": 0, "patch_val_samples": 2}


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("brats_mri_resunet_3d+grade", id="3d"),
        pytest.param("brats_mri_slicestack_2p5d+grade", id="2p5d", marks=pytest.mark.slow),
    ],
)
def test_a_multitask_run_validates_segmentation_and_the_case_class(tiny_bundle, tmp_path: Path, name: str) -> None:
    bundle, dataset, tiny = tiny_bundle(name)
    content = json.loads((dataset / "dataset.json").read_text())
    lgg_fold = next(e["fold"] for e in content["training"] if e["grade"] == "LGG")  # validate on both grades
    run_dir = tmp_path / "run"
    run_bundle(bundle, "train", {**tiny, **RUN, "fold": lgg_fold, "dataset_dir": str(dataset),
                                 "output_dir": str(run_dir)})  # fmt: skip
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        assert 0.0 <= float(row["val_mean_dice"]) <= 1.0 and 0.0 <= float(row["patch_mean_dice"]) <= 1.0
        assert 0.0 <= float(row["val_class_auc"]) <= 1.0  # both grades among the validation cases
        assert 0.0 <= float(row["val_class_balanced_accuracy"]) <= 1.0
        confusion = [int(row[f"val_class_confusion_{t}_{p}"]) for t in ("LGG", "HGG") for p in ("LGG", "HGG")]
        assert sum(confusion) == 2 and confusion[0] + confusion[1] == 1  # 2 validation cases, one of them LGG
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["network"]
    assert any(key.startswith("classifier.") for key in state)
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["classes"] == ["LGG", "HGG"] and resolved["num_classes"] == 2


def test_classification_is_added_to_a_trained_segmentation_model(tiny_bundle, tmp_path: Path) -> None:
    """``--init_weights`` with a segmentation-only checkpoint: the multitask run starts from its weights, the
    head fresh; the first epoch (lambda = 1) trains segmentation alone."""
    bundle, dataset, tiny = tiny_bundle("brats_mri_resunet_3d+grade")
    torch.manual_seed(5)
    trained = res_unet(4, 3, channels=(4, 8, 16), strides=(2, 2))
    save_checkpoint({"network": trained.state_dict()}, tmp_path / "seg.pt")
    run_dir = tmp_path / "run"
    overrides = {**tiny, **RUN, "max_epochs": 1, "init_weights": str(tmp_path / "seg.pt"),
                 "dataset_dir": str(dataset), "output_dir": str(run_dir), "learning_rate": 1e-12}  # fmt: skip
    run_bundle(bundle, "train", overrides)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")["network"]
    for key, value in trained.state_dict().items():  # a learning rate of 1e-12 leaves the weights where they began
        torch.testing.assert_close(state[key], value, atol=1e-6, rtol=0)
    assert {k for k in state if k not in trained.state_dict()} == {k for k in state if k.startswith("classifier.")}


def test_a_field_no_case_holds_fails_with_the_dataset_file(tiny_bundle, tmp_path: Path) -> None:
    from medseg3d.core.errors import InputError

    bundle, dataset, tiny = tiny_bundle("brats_mri_resunet_3d+grade")
    overrides = {**tiny, **RUN, "classify": "site", "dataset_dir": str(dataset), "output_dir": str(tmp_path / "r")}
    with pytest.raises(InputError, match="expected at least two classes") as info:
        run_bundle(bundle, "train", overrides)
    assert str(dataset / "dataset.json") in str(info.value)
