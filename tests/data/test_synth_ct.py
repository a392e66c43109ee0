"""Tests of the synthetic CT phantoms: anatomy and HU, aorta label topology, determinism, NIfTI/DICOM geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from medseg3d.data.synth_ct import TISSUE_CODES, ct_origin, make_ct_case, make_ct_tissues, write_ct_cases

SMALL = (96, 80, 40)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _components_2d(mask: np.ndarray) -> list[int]:
    """Number of 8-connected components in each slice [:, :, k] of ``mask`` (X, Y, Z), bottom to top."""
    return [ndimage.label(mask[:, :, k], structure=np.ones((3, 3)))[1] for k in range(mask.shape[2])]


def _read_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _tags(path: Path) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return {key: reader.GetMetaData(key).strip() for key in reader.GetMetaDataKeys()}


def test_default_case_geometry_and_aorta_size():
    hu, aorta, spacing = make_ct_case(seed=0)
    sx, sy, sz = spacing
    assert hu.shape[:2] == (512, 512) and aorta.shape == hu.shape
    assert hu.dtype == np.int16 and aorta.dtype == np.uint8
    assert 0.7 <= sx == sy <= 1.0 and 1.5 <= sz <= 3.0
    assert 350 <= hu.shape[2] * sz <= 450
    assert hu.min() >= -1024 and hu.max() <= 3071
    # Ascending radius 12-16 mm where the two limbs are separate, abdominal radius 9-11 mm at the bottom.
    counts = _components_2d(aorta)
    k_two = max(k for k, n in enumerate(counts) if n == 2)
    labels, _ = ndimage.label(aorta[:, :, k_two], structure=np.ones((3, 3)))
    areas = np.bincount(labels.ravel())[1:] * sx * sy
    assert 12 <= np.sqrt(areas.max() / np.pi) <= 16.5
    assert 9 <= np.sqrt(aorta[:, :, 0].sum() * sx * sy / np.pi) <= 11.5


@pytest.mark.parametrize("seed", [0, 7])
def test_tissue_hu_ranges(seed):
    hu, aorta, spacing = make_ct_case(SMALL, seed=seed)
    tissues, levels, spacing2 = make_ct_tissues(SMALL, seed=seed)
    assert spacing == spacing2
    np.testing.assert_array_equal(aorta, tissues == TISSUE_CODES["aorta"])  # the label is exactly the lumen

    def mean(name: str) -> float:
        mask = tissues == TISSUE_CODES[name]
        assert mask.any(), name
        return float(hu[mask].mean())

    assert 250 <= mean("aorta") <= 350
    assert mean("air") < -900
    assert abs(mean("soft_tissue") - 40) < 15
    assert -130 < mean("fat") < -70
    assert -900 < mean("lung") < -800
    assert 45 < mean("liver") < 80
    assert 380 < mean("bone") < 720
    assert mean("soft_tissue") < mean("disc") < mean("bone")
    noise = hu.astype(np.float32) - levels[tissues]
    body = tissues != TISSUE_CODES["air"]  # air is clipped at -1024
    assert 9 < noise[body].std() < 21


def test_anatomy_layout():
    tissues, _, spacing = make_ct_tissues(SMALL, seed=3)
    origin = np.array(ct_origin(SMALL, spacing))
    z = origin[2] + np.arange(SMALL[2]) * spacing[2]
    assert (tissues[0, 0, :] == TISSUE_CODES["air"]).all() and (tissues[-1, -1, :] == TISSUE_CODES["air"]).all()
    lung_slices = (tissues == TISSUE_CODES["lung"]).any(axis=(0, 1))
    liver = np.argwhere(tissues == TISSUE_CODES["liver"])
    assert lung_slices[-1] and not lung_slices[0]  # lungs superior (+z), not in the lowest slice
    assert z[liver[:, 2]].mean() < z[lung_slices].mean()
    assert liver[:, 0].mean() < SMALL[0] / 2  # patient right is LPS -x
    bone = np.argwhere(tissues == TISSUE_CODES["bone"])
    assert bone[:, 1].mean() > SMALL[1] / 2 and abs(bone[:, 0].mean() - SMALL[0] / 2) < 3  # posterior midline
    discs = (tissues == TISSUE_CODES["disc"]).any(axis=(0, 1))
    assert discs.any() and not discs.all()


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_aorta_is_one_tube_with_an_arch(seed):
    _, aorta, _ = make_ct_case(SMALL, seed=seed)
    labels, n = ndimage.label(aorta, structure=np.ones((3, 3, 3)))
    assert n == 1
    counts = _components_2d(aorta)
    assert sum(c > 0 for c in counts) >= 0.8 * len(counts)
    assert counts[0] == 1  # descending aorta reaches the lowest slice
    top = max(k for k, c in enumerate(counts) if c)
    assert counts[top] == 1  # over the arch
    two = [k for k, c in enumerate(counts) if c == 2]
    assert two and max(two) < top  # ascending and descending below the arch
    assert set(counts[max(two) + 1 : top + 1]) == {1}
    # Ascending limb anterior (-y) and to the right (-x) of the descending one.
    sl, _ = ndimage.label(aorta[:, :, max(two)], structure=np.ones((3, 3)))
    (x1, y1), (x2, y2) = ndimage.center_of_mass(sl > 0, sl, [1, 2])
    (ax, ay), (dx, dy) = sorted([(x1, y1), (x2, y2)], key=lambda c: c[1])
    assert ay < dy and ax < dx


def test_same_seed_same_arrays_other_seed_differs():
    a = make_ct_case(SMALL, seed=4)
    b = make_ct_case(SMALL, seed=4)
    c = make_ct_case(SMALL, seed=5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_nifti_same_seed_same_bytes(tmp_path):
    first = write_ct_cases(tmp_path / "a", cases=2, seed=11, shape=SMALL)
    second = write_ct_cases(tmp_path / "b", cases=2, seed=11, shape=SMALL)
    other = write_ct_cases(tmp_path / "c", cases=2, seed=12, shape=SMALL)
    assert first == [tmp_path / "a" / "imagesTr" / f"ct_00{i}.nii.gz" for i in range(2)]
    for path_a, path_b, path_c in zip(first, second, other, strict=True):
        assert path_a.read_bytes() == path_b.read_bytes()
        assert path_a.read_bytes() != path_c.read_bytes()
        label = Path(str(path_a).replace("imagesTr", "labelsTr"))
        assert label.read_bytes() == Path(str(path_b).replace("imagesTr", "labelsTr")).read_bytes()
    assert first[0].read_bytes() != first[1].read_bytes()  # cases of one dataset differ
    assert sorted(p.name for p in (tmp_path / "a" / "imagesTr").iterdir()) == ["ct_000.nii.gz", "ct_001.nii.gz"]


def test_dicom_round_trip_matches_nifti(tmp_path):
    (nifti,) = write_ct_cases(tmp_path / "nii", cases=1, seed=2, shape=SMALL)
    (series,) = write_ct_cases(tmp_path / "dcm", cases=1, seed=2, shape=SMALL, dicom=True)
    assert series == tmp_path / "dcm" / "imagesTr" / "ct_000" and series.is_dir()
    files = sorted(series.glob("*.dcm"))
    assert len(files) == SMALL[2]
    image_n, image_d = sitk.ReadImage(str(nifti)), _read_series(series)
    label = sitk.ReadImage(str(tmp_path / "dcm" / "labelsTr" / "ct_000.nii.gz"))
    assert image_n.GetSize() == image_d.GetSize() == label.GetSize() == SMALL
    assert image_d.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    for other in (image_d, label):
        np.testing.assert_allclose(other.GetSpacing(), image_n.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(other.GetOrigin(), image_n.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(other.GetDirection(), IDENTITY, atol=1e-9)
    np.testing.assert_allclose(image_n.GetDirection(), IDENTITY, atol=1e-9)
    np.testing.assert_allclose(image_n.GetOrigin(), ct_origin(SMALL, image_n.GetSpacing()), atol=1e-5)
    hu = sitk.GetArrayFromImage(image_d).T  # back to (X, Y, Z)
    np.testing.assert_array_equal(hu, sitk.GetArrayFromImage(image_n).T)
    # nibabel sees the same (X, Y, Z) voxels, with the LPS geometry as a RAS affine.
    nii = nib.load(nifti)
    np.testing.assert_array_equal(np.asarray(nii.dataobj), hu)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(nii.affine[:3, :3], lps_to_ras * np.array(image_n.GetSpacing()), atol=1e-6)
    np.testing.assert_allclose(nii.affine[:3, 3], lps_to_ras @ np.array(image_n.GetOrigin()), atol=1e-5)
    aorta = sitk.GetArrayFromImage(label).T.astype(bool)
    # The label lines up with the contrast: bright inside, not around it (a shifted or flipped label fails both).
    shell = ndimage.binary_dilation(aorta, structure=np.ones((3, 3, 3)), iterations=2) & ~aorta
    assert 250 <= hu[aorta].mean() <= 350 and (hu[aorta] > 150).mean() > 0.99
    assert np.median(hu[shell]) < 150
    assert np.argwhere(aorta)[:, 2].max() > SMALL[2] // 2  # the arch is superior: high z

    tags = [_tags(f) for f in files]
    assert {t["0008|0060"] for t in tags} == {"CT"}
    assert {t["0010|0010"] for t in tags} == {"SYNTH^CT"} and {t["0010|0020"] for t in tags} == {"ct_000"}
    assert {(t["0028|1052"], t["0028|1053"]) for t in tags} == {("0", "1")}
    assert {t["0008|0020"] for t in tags} == {"20260101"}
    assert len({t["0020|000e"] for t in tags}) == 1 and len({t["0020|000d"] for t in tags}) == 1
    uids = [t[key] for t in tags for key in ("0008|0018", "0020|000d", "0020|000e", "0020|0052")]
    assert all(len(uid) < 64 and uid.startswith("1.2.826.0.1.3680043.10.1234.") for uid in uids)
    assert len({t["0008|0018"] for t in tags}) == SMALL[2]
    assert sorted(int(t["0020|0013"]) for t in tags) == list(range(1, SMALL[2] + 1))
    z = sorted(float(t["0020|0032"].split("\\")[2]) for t in tags)
    np.testing.assert_allclose(np.diff(z), image_n.GetSpacing()[2], atol=1e-6)


def test_dicom_same_seed_same_bytes_and_overwrite(tmp_path):
    first = write_ct_cases(tmp_path / "a", cases=1, seed=9, shape=(32, 32, 16), dicom=True)[0]
    second = write_ct_cases(tmp_path / "b", cases=1, seed=9, shape=(32, 32, 16), dicom=True)[0]
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    # Rewriting in place, as NIfTI and back as DICOM, leaves one image per case and no temporary folders.
    images = tmp_path / "a" / "imagesTr"
    write_ct_cases(tmp_path / "a", cases=1, seed=9, shape=(32, 32, 16))
    assert sorted(p.name for p in images.iterdir()) == ["ct_000.nii.gz"]
    write_ct_cases(tmp_path / "a", cases=1, seed=9, shape=(32, 32, 16), dicom=True)
    write_ct_cases(tmp_path / "a", cases=1, seed=9, shape=(32, 32, 16), dicom=True)
    assert sorted(p.name for p in images.iterdir()) == ["ct_000"]
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cases": 0}, "cases must be an integer >= 1"),
        ({"cases": -2}, "cases must be an integer >= 1"),
        ({"cases": 1.5}, "cases must be an integer >= 1"),
        ({"shape": (96, 80)}, "shape must be three positive integers"),
        ({"shape": (96, 80, 40, 1)}, "shape must be three positive integers"),
        ({"shape": (96, 0, 40)}, "shape must be three positive integers"),
        ({"shape": (96, -80, 40)}, "shape must be three positive integers"),
        ({"shape": (96.5, 80, 40)}, "shape must be three positive integers"),
        ({"shape": "abc"}, "shape must be three positive integers"),
        ({"shape": (96, 80, 15)}, "every axis of shape must be at least 16"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_write_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_ct_cases(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written before the check


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shape": (8, 80, 40)}, "every axis of shape must be at least 16"),
        ({"shape": (96, 80)}, "shape must be three positive integers"),
        ({"spacing": (0.8, 0.8)}, "spacing must be three positive finite numbers"),
        ({"spacing": (0.8, 0.0, 2.0)}, "spacing must be three positive finite numbers"),
        ({"seed": -3}, "seed must be a non-negative integer"),
    ],
)
def test_make_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_ct_case(**kwargs)


def test_explicit_spacing_and_minimum_shape():
    hu, aorta, spacing = make_ct_case((16, 16, 16), spacing=(0.8, 0.9, 2.0), seed=1)
    assert spacing == (0.8, 0.9, 2.0) and hu.shape == aorta.shape == (16, 16, 16)
    assert aorta.any() and ndimage.label(aorta, structure=np.ones((3, 3, 3)))[1] == 1


def test_writing_dicom_keeps_the_process_locale(tmp_path) -> None:
    """GDCM's writer switches the C locale to "C"; afterwards text I/O (subprocess output) would be ASCII-only."""
    import locale

    from medseg3d.data.synth_ct import write_ct_cases

    before = locale.setlocale(locale.LC_ALL)
    write_ct_cases(tmp_path, cases=1, dicom=True, shape=(16, 16, 16))
    assert locale.setlocale(locale.LC_ALL) == before


