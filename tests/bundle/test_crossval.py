"""Cross-validation: fold selection, the best epoch per fold, and the mean +- std summary."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest

from medseg3d.bundle.crossval import best_row, parse_folds, write_cv_summary
from medseg3d.core.errors import InputError

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_resunet_3d"


@pytest.mark.parametrize(
    "text, folds",
    [
        pytest.param("all", [0, 1, 2, 3], id="all"),
        pytest.param("ALL ", [0, 1, 2, 3], id="all-case"),
        pytest.param("3,1", [3, 1], id="list-order-kept"),
        pytest.param("2", [2], id="single"),
    ],
)
def test_parse_folds(text: str, folds: list[int]) -> None:
    assert parse_folds(text, [0, 1, 2, 3]) == folds


@pytest.mark.parametrize(
    "text, message",
    [
        pytest.param("4", r"expected distinct folds among \[0, 1, 2, 3\]", id="unknown"),
        pytest.param("1,1", "distinct", id="repeated"),
        pytest.param("one", "expects 'all' or a list", id="not-a-number"),
        pytest.param("", "expected distinct folds", id="empty"),
    ],
)
def test_parse_folds_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_folds(text, [0, 1, 2, 3])


def _metrics(run_dir: Path, rows: list[dict[str, str]]) -> Path:
    run_dir.mkdir(parents=True)
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return run_dir


def test_summary_takes_each_folds_best_epoch(tmp_path: Path) -> None:
    a = _metrics(
        tmp_path / "fold_0",
        [
            {"epoch": "1", "train_loss": "1.0", "val_mean_dice": "0.5", "val_dice_WT": "0.6"},
            {"epoch": "2", "train_loss": "0.9", "val_mean_dice": "", "val_dice_WT": ""},
            {"epoch": "3", "train_loss": "0.8", "val_mean_dice": "0.7", "val_dice_WT": "0.9"},
            {"epoch": "4", "train_loss": "0.7", "val_mean_dice": "0.6", "val_dice_WT": "0.95"},
        ],
    )
    b = _metrics(tmp_path / "fold_1", [{"epoch": "1", "train_loss": "1", "val_mean_dice": "0.9", "val_dice_WT": "0.5"}])
    assert best_row(a / "metrics.csv") == {"epoch": 3, "val_mean_dice": 0.7, "val_dice_WT": 0.9}

    summary = write_cv_summary({0: a, 1: b}, tmp_path)
    assert summary["mean"]["val_mean_dice"] == pytest.approx(0.8)
    assert summary["std"]["val_mean_dice"] == pytest.approx(statistics.stdev([0.7, 0.9]))
    assert summary["mean"]["val_dice_WT"] == pytest.approx(0.7)
    with open(tmp_path / "cv_summary.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["fold", "best_epoch", "val_mean_dice", "val_dice_WT"]
    assert [row[0] for row in rows[1:]] == ["0", "1", "mean", "std"] and rows[1][1] == "3"
    assert json.loads((tmp_path / "cv_summary.json").read_text())["folds"]["1"]["epoch"] == 1


def test_summary_refuses_a_fold_never_validated(tmp_path: Path) -> None:
    a = _metrics(tmp_path / "fold_0", [{"epoch": "1", "train_loss": "1.0", "val_mean_dice": "", "val_dice_WT": ""}])
    with pytest.raises(InputError, match="fold 0 has no validated epoch"):
        write_cv_summary({0: a}, tmp_path)


def test_best_row_skips_an_epoch_whose_dice_is_nan(tmp_path: Path) -> None:
    """``Checkpoints`` never saves ``best.pt`` for a non-finite Dice, so the summary never takes that epoch."""
    a = _metrics(
        tmp_path / "fold_0",
        [
            {"epoch": "1", "val_mean_dice": "nan", "val_dice_WT": "nan"},
            {"epoch": "2", "val_mean_dice": "0.4", "val_dice_WT": "0.5"},
            {"epoch": "3", "val_mean_dice": "0.4", "val_dice_WT": "0.6"},  # a tie: best.pt stays at epoch 2
        ],
    )
    assert best_row(a / "metrics.csv") == {"epoch": 2, "val_mean_dice": 0.4, "val_dice_WT": 0.5}


def _multitask_row(epoch: int, dice: float, auc: str, balanced: float, confusion: tuple[int, int, int, int]):
    """One epoch of a multitask run's ``metrics.csv``: Dice and the case classification's columns."""
    counts = dict(zip(("LGG_LGG", "LGG_HGG", "HGG_LGG", "HGG_HGG"), confusion, strict=True))
    return {
        "epoch": str(epoch),
        "train_loss": "0.5",
        "val_mean_dice": str(dice),
        "val_class_accuracy": str(balanced),
        "val_class_balanced_accuracy": str(balanced),
        "val_class_auc": auc,
        **{f"val_class_confusion_{k}": str(v) for k, v in counts.items()},
    }


def test_summary_reports_the_class_auc_of_each_folds_best_epoch(tmp_path: Path) -> None:
    """A multitask cross-validation: each fold's AUC and balanced accuracy at the epoch ``best.pt`` holds (the
    highest Dice, not the highest AUC), their mean and std over the folds; a fold that validated one class only
    (AUC ``nan``) shows ``nan`` and stays out of the AUC's mean."""
    folds = {
        0: _metrics(
            tmp_path / "fold_0",
            [
                _multitask_row(1, 0.5, "0.95", 0.9, (1, 0, 0, 2)),  # the best AUC, not the best Dice
                _multitask_row(2, 0.8, "0.75", 0.5, (1, 0, 1, 1)),
            ],
        ),
        1: _metrics(tmp_path / "fold_1", [_multitask_row(1, 0.7, "0.5", 0.75, (0, 1, 0, 2))]),
        2: _metrics(tmp_path / "fold_2", [_multitask_row(1, 0.6, "nan", 1.0, (0, 0, 0, 3))]),  # HGG only
    }
    summary = write_cv_summary(folds, tmp_path)

    assert [summary["folds"][f]["val_class_auc"] for f in ("0", "1")] == [0.75, 0.5]
    assert math.isnan(summary["folds"]["2"]["val_class_auc"])
    assert summary["mean"]["val_class_auc"] == pytest.approx(0.625)
    assert summary["std"]["val_class_auc"] == pytest.approx(statistics.stdev([0.75, 0.5]))
    assert summary["mean"]["val_class_balanced_accuracy"] == pytest.approx(statistics.fmean([0.5, 0.75, 1.0]))
    assert summary["std"]["val_class_balanced_accuracy"] == pytest.approx(statistics.stdev([0.5, 0.75, 1.0]))
    assert summary["mean"]["val_mean_dice"] == pytest.approx(0.7)
    with open(tmp_path / "cv_summary.csv", newline="") as f:
        rows = {row["fold"]: row for row in csv.DictReader(f)}
    assert [rows[k]["best_epoch"] for k in ("0", "1", "2")] == ["2", "1", "1"]
    assert [rows[k]["val_class_auc"] for k in ("0", "1", "2", "mean")] == ["0.75", "0.5", "nan", "0.625"]
    assert float(rows["std"]["val_class_auc"]) == pytest.approx(statistics.stdev([0.75, 0.5]), abs=1e-5)
    assert rows["0"]["val_class_balanced_accuracy"] == "0.5" and rows["0"]["val_class_confusion_HGG_LGG"] == "1"
    saved = json.loads((tmp_path / "cv_summary.json").read_text())
    assert saved["mean"]["val_class_auc"] == pytest.approx(0.625) and saved["folds"]["0"]["epoch"] == 2


