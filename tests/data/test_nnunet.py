"""Tests of nnU-Net v2 interop (``medseg3d.data.nnunet``): an nnU-Net raw dataset listed by ``medseg3d datalist``,
its ``imagesTs/`` channel files grouped by ``find_scans``, and a prepared BraTS dataset exported and read back.

Every nnU-Net folder is written here with nibabel, in nnU-Net's exact layout: non-cubic 20 x 24 x 18 volumes on an
anisotropic grid with an origin, one file per channel (``<case>_XXXX.nii.gz``), a CT-like dataset of one channel
(labels 0/1), BraTS-like ones of four channels (labels 0..3, plain and region-based ``dataset.json``) and a
``splits_final.json``. Channels differ in content, so an order mix-up shows in the voxels.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from medseg3d.cli import main
from medseg3d.core.errors import InputError
from medseg3d.data.dataset_json import fold_datalists, read_dataset_json, write_dataset_json
from medseg3d.data.nnunet import (
    channel_problem,
    export_nnunet,
    group_channel_files,
    read_nnunet_dataset,
    read_splits,
)
from medseg3d.data.pairs import DatalistError, build_datalist
from medseg3d.data.scans import find_scans, read_scan
from medseg3d.training.recipes import prepared_load_transforms

SHAPE = (20, 24, 18)
AFFINE = np.array([[0.8, 0.0, 0.0, -10.0], [0.0, 0.9, 0.0, 5.5], [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])
BRATS_CHANNELS = ["T1", "T1ce", "T2", "Flair"]
BRATS_LABELS = {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
# nnU-Net's own BraTS form (Dataset137): labels 1 ED, 2 NCR, 3 ET; regions WT, TC, ET.
REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _channel(case: int, channel: int) -> np.ndarray:
    """float32 (X, Y, Z), different for every case and channel (channel c around 100 * c)."""
    return (np.random.default_rng(10 * case + channel).normal(size=SHAPE) + 100.0 * channel).astype(np.float32)


def _label(case: int, values: tuple[int, ...]) -> np.ndarray:
    """uint8 (X, Y, Z) with a block of each value, placed by the case."""
    label = np.zeros(SHAPE, np.uint8)
    for i, value in enumerate(values):
        label[2 + i * 4 : 5 + i * 4, 3 + case % 3 : 9, 2 : 6 + i] = value
    return label


def _dataset(
    root: Path,
    cases: list[str],
    channels: list[str],
    labels: dict,
    values: tuple[int, ...],
    test_cases: tuple[str, ...] = (),
    splits: list[dict] | None = None,
    **extra,
) -> Path:
    """An nnU-Net v2 raw dataset folder ``root`` (``DatasetNNN_Name``) holding ``cases`` and ``test_cases``."""
    for i, case in enumerate(cases):
        for c in range(len(channels)):
            _save(root / "imagesTr" / f"{case}_{c:04d}.nii.gz", _channel(i, c))
        _save(root / "labelsTr" / f"{case}.nii.gz", _label(i, values))
    for i, case in enumerate(test_cases):
        for c in range(len(channels)):
            _save(root / "imagesTs" / f"{case}_{c:04d}.nii.gz", _channel(50 + i, c))
    content = {
        "channel_names": {str(c): name for c, name in enumerate(channels)},
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        **extra,
    }
    (root / "dataset.json").write_text(json.dumps(content, indent=2))
    if splits is not None:
        (root / "splits_final.json").write_text(json.dumps(splits))
    return root


def _json(folder: Path) -> dict:
    return json.loads((folder / "dataset.json").read_text())


def _load(entry: dict) -> dict:
    """A training case loaded as the BraTS bundles load it."""
    return Compose(prepared_load_transforms())({"image": entry["image"], "label": entry["label"]})


# ------------------------------------------------------------------------------------------------ datalist: import


def test_ct_like_dataset_of_one_channel(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _dataset(tmp_path / "Dataset011_Aorta", [f"ct_{i:03d}" for i in range(4)], ["CT"],
                    {"background": 0, "aorta": 1}, (1,))  # fmt: skip
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    # The nnU-Net dataset's own dataset.json is never replaced: --out is needed.
    assert main(["datalist", str(root), "--folds", "2"]) == 2
    assert "is the nnU-Net dataset's own dataset.json; expected --out DIR" in capsys.readouterr().err
    assert "generator" not in _json(root)
    out = tmp_path / "lists" / "aorta"
    assert main(["datalist", str(root), "--out", str(out), "--folds", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{out / 'dataset.json'}: 4 cases in 2 folds, label values 0, 1, 0 rejected"
    )
    content = _json(out)
    assert (content["tensorImageSize"], content["channel_names"], content["modality"]) == (
        "3D",
        {"0": "CT"},
        {"0": "CT"},
    )
    assert (content["labels"], content["source_format"], content["seed"]) == (
        {"background": 0, "aorta": 1},
        "nnU-Net v2",
        0,
    )
    assert "regions" not in content and "test" not in content
    # One channel: a plain image path (the CT bundle's loader and schema as before), referenced in place.
    assert [(e["case_id"], e["image"], e["label"]) for e in content["training"]] == [
        (f"ct_{i:03d}", f"../../Dataset011_Aorta/imagesTr/ct_{i:03d}_0000.nii.gz",
         f"../../Dataset011_Aorta/labelsTr/ct_{i:03d}.nii.gz") for i in range(4)
    ]  # fmt: skip
    assert sorted(e["fold"] for e in content["training"]) == [0, 0, 1, 1]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing written or copied there
    train, val = fold_datalists(out, 0)
    assert len(train) == len(val) == 2 and all(Path(e["image"]).is_file() for e in train + val)


@pytest.fixture
def brats_like(tmp_path: Path) -> Path:
    """5 four-channel cases, case_c missing its T2 file, a split of 2 folds, imagesTs of 2 cases (one incomplete)."""
    cases = ["case_a", "case_b", "case_c", "case_d", "case_e"]
    splits = [{"train": ["case_c", "case_d", "case_e"], "val": ["case_a", "case_b"]},
              {"train": ["case_a", "case_b"], "val": ["case_c", "case_d", "case_e"]}]  # fmt: skip
    root = _dataset(tmp_path / "Dataset137_BraTS", cases, BRATS_CHANNELS, BRATS_LABELS, (1, 2, 3),
                    test_cases=("test_x", "test_y"), splits=splits)  # fmt: skip
    (root / "imagesTr" / "case_c_0002.nii.gz").unlink()
    (root / "imagesTs" / "test_y_0003.nii.gz").unlink()
    return root


def test_four_channels_with_splits_and_a_missing_channel(
    brats_like: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "list"
    assert main(["datalist", str(brats_like), "--out", str(out)]) == 1  # a case rejected, the others listed
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        f"{out / 'dataset.json'}: 4 cases in 2 folds (splits_final.json), 1 test cases, label values 0, 1, 2, 3, "
        "2 rejected"
    )
    missing = (
        f"rejected {brats_like / 'imagesTr' / 'case_c_0002.nii.gz'}: case case_c lacks channel 2 (T2), file "
        "case_c_0002.nii.gz; expected one file per channel, case_c_0000.nii.gz to case_c_0003.nii.gz (T1, T1ce, T2, "
        "Flair)"
    )
    assert missing in printed
    assert f"rejected {brats_like / 'imagesTs' / 'test_y_0003.nii.gz'}: case test_y lacks channel 3 (Flair)" in (
        "\n".join(printed)
    )
    assert (
        f"warning: {brats_like / 'splits_final.json'}: 1 cases of its val lists are not listed (not found or "
        "rejected): case_c" in printed
    )
    content = _json(out)
    entries = {e["case_id"]: e for e in content["training"]}
    assert sorted(entries) == ["case_a", "case_b", "case_d", "case_e"]
    # Folds from splits_final.json (fold k validates its val list), not dealt by the seed.
    assert {c: e["fold"] for c, e in entries.items()} == {"case_a": 0, "case_b": 0, "case_d": 1, "case_e": 1}
    assert (content["folds"], content["splits"], "seed" in content) == (
        2,
        "../Dataset137_BraTS/splits_final.json",
        False,
    )
    # Channel files in channel order, as a list: the schema's multi-channel image.
    assert entries["case_d"]["image"] == [f"../Dataset137_BraTS/imagesTr/case_d_{c:04d}.nii.gz" for c in range(4)]
    assert content["test"] == [
        {"case_id": "test_x", "image": [f"../Dataset137_BraTS/imagesTs/test_x_{c:04d}.nii.gz" for c in range(4)]}
    ]
    assert (content["tensorImageSize"], content["channel_names"]) == (
        "4D",
        {str(c): n for c, n in enumerate(BRATS_CHANNELS)},
    )
    assert content["labels"] == BRATS_LABELS and read_dataset_json(out)["numTest"] == 1
    assert [r["path"] for r in content["rejected"]] == [
        "../Dataset137_BraTS/imagesTr/case_c_0002.nii.gz",
        "../Dataset137_BraTS/imagesTs/test_y_0003.nii.gz",
    ]
    # Training reads it: fold 1 validates case_d and case_e; a case loads as 4 channels in file order.
    train, val = fold_datalists(out, 1)
    assert [e["case_id"] for e in val] == ["case_d", "case_e"] and [e["case_id"] for e in train] == ["case_a", "case_b"]
    case = _load(val[0])
    assert tuple(case["image"].shape) == (4, *SHAPE) and tuple(case["label"].shape) == (1, *SHAPE)
    for c in range(4):
        assert torch.equal(case["image"][c], torch.from_numpy(_channel(3, c)))  # case_d is case 3
    assert torch.equal(case["label"][0], torch.from_numpy(_label(3, (1, 2, 3))).to(case["label"].dtype))


def test_splits_and_folds_that_disagree(brats_like: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["datalist", str(brats_like), "--out", str(tmp_path / "list"), "--folds", "3"]) == 2
    assert "splits_final.json: holds 2 folds but --folds 3 was given" in capsys.readouterr().err
    assert not (tmp_path / "list" / "dataset.json").exists()
    assert build_datalist(brats_like, out=tmp_path / "list", folds=2).folds == 2
    # A case in no val list is rejected (not dealt a fold of its own); a case in two is an error.
    splits = brats_like / "splits_final.json"
    splits.write_text(json.dumps([{"train": [], "val": ["case_a", "case_b"]}, {"train": [], "val": ["case_d"]}]))
    result = build_datalist(brats_like, out=tmp_path / "list")
    assert [e["case_id"] for e in result.entries] == ["case_a", "case_b", "case_d"]
    assert any(r.path.name == "case_e_0000.nii.gz" and "case case_e is in no fold's val list" in r.reason
               for r in result.rejected)  # fmt: skip
    splits.write_text(json.dumps([{"train": [], "val": ["case_a"]}, {"train": [], "val": ["case_a", "case_b"]}]))
    with pytest.raises(InputError, match="case case_a is in the val list of fold 0 and of fold 1"):
        build_datalist(brats_like, out=tmp_path / "list")
    splits.write_text(json.dumps({"fold_0": ["case_a"]}))
    with pytest.raises(InputError, match=r"splits_final.json: is dict; expected a list with one"):
        read_splits(splits)


def test_region_based_dataset_records_regions(tmp_path: Path) -> None:
    cases = ["r_0", "r_1", "r_2"]
    root = _dataset(tmp_path / "Dataset138_Regions", cases, BRATS_CHANNELS, REGION_LABELS, (1, 2, 3),
                    regions_class_order=[1, 2, 3])  # fmt: skip
    result = build_datalist(root, out=tmp_path / "list", folds=3)
    content = _json(tmp_path / "list")
    assert content["regions"] == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    assert content["regions_class_order"] == [1, 2, 3]
    # Region datasets name regions, not label values: the values get label_<v>, or the --labels names.
    assert content["labels"] == {"background": 0, "label_1": 1, "label_2": 2, "label_3": 3}
    assert any("are not the BraTS bundles' regions" in w and "1 ED, 2 NCR, 3 ET" in w for w in result.warnings)
    build_datalist(root, out=tmp_path / "list", folds=3, label_names=["ED", "NCR", "ET"])
    assert _json(tmp_path / "list")["labels"] == {"background": 0, "ED": 1, "NCR": 2, "ET": 3}
    with pytest.raises(DatalistError, match="--labels gives 2 names"):
        build_datalist(root, out=tmp_path / "list", folds=3, label_names=["ED", "NCR"])


def test_bad_cases_of_an_nnunet_dataset(tmp_path: Path) -> None:
    root = _dataset(tmp_path / "Dataset012_CT", ["p_0", "p_1", "p_2", "p_3", "p_4"], ["CT"],
                    {"background": 0, "liver": 1}, (1,), numTraining=6)  # fmt: skip
    _save(root / "labelsTr" / "p_1.nii.gz", _label(1, (1, 2)))  # a value dataset.json does not declare
    shifted = AFFINE.copy()
    shifted[0, 3] += 4.0
    _save(root / "imagesTr" / "p_2_0000.nii.gz", _channel(2, 0), shifted)  # off its label's grid
    (root / "labelsTr" / "p_3.nii.gz").unlink()
    (root / "imagesTr" / "notes.txt").write_text("converted by hand")
    result = build_datalist(root, out=tmp_path / "list", folds=2)
    assert [e["case_id"] for e in result.entries] == ["p_0", "p_4"]
    reasons = {r.path.name: r.reason for r in result.rejected}
    assert reasons["p_1.nii.gz"].startswith(f"unexpected label values 2; expected only 0, 1 (the labels of {root}")
    assert "not on the grid of its image" in reasons["p_2.nii.gz"]
    assert reasons["p_3_0000.nii.gz"] == "no label for case p_3; expected labelsTr/p_3.nii.gz"
    assert reasons["notes.txt"].startswith("not an nnU-Net image file name; expected channel files <case>_XXXX.nii.gz")
    assert any("numTraining is 6, but imagesTr/labelsTr hold 4 cases" in w for w in result.warnings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"labels": {"0": "background", "1": "liver"}}, "labels maps values to names", id="v1-labels"),
        pytest.param({"labels": {"liver": 1}}, "labels has no 'background' entry", id="no-background"),
        pytest.param(
            {"labels": {"background": 0, "a": 1, "b": 3}}, "label values [0, 1, 3] are not consecutive", id="gap"
        ),
        pytest.param(
            {"labels": REGION_LABELS},
            "regions_class_order is None; expected a list of 3 label values",
            id="regions-without-order",
        ),
        pytest.param({"labels": {"background": 0, "a": 1, "b": 1}}, "gives one value several names", id="same-value"),
        pytest.param(
            {"labels": {"background": 0, "ignore": 1, "a": 2}},
            "the ignore label is 1; expected the highest",
            id="ignore-not-highest",
        ),
        pytest.param(
            {"labels": {"background": 0, "a": "1"}}, "labels['a'] is '1'; expected a label value", id="value-string"
        ),
        pytest.param({"file_ending": ".png"}, "file_ending is '.png'; expected one of .nii.gz", id="png"),
        pytest.param(
            {"channel_names": {"1": "T1"}}, "channel_names is {'1': 'T1'}; expected an object mapping", id="channel-gap"
        ),
        pytest.param({"dataset": {}}, "lists its files under 'dataset'", id="explicit-file-lists"),
    ],
)
def test_bad_nnunet_dataset_json(tmp_path: Path, change: dict, message: str) -> None:
    content = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 0,
               "file_ending": ".nii.gz", **change}  # fmt: skip
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match=r"dataset.json: ") as info:
        read_nnunet_dataset(tmp_path)
    assert message in str(info.value)
    with pytest.raises(InputError):  # medseg3d datalist stops at the same error, before reading any image
        build_datalist(tmp_path, out=tmp_path / "out")


def test_channel_grouping_rule() -> None:
    files = ["ts/a_0001.nii.gz", "ts/a_0000.nii.gz", "ts/a_0000.nii", "ts/b_0000.nrrd", "ts/c.nii.gz", "ts/x.txt"]
    groups = group_channel_files(files)
    assert {case: {c: [p.name for p in ps] for c, ps in ch.items()} for case, ch in groups.items()} == {
        "a": {0: ["a_0000.nii", "a_0000.nii.gz"], 1: ["a_0001.nii.gz"]},
        "b": {0: ["b_0000.nrrd"]},
    }
    path, reason = channel_problem("a", groups["a"], ["T1", "T2", "FLAIR"])
    assert path == Path("ts/a_0002.nii")
    assert "lacks channel 2 (FLAIR)" in reason and "has 2 files for channel 0 (a_0000.nii, a_0000.nii.gz)" in reason
    path, reason = channel_problem("b", {0: [Path("b_0000.nii.gz")], 1: [Path("b_0001.nii.gz")]}, ["CT"])
    assert (path, reason.split(";")[0]) == (Path("b_0001.nii.gz"), "case b has channel files beyond the 1 expected "
                                            "(b_0001.nii.gz)")  # fmt: skip
    assert channel_problem("c", {0: [Path("c_0000.nii.gz")]}, ["CT"]) is None


def test_listed_channel_files_in_the_schema(tmp_path: Path) -> None:
    for c in range(2):
        _save(tmp_path / "images" / f"a_{c:04d}.nii.gz", _channel(0, c))
        _save(tmp_path / "images" / f"b_{c:04d}.nii.gz", _channel(1, c))
    _save(tmp_path / "a.nii.gz", _label(0, (1,)))
    _save(tmp_path / "b.nii.gz", _label(1, (1,)))
    case = {"image": ["images/a_0000.nii.gz", "images/a_0001.nii.gz"], "label": "a.nii.gz", "case_id": "a", "fold": 0}
    other = {"image": ["images/b_0000.nii.gz", "images/b_0001.nii.gz"], "label": "b.nii.gz", "case_id": "b", "fold": 1}
    write_dataset_json(tmp_path, {"training": [case, other]})
    train, _ = fold_datalists(tmp_path, 0)
    assert train[0]["image"] == [str(tmp_path / "images" / f"b_{c:04d}.nii.gz") for c in range(2)]
    (tmp_path / "images" / "b_0001.nii.gz").unlink()
    with pytest.raises(InputError, match=r"b_0001.nii.gz: listed as image of b in .* but missing"):
        fold_datalists(tmp_path, 0)
    for bad in ([], ["images/a_0000.nii.gz", ""], [3]):
        with pytest.raises(InputError, match=r"training entry 0 \(a\): image is .*; expected a non-empty string or"):
            write_dataset_json(tmp_path, {"training": [{**case, "image": bad}]})


# -------------------------------------------------------------------------------------------- find_scans: imagesTs


@pytest.fixture
def images_ts(tmp_path: Path) -> Path:
    """An imagesTs folder: two complete BraTS-like cases, one lacking _0002, and a lone 4-channel file x_0007."""
    folder = tmp_path / "imagesTs"
    for case, seed in (("BraTS2021_00003", 0), ("case_b", 1), ("case_c", 2)):
        for c in range(4):
            if not (case == "case_c" and c == 2):
                _save(folder / f"{case}_{c:04d}.nii.gz", _channel(seed, c))
    _save(folder / "x_0007.nii.gz", np.stack([_channel(9, c) for c in range(4)], axis=-1))
    return folder


def test_find_scans_groups_channel_files(images_ts: Path) -> None:
    cases = {c.case_id: c for c in find_scans(images_ts, expect="brats")}
    assert sorted(cases) == ["BraTS2021_00003", "case_b", "case_c", "x_0007"]  # outputs <case>.nii.gz
    case = cases["case_b"]
    assert (case.kind, [f.name for f in case.files], case.problem) == (
        "brats", [f"case_b_{c:04d}.nii.gz" for c in range(4)], None)  # fmt: skip
    assert (cases["BraTS2021_00003"].edition, case.edition) == ("2021", None)
    scan = read_scan(case)
    assert scan.array.shape == (4, *SHAPE) and np.array_equal(scan.affine, nib.load(case.files[0]).affine)
    for c in range(4):  # channels in index order
        assert np.array_equal(scan.array[c], _channel(1, c))
    # A missing channel: a case with its problem, which fails on reading (the batch goes on).
    broken = cases["case_c"]
    assert broken.problem.startswith("case case_c lacks channel 2 (t2), file case_c_0002.nii.gz; expected one file")
    with pytest.raises(InputError, match=r"case_c_0000.nii.gz: case case_c lacks channel 2"):
        read_scan(broken)
    assert read_scan(cases["x_0007"]).array.shape == (4, *SHAPE)  # a lone _XXXX file stays a file of its own


def test_find_scans_single_channel(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "imagesTs"
    _save(folder / "liver_007_0000.nii.gz", _channel(0, 0))
    _save(folder / "plain.nii.gz", _channel(1, 0))
    for n in range(2):  # numbered scans (or 2 channels of one case): each stays a case of its own
        _save(folder / f"scan_{n:04d}.nii.gz", _channel(2 + n, 0))
    with caplog.at_level(logging.WARNING, logger="medseg3d.data.scans"):
        cases = find_scans(folder, expect="image")
    assert [(c.case_id, c.kind, [f.name for f in c.files]) for c in cases] == [
        ("liver_007", "image", ["liver_007_0000.nii.gz"]),
        ("plain", "image", ["plain.nii.gz"]),
        ("scan_0000", "image", ["scan_0000.nii.gz"]),
        ("scan_0001", "image", ["scan_0001.nii.gz"]),
    ]
    assert "named like the channels of one nnU-Net case scan" in caplog.text
    # A brats model given the same folder: the 1-channel case lacks 3 channels; the others are 3D files that fail.
    brats = {c.case_id: c for c in find_scans(folder, expect="brats")}
    assert "case liver_007 lacks channels 1 (t1ce), 2 (t2), 3 (flair)" in brats["liver_007"].problem
    assert "case scan lacks channels 2 (t2), 3 (flair)" in brats["scan"].problem


# ------------------------------------------------------------------------------------------------ export round trip


def test_export_round_trip(tiny_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "nnUNet_raw"
    assert main(["nnunet-export", str(tiny_prepared), str(raw), "--id", "501"]) == 0
    folder = raw / "Dataset501_BraTSPrepared"
    assert capsys.readouterr().out.startswith(f"{folder}: 4 training cases in 2 folds (splits_final.json), 0 test")
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_BraTSPrepared"]  # no temporary folder left
    prepared = read_dataset_json(tiny_prepared)
    cases = sorted(e["case_id"] for e in prepared["training"])
    exported = _json(folder)
    assert exported["channel_names"] == {"0": "t1", "1": "t1ce", "2": "t2", "3": "flair"}
    assert exported["labels"] == {"background": 0, "WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
    assert (exported["regions_class_order"], exported["numTraining"], exported["file_ending"]) == (
        [2, 1, 3],
        4,
        ".nii.gz",
    )
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        f"{c}_{k:04d}.nii.gz" for c in cases for k in range(4)
    ]
    fold_of = {e["case_id"]: e["fold"] for e in prepared["training"]}
    splits = json.loads((folder / "splits_final.json").read_text())
    assert [sorted(s["val"]) for s in splits] == [sorted(c for c in cases if fold_of[c] == k) for k in range(2)]
    assert all(sorted(s["train"] + s["val"]) == cases for s in splits)
    # The voxels and the geometry: each channel file is the prepared image's channel, the label the prepared label.
    entry = prepared["training"][0]
    source = nib.load(tiny_prepared / entry["image"])
    for k in range(4):
        channel = nib.load(folder / "imagesTr" / f"{entry['case_id']}_{k:04d}.nii.gz")
        assert channel.shape == source.shape[:3] and np.array_equal(channel.affine, source.affine)
        assert np.array_equal(channel.get_fdata(dtype=np.float32), source.get_fdata(dtype=np.float32)[..., k])
        assert channel.header.get_sform(coded=True)[1] == source.header.get_sform(coded=True)[1]
    assert (folder / "labelsTr" / f"{entry['case_id']}.nii.gz").read_bytes() == (
        tiny_prepared / entry["label"]
    ).read_bytes()

    # Read back with the importer: the same cases, folds, channels and labels; the regions are the bundles'.
    result = build_datalist(folder, out=tmp_path / "back")
    back = _json(tmp_path / "back")
    assert {
        e["case_id"]: e["fold"] for e in back["training"]
    } == fold_of and result.splits == folder / "splits_final.json"
    assert back["regions"] == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]} and back["regions_class_order"] == [2, 1, 3]
    assert not any("regions" in w for w in result.warnings) and not result.rejected
    for fold in range(2):
        _, val = fold_datalists(tmp_path / "back", fold)
        _, original = fold_datalists(tiny_prepared, fold)
        assert [e["case_id"] for e in val] == [e["case_id"] for e in original]
        for mine, theirs in zip(val, original, strict=True):
            a, b = _load(mine), _load(theirs)
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_export_refuses_and_replaces(tiny_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tmp_path / "raw"
    export_nnunet(tiny_prepared, raw, 502, name="Brain", output_mode="labels")
    folder = raw / "Dataset502_Brain"
    assert _json(folder)["labels"] == {"background": 0, "NCR": 1, "ED": 2, "ET": 3}
    assert "regions_class_order" not in _json(folder)
    assert main(["nnunet-export", str(tiny_prepared), str(raw), "--id", "502", "--name", "Brain"]) == 2
    assert f"{folder}: exists; expected a new folder (give --overwrite to replace it)" in capsys.readouterr().err
    assert main(["nnunet-export", str(tiny_prepared), str(raw), "--id", "502", "--name", "Other"]) == 2
    assert "Dataset502_Brain: already uses dataset ID 502" in capsys.readouterr().err
    (folder / "stale.txt").write_text("from an older export")
    assert main(["nnunet-export", str(tiny_prepared), str(raw), "--id", "502", "--name", "Brain", "--overwrite"]) == 0
    assert not (folder / "stale.txt").exists() and "WT" in _json(folder)["labels"]
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset502_Brain"]
    with pytest.raises(SystemExit):
        main(["nnunet-export", str(tiny_prepared), str(raw), "--id", "1000"])
    with pytest.raises(ValueError, match="dataset name 'Bad name'"):
        export_nnunet(tiny_prepared, raw, 503, name="Bad name")
    # An image that is not 4 channels stops the export, naming the file; nothing is left under the final name.
    broken = tmp_path / "broken"
    content = read_dataset_json(tiny_prepared)
    absolute = {"image": str(tiny_prepared / "{image}"), "label": str(tiny_prepared / "{label}")}
    training = [{**e, **{key: path.format(**e) for key, path in absolute.items()}} for e in content["training"]]
    training[-1]["image"] = str(_save(broken / "imagesTr" / "3d.nii.gz", _channel(0, 0)))
    write_dataset_json(broken, {**content, "training": training})
    with pytest.raises(InputError, match=r"expected a 4-channel image \(X, Y, Z, 4\)"):
        export_nnunet(broken, raw, 504)
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset502_Brain"]
