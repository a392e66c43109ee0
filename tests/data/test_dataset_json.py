"""The dataset.json contract: fold datalists from a prepared dataset, the schema's round trip through the one
writer and reader, version 1 files, extra columns and kept fields, and the errors for bad files (each naming it)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg3d.core.errors import InputError
from medseg3d.data.dataset_json import (
    KEPT_FIELDS,
    SCHEMA_VERSION,
    assign_entry_folds,
    class_names_for,
    fold_datalists,
    read_dataset_json,
    relative_path,
    write_dataset_json,
    written_by,
)


@pytest.fixture
def prepared(tiny_prepared: Path) -> Path:
    return tiny_prepared


@pytest.mark.parametrize("fold", [0, 1])
def test_each_fold_validates_once(prepared: Path, fold: int) -> None:
    train, val = fold_datalists(prepared, fold)
    assert len(train) == 2 and len(val) == 2
    assert all(e["fold"] == fold for e in val) and all(e["fold"] != fold for e in train)
    assert all(Path(e["image"]).is_absolute() and Path(e["label"]).is_file() for e in train + val)


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(None, "not found; expected the dataset.json", id="missing"),
        pytest.param("{not json", "is not valid JSON", id="not-json"),
        pytest.param('{"test": []}', "with a 'training' list", id="no-training"),
        pytest.param('{"training": []}', "holds no training case", id="empty"),
        pytest.param('{"training": [{"image": "a.nii.gz", "fold": 0}]}', "entry 0 lacks label", id="no-label"),
    ],
)
def test_bad_dataset_json(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "dataset.json").write_text(content)
    with pytest.raises(InputError, match=message) as info:
        fold_datalists(tmp_path, 0)
    assert "dataset.json" in str(info.value)


def test_unknown_fold_and_missing_file(prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no case is in fold 7; folds present: \[0, 1\]"):
        fold_datalists(prepared, 7)
    content = json.loads((prepared / "dataset.json").read_text())
    content["training"][0]["image"] = "imagesTr/gone.nii.gz"
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    for sub in ("imagesTr", "labelsTr"):
        (tmp_path / sub).symlink_to(prepared / sub)
    with pytest.raises(InputError, match="gone.nii.gz: listed as image"):
        fold_datalists(tmp_path, 0)


# ------------------------------------------------------------------------------------------------ the one schema

SHAPE = (10, 12, 7)  # non-cubic: swapped axes fail


def _volume(path: Path, seed: int, label: bool = False) -> None:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 3, SHAPE).astype(np.uint8) if label else rng.normal(size=SHAPE).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.9, 2.5, 1.0])), path)


def _cases(folder: Path, grades: list[str | None]) -> list[dict]:
    """One synthetic image/label pair per grade under ``folder``; the cases (no fold yet) as the writers list them."""
    entries = []
    for number, grade in enumerate(grades):
        case_id = f"case_{number:02d}"
        _volume(folder / "imagesTr" / f"{case_id}.nii.gz", number)
        _volume(folder / "labelsTr" / f"{case_id}.nii.gz", number, label=True)
        entries.append(
            {"case_id": case_id, "image": f"imagesTr/{case_id}.nii.gz", "label": f"labelsTr/{case_id}.nii.gz",
             "grade": grade}
        )  # fmt: skip
    return entries


def _content(entries: list[dict], **extra) -> dict:
    return {"name": "toy", "generator": "test", "labels": {"0": "background", "1": "a", "2": "b"}, "folds": 2,
            "seed": 0, **extra, "training": entries}  # fmt: skip


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """A schema-2 dataset of 4 cases (2 HGG, 2 LGG) in 2 folds, with an extra column ``site``."""
    entries = assign_entry_folds(_cases(tmp_path, ["HGG", "LGG", "HGG", "LGG"]), folds=2, seed=0)
    for entry, site in zip(entries, ["a", "b", "a", "b"], strict=True):
        entry["site"] = site
    write_dataset_json(tmp_path, _content(entries, notes={"scanner": "toy"}))
    return tmp_path


def test_write_read_round_trip(written: Path) -> None:
    text = (written / "dataset.json").read_text()
    on_disk = json.loads(text)
    assert list(on_disk)[0] == "schema_version" and on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["numTraining"] == 4 and "numTest" not in on_disk
    assert list(on_disk).index("numTraining") == list(on_disk).index("training") - 1
    content = read_dataset_json(written)
    assert content == on_disk  # extra top-level keys (notes) and columns (site) kept as written
    assert content["notes"] == {"scanner": "toy"} and [e["site"] for e in content["training"]] == ["a", "b", "a", "b"]
    # Grade-stratified folds: each fold holds one HGG and one LGG case.
    by_fold = {f: sorted(e["grade"] for e in content["training"] if e["fold"] == f) for f in (0, 1)}
    assert by_fold == {0: ["HGG", "LGG"], 1: ["HGG", "LGG"]}
    assert not [p for p in written.iterdir() if ".tmp" in p.name]


def test_writer_counts_and_test_cases(tmp_path: Path) -> None:
    entries = assign_entry_folds(_cases(tmp_path, [None, None]), folds=2)
    test = [{"case_id": "unlabelled", "image": "imagesTs/unlabelled.nii.gz", "grade": None, "tumour_type": "MET"}]
    out = write_dataset_json(tmp_path, {**_content(entries), "numTraining": 99, "schema_version": 1, "test": test})
    assert (out["schema_version"], out["numTraining"], out["numTest"]) == (SCHEMA_VERSION, 2, 1)
    assert read_dataset_json(tmp_path)["test"][0]["tumour_type"] == "MET"
    # A tree of test cases only is written (prep_brats of a validation set); training refuses it.
    write_dataset_json(tmp_path, {**_content([]), "test": test})
    with pytest.raises(InputError, match="holds no training case"):
        read_dataset_json(tmp_path)


def test_writer_refuses_a_bad_content_and_keeps_the_file(written: Path) -> None:
    before = (written / "dataset.json").read_bytes()
    content = read_dataset_json(written)
    content["training"][1]["case_id"] = content["training"][0]["case_id"]
    with pytest.raises(InputError, match="expected unique case IDs"):
        write_dataset_json(written, content)
    assert (written / "dataset.json").read_bytes() == before


def test_version_1_file_reads(written: Path) -> None:
    """A file written before ``schema_version`` existed (and without case IDs, which version 1 did not require)."""
    content = json.loads((written / "dataset.json").read_text())
    del content["schema_version"]
    for entry in content["training"]:
        del entry["case_id"]
    (written / "dataset.json").write_text(json.dumps(content))
    read = read_dataset_json(written)
    assert read["schema_version"] == 1
    assert [e["case_id"] for e in read["training"]] == ["case_00", "case_01", "case_02", "case_03"]
    train, val = fold_datalists(written, 0)
    assert sorted(e["case_id"] for e in train + val) == ["case_00", "case_01", "case_02", "case_03"]


def test_kept_fields(written: Path) -> None:
    train, val = fold_datalists(written, 1)
    assert all(set(e) == {"image", "label", "case_id", "fold"} for e in train + val)  # the safe default
    train, val = fold_datalists(written, 1, keys=(*KEPT_FIELDS, "grade", "site"))
    assert sorted((e["grade"], e["site"]) for e in val) == [("HGG", "a"), ("LGG", "b")]
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file() for e in train + val)


@pytest.mark.parametrize(
    "bad, message",
    [
        pytest.param(None, "holds None", id="null"),
        pytest.param([[0, 0], [1, 1], [0, 1]], r"holds \[\[0, 0\]", id="nested"),
        pytest.param(KeyError, "lacks it", id="absent"),
    ],
)
def test_kept_field_that_does_not_collate(written: Path, bad: object, message: str) -> None:
    """Every other case holds a string in the extra column ``site``; case 2 holds ``bad`` (or lacks it)."""
    content = read_dataset_json(written)
    if bad is KeyError:
        del content["training"][2]["site"]
    else:
        content["training"][2]["site"] = bad
    write_dataset_json(written, content)
    assert fold_datalists(written, 0)  # the default keeps none of it
    with pytest.raises(InputError, match=message) as info:
        fold_datalists(written, 0, keys=(*KEPT_FIELDS, "site"))
    assert str(written / "dataset.json") in str(info.value) and "training entry 2 (case_02)" in str(info.value)


def test_paths_outside_the_dataset_folder(written: Path) -> None:
    """``medseg3d datalist --out elsewhere`` lists ``../`` paths: they resolve against the dataset folder."""
    lists = written / "lists"
    content = read_dataset_json(written)
    for entry in content["training"]:
        for key in ("image", "label"):
            entry[key] = relative_path(written / entry[key], lists)
    write_dataset_json(lists, content)
    assert read_dataset_json(lists)["training"][0]["image"] == "../imagesTr/case_00.nii.gz"
    train, val = fold_datalists(lists, 0)
    assert {Path(e["image"]) for e in train + val} == set((written / "imagesTr").glob("*.nii.gz"))


def test_written_by(written: Path, tmp_path: Path) -> None:
    assert written_by(written) == "test"
    assert written_by(tmp_path / "nowhere") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text("[1, 2")
    assert written_by(tmp_path / "bad") is None


def _case(number: int, **change) -> dict:
    entry = {"case_id": f"c{number}", "image": f"imagesTr/c{number}.nii.gz", "label": f"labelsTr/c{number}.nii.gz",
             "fold": number % 2}  # fmt: skip
    return {**entry, **change}


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(
            {"schema_version": 3, "training": [_case(0)]},
            "schema_version is 3; expected an integer from 1 to 2",
            id="newer-version",
        ),  # fmt: skip
        pytest.param({"schema_version": "2", "training": [_case(0)]}, "schema_version is '2'", id="version-string"),
        pytest.param({"schema_version": True, "training": [_case(0)]}, "schema_version is True", id="version-bool"),
        pytest.param([_case(0)], "expected a JSON object with a 'training' list", id="a-list"),
        pytest.param(
            {"schema_version": 2, "training": [{"image": "a.nii.gz", "label": "b.nii.gz", "fold": 0}]},
            "training entry 0 lacks case_id",
            id="v2-no-case-id",
        ),  # fmt: skip
        pytest.param(
            {"training": [_case(0), "c1.nii.gz"]},
            "training entry 1 is str; expected an object per case",
            id="entry-not-object",
        ),  # fmt: skip
        pytest.param(
            {"training": [_case(0), _case(1, fold=-1)]},
            r"training entry 1 \(c1\): fold is -1; expected an "
            "integer >= 0",
            id="negative-fold",
        ),  # fmt: skip
        pytest.param({"training": [_case(0, fold="0")]}, r"fold is '0'", id="string-fold"),
        pytest.param({"training": [_case(0, image="")]}, r"image is ''; expected a non-empty string", id="empty-image"),
        pytest.param({"training": [_case(0, label=["a", "b"])]}, r"label is \['a', 'b'\]", id="label-list"),
        pytest.param({"training": [_case(0, grade=4)]}, r"grade is 4; expected a string or null", id="grade-number"),
        pytest.param(
            {"training": [_case(0, tumour_type={"x": 1})]}, r"tumour_type is \{'x': 1\}", id="tumour-type-object"
        ),  # fmt: skip
        pytest.param(
            {"training": [_case(0), _case(1, case_id="C0")]},
            r"training entry 1 \(C0\): case ID 'C0' is also "
            r"training entry 0 \(c0\); expected unique case IDs",
            id="duplicate-ignoring-case",
        ),  # fmt: skip
        pytest.param(
            {"training": [_case(0)], "test": [{"case_id": "c0", "image": "imagesTs/c0.nii.gz"}]},
            r"test entry 0 \(c0\): case ID 'c0' is also training entry 0",
            id="duplicate-in-test",
        ),  # fmt: skip
        pytest.param(
            {"training": [_case(0)], "test": [{"case_id": "t0"}]}, "test entry 0 lacks image", id="test-image"
        ),
        pytest.param({"training": [_case(0)], "test": {}}, "'test' is dict; expected a list", id="test-not-list"),
        pytest.param({"training": [_case(0)], "folds": "5"}, "folds is '5'; expected an integer", id="folds-string"),
    ],
)
def test_schema_errors_name_the_file_and_entry(tmp_path: Path, content: object, message: str) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(InputError, match=message) as info:
        read_dataset_json(tmp_path)
    assert info.value.path == str(tmp_path / "dataset.json")
    with pytest.raises(InputError, match=message):
        fold_datalists(tmp_path, 0)


def test_fold_not_present_and_every_case_in_one_fold(written: Path) -> None:
    with pytest.raises(InputError, match=r"no case is in fold 2; folds present: \[0, 1\]") as info:
        fold_datalists(written, 2)
    assert info.value.path == str(written / "dataset.json")
    content = read_dataset_json(written)
    for entry in content["training"]:
        entry["fold"] = 0
    write_dataset_json(written, content)
    with pytest.raises(InputError, match="fold 0 holds every case; nothing is left to train on"):
        fold_datalists(written, 0)


def test_class_indices_for_a_multitask_network(written: Path) -> None:
    """``class_field``: each case holds ``class``, the index of its value in ``class_names``; null is -1."""
    content = read_dataset_json(written)
    content["training"][3]["grade"] = None
    write_dataset_json(written, content)
    names = class_names_for(written, "grade")
    assert names == ["LGG", "HGG"]  # grade's own order: HGG is the positive class
    train, val = fold_datalists(written, 1, class_field="grade", class_names=names)
    by_case = {e["case_id"]: e["class"] for e in train + val}
    assert by_case == {"case_00": 1, "case_01": 0, "case_02": 1, "case_03": -1}
    assert all("class" not in e for e in fold_datalists(written, 1)[0])  # no field: no class
    assert class_names_for(written, "site") == ["a", "b"]  # a column of its own: its sorted values
    assert class_names_for(written, "site", ["b", "a"]) == ["b", "a"] and class_names_for(written, None) == []
    with pytest.raises(InputError, match=r"grade is 'HGG'; expected one of \['x', 'y'\]") as info:
        fold_datalists(written, 1, class_field="grade", class_names=["x", "y"])
    assert str(written / "dataset.json") in str(info.value)
    content["training"][1]["site"] = "a"
    content["training"][3]["site"] = None
    write_dataset_json(written, content)
    with pytest.raises(InputError, match="expected at least two classes"):
        class_names_for(written, "site")
