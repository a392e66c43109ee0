"""prep_brats: layouts of every edition, the prepared-dataset contract, bad inputs, resume and folds."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import EnsureChannelFirst, LoadImage

from data_prep.prep_brats import main
from medseg3d.core.constants import EDITIONS, MODALITIES, REGIONS
from medseg3d.core.errors import InputError
from medseg3d.core.io import save_nifti
from medseg3d.data.brats import find_cases
from medseg3d.data.dataset_json import SCHEMA_VERSION, read_dataset_json
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.preparation.brats import PrepOptions, prep_brats
from medseg3d.transforms.array import CropPadding, RemapLabels

SHAPE = (48, 40, 31)


def _tree(tmp_path: Path, edition: str = "2021", cases: int = 3, validation: int = 0, seed: int = 0) -> Path:
    raw = tmp_path / "raw"
    write_brats_tree(raw, cases=cases, edition=edition, shape=SHAPE, seed=seed, validation_cases=validation)
    return raw


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "prep_report.csv", newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.nii.gz"))
    }


@pytest.mark.parametrize("edition", [pytest.param(e, id=f"brats{e}") for e in ("2019", "2020", "2021", "2023")])
def test_every_edition_round_trips(tmp_path: Path, edition: str) -> None:
    raw = _tree(tmp_path, edition, cases=3, validation=1)
    out = tmp_path / "out"
    result = prep_brats(raw, out, PrepOptions(folds=3))
    assert not result.rejected
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["edition"] == edition
    assert (ds["numTraining"], ds["numTest"]) == (3, 1)
    assert ds["channel_names"] == {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}
    assert ds["regions"] == {k: list(v) for k, v in REGIONS.items()}
    assert {int(k): v for k, v in ds["source_label_values"].items()} == EDITIONS[edition].to_source
    # The one dataset.json schema (docs/data.md): every documented key, read back by the training reader.
    documented = set(
        "schema_version name description generator edition tensorImageSize channel_names modality source_suffixes "
        "labels label_descriptions source_label_values regions normalization padding folds seed numTraining numTest "
        "training test".split()
    )
    assert documented <= set(ds) and list(ds)[0] == "schema_version"
    assert (ds["schema_version"], ds["generator"]) == (SCHEMA_VERSION, "medseg3d prep_brats")
    assert read_dataset_json(out) == ds
    case_keys = {"case_id", "image", "grade", "tumour_type", "original_shape", "pad", "source"}
    assert all(set(e) == case_keys | {"label", "fold"} for e in ds["training"])
    assert all(set(e) == case_keys for e in ds["test"])
    assert all(e["tumour_type"] == ("GLI" if edition == "2023" else None) for e in ds["training"] + ds["test"])

    training = load_decathlon_datalist(str(out / "dataset.json"), is_segmentation=True, data_list_key="training")
    test = load_decathlon_datalist(str(out / "dataset.json"), is_segmentation=False, data_list_key="test")
    assert len(training) == 3 and len(test) == 1 and "label" not in test[0]
    # The inverse label mapping recorded in dataset.json restores the source segmentation exactly.
    to_source = RemapLabels({int(k): v for k, v in ds["source_label_values"].items()})
    cases = {c.case_id: c for c in find_cases(raw)}
    for entry in training:
        assert Path(entry["image"]).is_file() and Path(entry["label"]).is_file()
        label = nib.load(entry["label"])
        restored = np.asarray(to_source(CropPadding(entry["pad"])(np.asarray(label.dataobj)[None])))[0]
        source = nib.load(cases[entry["case_id"]].seg)
        np.testing.assert_array_equal(restored, np.asarray(source.dataobj))
        assert set(np.unique(restored)) <= set(EDITIONS[edition].source_labels)
        if edition in ("2019", "2020"):
            assert entry["grade"] in ("HGG", "LGG")


def test_channels_zscore_padding_and_geometry(tmp_path: Path) -> None:
    raw = _tree(tmp_path, "2023", cases=1)
    out = tmp_path / "out"
    prep_brats(raw, out, PrepOptions(folds=1))
    entry = json.loads((out / "dataset.json").read_text())["training"][0]
    assert entry["original_shape"] == list(SHAPE)
    assert entry["pad"] == [[0, 0], [4, 4], [0, 1]]

    image = LoadImage(image_only=True)(str(out / entry["image"]))
    image = EnsureChannelFirst()(image)
    assert tuple(image.shape) == (4, 48, 48, 32)
    cropped = CropPadding(entry["pad"])(image)
    assert tuple(cropped.shape) == (4, *SHAPE)

    case = find_cases(raw)[0]
    source_affine = nib.load(case.images["t1"]).affine
    np.testing.assert_allclose(np.asarray(cropped.affine), source_affine, atol=1e-5)
    data = np.asarray(cropped)
    for channel, modality in enumerate(MODALITIES):
        raw_data = np.asarray(nib.load(case.images[modality]).dataobj, dtype=np.float32)
        brain = raw_data != 0
        values = data[channel][brain]
        assert abs(values.mean()) < 1e-4 and abs(values.std() - 1) < 1e-4, modality
        assert np.all(data[channel][~brain] == 0), f"{modality}: background must stay 0"
        # Channel i is modality i: its values are an increasing affine function of that modality's raw values.
        expected = (raw_data[brain] - raw_data[brain].mean()) / raw_data[brain].std()
        np.testing.assert_allclose(values, expected, atol=1e-4)
    padded = np.asarray(image)
    assert np.all(padded[:, :, :4] == 0) and np.all(padded[:, :, -4:] == 0) and np.all(padded[..., -1] == 0)


def _corrupt(case_dir: Path, kind: str) -> str:
    """Damage one case of a synthetic tree; return a fragment the rejection reason must contain."""
    files = {p.name.split("_")[-1].split(".")[0]: p for p in case_dir.glob("*.nii.gz")}
    t1, flair, seg = files["t1"], files["flair"], files["seg"]
    affine = nib.load(t1).affine
    if kind == "missing":
        flair.unlink()
        return "missing modality: flair"
    if kind == "unreadable":
        flair.write_bytes(b"this is not a nifti file at all")
        return "cannot read as NIfTI"
    if kind == "gzip-not-nifti":
        flair.write_bytes(gzip.compress(b"plain text, gzipped" * 50))
        return "cannot read"
    if kind == "truncated":
        data = flair.read_bytes()
        flair.write_bytes(data[: len(data) // 2])
        return "truncated"
    if kind == "shape":
        save_nifti(np.ones((48, 40, 30), np.int16), affine, flair)
        return "shape (48, 40, 30) vs (48, 40, 31)"
    if kind == "affine":
        shifted = affine.copy()
        shifted[0, 3] += 2.5
        save_nifti(np.asarray(nib.load(flair).dataobj), shifted, flair)
        return "affines differ by up to 2.5"
    if kind == "labels":
        labels = np.asarray(nib.load(seg).dataobj).copy()
        labels[0, 0, 0] = 3
        save_nifti(labels, affine, seg)
        return "unexpected label values 3"
    if kind == "nan":
        data = np.asarray(nib.load(flair).dataobj).astype(np.float32)
        data[10, 10, 10] = np.nan
        data[11, 10, 10] = np.inf
        save_nifti(data, affine, flair)
        return "2 voxels are NaN or Inf"
    if kind == "empty":
        save_nifti(np.zeros(SHAPE, np.int16), affine, flair)
        return "empty"
    if kind == "4d":
        save_nifti(np.ones((*SHAPE, 2), np.int16), affine, flair)
        return "expected a 3D volume, got shape (48, 40, 31, 2)"
    raise AssertionError(kind)


BAD_INPUTS = ["missing", "unreadable", "gzip-not-nifti", "truncated", "shape", "affine", "labels", "nan", "empty", "4d"]


@pytest.mark.parametrize("kind", [pytest.param(k, id=k) for k in BAD_INPUTS])
def test_bad_case_is_reported_and_the_rest_converted(tmp_path: Path, kind: str) -> None:
    raw = _tree(tmp_path, "2021", cases=3)
    bad_dir = sorted(p for p in raw.rglob("BraTS2021_*") if p.is_dir())[1]
    fragment = _corrupt(bad_dir, kind)
    out = tmp_path / "out"
    assert main([str(raw), str(out), "--folds", "2"]) == 1
    rows = _rows(out)
    bad = rows[bad_dir.name]
    assert bad["status"] == "rejected"
    assert fragment in bad["reason"], bad["reason"]
    # The message names the file (or, for a pairing problem, the case folder) at fault.
    assert bad_dir.name in bad["reason"]
    good = [r for name, r in rows.items() if name != bad_dir.name]
    assert [r["status"] for r in good] == ["ok", "ok"]
    ds = json.loads((out / "dataset.json").read_text())
    assert sorted(e["case_id"] for e in ds["training"]) == sorted(r["case_id"] for r in good)
    assert not (out / "imagesTr" / f"{bad_dir.name}.nii.gz").exists()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name], "no temporary file may be left behind"


def test_brats2020_quirks_misnamed_seg_and_uncompressed(tmp_path: Path) -> None:
    raw = _tree(tmp_path, "2020", cases=2)
    case_dir = sorted(p for p in raw.rglob("BraTS20_Training_*") if p.is_dir())[0]
    seg = next(case_dir.glob("*_seg.nii.gz"))
    # Case 355 of the real 2020 release ships its segmentation under this name, uncompressed.
    nib.save(nib.load(seg), case_dir / "W39_1998.09.19_Segm.nii")
    seg.unlink()
    # Some copies of the 2020 release carry .nii beside .nii.gz.
    t2 = next(case_dir.glob("*_t2.nii.gz"))
    nib.save(nib.load(t2), case_dir / t2.name.replace(".nii.gz", ".nii"))
    out = tmp_path / "out"
    result = prep_brats(raw, out, PrepOptions(folds=2))
    assert not result.rejected
    assert result.dataset["numTraining"] == 2
    row = _rows(out)[case_dir.name]
    assert "both .nii and .nii.gz" in row["notes"]


def test_rerun_is_a_no_op_and_overwrite_or_changed_input_converts_again(tmp_path: Path) -> None:
    raw = _tree(tmp_path, "2021", cases=2)
    out = tmp_path / "out"
    prep_brats(raw, out, PrepOptions(folds=2))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    result = prep_brats(raw, out, PrepOptions(folds=2))
    assert [r["status"] for r in result.rows] == ["skipped", "skipped"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == before
    assert result.dataset["numTraining"] == 2

    # A case whose state record is missing (killed before it was written) is converted again.
    state = sorted((out / ".prep_state").glob("*.json"))[0]
    state.unlink()
    result = prep_brats(raw, out, PrepOptions(folds=2))
    assert sorted(r["status"] for r in result.rows) == ["ok", "skipped"]

    # A changed input invalidates its case.
    t1 = next(raw.rglob("BraTS2021_00001_t1.nii.gz"))
    os.utime(t1, ns=(t1.stat().st_atime_ns, t1.stat().st_mtime_ns + 10**9))
    statuses = {r["case_id"]: r["status"] for r in prep_brats(raw, out, PrepOptions(folds=2)).rows}
    assert statuses == {"BraTS2021_00000": "skipped", "BraTS2021_00001": "ok"}

    result = prep_brats(raw, out, PrepOptions(folds=2, overwrite=True))
    assert [r["status"] for r in result.rows] == ["ok", "ok"]


def test_parallel_workers_give_identical_outputs(tmp_path: Path) -> None:
    raw = _tree(tmp_path, "2021", cases=3)
    prep_brats(raw, tmp_path / "serial", PrepOptions(folds=2, workers=1))
    prep_brats(raw, tmp_path / "parallel", PrepOptions(folds=2, workers=2))
    assert _digest(tmp_path / "serial") == _digest(tmp_path / "parallel")
    serial = json.loads((tmp_path / "serial" / "dataset.json").read_text())
    parallel = json.loads((tmp_path / "parallel" / "dataset.json").read_text())
    assert serial["training"] == parallel["training"]


def test_folds_are_deterministic_and_stratified_by_grade(tmp_path: Path) -> None:
    raw = _tree(tmp_path, "2019", cases=8)
    a = prep_brats(raw, tmp_path / "a", PrepOptions(folds=2, seed=3)).dataset["training"]
    b = prep_brats(raw, tmp_path / "b", PrepOptions(folds=2, seed=3)).dataset["training"]
    assert [(e["case_id"], e["fold"]) for e in a] == [(e["case_id"], e["fold"]) for e in b]
    for grade in ("HGG", "LGG"):
        folds = [e["fold"] for e in a if e["grade"] == grade]
        assert folds, f"the synthetic 2019 tree must hold {grade} cases"
        assert abs(folds.count(0) - folds.count(1)) <= 1, f"{grade} cases unbalanced across folds: {folds}"
    assert {e["fold"] for e in a} == {0, 1}


def test_validation_cases_go_to_the_test_list(tmp_path: Path) -> None:
    raw = _tree(tmp_path, "2023", cases=1, validation=2)
    ds = prep_brats(raw, tmp_path / "out", PrepOptions(folds=1)).dataset
    assert ds["numTest"] == 2
    assert all(e["image"].startswith("imagesTs/") and "label" not in e for e in ds["test"])


@pytest.mark.parametrize(
    "argv, message",
    [
        pytest.param(["--edition", "2022"], "invalid choice", id="unknown-edition"),
        pytest.param(["--folds", "0"], "must be >= 1", id="zero-folds"),
    ],
)
def test_cli_rejects_bad_options(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    raw = _tree(tmp_path, "2021", cases=1)
    try:
        code = main([str(raw), str(tmp_path / "out"), *argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_errors_for_trees_that_hold_no_case_or_mix_editions(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI file"):
        prep_brats(tmp_path / "empty", tmp_path / "out")
    mixed = tmp_path / "mixed"
    write_brats_tree(mixed / "a", cases=1, edition="2021", shape=SHAPE)
    write_brats_tree(mixed / "b", cases=1, edition="2023", shape=SHAPE)
    with pytest.raises(ValueError, match="mixes BraTS editions 2021, 2023"):
        prep_brats(mixed, tmp_path / "out")
    with pytest.raises(InputError, match="must not lie inside the raw tree"):
        prep_brats(mixed, mixed / "prepared")


@pytest.mark.integration
def test_real_brats2023_case_and_raw_tcga_case(tmp_path: Path, real_data: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(real_data / "brats_gli_00001_000", raw / "BraTS-GLI-00001-000")
    shutil.copytree(real_data / "tcga_lgg_raw_TCGA-FG-6692", raw / "TCGA-FG-6692")
    out = tmp_path / "out"
    assert main([str(raw), str(out), "--folds", "1"]) == 1
    rows = _rows(out)
    gli = rows["BraTS-GLI-00001-000"]
    assert (gli["status"], gli["split"], gli["shape"], gli["padded_shape"]) == (
        "ok",
        "test",
        "240x240x155",
        "240x240x160",
    )
    tcga = rows["TCGA-FG-6692"]
    assert tcga["status"] == "rejected"
    assert "not co-registered" in tcga["reason"] and "TCGA-FG-6692" in tcga["reason"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["edition"] == "2023" and [e["case_id"] for e in ds["test"]] == ["BraTS-GLI-00001-000"]
    image = EnsureChannelFirst()(LoadImage(image_only=True)(str(out / ds["test"][0]["image"])))
    assert tuple(image.shape) == (4, 240, 240, 160)
    brain = np.asarray(image[0]) != 0
    assert abs(float(np.asarray(image[0])[brain].mean())) < 1e-3
