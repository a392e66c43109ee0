"""Tests of the one image reader (medseg3d.data.reader).

Every image is written here by SimpleITK or nibabel, non-cubic (10 x 12 x 7) on an oblique grid, as NIfTI, NRRD,
MHA and a DICOM series, and read back. Geometry is checked against ITK's own TransformIndexToPhysicalPoint (LPS,
turned into RAS independently of the reader), so a swapped axis, a lost flip or a wrong origin fails.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage

from medseg3d.core.errors import InputError
from medseg3d.core.io import keep_locale
from medseg3d.data.reader import (
    Grid,
    check_same_grid,
    grid_offset,
    image_extension,
    itk_affine_ras,
    label_values,
    lps_to_ras,
    position_tolerance,
    read_image,
    read_info,
    read_label,
    read_volume,
)
from medseg3d.data.sitk_reader import SimpleITKReader, without_pydicom

_spec = importlib.util.spec_from_file_location("data_test_images", Path(__file__).with_name("images.py"))
images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images)

SHAPE = (10, 12, 7)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (12.5, -30.25, 41.0)  # LPS


_rotation = images.rotation
OBLIQUE = images.OBLIQUE


def _volume(seed: int = 0) -> np.ndarray:
    """int16 (X, Y, Z): noise plus an off-centre block, so that a flip or an axis swap changes it."""
    data = np.random.default_rng(seed).integers(-100, 100, size=SHAPE).astype(np.int16)
    data[1:4, 2:9, 4:6] = 1000
    return data


def _itk(data: np.ndarray, direction: np.ndarray = OBLIQUE, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    return images.itk_image(data, direction, spacing, origin)


def _series(folder: Path, image: sitk.Image, uid: str = "1.2.3.4", shift: dict | None = None, skip=()) -> Path:
    """One DICOM file per slice with its own ImagePositionPatient (moved by ``shift[k]`` mm) and orientation."""
    folder.mkdir(parents=True)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        if k in skip:
            continue
        position = np.add(image.TransformIndexToPhysicalPoint((0, 0, k)), (shift or {}).get(k, (0.0, 0.0, 0.0)))
        slice_ = image[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": "1.2.3", "0020|000e": uid, "0020|0013": str(k + 1),
                "0008|0018": f"{uid}.{k + 1}", "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.10g}" for v in position)}  # fmt: skip
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        with keep_locale():  # GDCM's writer leaves the process in the "C" locale
            writer.Execute(slice_)
    return folder


def _write(tmp_path: Path, kind: str, data: np.ndarray, image: sitk.Image | None = None) -> Path:
    image = _itk(data) if image is None else image
    if kind == "dicom":
        return _series(tmp_path / "series", image)
    path = tmp_path / f"image{kind}"
    sitk.WriteImage(image, str(path))
    return path


def _ras_world(image: sitk.Image, index) -> np.ndarray:
    x, y, z = image.TransformIndexToPhysicalPoint(tuple(int(i) for i in index))
    return np.array([-x, -y, z])


# ---------------------------------------------------------------------------------------------- formats and geometry


@pytest.mark.parametrize(
    ("kind", "atol"),
    [
        pytest.param(".nii.gz", 1e-4, id="nifti-gz"),  # float32 header fields
        pytest.param(".nii", 1e-4, id="nifti"),
        pytest.param(".nrrd", 1e-6, id="nrrd"),
        pytest.param(".mha", 1e-6, id="mha"),
        pytest.param("dicom", 1e-4, id="dicom-series"),  # positions as decimal strings
    ],
)
def test_every_format_reads_the_same_voxels_and_world_grid(tmp_path: Path, kind: str, atol: float) -> None:
    data = _volume()
    source = _itk(data)
    path = _write(tmp_path, kind, data, source)
    image = read_image(path)
    assert image.array.shape == (1, *SHAPE) and image.array.dtype == np.float32
    np.testing.assert_array_equal(image.array[0], data)  # the file's own index order, no reorientation
    for index in [(0, 0, 0), (9, 0, 0), (0, 11, 0), (0, 0, 6), (9, 11, 6), (3, 7, 2)]:
        np.testing.assert_allclose(image.affine @ [*index, 1.0], [*_ras_world(source, index), 1.0], atol=atol)
    np.testing.assert_allclose(image.spacing, SPACING, rtol=1e-5)
    info = read_info(path)
    assert info.grid.shape == SHAPE and info.channels == 1
    np.testing.assert_array_equal(info.grid.affine, image.affine)  # the header alone gives the same grid
    assert (image.modality, info.modality) == (("CT", "CT") if kind == "dicom" else (None, None))
    assert read_label(path).array.dtype == np.int16  # the stored type


def test_lps_ras_conversion_is_its_own_inverse_and_matches_nibabel(tmp_path: Path) -> None:
    affine = np.eye(4)
    affine[:3, :3] = OBLIQUE @ np.diag(SPACING)
    affine[:3, 3] = (-7.0, 3.5, 11.0)
    np.testing.assert_array_equal(lps_to_ras(lps_to_ras(affine)), affine)
    path = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), affine), path)
    itk = sitk.ReadImage(str(path))  # ITK turns the NIfTI header into LPS
    np.testing.assert_allclose(itk_affine_ras(itk.GetDirection(), itk.GetSpacing(), itk.GetOrigin()), affine, atol=1e-5)
    np.testing.assert_allclose(read_image(path).affine, nib.load(path).affine)


def test_multichannel_nifti_is_channels_first(tmp_path: Path) -> None:
    channels = np.stack([_volume(seed) for seed in range(4)], axis=-1)
    path = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(channels, np.diag([-1.0, -1.0, 1.0, 1.0])), path)
    image = read_image(path, channels=4)
    assert image.array.shape == (4, *SHAPE)
    for c in range(4):
        np.testing.assert_array_equal(image.array[c], _volume(c))
    assert read_info(path, channels=None).channels == 4
    with pytest.raises(InputError, match=r"expected a 3D volume, got shape \(10, 12, 7, 4\)"):
        read_image(path)


def test_header_only_info_does_not_read_voxels(tmp_path: Path) -> None:
    path = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(_volume(), np.eye(4)), path)
    path.write_bytes(path.read_bytes()[:-200])  # a truncated download
    assert read_info(path).grid.shape == SHAPE
    with pytest.raises(InputError, match="damaged or truncated"):
        read_info(path, verify_data=True)
    with pytest.raises(InputError, match="damaged or truncated"):
        read_image(path)


# ----------------------------------------------------------------------------------------------- DICOM slice positions


@pytest.mark.parametrize(
    ("shift", "skip", "message"),
    [
        pytest.param({3: (0.0, 0.0, 0.02)}, (), None, id="0.02mm-within-1%-of-2.5mm"),
        pytest.param({3: (0.0, 0.0, 0.04)}, (), "lies 0.04 mm off the regular grid", id="0.04mm-beyond"),
        pytest.param({3: (0.5, 0.0, 0.0)}, (), "slice_003.dcm lies 0.5 mm off", id="in-plane-shift"),
        pytest.param({}, (3,), "not evenly spaced", id="missing-slice"),
    ],
)
def test_dicom_slice_positions(tmp_path: Path, shift: dict, skip: tuple, message: str | None) -> None:
    folder = _series(tmp_path / "s", _itk(_volume(), np.eye(3)), shift=shift, skip=skip)
    if message is None:
        assert read_image(folder).array.shape == (1, *SHAPE)
        return
    with pytest.raises(InputError, match=message) as info:
        read_image(folder)
    assert info.value.path == str(folder) and "expected a complete series of evenly spaced" in str(info.value)


def test_training_reader_applies_the_slice_check(tmp_path: Path) -> None:
    """MONAI's LoadImage with the training reader reads a sound series as inference does and refuses a gappy one."""
    data = _volume()
    good = _series(tmp_path / "good", _itk(data))
    loaded = without_pydicom(LoadImage(image_only=True, reader=SimpleITKReader()))(str(good))
    np.testing.assert_array_equal(np.asarray(loaded), data)
    np.testing.assert_allclose(np.asarray(loaded.affine), read_image(good).affine)
    gappy = _series(tmp_path / "gappy", _itk(data), skip=(2,))
    with pytest.raises(Exception, match="not evenly spaced"):  # MONAI wraps the reader's InputError
        without_pydicom(LoadImage(image_only=True, reader=SimpleITKReader()))(str(gappy))


