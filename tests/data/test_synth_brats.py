"""Tests of the synthetic BraTS phantoms and raw trees (medseg3d.data.synth_brats)."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg3d.core.constants import EDITIONS, MODALITIES
from medseg3d.data.synth_brats import (
    GRADES,
    NAME_MAPPING_HEADER,
    TISSUES,
    make_brats_case,
    make_brats_phantom,
    write_brats_tree,
)
from medseg3d.metrics import roc_auc

SHAPE = (48, 40, 32)  # small and non-cubic: catches swapped axes
LEGACY = ("t1", "t1ce", "t2", "flair", "seg")
BRATS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, SHAPE[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.nii*")}


@pytest.mark.parametrize(
    ("edition", "train", "val", "suffixes", "separator", "extra", "labels"),
    [
        pytest.param(
            "2019",
            [f"MICCAI_BraTS_2019_Data_Training/[HL]GG/BraTS19_SYN_000{i}_1" for i in (1, 2, 3)],
            ["MICCAI_BraTS_2019_Data_Validation/BraTS19_SYN_V001_1"],
            LEGACY,
            "_",
            set(),
            {1, 2, 4},
            id="2019",
        ),
        pytest.param(
            "2020",
            [f"MICCAI_BraTS2020_TrainingData/BraTS20_Training_00{i}" for i in (1, 2, 3)],
            ["MICCAI_BraTS2020_ValidationData/BraTS20_Validation_001"],
            LEGACY,
            "_",
            {"MICCAI_BraTS2020_TrainingData/name_mapping.csv"},
            {1, 2, 4},
            id="2020",
        ),
        pytest.param(
            "2021",
            [f"RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021/BraTS2021_0000{i}" for i in (0, 1, 2)],
            ["RSNA_ASNR_MICCAI_BraTS2021_ValidationData/BraTS2021_00003"],
            LEGACY,
            "_",
            set(),
            {1, 2, 4},
            id="2021",
        ),
        pytest.param(
            "2023",
            [f"ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData/BraTS-GLI-0000{i}-000" for i in (0, 1, 2)],
            ["ASNR-MICCAI-BraTS2023-GLI-Challenge-ValidationData/BraTS-GLI-00003-000"],
            ("t1n", "t1c", "t2w", "t2f", "seg"),
            "-",
            set(),
            {1, 2, 3},
            id="2023",
        ),
    ],
)
def test_tree_layout_and_labels(tmp_path, edition, train, val, suffixes, separator, extra, labels):
    folders = write_brats_tree(tmp_path, cases=3, edition=edition, shape=SHAPE, seed=0, validation_cases=1)

    relative = [folder.relative_to(tmp_path).as_posix() for folder in folders]
    assert len(relative) == len(train) + len(val)
    assert all(fnmatch.fnmatchcase(got, pattern) for got, pattern in zip(relative, train + val, strict=True))
    expected = set(extra)
    for index, folder in enumerate(relative):
        case_id = folder.rsplit("/", 1)[1]
        assert case_id.startswith(EDITIONS[edition].case_prefix)
        keys = suffixes if index < len(train) else suffixes[:-1]  # validation cases have no seg
        expected |= {f"{folder}/{case_id}{separator}{key}.nii.gz" for key in keys}
    assert _files(tmp_path) == expected  # nothing else, no temporary files left behind

    mapping = tmp_path / "MICCAI_BraTS2020_TrainingData" / "name_mapping.csv"
    rows = mapping.read_text().splitlines() if mapping.exists() else []
    lgg = {row.rsplit(",", 1)[1] for row in rows if row.startswith("LGG,")}
    present: set[int] = set()
    for folder in folders[: len(train)]:
        case_id = folder.name
        seg = nib.load(folder / EDITIONS[edition].file_name(case_id, "seg"))
        values = set(np.unique(np.asarray(seg.dataobj)).tolist())
        assert seg.get_data_dtype() == np.uint8 and seg.shape == SHAPE
        assert values <= {0} | labels
        if folder.parent.name != "LGG" and case_id not in lgg:  # HGG and grade-less: all three sub-regions
            assert values == {0} | labels
        present |= values
        image = nib.load(folder / EDITIONS[edition].file_name(case_id, "t1ce"))
        assert image.get_data_dtype() == np.int16 and image.shape == SHAPE
        np.testing.assert_allclose(image.affine, BRATS_AFFINE)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert present == {0} | labels


def test_name_mapping_2020(tmp_path):
    write_brats_tree(tmp_path, cases=3, edition="2020", shape=SHAPE, seed=5)
    lines = (tmp_path / "MICCAI_BraTS2020_TrainingData" / "name_mapping.csv").read_text().splitlines()
    assert lines[0] == (
        "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID"
    )
    assert lines[0] == NAME_MAPPING_HEADER
    rows = [line.split(",") for line in lines[1:]]
    assert [row[5] for row in rows] == ["BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"]
    assert all(row[1:5] == ["NA"] * 4 for row in rows)
    assert sorted(row[0] for row in rows) == ["HGG", "HGG", "LGG"]


@pytest.mark.parametrize(("cases", "hgg", "lgg"), [(1, 1, 0), (2, 1, 1), (3, 2, 1), (6, 4, 2)])
def test_2019_grade_mix(tmp_path, cases, hgg, lgg):
    folders = write_brats_tree(tmp_path, cases=cases, edition="2019", shape=(16, 20, 16), seed=1)
    grades = [folder.parent.name for folder in folders]
    assert (grades.count("HGG"), grades.count("LGG")) == (hgg, lgg)


def test_nii_extension(tmp_path):
    (folder,) = write_brats_tree(tmp_path, cases=1, edition="2021", shape=SHAPE, extension=".nii")
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"BraTS2021_00000_{k}.nii" for k in LEGACY)


def test_same_seed_same_bytes(tmp_path):
    def write(name: str, seed: int) -> dict[str, str]:
        write_brats_tree(tmp_path / name, cases=2, edition="2023", shape=SHAPE, seed=seed, validation_cases=1)
        return _digests(tmp_path / name)

    first, again, other = write("a", 3), write("b", 3), write("c", 4)
    assert len(first) == 2 * 5 + 4
    assert first == again
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first)


@pytest.mark.parametrize("shape", [SHAPE, (16, 24, 40), (64, 20, 17)], ids=str)
def test_case_arrays(shape):
    images, seg, affine = make_brats_case(shape, seed=2)
    assert tuple(images) == MODALITIES
    for image in images.values():
        assert image.dtype == np.int16 and image.shape == shape
        assert 300 < image.max() < 8000  # raw-scanner range: hundreds to a few thousand
    assert seg.dtype == np.uint8 and seg.shape == shape
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    assert affine.shape == (4, 4)
    np.testing.assert_allclose(affine[:3, :3], np.diag([-1.0, -1.0, 1.0]))
    assert set(np.unique(make_brats_case(shape, 2, label_values=(1, 2, 3))[1]).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("grade", ["HGG", "LGG"])
def test_zero_outside_brain_and_seg_inside(grade):
    for seed in range(4):
        phantom = make_brats_phantom(SHAPE, seed=seed, grade=grade)
        brain = phantom.tissue > 0
        assert 0.1 < brain.mean() < 0.3  # a plausible fraction of the field of view
        assert not brain[[0, -1]].any() and not brain[:, [0, -1]].any() and not brain[:, :, [0, -1]].any()
        for image in phantom.images.values():
            assert np.array_equal(image > 0, brain)
        tumour = phantom.seg > 0
        assert tumour.any() and not (tumour & ~brain).any()
        assert all((image[tumour] > 0).all() for image in phantom.images.values())


def test_contrasts():
    for seed in range(3):
        phantom = make_brats_phantom(SHAPE, seed=seed, grade="HGG")
        seg, tissue = phantom.seg, phantom.tissue
        healthy = seg == 0
        wm = healthy & (tissue == TISSUES["WM"])
        gm = healthy & (tissue == TISSUES["GM"])
        csf = healthy & (tissue == TISSUES["CSF"])
        assert wm.sum() > 100 and gm.sum() > 100 and csf.sum() > 10

        def mean(modality: str, mask: np.ndarray, images: dict[str, np.ndarray] = phantom.images) -> float:
            return float(images[modality][mask].mean())

        assert mean("t1", wm) > mean("t1", gm) > mean("t1", csf)
        assert mean("t1ce", seg == 4) > 1.5 * mean("t1ce", wm)
        assert mean("t1ce", seg == 1) < mean("t1ce", wm)
        assert mean("t2", csf) > max(mean("t2", wm), mean("t2", gm), mean("t2", seg == 2))
        assert mean("t2", seg == 2) > mean("t2", wm)
        assert mean("flair", seg == 2) > max(mean("flair", m) for m in (wm, gm, csf, seg == 1, seg == 4))
        assert mean("flair", csf) < mean("flair", wm)


def test_another_scanner_draws_the_same_anatomy_with_other_intensities():
    """``scanner="shifted"``: the seed's anatomy and labels, other contrasts, bias and noise; the default scanner's
    phantoms are the ones they always were (its random stream is unchanged)."""
    default, shifted = (make_brats_phantom(SHAPE, seed=5, scanner=name) for name in ("default", "shifted"))
    assert np.array_equal(default.seg, shifted.seg) and np.array_equal(default.tissue, shifted.tissue)
    assert all(np.array_equal(default.images[m] > 0, shifted.images[m] > 0) for m in MODALITIES)  # same brain
    assert all(np.array_equal(default.images[m], make_brats_phantom(SHAPE, seed=5).images[m]) for m in MODALITIES)

    def contrast(phantom, modality: str, label: int) -> float:
        """A tumour class's mean over white matter's, in one sequence."""
        wm = (phantom.seg == 0) & (phantom.tissue == TISSUES["WM"])
        return float(phantom.images[modality][phantom.seg == label].mean() / phantom.images[modality][wm].mean())

    ratios = [contrast(p, m, label) for p in (default, shifted) for m in MODALITIES for label in (1, 2, 4)]
    differences = np.abs(np.subtract(ratios[:12], ratios[12:])) / np.asarray(ratios[:12])
    assert differences.max() > 0.03  # other contrasts
    assert mean_noise(shifted) > 1.5 * mean_noise(default)  # and more noise
    with pytest.raises(ValueError, match="scanner must be one of"):
        make_brats_phantom(SHAPE, seed=5, scanner="mri")


def mean_noise(phantom) -> float:
    """The spread of white matter's T1 between neighbouring voxels, relative to its level: mostly noise."""
    t1 = phantom.images["t1"].astype(np.float64)
    wm = (phantom.seg == 0) & (phantom.tissue == TISSUES["WM"])
    both = wm[1:] & wm[:-1]
    return float(np.std((t1[1:] - t1[:-1])[both]) / t1[wm].mean())


