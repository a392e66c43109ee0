"""``evaluate_folders`` end to end: pairing, reports, geometry errors, bad files, other formats, real scans."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg3d.cli import main
from medseg3d.core.errors import InputError
from medseg3d.core.io import save_nifti
from medseg3d.data.dataset_json import write_dataset_json
from medseg3d.evaluation import (
    ID_COLUMNS,
    TASK_METRICS,
    evaluate_case,
    evaluate_folders,
    pair_cases,
    read_label_map,
    run_evaluation,
)
from medseg3d.metrics import HD95_EMPTY_MM, brats_case_metrics, labels_case_metrics

SHAPE = (20, 24, 28)
SPACING = (1.2, 1.0, 2.5)
AFFINE = np.array(
    [[-1.2, 0.0, 0.0, 30.5], [0.0, -1.0, 0.0, 23.0], [0.0, 0.0, 2.5, -12.25], [0.0, 0.0, 0.0, 1.0]]
)  # LPS-like BraTS orientation, non-zero origin


def _tumour(seed: int, et: int) -> np.ndarray:
    """A label map with edema (2) around a core of necrosis (1) and enhancing tumour (``et``)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform([7, 8, 9], [13, 16, 19])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    distance = np.linalg.norm((grid - centre) * np.array(SPACING), axis=-1)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[distance < rng.uniform(7, 9)] = 2
    labels[distance < 5] = et
    labels[distance < 2.5] = 1
    return labels


def _prediction(gt: np.ndarray, seed: int, et: int) -> np.ndarray:
    """The ground truth shifted by one voxel along x, with a false-positive ET speck."""
    pred = np.roll(gt, 1, axis=0)
    corner = np.random.default_rng(seed).integers(0, 3, size=3)
    pred[tuple(slice(c, c + 2) for c in corner)] = et
    return pred


