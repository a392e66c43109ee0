"""Tests of ``medseg3d datalist``: finding image/label pairs, checking them, and the dataset.json it writes.

Every case is a small CT phantom of ``medseg3d.data.synth_ct`` (32 x 28 x 20, NIfTI or a DICOM series), moved or
rewritten with SimpleITK into the layout under test; the written dataset.json is read back through the training
reader (``fold_datalists``) and MONAI's ``LoadImaged``.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from medseg3d.cli import main
from medseg3d.core.constants import CLASS_KEY
from medseg3d.core.errors import InputError
from medseg3d.data.dataset_json import SCHEMA_VERSION, class_names_for, fold_datalists, read_dataset_json
from medseg3d.data.pairs import DatalistError, build_datalist, find_pairs
from medseg3d.data.synth_ct import write_ct_cases

SHAPE = (32, 28, 20)


def _load(entry: dict) -> dict:
    keys = ["image", "label"]
    return Compose([LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)])(entry)


def _cases(root: Path, cases: int = 4, dicom: bool = False, seed: int = 0) -> Path:
    write_ct_cases(root, cases=cases, dicom=dicom, seed=seed, shape=SHAPE)
    return root


def _json(path: Path) -> dict:
    return json.loads((path / "dataset.json").read_text())


def _rewrite(path: Path, change) -> None:
    """Read ``path`` with SimpleITK, apply ``change`` to the image and write it back in place."""
    image = change(sitk.ReadImage(str(path)))
    sitk.WriteImage(image, str(path))


def _check_folds(root: Path, folds: int) -> list[dict]:
    every = []
    for fold in range(folds):
        train, val = fold_datalists(root, fold)
        assert val and train and all(e["fold"] == fold for e in val)
        every += val
    return every


def test_decathlon_nifti_trains_and_loads(tmp_path: Path) -> None:
    root = _cases(tmp_path / "ds")
    result = build_datalist(root, folds=2)
    assert result.path == root / "dataset.json"
    assert [e["case_id"] for e in result.entries] == ["ct_000", "ct_001", "ct_002", "ct_003"]
    assert result.entries[0] == {
        "image": "imagesTr/ct_000.nii.gz",
        "label": "labelsTr/ct_000.nii.gz",
        "case_id": "ct_000",
        "fold": result.entries[0]["fold"],
    }
    assert result.labels == {"0": "background", "1": "label_1"} and not result.rejected and not result.warnings
    content = _json(root)
    assert content["modality"] == {"0": "image"}  # NIfTI says nothing of the modality
    assert content["numTraining"] == 4 and content["folds"] == 2 and content["rejected"] == []
    assert (content["schema_version"], content["generator"]) == (SCHEMA_VERSION, "medseg3d datalist")
    assert list(content)[0] == "schema_version" and read_dataset_json(root) == content
    assert content["training"] == result.entries
    validation = _check_folds(root, 2)
    assert sorted(e["case_id"] for e in validation) == ["ct_000", "ct_001", "ct_002", "ct_003"]
    loaded = _load(validation[0])
    assert tuple(loaded["image"].shape) == tuple(loaded["label"].shape) == (1, *SHAPE)


def test_decathlon_dicom_series_folders(tmp_path: Path) -> None:
    root = _cases(tmp_path / "ds", dicom=True)
    result = build_datalist(root, folds=2, label_names=["aorta"])
    assert [e["image"] for e in result.entries] == [f"imagesTr/ct_00{i}" for i in range(4)]
    assert result.labels == {"0": "background", "1": "aorta"}
    assert _json(root)["modality"] == {"0": "CT"}  # from the series' Modality tag
    validation = _check_folds(root, 2)
    assert all(Path(e["image"]).is_dir() for e in validation)
    # What MONAI's ITKReader reads from a series folder (the one series GDCM finds in it) is on the label's grid.
    for entry in validation:
        folder = entry["image"]
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(
            folder, sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)[0]
        )
        image, label = sitk.ReadImage(files), sitk.ReadImage(entry["label"])
        assert image.GetSize() == label.GetSize() == SHAPE
        assert np.allclose(image.GetSpacing(), label.GetSpacing()) and np.allclose(image.GetOrigin(), label.GetOrigin())


def test_loadimaged_reads_a_dicom_folder_on_the_label_grid(tmp_path: Path) -> None:
    """With ``medseg3d.data.sitk_reader.SimpleITKReader`` (what the CT bundle passes): no ``itk`` needed."""
    from medseg3d.data.sitk_reader import SimpleITKReader

    root = _cases(tmp_path / "ds", cases=2, dicom=True)
    build_datalist(root, folds=2)
    entry = fold_datalists(root, 0)[1][0]
    keys = ["image", "label"]
    load = Compose([LoadImaged(keys=keys, image_only=True, reader=SimpleITKReader()), EnsureChannelFirstd(keys=keys)])
    loaded = load(entry)
    assert tuple(loaded["image"].shape) == tuple(loaded["label"].shape) == (1, *SHAPE)
    assert np.allclose(loaded["image"].affine, loaded["label"].affine, atol=1e-4)
    series = sitk.ImageSeriesReader()
    series.SetFileNames(series.GetGDCMSeriesFileNames(entry["image"]))
    expected = sitk.GetArrayFromImage(series.Execute()).transpose(2, 1, 0)
    assert np.array_equal(np.asarray(loaded["image"][0]), expected)  # the HU as stored, in ITK index order


def test_suffix_pairs_in_nested_folders(tmp_path: Path) -> None:
    source = _cases(tmp_path / "src", cases=3)
    dicom = _cases(tmp_path / "dcm", cases=1, dicom=True, seed=5)
    root = tmp_path / "ds"

    def put(case: str, image: Path, label: Path) -> None:
        for folder, target in (("imagesTr", image), ("labelsTr", label)):
            target.parent.mkdir(parents=True, exist_ok=True)
            volume = sitk.ReadImage(str(source / folder / f"{case}.nii.gz"))
            for key in volume.GetMetaDataKeys():  # NIfTI header fields that MetaImage cannot store (and warns of)
                volume.EraseMetaData(key)
            sitk.WriteImage(volume, str(target))

    put("ct_000", root / "site_a" / "p1" / "p1_ct.nii.gz", root / "site_a" / "p1" / "p1_seg.nii.gz")
    put("ct_001", root / "site_b" / "P2-CT.nrrd", root / "site_b" / "P2-Seg.mha")  # dash, any case, ITK formats
    put("ct_002", root / "p4" / "ct.nii.gz", root / "p4" / "seg.nii.gz")  # bare names: the folder is the case
    shutil.copytree(dicom / "imagesTr" / "ct_000", root / "site_c" / "p3_ct")
    shutil.copy(dicom / "labelsTr" / "ct_000.nii.gz", root / "site_c" / "p3_seg.nii.gz")

    assert main(["datalist", str(root), "--folds", "2", "--labels", "aorta"]) == 0
    content = _json(root)
    assert [(e["case_id"], e["image"], e["label"]) for e in content["training"]] == [
        ("P2", "site_b/P2-CT.nrrd", "site_b/P2-Seg.mha"),
        ("p1", "site_a/p1/p1_ct.nii.gz", "site_a/p1/p1_seg.nii.gz"),
        ("p3", "site_c/p3_ct", "site_c/p3_seg.nii.gz"),
        ("p4", "p4/ct.nii.gz", "p4/seg.nii.gz"),
    ]
    assert content["modality"] == {"0": "CT"}  # every image is <id>_ct or a CT series
    assert len(_check_folds(root, 2)) == 4


def test_nnunet_channel_suffix(tmp_path: Path) -> None:
    root = _cases(tmp_path / "ds", cases=3)
    images = root / "imagesTr"
    (images / "ct_000.nii.gz").rename(images / "ct_000_0000.nii.gz")
    (images / "ct_001.nii.gz").rename(images / "ct_001_0000.nii.gz")
    shutil.copy(images / "ct_001_0000.nii.gz", images / "ct_001_0001.nii.gz")  # a second channel: not supported
    result = build_datalist(root, folds=2)
    assert [(e["case_id"], e["image"]) for e in result.entries] == [
        ("ct_000", "imagesTr/ct_000_0000.nii.gz"),
        ("ct_002", "imagesTr/ct_002.nii.gz"),
    ]
    assert [(r.path.name, r.reason.split(";")[0]) for r in result.rejected] == [
        ("ct_001_0000.nii.gz", "case ct_001 has 2 channel files (ct_001_0000.nii.gz, ct_001_0001.nii.gz)")
    ]


def _break(root: Path) -> dict[str, str]:
    """Damage cases 1..7 of ``root`` in seven ways; -> relative path at fault: expected words of the reason."""
    images, labels = root / "imagesTr", root / "labelsTr"
    (labels / "ct_001.nii.gz").unlink()
    _rewrite(labels / "ct_002.nii.gz", lambda im: (im.SetSpacing((1.0, 1.0, 3.0)), im)[1])

    def halve(im: sitk.Image) -> sitk.Image:  # resampled to half the size, twice the spacing
        spacing = [2 * s for s in im.GetSpacing()]
        size = [n // 2 for n in SHAPE]
        return sitk.Resample(im, size, sitk.Transform(), sitk.sitkNearestNeighbor, im.GetOrigin(), spacing,
                             im.GetDirection())  # fmt: skip

    _rewrite(labels / "ct_003.nii.gz", halve)
    _rewrite(labels / "ct_004.nii.gz", lambda im: sitk.Cast(im, sitk.sitkFloat32) * 0.5)
    _rewrite(labels / "ct_005.nii.gz", lambda im: sitk.Cast(im, sitk.sitkInt16) - 1)
    (images / "ct_006.nii.gz").write_bytes(b"this is not an image" * 20)
    data = (images / "ct_007.nii.gz").read_bytes()
    (images / "ct_007.nii.gz").write_bytes(data[: len(data) // 2])
    shutil.copy(labels / "ct_000.nii.gz", labels / "orphan.nii.gz")
    return {
        "imagesTr/ct_001.nii.gz": "no label for this image; expected labelsTr/ct_001.nii.gz",
        "labelsTr/ct_002.nii.gz": "not on the grid of its image ../imagesTr/ct_002.nii.gz (spacings differ): spacing "
        "(1, 1, 3) vs",
        "labelsTr/ct_003.nii.gz": "not on the grid of its image ../imagesTr/ct_003.nii.gz (shapes differ; spacings "
        "differ): shape (16, 14, 10) vs (32, 28, 20)",
        "labelsTr/ct_004.nii.gz": "non-integer label values such as 0.5; expected non-negative integers",
        "labelsTr/ct_005.nii.gz": "negative label values such as -1; expected non-negative integers",
        "imagesTr/ct_006.nii.gz": "cannot read as NIfTI",
        "imagesTr/ct_007.nii.gz": "cannot read the voxel data, the file is damaged or truncated",
        "labelsTr/orphan.nii.gz": "no image for this label; expected imagesTr/orphan.nii.gz",
    }


def test_bad_pairs_are_reported_and_left_out(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _cases(tmp_path / "ds", cases=9)
    expected = _break(root)
    assert main(["datalist", str(root), "--folds", "2"]) == 1
    content = _json(root)
    assert [e["case_id"] for e in content["training"]] == ["ct_000", "ct_008"]
    reasons = {r["path"]: r["reason"] for r in content["rejected"]}
    assert sorted(reasons) == sorted(expected)
    for path, words in expected.items():
        assert words in reasons[path], (path, reasons[path])
    output = capsys.readouterr().out
    assert output.splitlines()[0] == f"{root / 'dataset.json'}: 2 cases in 2 folds, label values 0, 1, 8 rejected"
    for path, words in expected.items():
        assert f"rejected {root / path}: {words}" in output
    assert len(_check_folds(root, 2)) == 2


def test_same_inputs_same_bytes_and_paths_relative_to_out(tmp_path: Path) -> None:
    root = _cases(tmp_path / "data")
    out = tmp_path / "lists" / "aorta"
    build_datalist(root, out=out, folds=3, seed=7)
    first = (out / "dataset.json").read_bytes()
    build_datalist(root, out=out, folds=3, seed=7)
    assert (out / "dataset.json").read_bytes() == first
    assert _json(out)["training"][0]["image"] == "../../data/imagesTr/ct_000.nii.gz"
    assert [e["fold"] for e in _json(out)["training"]] != [e["fold"] for e in build_datalist(root, folds=3).entries]
    # The whole tree moves: the relative paths still resolve.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.move(tmp_path / "data", moved / "data")
    shutil.move(tmp_path / "lists", moved / "lists")
    assert all(Path(e["image"]).is_file() for e in _check_folds(moved / "lists" / "aorta", 3))


def test_label_names_values_and_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _cases(tmp_path / "ds", cases=3)
    _rewrite(root / "labelsTr" / "ct_001.nii.gz", lambda im: im * 3)  # values 0 and 3 in this case
    assert main(["datalist", str(root), "--folds", "2", "--labels", "aorta,stent"]) == 0
    assert _json(root)["labels"] == {"0": "background", "1": "aorta", "3": "stent"}
    assert (
        "warning: label values 1, 3 are not consecutive: the network needs 4 output channels" in capsys.readouterr().out
    )
    before = (root / "dataset.json").read_bytes()
    assert main(["datalist", str(root), "--folds", "2", "--labels", "aorta"]) == 2
    error = capsys.readouterr().err
    assert "--labels gives 1 names (aorta) but the labels hold 2 values besides background 0: 1, 3" in error
    assert (root / "dataset.json").read_bytes() == before  # an error writes nothing
    assert build_datalist(root, folds=2).labels == {"0": "background", "1": "label_1", "3": "label_3"}


def test_folds_balanced_and_too_few_cases(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "ds"
    write_ct_cases(root, cases=7, shape=(16, 16, 16))
    result = build_datalist(root, folds=3, seed=3)
    assert sorted(Counter(e["fold"] for e in result.entries).values()) == [2, 2, 3]
    assert main(["datalist", str(root), "--folds", "8"]) == 2
    assert "8 folds need at least 8 cases, found 7 usable; give --folds 7 or fewer" in capsys.readouterr().err


def test_nothing_usable_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["datalist", str(empty)]) == 2
    assert "no usable image/label pair (none found)" in capsys.readouterr().err
    assert main(["datalist", str(tmp_path / "absent")]) == 2
    assert "absent: not a folder" in capsys.readouterr().err
    root = _cases(tmp_path / "ds", cases=2)
    (root / "labelsTr" / "ct_000.nii.gz").unlink()
    (root / "labelsTr" / "ct_001.nii.gz").unlink()
    assert main(["datalist", str(root), "--folds", "1"]) == 2
    captured = capsys.readouterr()
    assert "rejected " + str(root / "imagesTr" / "ct_000.nii.gz") + ": no label" in captured.out
    assert "all 2 found were rejected" in captured.err and not (root / "dataset.json").exists()
    with pytest.raises(SystemExit):
        main(["datalist", str(root), "--folds", "0"])
    with pytest.raises(DatalistError) as info:
        build_datalist(root, folds=1)
    assert [r.path.name for r in info.value.rejected] == ["ct_000.nii.gz", "ct_001.nii.gz"]


def test_keeps_a_dataset_json_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _cases(tmp_path / "ds", cases=2)
    (root / "dataset.json").write_text('{"name": "Task09_Spleen", "training": []}')
    assert main(["datalist", str(root), "--folds", "2"]) == 2
    assert "exists and was not written by medseg3d datalist" in capsys.readouterr().err
    assert json.loads((root / "dataset.json").read_text())["name"] == "Task09_Spleen"
    assert main(["datalist", str(root), "--folds", "2", "--out", str(tmp_path / "elsewhere")]) == 0


def test_duplicate_case_ids_and_hidden_entries(tmp_path: Path) -> None:
    root = _cases(tmp_path / "ds", cases=2)
    shutil.copy(root / "imagesTr" / "ct_000.nii.gz", root / "ct_000_ct.nii.gz")
    shutil.copy(root / "labelsTr" / "ct_000.nii.gz", root / "ct_000_seg.nii.gz")
    shutil.copytree(root / "imagesTr", root / ".cache" / "imagesTr")  # hidden: never searched
    pairs, rejected = find_pairs(root)
    assert [p.case_id for p in pairs] == ["ct_000", "ct_001"]
    assert [p.image for p in pairs] == [root / "ct_000_ct.nii.gz", root / "imagesTr" / "ct_001.nii.gz"]  # first path
    assert [(r.path, r.reason.split(";")[0]) for r in rejected] == [
        (root / "imagesTr" / "ct_000.nii.gz", f"case ID ct_000 is also the case of {root / 'ct_000_ct.nii.gz'}")
    ]


def test_fold_datalists_refuses_a_label_folder(tmp_path: Path) -> None:
    root = _cases(tmp_path / "ds", cases=2)
    build_datalist(root, folds=2)
    content = _json(root)
    content["training"][0]["label"] = "imagesTr"
    (root / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match="listed as label of ct_000 .* but a folder; expected a label file"):
        fold_datalists(root, 0)


# ------------------------------------------------------------------------------------------------- --classes CSV


def test_classes_csv_becomes_case_columns(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Each CSV column is a per-case column (null where unknown), folds balance the first one, and training reads
    it as the class a multitask bundle learns."""
    root = _cases(tmp_path / "ds", cases=6)
    table = tmp_path / "aneurysm.csv"
    # ct_001 given in capitals (IDs compare ignoring case); ct_004's cell empty; ct_005 has no row; ct_999 no case.
    table.write_text(
        "\ufeffcase_id,aneurysm,side\n"
        "ct_000,yes,left\n"
        "CT_001,no,\n"
        "ct_002, yes ,right\n"
        "\n"
        "ct_003,no,left\n"
        "ct_004,,left\n"
        "ct_999,yes,right\n",
        encoding="utf-8",
    )
    assert main(["datalist", str(root), "--folds", "2", "--classes", str(table)]) == 0
    content = _json(root)
    columns = {e["case_id"]: (e["aneurysm"], e["side"]) for e in content["training"]}
    assert columns == {
        "ct_000": ("yes", "left"),
        "ct_001": ("no", None),
        "ct_002": ("yes", "right"),
        "ct_003": ("no", "left"),
        "ct_004": (None, "left"),
        "ct_005": (None, None),
    }
    assert list(content["training"][0]) == ["image", "label", "case_id", "aneurysm", "side", "fold"]
    # Stratified by the first column: each fold holds one yes, one no and one unknown case.
    strata = Counter((e["aneurysm"], e["fold"]) for e in content["training"])
    assert strata == {(value, fold): 1 for value in ("yes", "no", None) for fold in (0, 1)}
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(
        "0 rejected; class column aneurysm: 4 of 6 cases known; class column side: 4 of 6 cases known"
    )
    assert f"warning: {table}: 1 case IDs match no listed case (left out): ct_999" in out
    assert f"warning: {table}: no row for 1 of 6 listed cases (their aneurysm, side null): ct_005" in out
    # What `medseg3d train --classify aneurysm` reads: class names sorted, unknown cases -1.
    names = class_names_for(root, "aneurysm")
    assert names == ["no", "yes"]
    train, val = fold_datalists(root, 0, class_field="aneurysm", class_names=names)
    expected = {"ct_000": 1, "ct_001": 0, "ct_002": 1, "ct_003": 0, "ct_004": -1, "ct_005": -1}
    assert {e["case_id"]: e[CLASS_KEY] for e in train + val} == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id,aneurysm\nct_000,yes\n", "line 1 has no case_id column (columns: id, aneurysm); expected a CSV"),
        ("case_id,label\nct_000,yes\n", "column label is a key every dataset.json case already has"),
        ("case_id,aneurysm,fold\nct_000,yes,1\n", "column fold is a key every dataset.json case already has"),
        ("case_id\nct_000\n", "holds only the case_id column"),
        ("", "is empty; expected a CSV with a header row case_id,<column>"),
        ("case_id,aneurysm\nct_000,yes,left\n", "line 2 has 3 cells; expected 2, one per column"),
        ("case_id,aneurysm\nct_000,yes\nCT_000,no\n", "line 3: case CT_000 is also on line 2 (ct_000)"),
        ("case_id,aneurysm,aneurysm\nct_000,yes,no\n", "column aneurysm appears more than once"),
        (b"case_id,aneurysm\nct_000,\xff\n", "is not UTF-8 text"),
        (None, "cannot be read"),
    ],
)
def test_bad_classes_csv_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, text: str | bytes | None, problem: str
) -> None:
    root = _cases(tmp_path / "ds", cases=2)
    table = tmp_path / "classes.csv"
    if isinstance(text, bytes):
        table.write_bytes(text)
    elif text is not None:
        table.write_text(text)
    assert main(["datalist", str(root), "--folds", "2", "--classes", str(table)]) == 2
    error = capsys.readouterr().err
    assert f"error: {table}: " in error and problem in error
    assert not (root / "dataset.json").exists()
    with pytest.raises(InputError, match="expected") as info:
        build_datalist(root, folds=2, classes=table)
    assert info.value.path == str(table)
