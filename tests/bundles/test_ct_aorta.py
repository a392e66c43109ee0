"""The CT aorta bundle: trains on phantoms, infers over a folder mixing NIfTI, DICOM and a corrupt file, and
writes label maps on each scan's own grid, real CTs included."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg3d.core.checkpoint_format import load_checkpoint
from medseg3d.data.pairs import build_datalist
from medseg3d.data.synth_ct import write_ct_cases
from medseg3d.inference.predictor import chunk_slices

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "ct_aorta_resunet_3d"
NETWORK = {"roi_size": [32, 32, 32], "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]}
TINY = {**NETWORK, "max_epochs": 2, "val_interval": 1, "iterations_per_epoch": 0, "num_workers": 0}
SHAPE = (64, 56, 40)


def _args(overrides: dict) -> list[str]:
    return [part for key, value in overrides.items() for part in (f"--{key}", json.dumps(value))]


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory) -> Path:
    """Two epochs on 4 phantoms (two as DICOM series) through ``python -m monai.bundle run``."""
    root = tmp_path_factory.mktemp("ct")
    write_ct_cases(root / "data", cases=2, shape=SHAPE, seed=1)
    dicom = write_ct_cases(root / "dicom", cases=2, shape=SHAPE, seed=2, dicom=True)
    for number, series in enumerate(dicom, start=2):  # move the DICOM cases in as ct_002, ct_003
        series.rename(root / "data" / "imagesTr" / f"ct_{number:03d}")
        (root / "dicom" / "labelsTr" / series.with_suffix(".nii.gz").name).rename(
            root / "data" / "labelsTr" / f"ct_{number:03d}.nii.gz"
        )
    build_datalist(root / "data", folds=2, label_names=["aorta"])  # medseg3d datalist
    run_dir = root / "run"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "['configs/common.yaml','configs/train.yaml']",
    ]
    command += ["--dataset_dir", str(root / "data"), "--output_dir", str(run_dir), *_args(TINY)]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_two_epochs_write_the_run_records(ct_run: Path) -> None:
    with open(ct_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0.0 <= float(r["val_dice_aorta"]) <= 1.0 and float(r["train_loss"]) > 0 for r in rows)
    config = json.loads((ct_run / "config.json").read_text())
    assert config["label_names"] == ["aorta"] and config["target_spacing"] == [1.5, 1.5, 1.5]
    last = load_checkpoint(ct_run / "checkpoints" / "last.pt")
    assert last["trainer"]["epoch"] == 2
    assert last["network"]["model.0.conv.unit0.conv.weight"].shape[1] == 1  # one CT channel in


def _mixed_folder(root: Path) -> Path:
    """A NIfTI scan in LPS with anisotropic voxels, a DICOM series, and a corrupt file."""
    scans = root / "scans"
    scans.mkdir()
    nifti = write_ct_cases(root / "n", cases=1, shape=SHAPE, seed=5)[0]
    nifti.rename(scans / "scan_a.nii.gz")
    series = write_ct_cases(root / "d", cases=1, shape=SHAPE, seed=6, dicom=True)[0]
    series.rename(scans / "series_b")
    (scans / "broken.nii.gz").write_bytes(b"not a gzip file")
    return scans


def test_batch_over_nifti_dicom_and_a_corrupt_file(ct_run: Path, tmp_path: Path) -> None:
    from medseg3d.cli import main

    scans = _mixed_folder(tmp_path)
    out = tmp_path / "pred"
    checkpoint = str(ct_run / "checkpoints" / "last.pt")
    code = main(["infer", str(scans), str(out), "--bundle", str(BUNDLE), "--checkpoint", checkpoint, "--preview"]
                + _args(NETWORK))  # fmt: skip
    assert code == 1  # one case failed; the others were written
    with open(out / "summary.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    assert rows["scan_a"]["status"] == rows["series_b"]["status"] == "ok"
    for case in ("scan_a", "series_b"):  # the largest inscribed ball of the aorta mask, when there is one
        voxels, diameter = int(rows[case]["aorta_voxels"]), rows[case]["aorta_max_diameter_mm"]
        assert (diameter == "") == (voxels == 0) and (voxels == 0 or float(diameter) > 0)
    source = nib.load(scans / "scan_a.nii.gz")
    pred = nib.load(out / "scan_a.nii.gz")
    assert pred.shape == source.shape and np.array_equal(pred.affine, source.affine)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(scans / "series_b")))
    dicom, written = reader.Execute(), sitk.ReadImage(str(out / "series_b.nii.gz"))
    assert written.GetSize() == dicom.GetSize()
    assert np.allclose(written.GetOrigin(), dicom.GetOrigin(), atol=1e-3)
    assert np.allclose(written.GetSpacing(), dicom.GetSpacing(), atol=1e-4)
    assert np.allclose(written.GetDirection(), dicom.GetDirection(), atol=1e-5)
    assert (out / "previews" / "scan_a.png").is_file()


def test_a_scan_over_chunk_voxels_goes_in_chunks_onto_its_own_grid(
    ct_run: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from medseg3d.cli import main

    scans = tmp_path / "scans"
    scans.mkdir()
    write_ct_cases(tmp_path / "n", cases=1, shape=SHAPE, seed=7)[0].rename(scans / "long.nii.gz")
    checkpoint = str(ct_run / "checkpoints" / "last.pt")
    chunks = {"chunk_voxels": SHAPE[0] * SHAPE[1] * 16, "chunk_overlap_mm": 12.0}  # 40 slices in chunks of 16
    affine = nib.load(scans / "long.nii.gz").affine
    expected = len(chunk_slices(SHAPE, affine, chunks["chunk_voxels"], chunks["chunk_overlap_mm"]))
    assert expected >= 3
    code = main(["infer", str(scans), str(tmp_path / "pred"), "--bundle", str(BUNDLE), "--checkpoint", checkpoint]
                + _args({**NETWORK, **chunks}))  # fmt: skip
    assert code == 0
    logged = "".join(capfd.readouterr())  # the bundle's logging.conf logs to the console, not to caplog
    assert f"segmented in {expected} chunks" in logged, "the scan went in chunks"
    source, pred = nib.load(scans / "long.nii.gz"), nib.load(tmp_path / "pred" / "long.nii.gz")
    assert pred.shape == source.shape and np.array_equal(pred.affine, source.affine)
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}


def test_chunk_voxels_none_turns_chunks_off_and_text_fails_before_any_case() -> None:
    from medseg3d.bundle.workflow import make_workflow

    parser = make_workflow(BUNDLE, "inference", {"chunk_voxels": None}).parser
    assert parser.get_parsed_content("predictor#chunk_voxels") is None
    assert make_workflow(BUNDLE, "inference", {}).parser.get_parsed_content("predictor#chunk_voxels") == 512 * 512 * 320
    with pytest.raises(ValueError, match="chunk_voxels expects int"):
        make_workflow(BUNDLE, "inference", {"chunk_voxels": "all"})


REAL = {  # the real CTs and the reference masks they come with (another model's output, not manual)
    "abdomen": ("totalseg_abdomen_ct/example_ct.nii.gz", "totalseg_abdomen_ct/example_seg_fast_force_split.nii.gz"),
    "aorta_cta": ("totalseg_aorta_cta/ct_cropped.nii.gz", "totalseg_aorta_cta/aorta.nii.gz"),
    "dicom": ("totalseg_ct_dicom/dicom", "totalseg_ct_dicom/example_seg_dicom.nii.gz"),
}


def test_real_cts_come_out_in_their_own_geometry(real_data: Path, ct_run: Path, tmp_path: Path) -> None:
    """The three real CTs (NIfTI RAS 3 mm, NIfTI LPS 1.5 mm, a JPEG-2000 DICOM series without UIDs) run
    through batch inference; each label map has its scan's grid, which is also its reference mask's grid."""
    from medseg3d.cli import main

    scans = tmp_path / "scans"
    scans.mkdir()
    for name, (image, _) in REAL.items():
        target = scans / (name if image.endswith("dicom") else f"{name}.nii.gz")
        target.symlink_to(real_data / image)
    out = tmp_path / "pred"
    checkpoint = str(ct_run / "checkpoints" / "last.pt")
    assert (
        main(["infer", str(scans), str(out), "--bundle", str(BUNDLE), "--checkpoint", checkpoint] + _args(NETWORK)) == 0
    )
    for name, (image, reference) in REAL.items():
        pred = sitk.ReadImage(str(out / f"{name}.nii.gz"))
        if name == "dicom":  # the series' own geometry (LPS); its reference mask was saved as LAS
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(real_data / image)))
            ref = reader.Execute()
        else:  # a NIfTI scan: its reference mask has exactly its grid
            ref = sitk.ReadImage(str(real_data / reference))
        assert pred.GetSize() == ref.GetSize(), name
        assert np.allclose(pred.GetSpacing(), ref.GetSpacing(), atol=1e-3), name
        assert np.allclose(pred.GetOrigin(), ref.GetOrigin(), atol=1e-2), name
        assert np.allclose(pred.GetDirection(), ref.GetDirection(), atol=1e-4), name
