"""A generated corpus of bad inputs, fed to every entry point: each is rejected with a clear error that names the file
and says what was expected (never a traceback), or, where the input is odd but valid, processed correctly.

Batches (``prep_brats`` over a tree, ``medseg3d datalist`` over a root, ``medseg3d infer`` over a folder,
``medseg3d evaluate`` over a folder) mix good and bad inputs and run once per module: the good ones are still
processed, the bad ones are reported with their reason, and no temporary or half-written file is left behind.
``BAD_INPUTS`` below is the table of every case, its stage, the input and the expected outcome
(``docs/reliability.md`` is made from it).
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
import pytest

from medseg3d.core.errors import InputError
from medseg3d.data.brats import safe_case_id

_spec = importlib.util.spec_from_file_location("robustness_corpus", Path(__file__).with_name("corpus.py"))
corpus = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("robustness_corpus", corpus)
_spec.loader.exec_module(corpus)

REPO = Path(__file__).resolve().parents[2]
CT_BUNDLE = REPO / "bundles" / "ct_aorta_resunet_3d"
# The tiny network of the CT bundle (as in tests/bundles/test_ct_aorta.py): fast on a CPU.
NETWORK = {"roi_size": [32, 32, 32], "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]}
NETWORK_ARGS = [part for key, value in NETWORK.items() for part in (f"--{key}", json.dumps(value))]
SHAPE = corpus.SHAPE


class BadInput(NamedTuple):
    """One row of the corpus table.

    Attributes:
        id: the case's name (also the pytest id).
        stage: the command that gets it: ``prep_brats``, ``datalist``, ``train``, ``infer`` or ``evaluate``.
        input: what the input is.
        outcome: ``rejected`` (prep_brats/datalist: reported, left out, the rest converted or listed),
            ``failed`` (infer/evaluate: a ``failed`` row with the reason, the rest processed), ``error`` (the
            command stops before doing anything, exit code 2, one line naming the file or key), ``accepted``
            (processed correctly: output on the input's grid).
        message: what the reason or error line says (a fragment), besides the name of the file at fault.
    """

    id: str
    stage: str
    input: str
    outcome: str
    message: str


BAD_INPUTS: tuple[BadInput, ...] = (
    # prep_brats over one raw BraTS 2021 tree holding every case below plus two good cases (exit code 1)
    BadInput("prep_zero_byte", "prep_brats", "t1 file of 0 bytes", "rejected", "cannot read as NIfTI"),
    BadInput("prep_truncated", "prep_brats", "flair .nii.gz cut to half its size", "rejected", "damaged or truncated"),
    BadInput("prep_gzip_not_nifti", "prep_brats", "t2 .nii.gz that is a gzip of text", "rejected",
             "cannot read as NIfTI"),
    BadInput("prep_2d", "prep_brats", "t1ce is a 2D slice", "rejected", "expected a 3D volume"),
    BadInput("prep_5d", "prep_brats", "t1 of shape (X, Y, Z, 1, 2)", "rejected", "expected a 3D volume"),
    BadInput("prep_nan", "prep_brats", "flair with NaN voxels", "rejected", "NaN or Inf; expected finite values"),
    BadInput("prep_inf", "prep_brats", "t2 with Inf voxels", "rejected", "NaN or Inf; expected finite values"),
    BadInput("prep_all_zero", "prep_brats", "t1ce with every voxel 0", "rejected", "the image is empty"),
    BadInput("prep_shape_mismatch", "prep_brats", "t2 one slice shorter than t1", "rejected",
             "not co-registered with"),
    BadInput("prep_affine_mismatch", "prep_brats", "flair shifted by 2 mm", "rejected", "affines differ by up to 2"),
    BadInput("prep_label_shape_mismatch", "prep_brats", "seg one slice shorter than the images", "rejected",
             "not co-registered with"),
    BadInput("prep_label_affine_mismatch", "prep_brats", "seg with 1.5 mm voxels, images 1 mm", "rejected",
             "affines differ"),
    BadInput("prep_label_values", "prep_brats", "seg holding label 3 (BraTS 2021 uses 0, 1, 2, 4)", "rejected",
             "unexpected label values 3"),
    BadInput("prep_missing_modality", "prep_brats", "case folder without flair", "rejected",
             "missing modality: flair"),
    BadInput("prep_int8", "prep_brats", "every modality stored as int8", "accepted", ""),
    BadInput("prep_float64", "prep_brats", "every modality stored as float64", "accepted", ""),
    BadInput("prep_spacing_1p2", "prep_brats", "1.2 mm isotropic voxels (not 1 mm)", "accepted", ""),
    BadInput("prep_anisotropic", "prep_brats", "1 x 1 x 3 mm voxels", "accepted", ""),
    BadInput("prep_oblique", "prep_brats", "oblique affine (rotated 20 deg about z, 10 about x)", "accepted", ""),
    BadInput("prep_name_spaces", "prep_brats", "case folder and files named 'BraTS2021_00100 copy'", "accepted", ""),
    BadInput("prep_name_unicode", "prep_brats", "case folder and files with a non-ASCII character", "accepted", ""),
    BadInput("prep_name_dotdot", "prep_brats", "case folder and files named 'BraTS2021_..00102'", "accepted", ""),
    # prep_brats, whole-run errors
    BadInput("prep_no_images", "prep_brats", "raw folder holding only a text file", "error", "no NIfTI file"),
    BadInput("prep_unwritable_out", "prep_brats", "OUT that cannot be created (read-only parent, or a file "
             "as parent)", "error", "expected a folder that can be created and written"),
    # medseg3d datalist over one imagesTr/labelsTr root with every pair below plus good pairs (exit code 1)
    BadInput("datalist_zero_byte", "datalist", "image of 0 bytes", "rejected", "cannot read as NIfTI"),
    BadInput("datalist_truncated", "datalist", "image .nii.gz cut to half its size", "rejected",
             "damaged or truncated"),
    BadInput("datalist_gzip_not_nifti", "datalist", "label .nii.gz that is a gzip of text", "rejected",
             "cannot read as NIfTI"),
    BadInput("datalist_2d", "datalist", "2D image", "rejected", "expected a 3D volume"),
    BadInput("datalist_5d", "datalist", "image of shape (X, Y, Z, 1, 2)", "rejected", "expected a 3D"),
    BadInput("datalist_label_shape", "datalist", "label one slice shorter than its image", "rejected",
             "not on the grid of its image"),
    BadInput("datalist_label_affine", "datalist", "label with other voxel spacing than its image", "rejected",
             "not on the grid of its image"),
    BadInput("datalist_label_nan", "datalist", "float label with NaN voxels", "rejected", "NaN or Inf"),
    BadInput("datalist_label_fraction", "datalist", "float label holding 0.5", "rejected",
             "non-integer label values such as 0.5"),
    BadInput("datalist_label_negative", "datalist", "label holding -1", "rejected", "negative label values"),
    BadInput("datalist_no_label", "datalist", "image without a label", "rejected", "no label for this image"),
    BadInput("datalist_dicom_two_series", "datalist", "DICOM folder holding two series", "rejected",
             "holds 2 DICOM series"),
    BadInput("datalist_dicom_missing_slice", "datalist", "DICOM series with a middle slice deleted", "rejected",
             "slices are not evenly spaced"),
    BadInput("datalist_dicom_uneven", "datalist", "DICOM series with 2 mm then 3 mm slice gaps", "rejected",
             "slices are not evenly spaced"),
    BadInput("datalist_dicom_mixed_files", "datalist", "DICOM series folder with a README.txt and a .png beside "
             "the slices", "accepted", ""),
    BadInput("datalist_int8", "datalist", "int8 image", "accepted", ""),
    BadInput("datalist_float64", "datalist", "float64 image", "accepted", ""),
    BadInput("datalist_oblique", "datalist", "oblique image and label", "accepted", ""),
    BadInput("datalist_anisotropic", "datalist", "0.7 x 0.7 x 3 mm image and label", "accepted", ""),
    BadInput("datalist_image_nan", "datalist", "image with NaN voxels (NIfTI images: header only is read, "
             "docs/data.md)", "accepted", ""),
    BadInput("datalist_name_spaces", "datalist", "'ct 100.nii.gz' pair", "accepted", ""),
    BadInput("datalist_name_unicode", "datalist", "pair with a non-ASCII name", "accepted", ""),
    BadInput("datalist_name_dotdot", "datalist", "'ct..102.nii.gz' pair", "accepted", ""),
    # medseg3d datalist, whole-run errors
    BadInput("datalist_no_images", "datalist", "root holding only a text file", "error",
             "no usable image/label pair"),
    BadInput("datalist_foreign_dataset_json", "datalist", "malformed dataset.json already in the root", "error",
             "was not written by medseg3d datalist"),
    BadInput("datalist_unwritable_out", "datalist", "--out that cannot be created", "error",
             "expected a folder that can be created and written"),
    # medseg3d train: stops before any epoch
    BadInput("train_max_epochs_abc", "train", "--max_epochs abc", "error", "max_epochs expects int"),
    BadInput("train_negative_learning_rate", "train", "--learning_rate -1", "error",
             "learning_rate expects a positive number"),
    BadInput("train_unknown_key", "train", "--max_epoch 2 (misspelt key)", "error", "unknown key 'max_epoch'"),
    BadInput("train_malformed_dataset_json", "train", "dataset.json cut mid-object", "error", "is not valid JSON"),
    BadInput("train_missing_dataset_json", "train", "dataset_dir without dataset.json", "error", "not found"),
    BadInput("train_missing_image", "train", "dataset.json listing an image that does not exist", "error",
             "but missing"),
    BadInput("train_nan_image", "train", "dataset.json listing a NIfTI image with NaN voxels (datalist reads only "
             "headers)", "error", "NaN or Inf; expected finite values"),
    BadInput("train_unwritable_output", "train", "--output_dir that cannot be created", "error",
             "expected a folder that can be created and written"),
    # medseg3d infer over one folder with every case below plus a good one (exit code 1)
    BadInput("infer_zero_byte", "infer", "scan of 0 bytes", "failed", "cannot read as NIfTI"),
    BadInput("infer_truncated", "infer", "scan .nii.gz cut to half its size", "failed", "damaged or truncated"),
    BadInput("infer_gzip_not_nifti", "infer", ".nii.gz that is a gzip of text", "failed", "cannot read as NIfTI"),
    BadInput("infer_2d", "infer", "2D scan", "failed", "expected a 3D volume"),
    BadInput("infer_5d", "infer", "scan of shape (X, Y, Z, 1, 2)", "failed", "expected a 3D volume"),
    BadInput("infer_nan", "infer", "scan with NaN voxels", "failed", "NaN or Inf; expected finite values"),
    BadInput("infer_all_zero", "infer", "scan with every voxel 0", "failed", "constant"),
    BadInput("infer_text_file", "infer", "README.txt among the scans", "failed", "not an image file"),
    BadInput("infer_dicom_missing_slice", "infer", "DICOM series with a middle slice deleted", "failed",
             "slices are not evenly spaced"),
    BadInput("infer_dicom_uneven", "infer", "DICOM series with 2 mm then 3 mm slice gaps", "failed",
             "slices are not evenly spaced"),
    BadInput("infer_dicom_two_series", "infer", "DICOM folder holding two series", "accepted",
             "two cases, <folder>_1 and <folder>_2"),
    BadInput("infer_dicom_mixed_files", "infer", "DICOM series folder with a README.txt and a .png", "accepted", ""),
    BadInput("infer_int8", "infer", "int8 scan", "accepted", ""),
    BadInput("infer_float64", "infer", "float64 scan", "accepted", ""),
    BadInput("infer_non_1mm", "infer", "2 mm isotropic scan (the bundle resamples to 1.5 mm)", "accepted", ""),
    BadInput("infer_anisotropic", "infer", "0.7 x 0.7 x 3 mm scan", "accepted", ""),
    BadInput("infer_oblique", "infer", "oblique scan", "accepted", ""),
    BadInput("infer_name_spaces", "infer", "'scan with spaces.nii.gz'", "accepted", ""),
    BadInput("infer_name_unicode", "infer", "scan with a non-ASCII name", "accepted", ""),
    BadInput("infer_name_dotdot", "infer", "'scan..dots.nii.gz'", "accepted", ""),
    # medseg3d infer, whole-run errors
    BadInput("infer_no_images", "infer", "input folder that is empty", "error", "no scan found"),
    BadInput("infer_unwritable_output", "infer", "OUTPUT that cannot be created", "error",
             "expected a folder that can be created and written"),
    BadInput("infer_wrong_checkpoint", "infer", "state dict of a 4-channel network for the 1-channel CT bundle",
             "error", "the weights do not fit the network"),
    BadInput("infer_overlap_out_of_range", "infer", "--overlap 1.5", "error", "--overlap must be in [0, 1)"),
    # medseg3d evaluate --task labels over one folder with every prediction below plus good ones (exit code 1)
    BadInput("evaluate_zero_byte", "evaluate", "prediction of 0 bytes", "failed", "cannot read as NIfTI"),
    BadInput("evaluate_truncated", "evaluate", "prediction .nii.gz cut to half its size", "failed",
             "damaged or truncated"),
    BadInput("evaluate_gzip_not_nifti", "evaluate", "prediction that is a gzip of text", "failed",
             "cannot read as NIfTI"),
    BadInput("evaluate_2d", "evaluate", "2D prediction", "failed", "expected a 3D volume"),
    BadInput("evaluate_5d", "evaluate", "prediction of shape (X, Y, Z, 1, 2)", "failed", "expected a 3D volume"),
    BadInput("evaluate_nan", "evaluate", "float prediction with NaN voxels", "failed", "NaN or Inf"),
    BadInput("evaluate_fraction", "evaluate", "float prediction holding 0.5 (probabilities)", "failed",
             "non-integer values"),
    BadInput("evaluate_negative", "evaluate", "prediction holding -1", "failed", "negative values"),
    BadInput("evaluate_shape_mismatch", "evaluate", "prediction one slice shorter than its ground truth", "failed",
             "not on the voxel grid of the ground truth"),
    BadInput("evaluate_affine_mismatch", "evaluate", "prediction shifted by 3 mm", "failed",
             "not on the voxel grid of the ground truth"),
    BadInput("evaluate_missing_pred", "evaluate", "ground truth without prediction", "missing_pred",
             "no prediction for"),
    BadInput("evaluate_int8", "evaluate", "int8 prediction and ground truth", "accepted", ""),
    BadInput("evaluate_float64", "evaluate", "integer-valued float64 prediction", "accepted", ""),
    BadInput("evaluate_oblique", "evaluate", "oblique prediction and ground truth", "accepted", ""),
    BadInput("evaluate_name_spaces", "evaluate", "'case with spaces.nii.gz' pair", "accepted", ""),
    BadInput("evaluate_name_unicode", "evaluate", "pair with a non-ASCII name", "accepted", ""),
    # medseg3d evaluate, whole-run errors and the BraTS task
    BadInput("evaluate_brats_label_values", "evaluate", "--task brats, ground truth holding label 7", "failed",
             "the ground truth holds label values [7]; expected BraTS labels"),
    BadInput("evaluate_no_images", "evaluate", "prediction folder holding only a text file", "error",
             "holds no label map"),
    BadInput("evaluate_unwritable_out", "evaluate", "--out that cannot be created", "error",
             "expected a folder that can be created and written"),
)  # fmt: skip
_BY_ID = {case.id: case for case in BAD_INPUTS}
assert len(_BY_ID) == len(BAD_INPUTS), "duplicate case ids"


def _ids(stage: str, batch: bool) -> list[str]:
    return [c.id for c in BAD_INPUTS if c.stage == stage and (c.outcome != "error") == batch]


# ------------------------------------------------------------------------------------------------------- helpers


class Run(NamedTuple):
    code: int
    out: str
    err: str


def _main(module: Any, argv: list[str]) -> Run:
    """A console entry point in this process, its stdout and stderr captured."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = module.main([str(a) for a in argv])
    return Run(code, out.getvalue(), err.getvalue())


def medseg3d(*argv: Any) -> Run:
    from medseg3d import cli

    return _main(cli, list(argv))


def prep(*argv: Any) -> Run:
    from data_prep import prep_brats

    return _main(prep_brats, list(argv))


def subprocess_cli(*argv: Any, cwd: Path | None = None) -> Run:
    """``python -m medseg3d.cli ...`` in a child process: the exit code as a shell sees it."""
    result = subprocess.run(
        [sys.executable, "-m", "medseg3d.cli", *map(str, argv)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
        cwd=cwd,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def unwritable(tmp: Path) -> Path:
    """A folder path that cannot be created: below a read-only folder, or (as root, whom chmod does not stop)
    below a regular file."""
    parent = tmp / "read_only"
    parent.mkdir()
    parent.chmod(0o500)
    if not os.access(parent, os.W_OK):
        return parent / "out"
    parent.chmod(0o700)
    (tmp / "a_file").write_text("a regular file, not a folder\n")
    return tmp / "a_file" / "out"


def no_leftovers(folder: Path) -> None:
    """No temporary file of the atomic writers (``.<name>.<random>.tmp<ext>``) and nothing half-written."""
    if folder.exists():
        leftovers = [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]
        assert not leftovers, leftovers


def assert_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.out + run.err, run.err[-3000:]


def assert_error(run: Run, case: BadInput, names: str | os.PathLike) -> None:
    """Exit code 2, no traceback, and one error line that names ``names`` and says what was expected."""
    assert_no_traceback(run)
    assert run.code == 2, (run.code, run.out[-2000:], run.err[-2000:])
    lines = [line for line in run.err.splitlines() if "error:" in line]
    assert lines, run.err[-2000:]
    assert case.message in lines[-1] and os.fspath(names) in lines[-1], lines[-1]


def _csv_rows(path: Path, key: str) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row[key]: row for row in csv.DictReader(f)}


# ---------------------------------------------------------------------------------------------------- prep_brats

_PREP_KINDS = [c.id for c in BAD_INPUTS if c.stage == "prep_brats" and c.outcome != "error"]
_PREP_NAMES = {"prep_name_spaces": "BraTS2021_00100 copy", "prep_name_unicode": "BraTS2021_00101\u00e9",
               "prep_name_dotdot": "BraTS2021_..00102"}  # fmt: skip


def _break_brats_case(kind: str, folder: Path) -> tuple[Path, Path]:
    """Turn a good case folder into ``kind``; returns (case folder, the file at fault)."""
    f = corpus.brats_files(folder)
    t1, matrix = corpus.read(f["t1"])
    if kind == "prep_zero_byte":
        return folder, corpus.zero_byte(f["t1"])
    if kind == "prep_truncated":
        return folder, corpus.truncate(f["flair"])
    if kind == "prep_gzip_not_nifti":
        return folder, corpus.gzip_not_nifti(f["t2"])
    if kind == "prep_2d":
        return folder, corpus.write_nifti(f["t1ce"], corpus.two_d(t1), matrix)
    if kind == "prep_5d":
        return folder, corpus.write_nifti(f["t1"], corpus.five_d(t1), matrix)
    if kind == "prep_nan":
        return folder, corpus.write_nifti(f["flair"], corpus.with_nan(t1), matrix)
    if kind == "prep_inf":
        return folder, corpus.write_nifti(f["t2"], corpus.with_nan(t1, np.inf), matrix)
    if kind == "prep_all_zero":
        return folder, corpus.write_nifti(f["t1ce"], np.zeros(SHAPE, np.float32), matrix)
    if kind == "prep_shape_mismatch":
        return folder, corpus.write_nifti(f["t2"], corpus.shifted_shape(t1), matrix)
    if kind == "prep_affine_mismatch":
        return folder, corpus.write_nifti(f["flair"], t1, corpus.shifted(matrix, 2.0))
    seg, _ = corpus.read(f["seg"])
    if kind == "prep_label_shape_mismatch":
        return folder, corpus.write_nifti(f["seg"], corpus.shifted_shape(seg), matrix)
    if kind == "prep_label_affine_mismatch":
        return folder, corpus.write_nifti(f["seg"], seg, corpus.affine((1.5, 1.5, 1.5), matrix[:3, 3]))
    if kind == "prep_label_values":
        seg = seg.copy()
        seg[0, 0, 0] = 3
        return folder, corpus.write_nifti(f["seg"], seg, matrix)
    if kind == "prep_missing_modality":
        f["flair"].unlink()
        return folder, folder
    regrid = {
        "prep_spacing_1p2": corpus.affine((1.2, 1.2, 1.2), (-12.0, -10.0, 4.0)),
        "prep_anisotropic": corpus.affine((1.0, 1.0, 3.0), (-12.0, -10.0, 4.0)),
        "prep_oblique": corpus.oblique_affine(),
    }
    if kind in regrid:
        corpus.regrid_case(folder, regrid[kind])
    elif kind == "prep_float64":
        corpus.regrid_case(folder, matrix, np.float64)
    elif kind == "prep_int8":
        for key in ("t1", "t1ce", "t2", "flair"):
            data, _ = corpus.read(f[key])
            corpus.write_nifti(f[key], corpus.to_int8(data), matrix)
    elif kind in _PREP_NAMES:
        folder = corpus.rename_case(folder, _PREP_NAMES[kind])
    return folder, folder


@pytest.fixture(scope="module")
def prep_batch(tmp_path_factory) -> dict[str, Any]:
    """One raw tree: two good cases and one case per ``prep_brats`` row of the table; converted once."""
    root = tmp_path_factory.mktemp("prep")
    folders = corpus.brats_tree(root / "raw", cases=len(_PREP_KINDS) + 2, seed=3)
    good = [safe_case_id(f.name) for f in folders[:2]]
    faults = {}
    for kind, folder in zip(_PREP_KINDS, folders[2:], strict=True):
        folder, bad = _break_brats_case(kind, folder)
        faults[kind] = (folder, bad)
    run = prep(root / "raw", root / "out", "--folds", "2")
    report = _csv_rows(root / "out" / "prep_report.csv", "folder")
    return {"run": run, "out": root / "out", "good": good, "faults": faults, "report": report}


def test_prep_batch_goes_on(prep_batch: dict[str, Any]) -> None:
    run, out = prep_batch["run"], prep_batch["out"]
    assert_no_traceback(run)
    assert run.code == 1, run.err[-2000:]
    for case_id in prep_batch["good"]:
        assert (out / "imagesTr" / f"{case_id}.nii.gz").is_file() and (out / "labelsTr" / f"{case_id}.nii.gz").is_file()
    dataset = json.loads((out / "dataset.json").read_text())
    listed = {entry["case_id"] for entry in dataset["training"]}
    accepted = {c.id for c in BAD_INPUTS if c.stage == "prep_brats" and c.outcome == "accepted"}
    assert len(listed) == len(prep_batch["good"]) + len(accepted)
    no_leftovers(out)


@pytest.mark.parametrize("case_id", _ids("prep_brats", batch=True))
def test_prep_brats(case_id: str, prep_batch: dict[str, Any]) -> None:
    case = _BY_ID[case_id]
    folder, bad = prep_batch["faults"][case_id]
    row = prep_batch["report"][str(folder)]
    out = prep_batch["out"]
    if case.outcome == "rejected":
        assert row["status"] == "rejected", row
        assert case.message in row["reason"] and bad.name in row["reason"], row["reason"]
        assert f"rejected {row['case_id']}: {row['reason']}" in prep_batch["run"].out
        assert not list(out.glob(f"*/{row['case_id']}.nii.gz"))  # nothing of it written
        return
    assert row["status"] == "ok", row
    source = next(p for p in folder.iterdir() if p.name.endswith("_t1.nii.gz"))
    src = nib.load(source)
    image = nib.load(out / "imagesTr" / f"{row['case_id']}.nii.gz")
    label = nib.load(out / "labelsTr" / f"{row['case_id']}.nii.gz")
    pad = json.loads(row["pad"])
    padded = tuple(n + before + after for n, (before, after) in zip(src.shape, pad, strict=True))
    assert image.shape == (*padded, 4) and label.shape == padded
    expected = src.affine.copy()
    expected[:3, 3] -= src.affine[:3, :3] @ np.array([before for before, _ in pad], dtype=float)
    assert np.allclose(image.affine, expected, atol=1e-4) and np.allclose(label.affine, expected, atol=1e-4)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.float32 and np.all(np.isfinite(data)) and np.any(data)
    if case_id in _PREP_NAMES:  # the case ID is a plain file name inside OUT
        assert row["case_id"] == safe_case_id(_PREP_NAMES[case_id]) and "/" not in row["case_id"]
        assert row["case_id"].isascii() and " " not in row["case_id"]


def _prep_no_images(tmp: Path) -> None:
    from medseg3d.preparation.brats import prep_brats

    raw = tmp / "raw"
    corpus.not_an_image(raw / "README.txt")
    assert_error(prep(raw, tmp / "out"), _BY_ID["prep_no_images"], raw)
    with pytest.raises(InputError, match="no NIfTI file"):
        prep_brats(raw, tmp / "out")
    assert not (tmp / "out").exists()


def _prep_unwritable_out(tmp: Path) -> None:
    from medseg3d.preparation.brats import prep_brats

    corpus.brats_tree(tmp / "raw", cases=1, seed=4)
    out = unwritable(tmp)
    # through a child process: the exit code as a shell sees it
    result = subprocess.run([sys.executable, "-m", "data_prep.prep_brats", str(tmp / "raw"), str(out)],
                            capture_output=True, encoding="utf-8", errors="replace", timeout=300)  # fmt: skip
    assert_error(Run(result.returncode, result.stdout, result.stderr), _BY_ID["prep_unwritable_out"], out)
    with pytest.raises(InputError) as raised:
        prep_brats(tmp / "raw", out)
    assert raised.value.path == str(out)


# ------------------------------------------------------------------------------------------------------ datalist

_DATALIST_NAMES = {"datalist_name_spaces": "ct 100", "datalist_name_unicode": "ct_\u00e9101",
                   "datalist_name_dotdot": "ct..102"}  # fmt: skip


def _dicom_pair(root: Path, stem: str, hu: np.ndarray, label: np.ndarray, z: list[float] | None = None) -> Path:
    """A DICOM series folder ``imagesTr/<stem>/`` (0.8 x 0.8 x 2 mm) with its label on the same grid."""
    spacing = (0.8, 0.8, 2.0)
    folder = corpus.write_dicom_series(root / "imagesTr" / stem, hu, spacing, z)
    # The series' grid in RAS: LPS origin 0, identity direction -> diag(-sx, -sy, sz).
    corpus.write_nifti(root / "labelsTr" / f"{stem}.nii.gz", label, np.diag([-0.8, -0.8, 2.0, 1.0]))
    return folder


def _datalist_case(kind: str, root: Path, stem: str, hu: np.ndarray, seg: np.ndarray, matrix: np.ndarray) -> Path:
    """Write the pair ``stem`` as ``kind``; returns the file (or folder) at fault."""
    image, label = root / "imagesTr" / f"{stem}.nii.gz", root / "labelsTr" / f"{stem}.nii.gz"
    corpus.write_nifti(image, hu, matrix)
    corpus.write_nifti(label, seg, matrix)
    if kind == "datalist_zero_byte":
        return corpus.zero_byte(image)
    if kind == "datalist_truncated":
        return corpus.truncate(image)
    if kind == "datalist_gzip_not_nifti":
        return corpus.gzip_not_nifti(label)
    if kind == "datalist_2d":
        return corpus.write_nifti(image, corpus.two_d(hu), matrix)
    if kind == "datalist_5d":
        return corpus.write_nifti(image, corpus.five_d(hu), matrix)
    if kind == "datalist_label_shape":
        return corpus.write_nifti(label, corpus.shifted_shape(seg), matrix)
    if kind == "datalist_label_affine":
        return corpus.write_nifti(label, seg, corpus.affine((1.2, 1.2, 1.2), matrix[:3, 3]))
    if kind == "datalist_label_nan":
        return corpus.write_nifti(label, corpus.with_nan(seg), matrix)
    if kind == "datalist_label_fraction":
        return corpus.write_nifti(label, seg.astype(np.float32) * 0.5, matrix)
    if kind == "datalist_label_negative":
        return corpus.write_nifti(label, seg.astype(np.int16) - 1, matrix)
    if kind == "datalist_no_label":
        label.unlink()
        return image
    if kind == "datalist_int8":
        return corpus.write_nifti(image, corpus.to_int8(hu), matrix)
    if kind == "datalist_float64":
        return corpus.write_nifti(image, hu, matrix, np.float64)
    if kind in ("datalist_oblique", "datalist_anisotropic"):
        grid = corpus.oblique_affine((0.9, 0.9, 2.5)) if kind == "datalist_oblique" else corpus.affine((0.7, 0.7, 3))
        corpus.write_nifti(label, seg, grid)
        return corpus.write_nifti(image, hu, grid)
    if kind == "datalist_image_nan":
        return corpus.write_nifti(image, corpus.with_nan(hu), matrix)
    if kind in _DATALIST_NAMES:
        return image
    image.unlink()
    label.unlink()
    if kind.startswith("datalist_dicom"):
        spacing_z = [2.0 * k for k in range(SHAPE[2])]
        if kind == "datalist_dicom_uneven":
            spacing_z = [z + (1.0 if k >= SHAPE[2] // 2 else 0.0) for k, z in enumerate(spacing_z)]
        folder = _dicom_pair(root, stem, hu, seg, spacing_z)
        if kind == "datalist_dicom_two_series":
            corpus.write_dicom_series(folder, hu[::-1], (0.8, 0.8, 2.0), series=2, prefix="b")
        elif kind == "datalist_dicom_missing_slice":
            (folder / f"{SHAPE[2] // 2:04d}.dcm").unlink()
        elif kind == "datalist_dicom_mixed_files":
            corpus.not_an_image(folder / "README.txt")
            (folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
        return folder
    raise AssertionError(kind)


@pytest.fixture(scope="module")
def ct_source(tmp_path_factory) -> dict[str, Any]:
    """Two CT phantoms of ``SHAPE``: HU (int16), aorta labels (uint8) and their affine."""
    root = tmp_path_factory.mktemp("ct_source")
    images = corpus.ct_cases(root, cases=2, seed=7)
    out = {}
    for n, image in enumerate(images):
        hu, matrix = corpus.read(image)
        seg, _ = corpus.read(root / "labelsTr" / image.name)
        out[n] = (np.asarray(hu, np.int16), np.asarray(seg, np.uint8), matrix)
    return out


@pytest.fixture(scope="module")
def datalist_batch(tmp_path_factory, ct_source: dict[str, Any]) -> dict[str, Any]:
    """One root: two good pairs and one pair per ``datalist`` row of the table; listed once."""
    root = tmp_path_factory.mktemp("datalist")
    hu, seg, matrix = ct_source[0]
    for n in range(2):
        corpus.write_nifti(root / "imagesTr" / f"good_{n}.nii.gz", ct_source[n][0], ct_source[n][2])
        corpus.write_nifti(root / "labelsTr" / f"good_{n}.nii.gz", ct_source[n][1], ct_source[n][2])
    faults = {}
    for number, kind in enumerate(_ids("datalist", batch=True)):
        stem = _DATALIST_NAMES.get(kind, f"case_{number:03d}")
        faults[kind] = (safe_case_id(stem), _datalist_case(kind, root, stem, hu, seg, matrix))
    run = medseg3d("datalist", root, "--folds", "2")
    dataset = json.loads((root / "dataset.json").read_text())
    return {"run": run, "root": root, "faults": faults, "dataset": dataset}


def test_datalist_batch_goes_on(datalist_batch: dict[str, Any]) -> None:
    run, dataset = datalist_batch["run"], datalist_batch["dataset"]
    assert_no_traceback(run)
    assert run.code == 1, run.err[-2000:]
    listed = {entry["case_id"] for entry in dataset["training"]}
    accepted = [k for k in _ids("datalist", batch=True) if _BY_ID[k].outcome == "accepted"]
    assert listed == {"good_0", "good_1", *(datalist_batch["faults"][k][0] for k in accepted)}
    no_leftovers(datalist_batch["root"])


@pytest.mark.parametrize("case_id", _ids("datalist", batch=True))
def test_datalist(case_id: str, datalist_batch: dict[str, Any]) -> None:
    case = _BY_ID[case_id]
    pair_id, bad = datalist_batch["faults"][case_id]
    dataset, root = datalist_batch["dataset"], datalist_batch["root"]
    entries = {entry["case_id"]: entry for entry in dataset["training"]}
    if case.outcome == "rejected":
        assert pair_id not in entries
        reasons = [r["reason"] for r in dataset["rejected"] if (root / r["path"]).resolve() == bad.resolve()]
        assert len(reasons) == 1 and case.message in reasons[0], (bad, dataset["rejected"])
        assert f"rejected {bad}: {reasons[0]}" in datalist_batch["run"].out  # the line names the file
        return
    assert pair_id in entries, dataset["rejected"]
    entry = entries[pair_id]
    assert (root / entry["image"]).resolve() == bad.resolve() and (root / entry["label"]).exists()
    if case_id in _DATALIST_NAMES:
        assert entry["case_id"] == safe_case_id(_DATALIST_NAMES[case_id])


def _datalist_no_images(tmp: Path) -> None:
    from medseg3d.data.pairs import DatalistError, build_datalist

    corpus.not_an_image(tmp / "root" / "imagesTr" / "README.txt")
    assert_error(medseg3d("datalist", tmp / "root"), _BY_ID["datalist_no_images"], tmp / "root")
    with pytest.raises(DatalistError):
        build_datalist(tmp / "root")
    assert not (tmp / "root" / "dataset.json").exists()


def _datalist_foreign_dataset_json(tmp: Path) -> None:
    corpus.ct_cases(tmp / "root", cases=2, seed=8)
    corpus.malformed_json(tmp / "root" / "dataset.json")
    before = (tmp / "root" / "dataset.json").read_bytes()
    run = medseg3d("datalist", tmp / "root", "--folds", "2")
    assert_error(run, _BY_ID["datalist_foreign_dataset_json"], tmp / "root" / "dataset.json")
    assert (tmp / "root" / "dataset.json").read_bytes() == before


def _datalist_unwritable_out(tmp: Path) -> None:
    corpus.ct_cases(tmp / "root", cases=2, seed=8)
    out = unwritable(tmp)
    assert_error(medseg3d("datalist", tmp / "root", "--folds", "2", "--out", out),
                 _BY_ID["datalist_unwritable_out"], out)  # fmt: skip


# --------------------------------------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def ct_dataset(tmp_path_factory) -> Path:
    """A valid datalist of two CT phantoms (what train reads)."""
    root = tmp_path_factory.mktemp("ct_dataset")
    corpus.ct_cases(root, cases=2, seed=9)
    assert medseg3d("datalist", root, "--folds", "2").code == 0
    return root


def _train(dataset_dir: Path, output_dir: Path, *overrides: Any) -> Run:
    return medseg3d("train", "--bundle", CT_BUNDLE, "--dataset_dir", dataset_dir, "--output_dir", output_dir,
                    *NETWORK_ARGS, "--max_epochs", "1", "--iterations_per_epoch", "0", "--num_workers", "0",
                    *overrides)  # fmt: skip


def _train_max_epochs_abc(tmp: Path, dataset: Path) -> None:
    # through a child process: the exit code as a shell sees it
    run = subprocess_cli("train", "--bundle", CT_BUNDLE, "--dataset_dir", dataset, "--output_dir", tmp / "run",
                         "--max_epochs", "abc")  # fmt: skip
    assert_error(run, _BY_ID["train_max_epochs_abc"], "max_epochs")
    assert not (tmp / "run").exists()


def _train_negative_learning_rate(tmp: Path, dataset: Path) -> None:
    from medseg3d.bundle.workflow import make_workflow

    run = _train(dataset, tmp / "run", "--learning_rate", "-1")
    assert_error(run, _BY_ID["train_negative_learning_rate"], "learning_rate")
    with pytest.raises(ValueError, match="learning_rate expects a positive number"):
        make_workflow(CT_BUNDLE, "train", {"dataset_dir": str(dataset), "learning_rate": -1})
    assert not (tmp / "run").exists()


def _train_unknown_key(tmp: Path, dataset: Path) -> None:
    run = _train(dataset, tmp / "run", "--max_epoch", "2")
    assert_error(run, _BY_ID["train_unknown_key"], "max_epoch")
    assert not (tmp / "run").exists()


def _train_malformed_dataset_json(tmp: Path, dataset: Path) -> None:
    from medseg3d.data.dataset_json import fold_datalists

    path = corpus.malformed_json(tmp / "data" / "dataset.json")
    assert_error(_train(tmp / "data", tmp / "run"), _BY_ID["train_malformed_dataset_json"], path)
    with pytest.raises(InputError, match="is not valid JSON"):
        fold_datalists(tmp / "data", 0)
    assert not (tmp / "run" / "checkpoints").exists()


def _train_missing_dataset_json(tmp: Path, dataset: Path) -> None:
    (tmp / "data").mkdir()
    run = _train(tmp / "data", tmp / "run")
    assert_error(run, _BY_ID["train_missing_dataset_json"], tmp / "data" / "dataset.json")


def _train_missing_image(tmp: Path, dataset: Path) -> None:
    data = corpus.copy_tree(dataset, tmp / "data")
    content = json.loads((data / "dataset.json").read_text())
    missing = data / content["training"][0]["image"]
    missing.unlink()
    assert_error(_train(data, tmp / "run"), _BY_ID["train_missing_image"], missing)
    assert not (tmp / "run" / "checkpoints").exists()


def _train_nan_image(tmp: Path, dataset: Path) -> None:
    # training reads images through the one reader, which refuses NaN as preparation and inference do
    data = corpus.copy_tree(dataset, tmp / "data")
    content = json.loads((data / "dataset.json").read_text())
    image = data / next(e["image"] for e in content["training"] if e["fold"] != 0)  # trained on in fold 0
    hu, matrix = corpus.read(image)
    corpus.write_nifti(image, corpus.with_nan(hu), matrix)
    assert_error(_train(data, tmp / "run", "--cache", "none"), _BY_ID["train_nan_image"], image)
    assert not (tmp / "run" / "checkpoints" / "last.pt").exists()


def _train_unwritable_output(tmp: Path, dataset: Path) -> None:
    out = unwritable(tmp)
    assert_error(_train(dataset, out), _BY_ID["train_unwritable_output"], out)


def test_train_on_odd_but_valid_images(tmp_path: Path, datalist_batch: dict[str, Any]) -> None:
    """One tiny epoch on the pairs datalist accepted (int8, float64, oblique, 0.7 x 0.7 x 3 mm, a DICOM folder with
    stray files, odd names): it runs to the end with a finite loss."""
    data = datalist_batch["root"]
    content = json.loads((data / "dataset.json").read_text())
    # the image with NaN voxels is listed (header only read) but refused by training's reader (train_nan_image)
    nan_case = datalist_batch["faults"]["datalist_image_nan"][0]
    assert any(e["case_id"] == nan_case for e in content["training"])
    content["training"] = [e for e in content["training"] if e["case_id"] != nan_case]
    content["rejected"] = []
    (tmp_path / "data").mkdir()
    for entry in content["training"]:
        entry["image"] = os.path.relpath(data / entry["image"], tmp_path / "data")
        entry["label"] = os.path.relpath(data / entry["label"], tmp_path / "data")
    (tmp_path / "data" / "dataset.json").write_text(json.dumps(content))
    run = _train(tmp_path / "data", tmp_path / "run", "--val_interval", "1", "--cache", "none")
    assert_no_traceback(run)
    assert run.code == 0, run.err[-3000:]
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    no_leftovers(tmp_path / "run")


# --------------------------------------------------------------------------------------------------------- infer

_INFER_NAMES = {"infer_name_spaces": "scan with spaces", "infer_name_unicode": "scan_\u00e9",
                "infer_name_dotdot": "scan..dots"}  # fmt: skip


def _infer_case(kind: str, scans: Path, source: dict[str, Any]) -> tuple[list[str], Path]:
    """Write the input ``kind`` into ``scans``; returns (its case ids, the file or folder at fault)."""
    hu, _, matrix = source[0]
    stem = _INFER_NAMES.get(kind, kind.removeprefix("infer_"))
    path = scans / f"{stem}.nii.gz"
    ids = [safe_case_id(stem)]
    writers = {
        "infer_zero_byte": lambda: corpus.zero_byte(path),
        "infer_truncated": lambda: corpus.truncate(corpus.write_nifti(path, hu, matrix)),
        "infer_gzip_not_nifti": lambda: corpus.gzip_not_nifti(path),
        "infer_2d": lambda: corpus.write_nifti(path, corpus.two_d(hu), matrix),
        "infer_5d": lambda: corpus.write_nifti(path, corpus.five_d(hu), matrix),
        "infer_nan": lambda: corpus.write_nifti(path, corpus.with_nan(hu), matrix),
        "infer_all_zero": lambda: corpus.write_nifti(path, np.zeros(SHAPE, np.int16), matrix),
        "infer_int8": lambda: corpus.write_nifti(path, np.clip(hu, -128, 127), matrix, np.int8),
        "infer_float64": lambda: corpus.write_nifti(path, hu, matrix, np.float64),
        "infer_non_1mm": lambda: corpus.write_nifti(path, hu, corpus.affine((2.0, 2.0, 2.0), (-20, -20, 0))),
        "infer_anisotropic": lambda: corpus.write_nifti(path, hu, corpus.affine((0.7, 0.7, 3.0))),
        "infer_oblique": lambda: corpus.write_nifti(path, hu, corpus.oblique_affine((0.9, 0.9, 2.5))),
    }
    if kind in writers:
        return ids, writers[kind]()
    if kind in _INFER_NAMES:
        return ids, corpus.write_nifti(path, hu, matrix)
    if kind == "infer_text_file":
        return ["README.txt"], corpus.not_an_image(scans / "README.txt")
    folder = scans / stem
    z = [2.0 * k for k in range(SHAPE[2])]
    if kind == "infer_dicom_uneven":
        z = [v + (1.0 if k >= SHAPE[2] // 2 else 0.0) for k, v in enumerate(z)]
    corpus.write_dicom_series(folder, hu, (0.8, 0.8, 2.0), z)
    if kind == "infer_dicom_missing_slice":
        (folder / f"{SHAPE[2] // 2:04d}.dcm").unlink()
    elif kind == "infer_dicom_mixed_files":
        corpus.not_an_image(folder / "README.txt")
        (folder / "thumbnail.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    elif kind == "infer_dicom_two_series":
        corpus.write_dicom_series(folder, hu[::-1], (0.8, 0.8, 2.0), series=2, prefix="b")
        ids = [f"{stem}_1", f"{stem}_2"]
    return [safe_case_id(i) for i in ids], folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Random weights of the tiny CT network (a bare state dict) and of a 4-channel network of the same layout."""
    import torch

    from medseg3d.networks import res_unet

    folder = tmp_path_factory.mktemp("weights")
    out = {}
    for name, channels in (("ct", 1), ("other", 4)):
        torch.manual_seed(0)
        net = res_unet(channels, 2, channels=NETWORK["network_def#channels"], strides=NETWORK["network_def#strides"])
        out[name] = folder / f"{name}_model.pt"
        torch.save(net.state_dict(), out[name])
    return out


def _infer(scans: Path, output: Path, checkpoint: Path, *extra: Any) -> Run:
    return medseg3d("infer", scans, output, "--bundle", CT_BUNDLE, "--checkpoint", checkpoint, "--device", "cpu",
                    *NETWORK_ARGS, "--progress", "False", *extra)  # fmt: skip


@pytest.fixture(scope="module")
def infer_batch(tmp_path_factory, ct_source: dict[str, Any], weights: dict[str, Path]) -> dict[str, Any]:
    """One input folder: a good scan and one input per ``infer`` row of the table; inferred once."""
    root = tmp_path_factory.mktemp("infer")
    scans = root / "scans"
    corpus.write_nifti(scans / "good.nii.gz", ct_source[1][0], ct_source[1][2])
    faults = {kind: _infer_case(kind, scans, ct_source) for kind in _ids("infer", batch=True)}
    run = _infer(scans, root / "pred", weights["ct"])
    return {"run": run, "out": root / "pred", "faults": faults, "rows": _csv_rows(root / "pred" / "summary.csv",
            "case_id")}  # fmt: skip


def test_infer_batch_goes_on(infer_batch: dict[str, Any]) -> None:
    run, out, rows = infer_batch["run"], infer_batch["out"], infer_batch["rows"]
    assert_no_traceback(run)
    assert run.code == 1, run.err[-3000:]
    assert rows["good"]["status"] == "ok" and (out / "good.nii.gz").is_file()
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert written == sorted(f"{case_id}.nii.gz" for case_id, row in rows.items() if row["status"] == "ok")
    no_leftovers(out)


@pytest.mark.parametrize("case_id", _ids("infer", batch=True))
def test_infer(case_id: str, infer_batch: dict[str, Any]) -> None:
    case = _BY_ID[case_id]
    ids, bad = infer_batch["faults"][case_id]
    rows, out = infer_batch["rows"], infer_batch["out"]
    for one in ids:
        row = rows[one]
        if case.outcome == "failed":
            assert row["status"] == "failed", row
            assert case.message in row["error"] and bad.name in row["error"], row["error"]
            assert f"failed {one}: {row['error']}" in infer_batch["run"].out
            assert not (out / f"{one}.nii.gz").exists()
            continue
        assert row["status"] == "ok", row
        written = nib.load(out / f"{one}.nii.gz")
        labels = np.asarray(written.dataobj)
        assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
        if bad.is_dir():  # a DICOM series, 0.8 x 0.8 x 2 mm, LPS origin 0 -> RAS diag(-0.8, -0.8, 2)
            assert written.shape == SHAPE
            assert np.allclose(written.affine, np.diag([-0.8, -0.8, 2.0, 1.0]), atol=1e-4)
        else:
            source = nib.load(bad)
            assert written.shape == source.shape and np.array_equal(written.affine, source.affine)


def _infer_no_images(tmp: Path, weights: dict[str, Path]) -> None:
    from medseg3d.data.scans import find_scans

    (tmp / "scans").mkdir()
    assert_error(_infer(tmp / "scans", tmp / "pred", weights["ct"]), _BY_ID["infer_no_images"], tmp / "scans")
    with pytest.raises(InputError, match="no scan found"):
        find_scans(tmp / "scans")


def _one_scan(tmp: Path, weights: dict[str, Path]) -> Path:
    corpus.ct_cases(tmp / "data", cases=1, seed=11)
    return tmp / "data" / "imagesTr"


def _infer_unwritable_output(tmp: Path, weights: dict[str, Path]) -> None:
    out = unwritable(tmp)
    run = _infer(_one_scan(tmp, weights), out, weights["ct"])
    assert_error(run, _BY_ID["infer_unwritable_output"], out)


def _infer_wrong_checkpoint(tmp: Path, weights: dict[str, Path]) -> None:
    from medseg3d.inference.predictor import load_network_weights
    from medseg3d.networks import res_unet

    run = _infer(_one_scan(tmp, weights), tmp / "pred", weights["other"])
    assert_error(run, _BY_ID["infer_wrong_checkpoint"], weights["other"])
    network = res_unet(1, 2, channels=NETWORK["network_def#channels"], strides=NETWORK["network_def#strides"])
    with pytest.raises(InputError) as raised:
        load_network_weights(network, weights["other"])
    assert raised.value.path == str(weights["other"]) and "of another shape" in raised.value.problem
    assert not list((tmp / "pred").glob("*.nii.gz"))


def _infer_overlap_out_of_range(tmp: Path, weights: dict[str, Path]) -> None:
    run = _infer(_one_scan(tmp, weights), tmp / "pred", weights["ct"], "--overlap", "1.5")
    assert_error(run, _BY_ID["infer_overlap_out_of_range"], "1.5")
    assert not (tmp / "pred").exists()


# ------------------------------------------------------------------------------------------------------ evaluate

_EVALUATE_NAMES = {"evaluate_name_spaces": "case with spaces", "evaluate_name_unicode": "case_\u00e9"}


def _evaluate_case(kind: str, pred: Path, gt: Path, source: dict[str, Any]) -> tuple[str, Path]:
    """Write the prediction/ground-truth pair ``kind``; returns (case id, the file at fault)."""
    _, seg, matrix = source[0]
    seg = seg.copy()
    seg[4:8, 4:8, 4:8] = 2  # a second label, so that every label metric has something to score
    stem = _EVALUATE_NAMES.get(kind, kind.removeprefix("evaluate_"))
    p, g = pred / f"{stem}.nii.gz", gt / f"{stem}_seg.nii.gz"
    corpus.write_nifti(g, seg, matrix)
    writers = {
        "evaluate_zero_byte": lambda: corpus.zero_byte(p),
        "evaluate_truncated": lambda: corpus.truncate(corpus.write_nifti(p, np.random.default_rng(0).integers(
            0, 3, SHAPE, dtype=np.uint8), matrix)),
        "evaluate_gzip_not_nifti": lambda: corpus.gzip_not_nifti(p),
        "evaluate_2d": lambda: corpus.write_nifti(p, corpus.two_d(seg), matrix),
        "evaluate_5d": lambda: corpus.write_nifti(p, corpus.five_d(seg), matrix),
        "evaluate_nan": lambda: corpus.write_nifti(p, corpus.with_nan(seg), matrix),
        "evaluate_fraction": lambda: corpus.write_nifti(p, seg.astype(np.float32) * 0.5, matrix),
        "evaluate_negative": lambda: corpus.write_nifti(p, seg.astype(np.int16) - 1, matrix),
        "evaluate_shape_mismatch": lambda: corpus.write_nifti(p, corpus.shifted_shape(seg), matrix),
        "evaluate_affine_mismatch": lambda: corpus.write_nifti(p, seg, corpus.shifted(matrix, 3.0)),
        "evaluate_int8": lambda: (corpus.write_nifti(g, seg, matrix, np.int8), corpus.write_nifti(p, seg, matrix,
                                                                                                  np.int8))[1],
        "evaluate_float64": lambda: corpus.write_nifti(p, seg, matrix, np.float64),
        "evaluate_oblique": lambda: (corpus.write_nifti(g, seg, corpus.oblique_affine()),
                                     corpus.write_nifti(p, seg, corpus.oblique_affine()))[1],
    }  # fmt: skip
    if kind == "evaluate_missing_pred":
        return safe_case_id(stem), g
    bad = writers[kind]() if kind in writers else corpus.write_nifti(p, seg, matrix)
    return stem, bad


@pytest.fixture(scope="module")
def evaluate_batch(tmp_path_factory, ct_source: dict[str, Any]) -> dict[str, Any]:
    """Predictions and ground truth: a good pair and one pair per ``evaluate`` row of the table; scored once."""
    root = tmp_path_factory.mktemp("evaluate")
    pred, gt = root / "pred", root / "gt"
    corpus.write_nifti(pred / "good.nii.gz", ct_source[1][1], ct_source[1][2])
    corpus.write_nifti(gt / "good_seg.nii.gz", ct_source[1][1], ct_source[1][2])
    kinds = [k for k in _ids("evaluate", batch=True) if k != "evaluate_brats_label_values"]
    faults = {kind: _evaluate_case(kind, pred, gt, ct_source) for kind in kinds}
    run = medseg3d("evaluate", pred, gt, "--task", "labels", "--out", root / "report")
    return {"run": run, "out": root / "report", "faults": faults, "rows": _csv_rows(root / "report" / "report.csv",
            "case_id")}  # fmt: skip


def test_evaluate_batch_goes_on(evaluate_batch: dict[str, Any]) -> None:
    run, rows = evaluate_batch["run"], evaluate_batch["rows"]
    assert_no_traceback(run)
    assert run.code == 1, run.err[-2000:]
    assert rows["good"]["status"] == "ok" and float(rows["good"]["1_dice"]) == 1.0
    summary = json.loads((evaluate_batch["out"] / "summary.json").read_text())
    assert summary["cases"]["ok"] == 1 + sum(1 for c in BAD_INPUTS if c.stage == "evaluate" and c.outcome == "accepted")
    no_leftovers(evaluate_batch["out"])


@pytest.mark.parametrize("case_id", _ids("evaluate", batch=True))
def test_evaluate(case_id: str, evaluate_batch: dict[str, Any], tmp_path: Path, ct_source: dict[str, Any]) -> None:
    case = _BY_ID[case_id]
    if case_id == "evaluate_brats_label_values":  # its own run: the BraTS task
        _, seg, matrix = ct_source[0]
        corpus.write_nifti(tmp_path / "pred" / "a.nii.gz", seg, matrix)
        bad = corpus.write_nifti(tmp_path / "gt" / "a_seg.nii.gz", np.where(seg > 0, 7, 0).astype(np.uint8), matrix)
        corpus.write_nifti(tmp_path / "pred" / "b.nii.gz", seg, matrix)
        corpus.write_nifti(tmp_path / "gt" / "b_seg.nii.gz", seg, matrix)
        run = medseg3d("evaluate", tmp_path / "pred", tmp_path / "gt")
        assert_no_traceback(run)
        assert run.code == 1
        rows = _csv_rows(tmp_path / "pred" / "evaluation" / "report.csv", "case_id")
        assert rows["b"]["status"] == "ok" and rows["a"]["status"] == "failed"
        assert bad.name in rows["a"]["error"] and case.message in rows["a"]["error"], rows["a"]["error"]
        return
    stem, bad = evaluate_batch["faults"][case_id]
    row = evaluate_batch["rows"][stem]
    if case.outcome in ("failed", "missing_pred"):
        assert row["status"] == case.outcome, row
        assert case.message in row["error"] and bad.name in row["error"], row["error"]
        assert f"{case.outcome}: {stem}: {row['error']}" in evaluate_batch["run"].err
        if "grid" in case.message:  # both files named
            assert Path(row["gt"]).name in row["error"]
        return
    assert row["status"] == "ok", row
    assert float(row["1_dice"]) == 1.0 and float(row["2_dice"]) == 1.0, row


def _evaluate_no_images(tmp: Path) -> None:
    corpus.not_an_image(tmp / "pred" / "README.txt")
    corpus.write_nifti(tmp / "gt" / "a_seg.nii.gz", np.ones(SHAPE, np.uint8))
    run = medseg3d("evaluate", tmp / "pred", tmp / "gt")
    assert_error(run, _BY_ID["evaluate_no_images"], tmp / "pred")


def _evaluate_unwritable_out(tmp: Path) -> None:
    from medseg3d.evaluation import evaluate_folders

    corpus.write_nifti(tmp / "pred" / "a.nii.gz", np.ones(SHAPE, np.uint8))
    corpus.write_nifti(tmp / "gt" / "a_seg.nii.gz", np.ones(SHAPE, np.uint8))
    out = unwritable(tmp)
    run = medseg3d("evaluate", tmp / "pred", tmp / "gt", "--task", "labels", "--out", out)
    assert_error(run, _BY_ID["evaluate_unwritable_out"], out)
    with pytest.raises(InputError):
        evaluate_folders(tmp / "pred", tmp / "gt", task="labels", out=out)


# ----------------------------------------------------------------------------------------- whole-run errors


@pytest.mark.parametrize("case_id", [c.id for c in BAD_INPUTS if c.outcome == "error"])
def test_whole_run_error(case_id: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    function = globals()["_" + case_id]
    stage = _BY_ID[case_id].stage
    if stage == "train":
        function(tmp_path, request.getfixturevalue("ct_dataset"))
    elif stage == "infer":
        function(tmp_path, request.getfixturevalue("weights"))
    else:
        function(tmp_path)
    no_leftovers(tmp_path)


def test_the_table_covers_every_stage() -> None:
    stages = {case.stage for case in BAD_INPUTS}
    assert stages == {"prep_brats", "datalist", "train", "infer", "evaluate"}
    assert len(BAD_INPUTS) >= 30
    assert all(case.outcome in ("rejected", "failed", "missing_pred", "error", "accepted") for case in BAD_INPUTS)