# ------------------------------------------------------------------------------------------------------ grid compare


def _grid(direction=OBLIQUE, spacing=SPACING, origin=(1.0, 2.0, 3.0), shape=SHAPE) -> Grid:
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return Grid(shape, affine)


TOLERANCE = position_tolerance(min(SPACING))  # 0.01 mm: 1 % of 0.8 mm is below the floor


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        pytest.param(_grid(origin=(1.0 + 0.9 * TOLERANCE, 2.0, 3.0)), None, id="origin-just-within"),
        pytest.param(_grid(origin=(1.0 + 1.1 * TOLERANCE, 2.0, 3.0)), "origins differ by 0.011 mm", id="origin-beyond"),
        # The last slice moves 6 spacing steps: 6 * 0.0015 = 0.009 mm passes, 6 * 0.002 = 0.012 mm does not.
        pytest.param(_grid(spacing=(0.8, 0.9, 2.5015)), None, id="spacing-just-within"),
        pytest.param(_grid(spacing=(0.8, 0.9, 2.502)), r"spacings differ\): spacing \(0.8, 0.9, 2.502\)", id="spacing"),
        pytest.param(_grid(direction=OBLIQUE @ _rotation(0.01, 2)), None, id="rotation-0.01deg"),
        pytest.param(_grid(direction=OBLIQUE @ _rotation(0.1, 2)), "orientations differ", id="rotation-0.1deg"),
        pytest.param(_grid(direction=OBLIQUE @ np.diag([1.0, -1.0, 1.0])), "orientations differ", id="flip"),
        pytest.param(_grid(shape=(10, 12, 8)), r"shapes differ\): shape \(10, 12, 8\) vs \(10, 12, 7\)", id="shape"),
    ],
)
def test_grid_tolerance_edges(grid: Grid, message: str | None) -> None:
    reference = _grid()
    if message is None:
        check_same_grid("a/label.nii.gz", grid, "a/image.nii.gz", reference)
        return
    with pytest.raises(InputError, match=message) as info:
        check_same_grid("a/label.nii.gz", grid, "b/image.nii.gz", reference, relation="not on the grid of")
    text = str(info.value)
    assert text.startswith("a/label.nii.gz: not on the grid of ../b/image.nii.gz (")  # both files named
    if grid.shape == reference.shape:  # the largest difference, in mm
        assert f"affines differ by up to {grid_offset(grid, reference):.4g} mm" in text


