"""EvalReport on a real MONAI SupervisedEvaluator: per_case.csv and summary.json from hand-computed Dice, predictions
in the label files' geometry, errors that name the case."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator
from monai.handlers import MeanDice, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose

from medseg3d.core.io import save_nifti
from medseg3d.training.handlers import EvalReport

SHAPE = (6, 5, 4)
AFFINE = np.array([[0, -1.5, 0, 10], [2.0, 0, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]])  # permuted, anisotropic


def _regions(wt: tuple[slice, ...], tc: tuple[slice, ...] | None, et: tuple[slice, ...] | None) -> np.ndarray:
    """Binary WT, TC, ET masks of shape (3, 6, 5, 4)."""
    masks = np.zeros((3, *SHAPE), np.float32)
    for channel, box in enumerate((wt, tc, et)):
        if box is not None:
            masks[channel][box] = 1
    return masks


WT, TC, ET = np.s_[0:4, 0:4, 0:2], np.s_[0:2, 0:4, 0:2], np.s_[0:2, 0:2, 0:2]  # 32, 16 and 8 voxels, nested
CASES = {  # case id: (ground truth, prediction)
    "a": (_regions(WT, TC, ET), _regions(WT, TC, ET)),  # perfect
    "b": (_regions(WT, TC, ET), _regions(np.s_[0:4, 0:4, 0:1], TC, None)),  # half of WT (Dice 2/3), ET missed (0)
    "c": (_regions(WT, TC, None), _regions(WT, TC, None)),  # no ET in either: ET undefined, not 1
}
EXPECTED = {  # per case: dice_WT, dice_TC, dice_ET, mean_dice (over the defined regions)
    "a": (1.0, 1.0, 1.0, 1.0),
    "b": (2 / 3, 1.0, 0.0, (2 / 3 + 1) / 3),
    "c": (1.0, 1.0, None, 1.0),
}


def _labels(regions: np.ndarray) -> np.ndarray:
    """Prepared labels of nested regions, written out by hand: ED 2, NCR 1, ET 3."""
    wt, tc, et = regions.astype(bool)
    return np.select([et, tc, wt], [3, 1, 2], 0).astype(np.uint8)


def _region(channel: int):
    def select(output):
        preds, labels = from_engine(["pred", "label"])(output)
        return [p[channel : channel + 1] for p in preds], [y[channel : channel + 1] for y in labels]

    return select


def _evaluator(report: EvalReport, batch_size: int = 2) -> SupervisedEvaluator:
    """A MONAI evaluator as the bundles build it (sigmoid > 0.5, Dice per region with its details kept) on a
    network that returns its input: the images are the logits of the prediction."""
    data = [
        {"case_id": case, "image": torch.as_tensor(pred * 20 - 10), "label": torch.as_tensor(gt)}
        for case, (gt, pred) in CASES.items()
    ]
    regions = {f"val_dice_{name}": MeanDice(output_transform=_region(i)) for i, name in enumerate(("WT", "TC", "ET"))}
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data, batch_size=batch_size),
        network=torch.nn.Identity(),
        postprocessing=Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)]),
        key_val_metric={"val_mean_dice": MeanDice(output_transform=from_engine(["pred", "label"]))},
        additional_metrics=regions,
    )
    report.attach(evaluator)
    return evaluator


def _per_case(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("batch_size", [pytest.param(1, id="batch-1"), pytest.param(2, id="batch-2")])
def test_per_case_and_summary_hold_the_hand_computed_dice(tmp_path: Path, batch_size: int) -> None:
    evaluator = _evaluator(EvalReport(tmp_path, info={"fold": 1, "checkpoint": "best.pt"}), batch_size)
    evaluator.run()
    rows = _per_case(tmp_path / "per_case.csv")
    assert list(rows[0]) == ["case_id", "dice_WT", "dice_TC", "dice_ET", "mean_dice"]
    assert [row["case_id"] for row in rows] == list(CASES)
    for row in rows:
        for cell, expected in zip(list(row.values())[1:], EXPECTED[row["case_id"]], strict=True):
            assert cell == "" if expected is None else float(cell) == pytest.approx(expected, abs=1e-5)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["cases"] == 3 and summary["info"] == {"fold": 1, "checkpoint": "best.pt"}
    columns = zip(*EXPECTED.values(), strict=True)
    for column, values in zip(["dice_WT", "dice_TC", "dice_ET", "mean_dice"], columns, strict=True):
        defined = [v for v in values if v is not None]
        expected = {"mean": np.mean(defined), "std": np.std(defined), "n": len(defined)}  # population std
        assert summary["metrics"][column] == pytest.approx(expected, abs=1e-5), column
    assert summary["evaluator_metrics"]["val_mean_dice"] == pytest.approx(evaluator.state.metrics["val_mean_dice"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_case.csv", "summary.json"]  # no temp files


def test_a_second_run_rewrites_the_report(tmp_path: Path) -> None:
    evaluator = _evaluator(EvalReport(tmp_path))
    evaluator.run()
    first = (tmp_path / "per_case.csv").read_text()
    evaluator.run()
    assert (tmp_path / "per_case.csv").read_text() == first  # three rows again, not six


def _label_files(tmp_path: Path, shape: tuple[int, ...] = SHAPE) -> list[dict[str, str]]:
    datalist = []
    for case, (gt, _) in CASES.items():
        path = tmp_path / "labels" / f"{case}.nii.gz"
        save_nifti(np.zeros(shape, np.uint8) if shape != SHAPE else _labels(gt), AFFINE, path)
        datalist.append({"case_id": case, "label": str(path)})
    return datalist


def test_predictions_are_written_in_the_label_files_geometry(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    _evaluator(EvalReport(out, save_predictions=True, datalist=_label_files(tmp_path))).run()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    for case, (_, pred) in CASES.items():
        image = nib.load(out / "predictions" / f"{case}.nii.gz")
        assert np.array_equal(image.affine, AFFINE) and image.shape == SHAPE
        assert np.array_equal(np.asarray(image.dataobj), _labels(pred)), case


def test_a_label_file_of_another_shape_is_named(tmp_path: Path) -> None:
    report = EvalReport(tmp_path / "eval", save_predictions=True, datalist=_label_files(tmp_path, shape=(6, 5, 3)))
    with pytest.raises(ValueError, match=r"a: prediction of shape \(6, 5, 4\) does not match \(6, 5, 3\)"):
        _evaluator(report).run()
    assert not (tmp_path / "eval" / "summary.json").exists()


def test_saving_predictions_needs_the_datalist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="save_predictions needs the datalist"):
        EvalReport(tmp_path, save_predictions=True)