def test_summary_of_folds_with_and_without_class_columns(tmp_path: Path) -> None:
    """A fold without the classification columns (trained without ``--classify``) leaves its cells empty and
    the other folds' values make the mean, instead of failing on the missing key."""
    folds = {
        0: _metrics(tmp_path / "fold_0", [{"epoch": "1", "val_mean_dice": "0.6", "val_dice_WT": "0.7"}]),
        1: _metrics(tmp_path / "fold_1", [{**_multitask_row(1, 0.8, "0.9", 1.0, (1, 0, 0, 1)), "val_dice_WT": "0.9"}]),
    }
    summary = write_cv_summary(folds, tmp_path)
    assert summary["mean"]["val_class_auc"] == pytest.approx(0.9) and summary["std"]["val_class_auc"] == 0.0
    assert summary["mean"]["val_dice_WT"] == pytest.approx(0.8)
    with open(tmp_path / "cv_summary.csv", newline="") as f:
        rows = {row["fold"]: row for row in csv.DictReader(f)}
    assert rows["0"]["val_class_auc"] == "" and rows["1"]["val_class_auc"] == "0.9"
    assert list(rows["0"])[:4] == ["fold", "best_epoch", "val_mean_dice", "val_dice_WT"]  # the first fold's order


def test_train_all_folds_from_the_command_line(tiny_prepared: Path, tmp_path: Path) -> None:
    from medseg3d.cli import main

    out = tmp_path / "cv"
    tiny = ["--max_epochs", "1", "--val_interval", "1", "--iterations_per_epoch", "0", "--roi_size", "[32,32,32]",
            "--num_workers", "0", "--network_def#channels", "[4,8,16]", "--network_def#strides", "[2,2]"]  # fmt: skip
    args = ["train", "--bundle", str(BUNDLE), "--folds", "all", "--dataset_dir", str(tiny_prepared)]
    assert main([*args, "--output_dir", str(out), *tiny]) == 0
    plan = json.loads((out / "cv.json").read_text())
    assert plan["folds"] == [0, 1] and plan["overrides"]["max_epochs"] == 1
    for fold in (0, 1):
        config = json.loads((out / f"fold_{fold}" / "config.json").read_text())
        assert config["fold"] == fold and (out / f"fold_{fold}" / "checkpoints" / "best.pt").is_file()
    with open(out / "cv_summary.csv", newline="") as f:
        rows = {row["fold"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"0", "1", "mean", "std"}
    folds = [float(rows[k]["val_mean_dice"]) for k in ("0", "1")]
    assert float(rows["mean"]["val_mean_dice"]) == pytest.approx(statistics.fmean(folds), abs=1e-5)

    # Postprocessing chosen on the out-of-fold predictions of both folds, one per training case
    record = json.loads((out / "postprocessing.json").read_text())
    assert record["folds"] == [0, 1] and record["cases"] == 4
    assert record["bundle_default"]["rules"] == {"all": {"min_size": 10}}
    assert [c["name"] for c in record["candidates"]][:4] == ["keep_largest all", "keep_largest 1", "keep_largest 2",
                                                             "keep_largest 3"]  # fmt: skip
    assert len(list((out / "fold_0" / "oof" / "predictions").glob("*.nii.gz"))) == 2
    assert record["chosen"]["mean_dice"] >= record["none"]["mean_dice"]

    # Resuming a finished cross-validation trains nothing again and rewrites the same summary.
    before = (out / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(["train", "--resume", str(out)]) == 0
    assert (out / "fold_0" / "checkpoints" / "last.pt").stat().st_mtime_ns == before