def test_grid_offset_is_the_largest_voxel_displacement() -> None:
    reference = _grid()
    moved = _grid(spacing=(0.8, 0.9, 2.6))  # the last slice (k = 6) moves 0.6 mm along the slice normal
    assert grid_offset(moved, reference) == pytest.approx(0.6)
    assert grid_offset(reference, reference) == 0.0


def test_tolerance_follows_the_voxel_size() -> None:
    assert position_tolerance(0.5) == 0.01 and position_tolerance(5.0) == pytest.approx(0.05)
    coarse = _grid(spacing=(5.0, 5.0, 5.0))
    check_same_grid("l", _grid(spacing=(5.0, 5.0, 5.0), origin=(1.04, 2.0, 3.0)), "i", coarse)
    with pytest.raises(InputError, match="origins differ"):
        check_same_grid("l", _grid(spacing=(5.0, 5.0, 5.0), origin=(1.06, 2.0, 3.0)), "i", coarse)


# -------------------------------------------------------------------------------------------------------- bad inputs


def _bad(kind: str, folder: Path) -> Path:
    data = _volume()
    if kind == "missing":
        return folder / "nothing.nii.gz"
    if kind == "not-nifti":
        (folder / "x.nii.gz").write_bytes(gzip.compress(b"plain text" * 50))
        return folder / "x.nii.gz"
    if kind == "nan":
        nib.save(nib.Nifti1Image(np.where(data > 500, np.nan, data).astype(np.float32), np.eye(4)), folder / "x.nii")
        return folder / "x.nii"
    if kind == "singular":
        image = nib.Nifti1Image(data, None)
        image.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
        image.set_qform(None, code=0)
        nib.save(image, folder / "x.nii.gz")
        return folder / "x.nii.gz"
    if kind == "vector":
        sitk.WriteImage(sitk.Compose([_itk(data)] * 3), str(folder / "x.mha"))
        return folder / "x.mha"
    if kind == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(data[:, :, 0]), str(folder / "x.nrrd"))
        return folder / "x.nrrd"
    if kind == "broken-mha":
        (folder / "x.mha").write_text("ObjectType = Image\nNDims = 3\n")
        return folder / "x.mha"
    if kind == "empty-folder":
        (folder / "empty").mkdir()
        return folder / "empty"
    if kind == "two-series":
        _series(folder / "two", _itk(data), uid="1.2.3.4")
        _series(folder / "two" / "tmp", _itk(data), uid="1.2.3.5")
        for f in (folder / "two" / "tmp").iterdir():
            f.rename(folder / "two" / f"b_{f.name}")
        return folder / "two"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        pytest.param("missing", "file not found", id="missing"),
        pytest.param("not-nifti", "cannot read as NIfTI", id="gzip-of-text"),
        pytest.param("nan", r"\d+ voxels are NaN or Inf; expected finite values", id="nan"),
        pytest.param("singular", "singular or not finite", id="singular-affine"),
        pytest.param("vector", "expected a single-channel image, got 3 components", id="vector"),
        pytest.param("2d", "expected a 3D volume, got a 2D image", id="2d"),
        pytest.param("broken-mha", "cannot read as an image", id="broken-mha"),
        pytest.param("empty-folder", "no DICOM series directly in this folder", id="empty-folder"),
        pytest.param("two-series", r"holds 2 DICOM series \(1.2.3.4, 1.2.3.5\)", id="two-series"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path: Path, kind: str, message: str) -> None:
    path = _bad(kind, tmp_path)
    with pytest.raises(InputError, match=message) as info:
        read_image(path)
    assert info.value.path == str(path)


