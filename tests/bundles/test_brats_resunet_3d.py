"""The BraTS 3D Res-UNet bundle trains through `python -m monai.bundle run` and writes its records."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medseg3d.bundle.workflow import run_bundle
from medseg3d.core.checkpoint_format import load_checkpoint
from medseg3d.networks import res_unet
from medseg3d.training.handlers.metrics_csv import TIME_COLUMNS

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_resunet_3d"
TINY = [
    "--max_epochs", "2", "--val_interval", "1", "--iterations_per_epoch", "0", "--roi_size", "[32,32,32]",
    "--num_workers", "0",
    "--network_def#channels", "[4,8,16]", "--network_def#strides", "[2,2]",
]  # fmt: skip


@pytest.fixture
def prepared(tiny_prepared: Path) -> Path:
    return tiny_prepared


def _run_bundle(*args: str) -> subprocess.CompletedProcess:
    configs = "['configs/common.yaml','configs/train.yaml']"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, *args]
    return subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "extra, names, out_channels",
    [
        pytest.param([], ("WT", "TC", "ET"), 3, id="regions-dice_ce-adamw"),
        pytest.param(
            [
                "--output_mode",
                "labels",
                "--loss_name",
                "dice_focal",
                "--optimizer_name",
                "sgd",
                "--lr_schedule",
                "poly",
            ],
            ("NCR", "ED", "ET"),
            4,
            id="labels-dice_focal-sgd-poly",
        ),
    ],
)
def test_two_epochs_through_monai_bundle_run(
    prepared: Path, tmp_path: Path, extra: list[str], names: tuple[str, ...], out_channels: int
) -> None:
    run_dir = tmp_path / "run"
    result = _run_bundle("--dataset_dir", str(prepared), "--output_dir", str(run_dir), *TINY, *extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        assert float(row["train_loss"]) > 0
        for name in names:
            assert 0.0 <= float(row[f"val_dice_{name}"]) <= 1.0
    assert (run_dir / "curves.png").stat().st_size > 1000

    # The run record: the configuration as run, the overrides given, versions, git SHA, seed, command.
    config = json.loads((run_dir / "config.json").read_text())
    assert config["max_epochs"] == 2 and config["network_def"]["channels"] == [4, 8, 16]
    assert config["network_def"]["_target_"] == "medseg3d.networks.res_unet"
    resolved = json.loads((run_dir / "resolved.json").read_text())
    assert resolved["out_channels"] == out_channels and resolved["device"] == "cpu"
    record = json.loads((run_dir / "run.json").read_text())
    assert record["overrides"]["roi_size"] == [32, 32, 32] and record["overrides"]["dataset_dir"] == str(prepared)
    assert "config_file" not in record["overrides"]
    assert record["seed"] == 0 and record["versions"]["monai"] and "monai/bundle" in " ".join(record["command"])
    assert "sha" in record["git"]
    assert "Epoch[2] Complete" in (run_dir / "train.log").read_text()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["trainer"]["epoch"] == 2 and last["trainer"]["iteration"] == 2
    assert {"network", "optimizer", "lr_scheduler", "rng", "best"} <= set(last)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["best"]["metric"] == pytest.approx(max(float(r["val_mean_dice"]) for r in rows), rel=1e-5)
    net = res_unet(4, out_channels, channels=(4, 8, 16), strides=(2, 2))
    net.load_state_dict(last["network"])
    assert net(torch.zeros(1, 4, 32, 32, 32)).shape == (1, out_channels, 32, 32, 32)


def test_missing_dataset_fails_with_the_path(tmp_path: Path) -> None:
    result = _run_bundle("--dataset_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "run"), *TINY)
    assert result.returncode != 0
    assert "nowhere/dataset.json: not found" in result.stdout + result.stderr


def test_medseg3d_train_matches_monai_bundle_run(prepared: Path, tmp_path: Path) -> None:
    common = ["--dataset_dir", str(prepared), *TINY]
    assert _run_bundle("--output_dir", str(tmp_path / "a"), *common).returncode == 0
    command = [sys.executable, "-m", "medseg3d.cli", "train", "--bundle", str(BUNDLE)]
    result = subprocess.run(
        [*command, "--output_dir", str(tmp_path / "b"), *common], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Same configs, same seed, same overrides: the same run, number for number (seconds aside).
    a, b = (_metrics_without_time(tmp_path / run / "metrics.csv") for run in ("a", "b"))
    assert a == b and len(a) == 2


def _metrics_without_time(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        pytest.param(["--max_epoch", "2"], "unknown key 'max_epoch'", id="unknown-key"),
        pytest.param(["--max_epochs", "two"], "max_epochs expects int (like 300), got 'two'", id="int-as-text"),
        pytest.param(["--max_epochs", "2.5"], "max_epochs expects int", id="int-as-float"),
        pytest.param(["--max_epochs", "None"], "max_epochs expects int", id="none-for-a-setting-that-needs-one"),
        pytest.param(["--roi_size", "5"], "roi_size expects list", id="list-as-int"),
        pytest.param(["--network_def#norm", "3"], "network_def#norm expects str", id="nested"),
        pytest.param(["--amp", "1"], "amp expects bool", id="expression-resolving-to-bool"),
        pytest.param(["--output_dir", "[1]"], "output_dir expects str", id="expression-resolving-to-str"),
        pytest.param(["--max_epochs"], "--KEY VALUE pairs", id="no-value"),
        # the bundle's `fold`, not an abbreviation of --folds (argparse would otherwise take it as one)
        pytest.param(["--fold", "one"], "fold expects int", id="fold-is-an-override"),
        pytest.param(["--dataset_dir", "/nowhere"], "/nowhere/dataset.json: not found", id="no-dataset"),
    ],
)
def test_bad_train_overrides_fail_before_training(capsys, overrides: list[str], message: str) -> None:
    from medseg3d.cli import main

    assert main(["train", "--bundle", str(BUNDLE), *overrides]) == 2
    assert message in capsys.readouterr().err


def test_a_time_budget_plans_the_run_and_anneals_it_to_the_end(prepared: Path, tmp_path: Path) -> None:
    """``--max_minutes``: the run plans its epochs (here capped by ``max_epochs``), shortens the learning-rate
    schedule to them so the rate reaches zero with the last epoch, validates in full at that epoch, checks the
    fixed patches every epoch and records the plan in its checkpoints."""
    run_dir = tmp_path / "run"
    overrides = {
        "roi_size": [32, 32, 32], "num_workers": 0, "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2],
        "dataset_dir": str(prepared), "output_dir": str(run_dir), "max_epochs": 3, "iterations_per_epoch": 2,
        "max_minutes": 10, "patch_val_samples": 4,
    }  # fmt: skip
    run_bundle(BUNDLE, "train", overrides)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [2, 4, 6]
    assert float(rows[-1]["lr"]) == 0.0 and float(rows[0]["lr"]) > 0.0  # poly decay over the planned 6 steps
    assert rows[-1]["val_mean_dice"] != ""  # the last epoch's full validation
    assert all(r["patch_mean_dice"] != "" for r in rows)  # the patch check, every epoch
    assert 0.0 <= float(rows[-1]["validation_share"]) <= 1.0
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["stateful"]["time_budget"]["planned"] == 3 and last["lr_scheduler"]["total_iters"] == 6
    assert last["stateful"]["time_budget"]["elapsed"] > 0


def test_deep_supervision_trains_and_validates_the_full_resolution_output(prepared: Path, tmp_path: Path) -> None:
    """``network_def#kind dynunet`` with ``network_def#deep_supervision``: the loss sums over the heads in training,
    the patch check and the full validation score the full-resolution output, and the checkpoint holds the heads
    (a network built with them loads it)."""
    run_dir = tmp_path / "run"
    overrides = {
        "roi_size": [32, 32, 32], "num_workers": 0, "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2],
        "network_def#kind": "dynunet", "network_def#deep_supervision": 1, "dataset_dir": str(prepared),
        "output_dir": str(run_dir), "max_epochs": 1, "iterations_per_epoch": 2, "patch_val_samples": 2,
    }  # fmt: skip
    run_bundle(BUNDLE, "train", overrides)
    with open(run_dir / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["train_loss"]) > 0
    assert 0.0 <= float(row["patch_mean_dice"]) <= 1.0 and 0.0 <= float(row["val_mean_dice"]) <= 1.0
    state = load_checkpoint(run_dir / "checkpoints" / "best.pt")["network"]
    assert any(key.startswith("deep_supervision_heads") for key in state)
    net = res_unet(4, 3, channels=(4, 8, 16), strides=(2, 2), kind="dynunet", deep_supervision=1)
    net.load_state_dict(state)