def test_sub_regions_nested_and_sized():
    lgg_without_et = 0
    centres = set()
    for seed in range(12):
        for grade in ("HGG", "LGG"):
            seg = make_brats_case(SHAPE, seed=seed, grade=grade)[1]
            ncr, ed, et = seg == 1, seg == 2, seg == 4
            core = ncr | et
            assert ncr.sum() >= 5 and ed.sum() >= 5
            assert not (ndimage.binary_dilation(core) & ~(seg > 0)).any()  # edema wraps the core
            if grade == "HGG":
                assert et.sum() >= 5
                assert not (ndimage.binary_dilation(ncr) & ~core).any()  # enhancing rim wraps the necrosis
                centres.add(tuple(np.round(ndimage.center_of_mass(core)).astype(int)))
            else:
                lgg_without_et += not et.any()
                assert et.sum() < ncr.sum()
    assert 0 < lgg_without_et < 12
    assert len(centres) >= 10  # the tumour moves with the seed


GRADE_SHAPE = (64, 56, 40)  # large enough that the tumour's size is drawn, not clamped to the minimum sizes
GRADE_CASES = 16  # per grade: HGG seeds 0..15, LGG seeds 16..31, so that no two cases share an anatomy


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """The length of the intersection of the ranges of ``a`` and ``b`` over that of the narrower range."""
    return float((min(a.max(), b.max()) - max(a.min(), b.min())) / min(np.ptp(a), np.ptp(b)))