def test_another_scanner_draws_the_same_anatomy_with_other_intensities():
    """``scanner="shifted"``: the seed's anatomy and label, another aorta contrast, organ enhancement and twice the
    noise; the default scanner's cases are the ones they always were (the anatomy's and noise's streams are kept)."""
    hu, aorta, spacing = make_ct_case(SMALL, seed=4)
    shifted_hu, shifted_aorta, shifted_spacing = make_ct_case(SMALL, seed=4, scanner="shifted")
    np.testing.assert_array_equal(aorta, shifted_aorta)
    assert spacing == shifted_spacing
    np.testing.assert_array_equal(hu, make_ct_case(SMALL, seed=4, scanner="default")[0])
    tissues, levels, _ = make_ct_tissues(SMALL, seed=4)
    lumen, fat = tissues == TISSUE_CODES["aorta"], tissues == TISSUE_CODES["fat"]  # fat's level is every scanner's
    shift = float(shifted_hu[lumen].mean() / hu[lumen].mean())
    assert 0.7 <= shift <= 1.3 and abs(shift - 1) > 0.01  # another contrast
    noise, shifted_noise = (h[fat].astype(np.float32) - levels[TISSUE_CODES["fat"]] for h in (hu, shifted_hu))
    assert 1.9 < shifted_noise.std() / noise.std() < 2.1  # twice the noise
    with pytest.raises(ValueError, match="scanner must be one of"):
        make_ct_case(SMALL, seed=4, scanner="mri")
