"""`medseg3d demo` runs the pipeline end to end: synthesis, preparation, a brief training with its records."""

from __future__ import annotations

import csv
from pathlib import Path

from medseg3d.cli import main


def test_demo_end_to_end_on_tiny_data(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--cases", "3", "--shape", "48", "40", "32", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    run = out / "run"
    assert f"curves: {run / 'curves.png'}" in printed
    assert f"medseg3d train --resume {run}" in printed
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1"] and 0.0 <= float(rows[0]["val_mean_dice"]) <= 1.0
    assert (run / "curves.png").stat().st_size > 1000 and (run / "checkpoints" / "last.pt").is_file()
    assert (out / "prepared" / "dataset.json").is_file()
    predictions = out / "predictions"
    with open(predictions / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert [row["status"] for row in summary] == ["ok", "ok"]
    for row in summary:
        assert (predictions / f"{row['case_id']}.nii.gz").is_file()
        assert (predictions / "previews" / f"{row['case_id']}.png").is_file()
    with open(predictions / "evaluation" / "report.csv", newline="") as f:
        report = list(csv.DictReader(f))
    assert sorted(row["case_id"] for row in report) == sorted(row["case_id"] for row in summary)
    assert all(row["status"] == "ok" and 0.0 <= float(row["WT_dice"]) <= 1.0 for row in report)
    assert "WT" in printed and f"previews: {predictions / 'previews'}" in printed