def _auc(hgg: np.ndarray, lgg: np.ndarray) -> float:
    """How well one number tells the grades apart: the probability that an HGG case's exceeds an LGG case's
    (0.5: not at all; 0 or 1: perfectly)."""
    return roc_auc(np.concatenate([hgg, lgg]), np.r_[np.ones(len(hgg)), np.zeros(len(lgg))])


@pytest.fixture(scope="module")
def grade_numbers() -> dict[str, dict[str, np.ndarray]]:
    """Per grade, per measure, one value per phantom of ``GRADE_SHAPE`` (``GRADE_CASES`` phantoms a grade)."""
    numbers: dict[str, dict[str, list[float]]] = {grade: {} for grade in GRADES}
    for index, grade in enumerate(GRADES):
        for seed in range(index * GRADE_CASES, (index + 1) * GRADE_CASES):
            phantom = make_brats_phantom(GRADE_SHAPE, seed=seed, grade=grade)
            seg, brain = phantom.seg, phantom.tissue > 0
            ncr, et, whole = seg == 1, seg == 4, seg > 0
            core = ncr | et
            wm = (seg == 0) & (phantom.tissue == TISSUES["WM"])
            # Where the tumour sits: its centre's offset from the brain's, in brain half-extents (0: the centre).
            half = np.array([np.ptp(axis) for axis in np.nonzero(brain)]) / 2
            offset = (np.array(ndimage.center_of_mass(whole)) - ndimage.center_of_mass(brain)) / half
            # ET around NCR: the mean distance of ET and NCR voxels from the core's centre, in voxels.
            centre = np.array(ndimage.center_of_mass(core))
            radius = {
                name: np.linalg.norm(np.argwhere(m) - centre, axis=1).mean() if m.any() else np.nan
                for name, m in (("ncr", ncr), ("et", et))
            }

            def contrast(modality: str, mask: np.ndarray, images: dict = phantom.images, wm: np.ndarray = wm) -> float:
                """Mean of ``mask`` over the mean of the case's healthy white matter, in one sequence."""
                return float(images[modality][mask].mean() / images[modality][wm].mean())

            values = {
                "brain": brain.sum(),
                "whole": whole.sum(),
                "distance": np.linalg.norm(offset),
                "et_share": et.sum() / core.sum(),  # the enhancing share of the tumour core
                "ncr_enclosed": not (ndimage.binary_dilation(ncr) & ~core).any(),  # face neighbours: NCR or ET
                "et_around_ncr": et[ndimage.binary_dilation(ncr, np.ones((3, 3, 3))) & ~ncr].mean() if ncr.any() else 0,
                "ncr_radius": radius["ncr"],
                "et_radius": radius["et"],
                **{f"{m}_core": contrast(m, core) for m in ("t1ce", "t2", "flair")},
                **{f"{m}_whole": contrast(m, whole) for m in ("t2", "flair")},
            }
            for name, value in values.items():
                numbers[grade].setdefault(name, []).append(float(value))
    return {grade: {name: np.array(v) for name, v in by.items()} for grade, by in numbers.items()}


