"""Experiment tracking read back: TensorBoard's event files (its own reader) and MLflow's store (its client) hold
the numbers metrics.csv holds, the resolved configuration and the run's files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medseg3d.bundle.workflow import run_bundle
from medseg3d.training.handlers.tracking import TrainingProgress, metric_tags, middle_slices

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_resunet_3d"
TINY = {
    "max_epochs": 2, "val_interval": 1, "iterations_per_epoch": 0, "roi_size": [32, 32, 32], "num_workers": 0,
    "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2],
}  # fmt: skip


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tensorboard_and_mlflow_hold_the_runs_numbers(tiny_prepared: Path, tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    run = tmp_path / "runs" / "brats" / "run1"
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = {**TINY, "dataset_dir": str(tiny_prepared), "output_dir": str(run), "experiment_tracking": "mlflow",
                 "tracking_uri": uri}  # fmt: skip
    run_bundle(BUNDLE, "train", overrides)
    rows = _rows(run)
    assert len(rows) == 2

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for epoch, row in enumerate(rows, start=1):
        for tag, value in metric_tags(row).items():
            logged = {e.step: e.value for e in events.Scalars(tag)}
            assert logged[epoch] == pytest.approx(value, rel=1e-5), tag
    assert {"val/dice_WT", "val/mean_dice", "train/lr", "time/seconds", "patch/dice_ET"} <= set(tags["scalars"])
    assert "train_loss" in tags["scalars"]  # MONAI's per-iteration loss beside them
    assert [e.step for e in events.Images("val/case")] == [1, 2]

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("brats_mri_resunet_3d")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "run1" and found.info.status == "FINISHED"
    history = client.get_metric_history(found.info.run_id, "val_dice_WT")
    assert [(m.step, round(m.value, 5)) for m in history] == [(i, round(float(r["val_dice_WT"]), 5))
                                                              for i, r in enumerate(rows, start=1)]  # fmt: skip
    params = found.data.params
    config = json.loads((run / "config.json").read_text())
    assert params["max_epochs"] == "2" and params["roi_size"] == json.dumps(config["roi_size"])
    assert params["network_def/channels"] == "[4, 8, 16]"
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.csv", "curves.png", "config.json"} <= artifacts


def test_middle_slices_shows_image_label_and_prediction_side_by_side() -> None:
    image = np.random.default_rng(0).normal(size=(2, 10, 12, 8)).astype(np.float32)
    label = np.zeros((3, 10, 12, 8), np.float32)  # nested regions
    label[0, 2:6, 2:6, 5] = 1
    label[1, 3:5, 3:5, 5] = 1
    pred = np.zeros((4, 10, 12, 8), np.float32)  # one-hot labels
    pred[0] = 1
    pred[0, 2:4, 2:4, 5], pred[2, 2:4, 2:4, 5] = 0, 1
    panel = middle_slices(image, label, pred)
    assert panel.shape == (3, 10, 36) and 0 <= panel.min() and panel.max() <= 1
    assert panel[0, 3, 12 + 3] == pytest.approx(2 / 2) and panel[0, 2, 12 + 2] == pytest.approx(1 / 2)
    assert panel[0, 2, 24 + 2] == pytest.approx(2 / 2) and panel[0, 5, 24 + 5] == 0


def test_a_progress_bar_only_for_a_terminal(capsys) -> None:
    def step(engine, batch):
        return [{"loss": torch.tensor(0.25 * batch)}]

    for interactive, shown in ((True, True), (False, False)):
        engine = Engine(step)
        TrainingProgress(interactive).attach(engine)
        engine.run([1, 2, 3], max_epochs=1)
        err = capsys.readouterr().err
        assert ("train" in err and "loss=0.75" in err) == shown, err
    assert TrainingProgress().interactive is False  # pytest's stderr is not a terminal
