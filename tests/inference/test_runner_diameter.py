"""Batch inference: ``diameters`` adds each label's maximum diameter in mm to summary.csv, resumed cases too."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg3d.inference.runner import BatchRunner

SPACING = (0.8, 0.8, 2.0)
SHAPE = (48, 48, 24)  # 38.4 x 38.4 x 48 mm
AORTA_RADIUS, BRANCH_RADIUS = 6.0, 3.0
NAMES = {"aorta": 1, "branch": 2}


def _phantom(with_branch: bool) -> np.ndarray:
    """Intensity 1 in an aorta (tube along Z, axis between voxel centres), 2 in a thinner branch, 0 elsewhere."""
    x, y, _ = (np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True))
    xx, yy = np.meshgrid(x, y, indexing="ij")
    image = np.zeros(SHAPE, np.float32)
    image[np.hypot(xx - 14.1, yy - 19.3) <= AORTA_RADIUS] = 1
    if with_branch:
        image[np.hypot(xx - 29.7, yy - 19.3) <= BRANCH_RADIUS] = 2
    return image


def segment_phantom(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A perfect predictor of the phantoms: ``predictor(array (C, X, Y, Z), affine) -> labels (X, Y, Z)``."""
    return np.rint(array[0]).astype(np.uint8)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """``both`` (aorta and branch), ``aorta_only`` (no branch) and a non-image file, as 0.8 x 0.8 x 2 mm NIfTI."""
    root = tmp_path_factory.mktemp("phantoms")
    affine = np.diag([*SPACING, 1.0])
    nib.save(nib.Nifti1Image(_phantom(True), affine), str(root / "both.nii.gz"))
    nib.save(nib.Nifti1Image(_phantom(False), affine), str(root / "aorta_only.nii.gz"))
    (root / "notes.txt").write_text("not a scan\n")
    return root


def _runner(inputs: Path, out: Path, **kwargs) -> BatchRunner:
    return BatchRunner(segment_phantom, inputs, out, expect="image", label_names=NAMES, progress=False, **kwargs)


def _summary(out: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    with open(out / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = {row["case_id"]: row for row in reader}
        return list(reader.fieldnames or []), rows


@pytest.fixture(scope="module")
def first_run(inputs: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    _runner(inputs, out, diameters=["aorta", "branch"]).run()
    return out


def test_summary_gets_each_requested_label_diameter(first_run: Path) -> None:
    columns, rows = _summary(first_run)
    assert columns[-6:] == [
        "aorta_voxels",
        "aorta_ml",
        "branch_voxels",
        "branch_ml",
        "aorta_max_diameter_mm",
        "branch_max_diameter_mm",
    ]
    one_voxel = max(SPACING[:2])  # the cross-section of a tube along Z
    for case_id in ("both", "aorta_only"):
        assert rows[case_id]["status"] == "ok", rows[case_id]
        assert abs(float(rows[case_id]["aorta_max_diameter_mm"]) - 2 * AORTA_RADIUS) <= one_voxel
    assert abs(float(rows["both"]["branch_max_diameter_mm"]) - 2 * BRANCH_RADIUS) <= one_voxel
    assert rows["aorta_only"]["branch_max_diameter_mm"] == ""  # absent label: empty cell
    assert rows["aorta_only"]["branch_voxels"] == "0"
    assert rows["notes.txt"]["status"] == "failed"
    assert rows["notes.txt"]["aorta_max_diameter_mm"] == ""


def test_the_diameter_is_measured_on_the_written_labels(first_run: Path) -> None:
    from medseg3d.ops.diameter import max_diameter_mm

    _, rows = _summary(first_run)
    written = nib.load(str(first_run / "both.nii.gz"))
    labels = np.asarray(written.dataobj)
    for name, value in NAMES.items():
        expected = max_diameter_mm(labels == value, written.header.get_zooms())
        assert float(rows["both"][f"{name}_max_diameter_mm"]) == round(expected, 2)


def test_resume_keeps_the_diameters(inputs: Path, first_run: Path) -> None:
    _, before = _summary(first_run)
    _runner(inputs, first_run, diameters=["aorta", "branch"], resume=True).run()
    _, after = _summary(first_run)
    for case_id in ("both", "aorta_only"):
        assert after[case_id]["status"] == "skipped"
        for name in NAMES:
            assert after[case_id][f"{name}_max_diameter_mm"] == before[case_id][f"{name}_max_diameter_mm"]
    assert after["aorta_only"]["branch_max_diameter_mm"] == ""
    assert after["both"]["aorta_max_diameter_mm"] != ""


def test_without_diameters_the_summary_is_unchanged(inputs: Path, tmp_path: Path) -> None:
    _runner(inputs, tmp_path / "out").run()
    columns, _ = _summary(tmp_path / "out")
    assert columns == [
        "case_id",
        "input",
        "status",
        "error",
        "seconds",
        *(f"{name}_{unit}" for name in NAMES for unit in ("voxels", "ml")),
    ]


def test_one_name_or_repeats_are_accepted(inputs: Path, tmp_path: Path) -> None:
    assert _runner(inputs, tmp_path, diameters="aorta").diameters == ["aorta"]
    assert _runner(inputs, tmp_path, diameters=["branch", "aorta", "branch"]).diameters == ["branch", "aorta"]


@pytest.mark.parametrize("diameters", [["heart"], ["aorta", "heart"]])
def test_a_diameter_of_an_unknown_label_is_refused(inputs: Path, tmp_path: Path, diameters: list[str]) -> None:
    with pytest.raises(ValueError, match=r"diameters must name labels of label_names .*'aorta'.*got 'heart'"):
        _runner(inputs, tmp_path / "out", diameters=diameters)
    assert not (tmp_path / "out").exists()


def test_a_batch_with_nothing_to_run_still_writes_its_summary(tmp_path: Path) -> None:
    """Only a non-image entry: no case runs, and summary.csv still lists it (it used to be left unwritten)."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a scan\n")
    rows = _runner(tmp_path / "in", tmp_path / "out", diameters=["aorta"]).run()
    _, written = _summary(tmp_path / "out")
    assert [row["status"] for row in rows] == ["failed"]
    assert written["notes.txt"]["status"] == "failed"
    assert written["notes.txt"]["aorta_max_diameter_mm"] == ""