def test_grades_differ_as_real_ones_do(grade_numbers):
    """HGG: a necrotic core inside an enhancing rim. LGG: little or no enhancement, a tumour bright in T2 and
    FLAIR. The enhancing share of the core alone tells the grades apart, as contrast enhancement does in the
    clinic; so does the core's T1ce."""
    hgg, lgg = grade_numbers["HGG"], grade_numbers["LGG"]
    # HGG: every case's necrosis (NCR) is wrapped by enhancing tumour (ET), which lies further out.
    assert (hgg["et_share"] > 0.5).all()
    assert hgg["ncr_enclosed"].all()
    assert (hgg["et_around_ncr"] > 0.95).all()  # of all 26 neighbours of necrosis outside it, nearly all ET
    assert (hgg["et_radius"] > 1.3 * hgg["ncr_radius"]).all()
    assert (hgg["t1ce_core"] > 1.5).all()  # the core enhances
    # LGG: most cases without enhancement, the others with a small enhancing share.
    assert (lgg["et_share"] == 0).sum() >= GRADE_CASES // 2
    assert (lgg["et_share"] <= 0.3).all()
    assert hgg["et_share"].min() > 2 * lgg["et_share"].max()
    assert hgg["t1ce_core"].min() > lgg["t1ce_core"].max()
    # LGG tumours are hyperintense in T2 and FLAIR, their non-enhancing core more than an HGG's core.
    for modality in ("t2", "flair"):
        assert (lgg[f"{modality}_core"] > 1.5).all() and (lgg[f"{modality}_whole"] > 1.5).all()
        assert np.median(lgg[f"{modality}_core"]) > np.median(hgg[f"{modality}_core"])