def _read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def brats_folders(tmp_path: Path) -> tuple[Path, Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """PRED and GT folders: case_a (legacy labels, _seg), case_b (2023 labels, -seg), case_c (no ground
    truth), case_d (no prediction), plus the non-image files batch inference writes beside predictions."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    arrays = {}
    for index, (case, et, suffix) in enumerate((("case_a", 4, "_seg"), ("case_b", 3, "-seg"))):
        gt = _tumour(index, et)
        pred = _prediction(gt, index, et)
        arrays[case] = (pred, gt)
        save_nifti(gt, AFFINE, gt_dir / f"{case}{suffix}.nii.gz")
        save_nifti(pred, AFFINE, pred_dir / f"{case}.nii.gz")
    save_nifti(_tumour(5, 4), AFFINE, pred_dir / "case_c.nii.gz")
    save_nifti(_tumour(6, 4), AFFINE, gt_dir / "case_d_seg.nii.gz")
    (pred_dir / "summary.csv").write_text("case_id,input,status\n")
    (pred_dir / "previews").mkdir()
    (pred_dir / "previews" / "case_a.png").write_bytes(b"\x89PNG")
    return pred_dir, gt_dir, arrays


def test_brats_folders_end_to_end(brats_folders) -> None:
    pred_dir, gt_dir, arrays = brats_folders
    result = evaluate_folders(pred_dir, gt_dir, task="brats")
    assert result.report_path == pred_dir / "evaluation" / "report.csv"
    rows = _read_report(result.report_path)
    assert [(r["case_id"], r["status"]) for r in rows] == [
        ("case_a", "ok"),
        ("case_b", "ok"),
        ("case_c", "missing_gt"),
        ("case_d", "missing_pred"),
    ]
    assert "no prediction for case_d_seg.nii.gz" in rows[3]["error"]
    assert result.exit_code == 1 and [r["case_id"] for r in result.failures] == ["case_d"]
    columns = list(rows[0])
    assert columns[: len(ID_COLUMNS) + 1] == [*ID_COLUMNS, "convention"]
    assert columns[len(ID_COLUMNS) + 1 :] == [f"{r}_{m}" for r in ("WT", "TC", "ET") for m in TASK_METRICS["brats"]]

    # Every number equals the metrics computed from the arrays in memory (file handling changes nothing).
    for row, convention in zip(rows[:2], ("legacy", "2023"), strict=True):
        pred, gt = arrays[row["case_id"]]
        expected = brats_case_metrics(pred, gt, SPACING)
        assert row["convention"] == expected.pop("convention") == convention
        assert {key: float(row[key]) for key in expected} == pytest.approx(expected, rel=1e-5)
        assert 0.3 < float(row["WT_dice"]) < 1.0 and int(row["ET_lesion_fp"]) == 1

    summary = json.loads(result.summary_path.read_text())
    assert summary["cases"] == {"total": 4, "ok": 2, "failed": 0, "missing_pred": 1, "missing_gt": 1}
    dices = [result.rows[i]["TC_dice"] for i in (0, 1)]
    assert summary["metrics"]["TC"]["dice"] == pytest.approx(
        {"mean": np.mean(dices), "std": np.std(dices), "median": np.median(dices), "n": 2}
    )
    assert summary["metrics"]["ET"]["lesion_fp"]["total"] == 2
    assert summary["lesion_wise"]["dilation_iterations"] == 3
    assert "WT" in result.table and "2 evaluated" in result.table and "1 without prediction" in result.table


def _changed(scale=(1.0, 1.0, 1.0), flip: bool = False, shift: float = 0.0) -> np.ndarray:
    affine = AFFINE @ np.diag([*scale, 1.0])
    affine[:3, :3] *= -1.0 if flip else 1.0
    affine[0, 3] += shift
    return affine


@pytest.mark.parametrize(
    "shape, affine, problem",
    [
        pytest.param((20, 24, 27), AFFINE, r"shapes differ.*\(20, 24, 27\).*\(20, 24, 28\)", id="shape"),
        pytest.param(
            SHAPE,
            _changed(scale=(1, 1.1, 1)),
            r"spacings differ.*\(1\.2, 1\.1, 2\.5\).*\(1\.2, 1, 2\.5\)",
            id="spacing",
        ),
        pytest.param(SHAPE, _changed(flip=True), "orientations differ", id="flip"),
        pytest.param(SHAPE, _changed(shift=0.5), "origins differ by 0.5 mm", id="origin"),
    ],
)
def test_mismatched_geometry_names_both_files(tmp_path: Path, shape, affine: np.ndarray, problem: str) -> None:
    gt_path = save_nifti(np.zeros(SHAPE, np.uint8), AFFINE, tmp_path / "gt" / "case.nii.gz")
    pred_path = save_nifti(np.zeros(shape, np.uint8), affine, tmp_path / "pred" / "case.nii.gz")
    with pytest.raises(InputError, match=problem) as info:
        evaluate_case(pred_path, gt_path, task="labels")
    message = str(info.value)
    assert str(pred_path) in message and str(gt_path) in message and "never resamples" in message


def test_header_round_off_is_accepted(tmp_path: Path) -> None:
    gt = _tumour(0, 4)
    gt_path = save_nifti(gt, AFFINE, tmp_path / "gt.nii.gz")
    nudged = _changed(scale=(1 + 1e-6, 1.0, 1.0), shift=2e-4)  # float32 header round-off
    pred_path = save_nifti(gt, nudged, tmp_path / "pred.nii.gz")
    assert evaluate_case(pred_path, gt_path)["WT_dice"] == 1.0


def test_bad_files_are_failed_rows_and_the_rest_go_on(brats_folders) -> None:
    pred_dir, gt_dir, _ = brats_folders
    data = (pred_dir / "case_a.nii.gz").read_bytes()
    (pred_dir / "case_a.nii.gz").write_bytes(data[: len(data) // 2])  # truncated download
    (gt_dir / "case_c_seg.nii.gz").write_bytes(b"not an image at all")
    save_nifti(np.full(SHAPE, 0.5, np.float32), AFFINE, gt_dir / "case_d_seg.nii.gz")  # an image, not labels
    save_nifti(_tumour(6, 4), AFFINE, pred_dir / "case_d.nii.gz")
    result = evaluate_folders(pred_dir, gt_dir, out=pred_dir.parent / "report")
    status = {row["case_id"]: (row["status"], row["error"]) for row in result.rows}
    assert status["case_b"] == ("ok", "")
    assert status["case_a"][0] == "failed" and "case_a.nii.gz" in status["case_a"][1]
    assert "damaged or truncated" in status["case_a"][1]
    assert status["case_c"][0] == "failed" and "case_c_seg.nii.gz: cannot read as NIfTI" in status["case_c"][1]
    assert status["case_d"][0] == "failed" and "non-integer values (e.g. 0.5)" in status["case_d"][1]
    assert result.exit_code == 1 and result.summary["metrics"]["WT"]["dice"]["n"] == 1
    assert (pred_dir.parent / "report" / "summary.json").is_file()


def test_convention_clash_between_files_is_a_failed_row(tmp_path: Path) -> None:
    gt_path = save_nifti(_tumour(0, 4), AFFINE, tmp_path / "gt" / "x_seg.nii.gz")
    pred_path = save_nifti(_tumour(0, 3), AFFINE, tmp_path / "pred" / "x.nii.gz")
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", out=tmp_path / "out")
    error = result.rows[0]["error"]
    assert result.rows[0]["status"] == "failed" and "3 in the prediction, 4 in the ground truth" in error
    assert str(gt_path) in error and str(pred_path) in error


def test_labels_task_uses_every_label_of_the_dataset(tmp_path: Path) -> None:
    first_gt = np.zeros(SHAPE, np.uint8)
    first_gt[2:8, 2:8, 2:8], first_gt[12:16, 12:16, 20:26] = 1, 2
    first_pred = first_gt.copy()
    first_pred[17:19, 20:23, 2:4] = 2  # a false-positive component of label 2
    second_gt = np.zeros(SHAPE, np.uint8)
    second_gt[3:9, 4:9, 5:12] = 1
    second_pred = second_gt.copy()
    second_pred[15:18, 1:3, 20:24] = 3  # label 3 exists only here
    for name, pred, gt in (("one", first_pred, first_gt), ("two", second_pred, second_gt)):
        save_nifti(gt, AFFINE, tmp_path / "gt" / f"{name}.nii.gz")
        save_nifti(pred, AFFINE, tmp_path / "pred" / f"{name}.nii.gz")
    result = evaluate_folders(tmp_path / "pred", tmp_path / "gt", task="labels")
    assert result.names == ["1", "2", "3"] and result.exit_code == 0
    first, second = result.rows
    expected = labels_case_metrics(first_pred, first_gt, SPACING)
    assert {key: first[key] for key in expected} == pytest.approx(expected)
    assert (first["2_hits"], first["2_fp_components"], first["2_dice"]) == (1, 1, pytest.approx(2 * 96 / (96 + 108)))
    assert (first["3_dice"], first["3_hd95"], first["3_fp_components"]) == (1.0, 0.0, 0)  # absent from both
    assert (second["3_dice"], second["3_hd95"], second["3_fp_components"]) == (0.0, HD95_EMPTY_MM, 1)
    assert result.summary["metrics"]["2"]["fp_components"]["total"] == 1
    report = _read_report(result.report_path)
    assert [c for c in report[0] if c.startswith("2_")] == [f"2_{m}" for m in TASK_METRICS["labels"]]


def test_other_formats_share_the_nifti_geometry(tmp_path: Path) -> None:
    """A prediction written by SimpleITK (.mha/.nrrd, LPS) from the NIfTI ground truth lies on its grid."""
    import SimpleITK as sitk

    gt = _tumour(2, 3)
    gt_path = save_nifti(gt, AFFINE, tmp_path / "gt" / "case-seg.nii.gz")
    read = sitk.ReadImage(str(gt_path))
    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(read))  # without NIfTI metadata, ITK writes no warning
    image.CopyInformation(read)
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(image, str(tmp_path / "pred" / "case.mha"))
    labels, affine = read_label_map(tmp_path / "pred" / "case.mha")
    assert np.array_equal(labels, gt) and np.allclose(affine, AFFINE)
    shifted = sitk.Image(image)
    shifted.SetOrigin([o + 1.0 for o in image.GetOrigin()])
    (tmp_path / "pred2").mkdir()
    sitk.WriteImage(shifted, str(tmp_path / "pred2" / "case.nrrd"))
    assert evaluate_folders(tmp_path / "pred", tmp_path / "gt").rows[0]["WT_dice"] == 1.0
    result = evaluate_folders(tmp_path / "pred2", tmp_path / "gt")
    assert result.rows[0]["status"] == "failed" and "origins differ by 1 mm" in result.rows[0]["error"]


def test_single_files_and_a_raw_brats_tree(tmp_path: Path) -> None:
    from medseg3d.data.synth_brats import write_brats_tree

    folders = write_brats_tree(tmp_path / "raw", cases=2, edition="2023", shape=(40, 36, 30), seed=0)
    segs = sorted((tmp_path / "raw").rglob("*-seg.nii.gz"))
    assert len(segs) == 2 == len(folders)
    (tmp_path / "pred").mkdir()
    for seg in segs:  # predictions named as batch inference names them: <case_id>.nii.gz
        shutil.copy(seg, tmp_path / "pred" / seg.name.replace("-seg", ""))
    result = evaluate_folders(tmp_path / "pred", tmp_path / "raw")
    assert [row["status"] for row in result.rows] == ["ok", "ok"]
    assert all(row["convention"] == "2023" and row["ET_dice"] == 1.0 and row["WT_hd95"] == 0.0 for row in result.rows)
    single = evaluate_folders(sorted((tmp_path / "pred").iterdir())[0], segs[0])
    assert single.rows[0]["case_id"] == segs[0].name[: -len("-seg.nii.gz")] and single.rows[0]["WT_dice"] == 1.0
    assert single.report_path == tmp_path / "pred" / "evaluation" / "report.csv"


def test_pairing_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    save_nifti(np.zeros(SHAPE, np.uint8), AFFINE, tmp_path / "pred" / "a.nii.gz")
    save_nifti(np.zeros(SHAPE, np.uint8), AFFINE, tmp_path / "gt" / "b_seg.nii.gz")
    with pytest.raises(InputError, match="empty: holds no label map; expected files ending in .nii.gz"):
        pair_cases(tmp_path / "empty", tmp_path / "gt")
    with pytest.raises(InputError, match="no prediction matches a ground-truth case.*predictions a, ground truth b"):
        pair_cases(tmp_path / "pred", tmp_path / "gt")
    with pytest.raises(InputError, match="is a file but the other path is a folder"):
        pair_cases(tmp_path / "pred" / "a.nii.gz", tmp_path / "gt")
    with pytest.raises(InputError, match="gone: not found"):
        pair_cases(tmp_path / "gone", tmp_path / "gt")
    with pytest.raises(ValueError, match="task must be one of"):
        evaluate_folders(tmp_path / "pred", tmp_path / "gt", task="organs")
    # Two files claiming one case: a failed row naming both.
    save_nifti(np.zeros(SHAPE, np.uint8), AFFINE, tmp_path / "gt" / "a.nii")
    with (tmp_path / "gt" / "a_seg.nii.gz").open("wb") as handle:
        handle.write(gzip.compress((tmp_path / "gt" / "a.nii").read_bytes()))
    pair = pair_cases(tmp_path / "pred", tmp_path / "gt")[0]
    assert pair.status == "failed" and "several files claim case a (a.nii, a_seg.nii.gz)" in pair.problem


def test_run_evaluation_prints_the_table_and_returns_the_exit_code(brats_folders, capsys) -> None:
    pred_dir, gt_dir, _ = brats_folders
    (gt_dir / "case_d_seg.nii.gz").unlink()
    assert run_evaluation(pred_dir, gt_dir, out=pred_dir / "ev") == 0  # a prediction without ground truth is no failure
    printed = capsys.readouterr()
    assert "Dice mean+-std" in printed.out and "report: " in printed.out
    assert "missing_gt: case_c: no ground truth for case_c.nii.gz" in printed.err


@pytest.mark.integration
def test_real_aorta_masks(real_data: Path, tmp_path: Path) -> None:
    """Two TotalSegmentator aorta masks of one CTA; their README gives Dice 0.977 between them."""
    folder = real_data / "totalseg_aorta_cta"
    result = evaluate_folders(folder / "organ_aorta_T264.nii.gz", folder / "aorta.nii.gz", "labels", out=tmp_path)
    row = result.rows[0]
    assert row["status"] == "ok" and result.names == ["1"]
    assert row["1_dice"] == pytest.approx(0.977, abs=0.001)
    assert 0.0 < row["1_hd95"] < 5.0  # 1.5 mm voxels, near-identical masks
    assert row["1_hits"] == row["1_gt_components"] >= 1


@pytest.mark.integration
def test_real_brats2015_labels(real_data: Path, tmp_path: Path) -> None:
    """BRATS 2015 labels hold both 3 (non-enhancing) and 4: a clash; mapped 3 -> 1 (2017+), they evaluate."""
    source = real_data / "brats2015_deepmedic_pat0001" / "OTMultiClass.nii.gz"
    clash = evaluate_folders(source, source, out=tmp_path / "clash")
    assert clash.exit_code == 1 and "conventions clash" in clash.rows[0]["error"]
    labels, affine = read_label_map(source)
    labels[labels == 3] = 1
    gt_path = save_nifti(labels.astype(np.uint8), affine, tmp_path / "gt" / "pat0001_seg.nii.gz")
    eroded = labels.copy()
    eroded[(labels == 4) & (np.roll(labels, 2, axis=0) != 4)] = 1  # ET shrunk on one side, relabelled NCR
    pred_path = save_nifti(eroded.astype(np.uint8), affine, tmp_path / "pred" / "pat0001.nii.gz")
    row = evaluate_folders(pred_path, gt_path, out=tmp_path / "ev").rows[0]
    assert row["status"] == "ok" and row["convention"] == "legacy"
    assert row["WT_dice"] == 1.0 and row["TC_dice"] == 1.0 and row["WT_lesion_dice"] == 1.0
    assert 0.5 < row["ET_dice"] < 1.0 and 0.0 < row["ET_hd95"] <= 3.0


# ------------------------------------------------------------------------------------------------- case classes

CUBE = (8, 8, 8)


def _class_folders(tmp_path: Path, probabilities: dict[str, list[float] | None], names: list[str]) -> tuple[Path, Path]:
    """PRED and GT folders of small cube label maps, PRED with the summary.csv of a multitask ``medseg3d infer``:
    a case whose probabilities are None failed there (no label map, empty class columns)."""
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    header = ["case_id", "input", "status", "error", "seconds", "class", *(f"p_{n}" for n in names)]
    lines = [",".join([*header, "class_pooled_over"])]
    for index, (case, found) in enumerate(probabilities.items()):
        labels = np.zeros(CUBE, np.uint8)
        labels[2 : 4 + index % 3, 2:5, 2:5] = 1
        save_nifti(labels, AFFINE, gt_dir / f"{case}_seg.nii.gz")
        if found is None:
            lines.append(f"{case},scans/{case}.nii.gz,failed,cannot read,," + "," * len(names))
            continue
        save_nifti(labels, AFFINE, pred_dir / f"{case}.nii.gz")
        predicted = names[int(np.argmax(found))]
        cells = [case, f"scans/{case}.nii.gz", "ok", "", "1.5", predicted, *map(str, found), "tumour"]
        lines.append(",".join(cells))
    (pred_dir / "summary.csv").write_text("\n".join(lines) + "\n")
    return pred_dir, gt_dir


def test_case_classes_from_a_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Two classes: AUC of 'yes' computed by hand; unknown truth and failed cases are left out and listed."""
    probabilities = {
        "a": [0.1, 0.9],  # yes, predicted yes
        "b": [0.6, 0.4],  # yes, predicted no
        "c": [0.55, 0.45],  # no, predicted no
        "d": [0.8, 0.2],  # no, predicted no
        "e": None,  # yes, but infer failed on it
        "g": [0.4, 0.6],  # truth unknown (empty cell)
    }
    pred_dir, gt_dir = _class_folders(tmp_path, probabilities, ["no", "yes"])
    truth = tmp_path / "aneurysm.csv"
    truth.write_text("case_id,aneurysm\nA,yes\nb,yes\nc,no\nd,no\ne,yes\nf,no\ng,\n")  # f: never predicted
    result = evaluate_folders(pred_dir, gt_dir, task="labels", classes=truth)
    scores = result.summary["classification"]
    # Positives (yes) 0.9, 0.4 against negatives 0.45, 0.2: 3 of the 4 pairs ordered -> AUC 0.75.
    assert scores["auc"] == pytest.approx(0.75) and scores["auc_of"] == "yes vs no"
    assert scores["accuracy"] == pytest.approx(0.75)  # a, c, d right; b wrong
    assert scores["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert scores["confusion"] == [[2, 0], [1, 1]]  # [true][predicted], classes in p_ column order
    assert (scores["cases"], scores["classes"], scores["field"]) == (4, ["no", "yes"], "aneurysm")
    assert scores["left_out"] == {"unknown_truth": ["g"], "no_prediction": ["e"]}
    assert json.loads(result.summary_path.read_text())["classification"] == scores
    report = {row["case_id"]: row for row in _read_report(result.report_path)}
    assert list(report["a"])[-2:] == ["class_true", "class_pred"]
    assert [(report[c]["class_true"], report[c]["class_pred"]) for c in "abdeg"] == [
        ("yes", "yes"),
        ("yes", "no"),
        ("no", "no"),
        ("yes", ""),
        ("", "yes"),
    ]
    assert result.exit_code == 1  # e has no prediction: a Dice failure, as without --classes

    # The command prints the scores after the Dice table.
    assert main(["evaluate", str(pred_dir), str(gt_dir), "--task", "labels", "--classes", str(truth)]) == 1
    printed = capsys.readouterr().out
    assert printed.index("Dice mean+-std") < printed.index("classification of aneurysm")
    assert "4 cases scored, 1 with unknown truth and 1 without predicted class left out" in printed
    assert "accuracy 0.750  balanced accuracy 0.750  AUC 0.750 (yes vs no)" in printed
    rows = [line.split() for line in printed.splitlines()]
    assert rows[rows.index(["no", "yes"]) :][:3] == [["no", "yes"], ["no", "2", "0"], ["yes", "1", "1"]]


def test_case_classes_from_a_dataset_json(tmp_path: Path) -> None:
    """Three classes of a dataset.json column: the mean one-vs-rest AUC, computed by hand."""
    names = ["GLI", "MEN", "MET"]
    probabilities = {
        "c1": [0.6, 0.3, 0.1],  # GLI, predicted GLI
        "c2": [0.2, 0.5, 0.3],  # MEN, predicted MEN
        "c3": [0.1, 0.2, 0.7],  # MET, predicted MET
        "c4": [0.15, 0.4, 0.45],  # GLI, predicted MET
    }
    pred_dir, gt_dir = _class_folders(tmp_path, probabilities, names)
    prepared = tmp_path / "prepared"
    truth = {"c1": "GLI", "c2": "MEN", "c3": "MET", "c4": "GLI"}
    cases = [{"case_id": c, "image": f"i/{c}.nii.gz", "label": f"l/{c}.nii.gz", "fold": 0} for c in truth]
    write_dataset_json(prepared, {"training": [{**c, "tumour_type": truth[c["case_id"]]} for c in cases]})
    with pytest.raises(InputError, match="prepared/dataset.json: no case holds 'grade'; expected --class-field"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=prepared)  # grade: the default field
    result = evaluate_folders(
        pred_dir, gt_dir, task="labels", classes=prepared / "dataset.json", class_field="tumour_type"
    )
    scores = result.summary["classification"]
    # One vs rest: GLI (0.6, 0.15 against 0.2, 0.1): 3 of 4 pairs; MEN and MET ordered perfectly.
    assert scores["auc"] == pytest.approx((0.75 + 1.0 + 1.0) / 3)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert scores["confusion"] == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]
    assert scores["truth"] == str(prepared / "dataset.json") and result.exit_code == 0


def test_case_class_errors_name_the_file(tmp_path: Path) -> None:
    pred_dir, gt_dir = _class_folders(tmp_path, {"a": [0.3, 0.7], "b": [0.8, 0.2]}, ["no", "yes"])
    truth = tmp_path / "truth.csv"
    truth.write_text("case_id,aneurysm,side\na,yes,left\nb,maybe,right\n")
    with pytest.raises(InputError, match=r"truth.csv: has 2 columns besides case_id \(aneurysm, side\); expected one"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=truth)
    with pytest.raises(InputError, match=r"truth.csv: case b: aneurysm is 'maybe'; expected one of \['no', 'yes'\]"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=truth, class_field="aneurysm")
    with pytest.raises(InputError, match="truth.csv: has no column 'grade'"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=truth, class_field="grade")
    truth.write_text("case_id,aneurysm\nx,yes\n")
    with pytest.raises(InputError, match="truth.csv: no case of .*summary.csv has a known aneurysm here"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=truth)
    with pytest.raises(InputError, match="gone.csv: not found; expected a CSV case_id,<field> or a dataset.json"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=tmp_path / "gone.csv")
    # Predictions without classes: the PRED folder named, and how to get them.
    (pred_dir / "summary.csv").write_text("case_id,input,status,error,seconds\na,x,ok,,1\n")
    with pytest.raises(InputError, match=r"pred: summary.csv has no case classes .*medseg3d infer --bundle"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=truth)
    (pred_dir / "summary.csv").unlink()
    with pytest.raises(InputError, match=r"pred: holds no summary.csv; .*--classify <field>"):
        evaluate_folders(pred_dir, gt_dir, task="labels", classes=truth)
    assert not (pred_dir / "evaluation" / "report.csv").exists()  # nothing scored, nothing written
