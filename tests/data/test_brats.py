"""Case discovery and modality pairing over raw BraTS trees, and fold assignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg3d.core.constants import EDITIONS
from medseg3d.core.errors import InputError
from medseg3d.core.io import save_nifti
from medseg3d.data.brats import detect_edition, find_cases
from medseg3d.data.folds import assign_folds


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        save_nifti(np.ones((4, 3, 2), np.int16), np.eye(4), folder / name)


@pytest.mark.parametrize(
    "folder, names, case_id, edition",
    [
        pytest.param(
            "HGG/BraTS19_CBICA_AAB_1",
            [EDITIONS["2019"].file_name("BraTS19_CBICA_AAB_1", k) for k in ("t1", "t1ce", "t2", "flair", "seg")],
            "BraTS19_CBICA_AAB_1",
            "2019",
            id="2019",
        ),
        pytest.param(
            "BraTS20_Training_001",
            [f"BraTS20_Training_001_{k}.nii" for k in ("t1", "t1ce", "t2", "flair", "seg")],
            "BraTS20_Training_001",
            "2020",
            id="2020-uncompressed",
        ),
        pytest.param(
            "BraTS2021_00000",
            [EDITIONS["2021"].file_name("BraTS2021_00000", k) for k in ("t1", "t1ce", "t2", "flair", "seg")],
            "BraTS2021_00000",
            "2021",
            id="2021",
        ),
        pytest.param(
            "some_folder",
            [EDITIONS["2023"].file_name("BraTS-MET-00110-000", k) for k in ("t1", "t1ce", "t2", "flair")],
            "BraTS-MET-00110-000",
            "2023",
            id="2023-met-renamed-folder",
        ),
    ],
)
def test_cases_are_paired_by_suffix(tmp_path: Path, folder: str, names: list[str], case_id: str, edition: str) -> None:
    _touch(tmp_path / folder, *names)
    (case,) = find_cases(tmp_path)
    assert case.case_id == case_id
    assert case.edition == edition
    assert sorted(case.images) == ["flair", "t1", "t1ce", "t2"]
    assert not case.problems
    assert case.images["t1ce"].name in names
    assert (case.seg is not None) == any("seg" in n for n in names)
    assert case.grade == ("HGG" if edition == "2019" else None)
    assert detect_edition([case]).name == edition


@pytest.mark.parametrize(
    "names, problem",
    [
        pytest.param(["c_t1.nii.gz", "c_t2.nii.gz", "c_flair.nii.gz"], "missing modality: t1ce", id="missing"),
        pytest.param(
            ["c_t1.nii.gz", "c_t1c.nii.gz", "c_t1ce.nii.gz", "c_t2.nii.gz", "c_flair.nii.gz"],
            "ambiguous t1ce: several files match (c_t1c.nii.gz, c_t1ce.nii.gz)",
            id="ambiguous",
        ),
    ],
)
def test_pairing_problems_are_reported(tmp_path: Path, names: list[str], problem: str) -> None:
    _touch(tmp_path / "case", *names)
    (case,) = find_cases(tmp_path)
    assert any(problem in p for p in case.problems), case.problems


def test_unsafe_names_and_duplicate_ids(tmp_path: Path) -> None:
    _touch(tmp_path / "a" / "x y", "scan 1_t1.nii.gz", "scan 2_t1ce.nii.gz", "s_t2.nii.gz", "s_flair.nii.gz")
    _touch(tmp_path / "b" / "x y", "scan 1_t1.nii.gz", "scan 2_t1ce.nii.gz", "s_t2.nii.gz", "s_flair.nii.gz")
    cases = find_cases(tmp_path)
    ids = [c.case_id for c in cases]
    assert len(set(ids)) == 2
    assert all("/" not in i and " " not in i and not i.startswith(".") for i in ids)


def test_find_cases_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expected a folder"):
        find_cases(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(InputError, match="no NIfTI file"):
        find_cases(tmp_path)


def test_detect_edition_errors_and_override(tmp_path: Path) -> None:
    _touch(tmp_path / "c", "c_t1.nii.gz", "c_t1ce.nii.gz", "c_t2.nii.gz", "c_flair.nii.gz")
    cases = find_cases(tmp_path)
    assert detect_edition(cases).name == "2021"  # legacy names, no edition prefix: 2019-2021 labels
    assert detect_edition(cases, "2019").name == "2019"
    with pytest.raises(ValueError, match="unknown edition '2022'"):
        detect_edition(cases, "2022")


@pytest.mark.parametrize("folds", [1, 2, 5])
def test_folds_balanced_within_groups(folds: int) -> None:
    ids = [f"case{i:02d}" for i in range(23)]
    groups = {c: ("LGG" if i % 3 == 0 else "HGG") for i, c in enumerate(ids)}
    split = assign_folds(ids, folds, seed=4, groups=groups)
    assert split == assign_folds(list(reversed(ids)), folds, seed=4, groups=groups)
    for grade in ("HGG", "LGG"):
        counts = [sum(1 for c in ids if groups[c] == grade and split[c] == f) for f in range(folds)]
        assert max(counts) - min(counts) <= 1, (grade, counts)
    totals = [list(split.values()).count(f) for f in range(folds)]
    assert max(totals) - min(totals) <= 1
    assert assign_folds(ids, folds, seed=5, groups=groups) != split or folds == 1


def test_folds_reject_zero() -> None:
    with pytest.raises(ValueError, match="folds must be >= 1"):
        assign_folds(["a"], 0)