@pytest.mark.parametrize("measure", ["brain", "whole", "distance"])
def test_grades_overlap_in_size_and_position(grade_numbers, measure):
    """No shortcut: the brain's size, the whole tumour's size and how far the tumour sits from the brain's centre
    are drawn alike for both grades, so none of them tells the grade: their ranges overlap and neither grade's
    values rank above the other's (an AUC near 0.5)."""
    hgg, lgg = grade_numbers["HGG"][measure], grade_numbers["LGG"][measure]
    assert _overlap(hgg, lgg) > 0.6, (hgg, lgg)
    assert 0.3 < _auc(hgg, lgg) < 0.7, (hgg, lgg)
    assert abs(np.median(hgg) - np.median(lgg)) < 0.15 * np.median(np.r_[hgg, lgg])


def test_grades_share_the_intensity_scale():
    """No shortcut in the scanner's scale: healthy white and grey matter have the same intensities in both grades.
    The white matter level is drawn per case and sequence over a wide range (about +-25%), so this compares many
    small phantoms: the grades' means differ by a few percent at most and neither grade ranks above the other."""
    means: dict[str, list[list[float]]] = {grade: [] for grade in GRADES}
    for index, grade in enumerate(GRADES):
        for seed in range(1000 + index * 100, 1000 + (index + 1) * 100):
            phantom = make_brats_phantom((40, 36, 24), seed=seed, grade=grade)
            healthy = [(phantom.seg == 0) & (phantom.tissue == TISSUES[t]) for t in ("WM", "GM")]
            means[grade].append([float(phantom.images[m][mask].mean()) for mask in healthy for m in MODALITIES])
    hgg, lgg = np.array(means["HGG"]), np.array(means["LGG"])  # (cases, tissue x modality)
    assert (np.abs(hgg.mean(0) / lgg.mean(0) - 1) < 0.05).all(), hgg.mean(0) / lgg.mean(0)
    assert all(0.35 < _auc(hgg[:, k], lgg[:, k]) < 0.65 for k in range(hgg.shape[1]))
    assert all(_overlap(hgg[:, k], lgg[:, k]) > 0.8 for k in range(hgg.shape[1]))


def test_full_size_case_is_fast():
    start = time.perf_counter()
    images, seg, _ = make_brats_case((240, 240, 155), seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"full-size case took {elapsed:.1f} s"
    assert seg.shape == (240, 240, 155) and images["flair"].shape == (240, 240, 155)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    brain = images["t1"] > 0
    assert 0.1 < brain.mean() < 0.3
    assert 0.01 < (seg > 0).sum() / brain.sum() < 0.25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param(
            {"edition": "2022"}, r"unknown BraTS edition '2022'; expected one of 2019, 2020, 2021, 2023", id="edition"
        ),
        pytest.param({"cases": 0}, r"cases must be an integer >= 1, got 0", id="no-cases"),
        pytest.param({"validation_cases": -1}, r"validation_cases must be an integer >= 0", id="validation"),
        pytest.param({"seed": -1}, r"seed must be an integer >= 0", id="seed"),
        pytest.param({"shape": (48, 40)}, r"shape must be 3 positive integers", id="2d-shape"),
        pytest.param({"shape": (48, 40, 32.0)}, r"shape must be 3 positive integers", id="float-shape"),
        pytest.param(
            {"shape": (48, 15, 32)}, r"shape must be at least 16 on every axis, got \(48, 15, 32\)", id="small"
        ),
        pytest.param({"extension": ".mha"}, r"extension must be one of \.nii\.gz, \.nii", id="extension"),
    ],
)
def test_tree_argument_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_brats_tree(tmp_path, **{"cases": 1, "shape": SHAPE, **kwargs})
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"grade": "GBM"}, r"grade must be one of HGG, LGG", id="grade"),
        pytest.param({"label_values": (1, 1, 4)}, r"label_values must be 3 distinct integers", id="labels"),
        pytest.param({"shape": (0, 40, 32)}, r"at least 16 on every axis", id="zero-axis"),
    ],
)
def test_case_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_brats_case(**{"shape": SHAPE, **kwargs})