def test_read_volume_refuses_an_empty_image(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.float32), np.eye(4)), tmp_path / "zero.nii.gz")
    with pytest.raises(InputError, match=r"the image is empty \(every voxel is 0\)"):
        read_volume(tmp_path / "zero.nii.gz")


# ------------------------------------------------------------------------------------------------ names and labels


def test_image_extension_is_the_one_suffix_list() -> None:
    names = ["a.nii.gz", "a.NII", "a.nrrd", "a.nhdr", "a.MHA", "a.mhd", "a.dcm", "a.gz", "a.txt", "nii.gz"]
    assert [image_extension(n) for n in names] == [".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", None, None,
                                                    None, None]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "values"),
    [
        pytest.param(np.array([[0, 3], [3, 1]], np.uint8), [0, 1, 3], id="uint8"),
        pytest.param(np.array([2.0, 0.0, 2.0], np.float32), [0, 2], id="integer-floats"),
        pytest.param(np.array([True, False]), [0, 1], id="bool"),
        pytest.param(np.array([0, 70000, 5], np.int32), [0, 5, 70000], id="large-values"),
        pytest.param(np.ones((3, 4, 5), np.int16), [1], id="no-background"),
    ],
)
def test_label_values(data: np.ndarray, values: list[int]) -> None:
    assert label_values(data, "l.nii.gz") == values


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(np.array([0.0, 0.5]), "non-integer label values such as 0.5", id="fraction"),
        pytest.param(np.array([0, -1], np.int16), "negative label values such as -1", id="negative"),
        pytest.param(np.array([0.0, np.nan]), "NaN or Inf label values", id="nan"),
        pytest.param(np.array(["a"]), "label voxels of type <U1", id="strings"),
    ],
)
def test_label_values_errors(data: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        label_values(data, "l.nii.gz")
    assert info.value.path == "l.nii.gz"
