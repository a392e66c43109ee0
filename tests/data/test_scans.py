"""Tests of batch-inference input discovery and geometry-exact reading and label writing (medseg3d.data.scans).

Every volume is written here, non-cubic (20 x 24 x 28), in the real formats (nibabel NIfTI, ITK MHA/NRRD/MHD, GDCM
DICOM series, JPEG-2000 compressed included) and read back with the real readers. The geometry tests compare the
written labels with the source both voxel by voxel and in world coordinates computed independently (nibabel's affine
of the source file, ITK's TransformIndexToPhysicalPoint).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg3d.core.errors import InputError
from medseg3d.core.io import keep_locale
from medseg3d.data.scans import (
    NOT_A_BRATS_INPUT,
    NOT_AN_IMAGE,
    Scan,
    ScanCase,
    find_scans,
    read_scan,
    write_label,
)
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.data.synth_ct import write_ct_cases

_spec = importlib.util.spec_from_file_location("data_test_images", Path(__file__).with_name("images.py"))
images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images)

SHAPE = (20, 24, 28)
SPACING = (0.8, 0.9, 2.5)
ORIGIN = (12.5, -30.25, 41.0)


OBLIQUE = images.OBLIQUE


def _phantom(shape=SHAPE, seed: int = 0) -> np.ndarray:
    """int16 (X, Y, Z) scan: noisy background with two bright blocks placed asymmetrically (flips change them)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-100, 100, size=shape).astype(np.int16)
    data[2:7, 3:6, 4:11] = 1000  # near the low corner, longest along Z
    data[12:14, 15:22, 20:23] = 2000  # far corner, longest along Y
    return data


def _labels_of(intensities: np.ndarray) -> np.ndarray:
    """What a model would output for ``_phantom``: 1 on the first block, 2 on the second, in the same index order."""
    return (intensities > 500).astype(np.uint8) + (intensities > 1500).astype(np.uint8)


def _affine(direction: np.ndarray, spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, sform: int = 1, qform: int = 1) -> Path:
    image = nib.Nifti1Image(data, None)  # the constructor would fill the qform from the affine
    image.set_sform(affine if sform else None, code=sform)
    image.set_qform(affine if qform else None, code=qform)
    nib.save(image, path)
    return path


def _sitk_image(data: np.ndarray, direction=None, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    return images.itk_image(data, direction, spacing, origin)


def _write_series(
    folder: Path,
    image: sitk.Image,
    uid: str | None,
    prefix: str = "",
    compressor: str | None = None,
    reverse_names: bool = False,
    skip: tuple[int, ...] = (),
    shift: dict | None = None,
) -> Path:
    """One DICOM file per slice (no extension), each with its own position and orientation.

    ``uid=None`` writes the series without a SeriesInstanceUID tag at all, ``""`` with an empty one; slices ``skip``
    are left out; ``shift`` moves slice k's ImagePositionPatient by (dx, dy, dz) mm.
    """
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    if compressor:
        writer.SetImageIO("GDCMImageIO")
        writer.SetUseCompression(True)
        writer.SetCompressor(compressor)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    depth = image.GetDepth()
    for k in range(depth):
        if k in skip:
            continue
        slice_ = image[:, :, k]  # a 2D slice keeps neither its z position nor the direction's tilt: set both
        tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.10.99.1", "0020|0013": str(k + 1),
                "0020|000e": "1.2.826.0.1.3680043.10.99.2" if uid is None else uid, "0020|0037": orientation,
                "0008|0018": f"1.2.826.0.1.3680043.10.99.3.{zlib.crc32(f'{folder}/{prefix}'.encode())}.{k + 1}",
                "0020|0032": "\\".join(f"{v:.10g}" for v in np.add(image.TransformIndexToPhysicalPoint((0, 0, k)),
                                                                   (shift or {}).get(k, (0, 0, 0))))}  # fmt: skip
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        name = folder / f"{prefix}{(depth - k if reverse_names else k + 1):04d}"
        writer.SetFileName(f"{name}.dcm")  # GDCM picks the format by extension; renamed below
        with keep_locale():  # GDCM's writer leaves the process in the "C" locale (ASCII text I/O)
            writer.Execute(slice_)
        if uid is None:  # rename tag (0020,000E) to the unused (0020,000F): same length, order kept, UID gone
            raw = bytearray(Path(f"{name}.dcm").read_bytes())
            at = raw.find(b"\x20\x00\x0e\x00")
            assert at > 0
            raw[at + 2 : at + 4] = b"\x0f\x00"
            Path(f"{name}.dcm").write_bytes(bytes(raw))
        os.replace(f"{name}.dcm", name)
    return folder


def _world(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, 3) RAS coordinates of the voxels of ``mask`` under ``affine``."""
    index = np.argwhere(mask)
    return index @ affine[:3, :3].T + affine[:3, 3]


def _itk_world_ras(image: sitk.Image, mask: np.ndarray) -> np.ndarray:
    """(N, 3) RAS coordinates of the voxels of ``mask`` by ITK's own index -> point mapping (LPS, then x, y negated)."""
    points = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in ijk]) for ijk in np.argwhere(mask)])
    return points * np.array([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------------------------------- discovery: image


@pytest.fixture(scope="module")
def mixed_input(tmp_path_factory) -> Path:
    """An INPUT folder with one entry of each kind, good and bad, and an OUTPUT folder inside it."""
    root = tmp_path_factory.mktemp("mixed") / "INPUT"
    root.mkdir()
    data = _phantom()
    _write_nifti(root / "ct_ras.nii.gz", data, _affine(np.eye(3)))
    _write_nifti(root / "ct_lps.nii", data, _affine(np.diag([-1.0, -1.0, 1.0])))
    sitk.WriteImage(_sitk_image(data), str(root / "scan.nrrd"))
    sitk.WriteImage(_sitk_image(data, OBLIQUE), str(root / "scan_oblique.mha"))
    sitk.WriteImage(_sitk_image(data), str(root / "detached.mhd"))  # + detached.raw, part of the same image
    small = _phantom((20, 24, 12), seed=1)
    _write_series(root / "two_series", _sitk_image(small), "1.2.826.0.1.3680043.10.99.20", prefix="b")
    _write_series(root / "two_series", _sitk_image(small[:, :, :9]), "1.2.826.0.1.3680043.10.99.10", prefix="a")
    _write_series(root / "patient" / "study" / "series", _sitk_image(small), "1.2.3.4", reverse_names=True)
    _write_series(root / "empty_uid", _sitk_image(small), "")
    _write_series(root / "no_uid", _sitk_image(small), None)
    _write_series(root / "jpeg2000", _sitk_image(data, OBLIQUE), "1.2.3.5", compressor="JPEG2000")
    write_ct_cases(root / "synth_ct", cases=1, dicom=True, shape=(20, 24, 18))  # imagesTr/ct_000/*.dcm + labelsTr
    (root / "corrupt.nii.gz").write_bytes(np.random.default_rng(0).bytes(2000))
    good = (root / "ct_ras.nii.gz").read_bytes()
    (root / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    (root / "broken.mha").write_text("ObjectType = Image\nNDims = 3\nthis is not an image\n")
    (root / "notes.txt").write_text("scanned on Tuesday\n")
    (root / "README").write_text("no extension, not DICOM\n")
    (root / "broken.dcm").write_bytes(np.random.default_rng(1).bytes(600))
    (root / "empty_folder").mkdir()
    write_brats_tree(root / "brats_tree", cases=1, edition="2021", shape=SHAPE)  # NIfTI folders: not image inputs
    (root / ".hidden.nii.gz").write_bytes(good)
    (root / "OUTPUT").mkdir()
    (root / "OUTPUT" / "ct_ras.nii.gz").write_bytes(good)
    return root


# case id -> (kind, number of files, series uid, problem substring or None)
IMAGE_CASES = [
    pytest.param("ct_ras", "image", 1, None, None, id="nifti-gz"),
    pytest.param("ct_lps", "image", 1, None, None, id="nifti-uncompressed"),
    pytest.param("scan", "image", 1, None, None, id="nrrd"),
    pytest.param("scan_oblique", "image", 1, None, None, id="mha"),
    pytest.param("detached", "image", 1, None, None, id="mhd-with-raw"),
    pytest.param("two_series_1", "dicom", 9, "1.2.826.0.1.3680043.10.99.10", None, id="dicom-two-series-first"),
    pytest.param("two_series_2", "dicom", 12, "1.2.826.0.1.3680043.10.99.20", None, id="dicom-two-series-second"),
    pytest.param("patient", "dicom", 12, "1.2.3.4", None, id="dicom-nested"),
    pytest.param("empty_uid", "dicom", 12, None, None, id="dicom-empty-uid"),
    pytest.param("no_uid", "dicom", 12, None, None, id="dicom-missing-uid"),
    pytest.param("jpeg2000", "dicom", 28, "1.2.3.5", None, id="dicom-jpeg2000"),
    pytest.param("synth_ct", "dicom", 18, "1.2.826.0.1.3680043.10.1234.0.0.2", None, id="dicom-synth-ct"),
    pytest.param("corrupt", "image", 1, None, None, id="corrupt-nifti"),
    pytest.param("truncated", "image", 1, None, None, id="truncated-nifti"),
    pytest.param("broken", "image", 1, None, None, id="broken-mha"),
    pytest.param("notes.txt", "image", 0, None, NOT_AN_IMAGE, id="text-file"),
    pytest.param("README", "image", 0, None, NOT_AN_IMAGE, id="no-extension-text"),
    pytest.param("broken.dcm", "dicom", 1, None, "not a readable DICOM file", id="garbage-dcm"),
    pytest.param("empty_folder", "dicom", 0, None, "no DICOM series found", id="empty-folder"),
    pytest.param("brats_tree", "dicom", 0, None, "it holds NIfTI files", id="nifti-folder-in-image-mode"),
]


@pytest.fixture(scope="module")
def image_cases(mixed_input: Path) -> dict[str, ScanCase]:
    cases = find_scans(mixed_input, expect="image", exclude=[mixed_input / "OUTPUT"])
    assert [c.case_id for c in cases] == sorted(c.case_id for c in cases)
    return {case.case_id: case for case in cases}


def test_every_entry_is_a_case_or_a_reported_problem(image_cases: dict[str, ScanCase]) -> None:
    # Nothing silently skipped or invented: hidden files, OUTPUT and the .raw beside the .mhd are the only omissions.
    assert set(image_cases) == {p.values[0] for p in IMAGE_CASES}


@pytest.mark.parametrize(("case_id", "kind", "n_files", "uid", "problem"), IMAGE_CASES)
def test_image_discovery(image_cases, case_id, kind, n_files, uid, problem) -> None:
    case = image_cases[case_id]
    assert (case.kind, len(case.files), case.series_uid, case.edition) == (kind, n_files, uid, None)
    if problem is None:
        assert case.problem is None
    else:
        assert problem in case.problem


def test_dicom_files_are_in_slice_order(image_cases) -> None:
    # File names run against the slice positions: the order must come from ImagePositionPatient, not the names.
    files = image_cases["patient"].files
    assert [f.name for f in files] == [f"{n:04d}" for n in range(12, 0, -1)]
    assert all(f.parent.name == "series" for f in files)


def test_jpeg2000_series_is_really_compressed(image_cases) -> None:
    # JPEG 2000 Image Compression (Lossless Only) transfer syntax in every slice; read_scan decodes it exactly
    # (test_read_gives_the_stored_voxels_in_file_order).
    files = image_cases["jpeg2000"].files
    assert all(b"1.2.840.10008.1.2.4.90" in f.read_bytes()[:2048] for f in files)


def test_single_file_series_folder_and_empty_input(mixed_input: Path, tmp_path: Path) -> None:
    [case] = find_scans(mixed_input / "ct_ras.nii.gz")
    assert (case.case_id, case.kind, case.files) == ("ct_ras", "image", (mixed_input / "ct_ras.nii.gz",))
    series = find_scans(mixed_input / "two_series")  # INPUT is itself a series folder
    assert [(c.case_id, len(c.files)) for c in series] == [("two_series_1", 9), ("two_series_2", 12)]
    shutil.copytree(mixed_input / "empty_uid", tmp_path / "scan 1")
    (tmp_path / "scan 1" / "DICOMDIR.txt").write_text("export notes")  # beside a series: ignored, not a case
    assert [c.case_id for c in find_scans(tmp_path / "scan 1")] == ["scan_1"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no scan found"):
        find_scans(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        find_scans(tmp_path / "missing")
    with pytest.raises(ValueError, match="expect must be one of"):
        find_scans(tmp_path, expect="ct")


def test_repeated_ids_are_made_unique(tmp_path: Path) -> None:
    data = _phantom()
    _write_nifti(tmp_path / "ct.nii.gz", data, _affine(np.eye(3)))
    sitk.WriteImage(_sitk_image(data), str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(_sitk_image(data), str(tmp_path / "CT.mha"))
    cases = find_scans(tmp_path)
    assert [(c.case_id, c.source.name) for c in cases] == [
        ("CT", "CT.mha"),
        ("ct__2", "ct.nii.gz"),
        ("ct__3", "ct.nrrd"),
    ]


# --------------------------------------------------------------------------------------------------- discovery: brats


@pytest.fixture(scope="module")
def brats_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats") / "INPUT"
    for edition in ("2021", "2023"):
        [folder] = write_brats_tree(root.parent / edition, cases=1, edition=edition, shape=SHAPE, seed=3)
        shutil.move(folder, root / folder.name)
    write_brats_tree(root / "tree2019", cases=1, edition="2019", shape=SHAPE)  # nested: Training/HGG/<case>
    three = root / "three_modalities"
    shutil.copytree(root / "BraTS2021_00000", three)
    (three / "BraTS2021_00000_flair.nii.gz").unlink()
    channels = np.stack([_phantom(seed=s) for s in range(4)], axis=-1).astype(np.float32)
    _write_nifti(root / "BraTS2021_00099.nii.gz", channels, _affine(np.diag([-1.0, -1.0, 1.0])))
    _write_nifti(root / "single_modality.nii.gz", _phantom(), _affine(np.eye(3)))
    sitk.WriteImage(_sitk_image(_phantom()), str(root / "scan.nrrd"))
    (root / "notes.txt").write_text("t1 missing for case 7\n")
    return root


BRATS_CASES = [
    pytest.param("BraTS2021_00000", 4, "2021", None, id="folder-2021"),
    pytest.param("BraTS-GLI-00000-000", 4, "2023", None, id="folder-2023"),
    pytest.param("BraTS19_SYN_0001_1", 4, "2019", None, id="nested-2019"),
    pytest.param("BraTS2021_00000__2", 3, "2021", "needs 4 modality files (t1, t1ce, t2, flair), found 3", id="three"),
    pytest.param("BraTS2021_00099", 1, "2021", None, id="four-channel-file"),
    pytest.param("single_modality", 1, None, None, id="3d-file-fails-on-reading"),
    pytest.param("scan.nrrd", 0, None, NOT_A_BRATS_INPUT, id="nrrd"),
    pytest.param("notes.txt", 0, None, NOT_A_BRATS_INPUT, id="text-file"),
]


@pytest.fixture(scope="module")
def brats_cases(brats_input: Path) -> dict[str, ScanCase]:
    return {case.case_id: case for case in find_scans(brats_input, expect="brats")}


def test_brats_every_entry_is_a_case_or_a_reported_problem(brats_cases) -> None:
    assert set(brats_cases) == {p.values[0] for p in BRATS_CASES}


@pytest.mark.parametrize(("case_id", "n_files", "edition", "problem"), BRATS_CASES)
def test_brats_discovery(brats_cases, case_id, n_files, edition, problem) -> None:
    case = brats_cases[case_id]
    assert (case.kind, len(case.files), case.edition, case.series_uid) == ("brats", n_files, edition, None)
    assert (case.problem is None) if problem is None else (problem in case.problem)
    if n_files == 4:  # channel order t1, t1ce, t2, flair whatever the edition's names
        tokens = [f.name.split(".")[0].replace("-", "_").rsplit("_", 1)[1] for f in case.files]
        assert tokens in (["t1", "t1ce", "t2", "flair"], ["t1n", "t1c", "t2w", "t2f"])


def test_brats_single_case_folder(brats_input: Path) -> None:
    [case] = find_scans(brats_input / "BraTS-GLI-00000-000", expect="brats")  # its -seg file is not an input
    assert (case.case_id, case.edition, len(case.files)) == ("BraTS-GLI-00000-000", "2023", 4)


# ------------------------------------------------------------------------------------------------------------ reading


@pytest.mark.parametrize(
    ("case_id", "shape"),
    [
        pytest.param("ct_ras", SHAPE, id="nifti"),
        pytest.param("scan_oblique", SHAPE, id="mha"),
        pytest.param("detached", SHAPE, id="mhd"),
        pytest.param("two_series_1", (20, 24, 9), id="dicom"),
        pytest.param("no_uid", (20, 24, 12), id="dicom-missing-uid"),
        pytest.param("jpeg2000", SHAPE, id="dicom-jpeg2000"),
    ],
)
def test_read_gives_the_stored_voxels_in_file_order(image_cases, case_id, shape) -> None:
    scan = read_scan(image_cases[case_id])
    assert scan.array.dtype == np.float32 and scan.array.shape == (1, *shape)
    expected = _phantom() if shape == SHAPE else _phantom((20, 24, 12), seed=1)[:, :, : shape[2]]
    np.testing.assert_array_equal(scan.array[0], expected)  # JPEG-2000 here is lossless


@pytest.mark.parametrize(
    ("case_id", "message"),
    [
        pytest.param("corrupt", "cannot read as NIfTI", id="corrupt"),
        pytest.param("truncated", "damaged or truncated", id="truncated"),
        pytest.param("broken", "cannot read as an image", id="broken-mha"),
        pytest.param("notes.txt", "not an image file", id="text"),
        pytest.param("broken.dcm", "not a readable DICOM file", id="garbage-dcm"),
        pytest.param("empty_folder", "no DICOM series found", id="empty-folder"),
    ],
)
def test_read_errors_of_discovered_cases(image_cases, case_id, message) -> None:
    case = image_cases[case_id]
    with pytest.raises(InputError, match=message) as info:
        read_scan(case)
    assert info.value.path == os.fspath(case.files[0] if case.files else case.source)


def _bad_input(kind: str, folder: Path) -> ScanCase:
    """A case that discovery accepts and reading must refuse."""
    data = _phantom()
    lps = _affine(np.diag([-1.0, -1.0, 1.0]))
    if kind == "4d":
        path = _write_nifti(folder / "x.nii.gz", np.stack([data, data], -1), lps)
    elif kind == "one-slice":
        path = _write_nifti(folder / "x.nii.gz", data[:, :, :1], lps)
    elif kind == "nan":
        path = _write_nifti(folder / "x.nii.gz", np.where(data > 1500, np.nan, data).astype(np.float32), lps)
    elif kind == "constant":
        path = _write_nifti(folder / "x.nii.gz", np.full(SHAPE, 7, np.int16), lps)
    elif kind == "singular":
        path = _write_nifti(folder / "x.nii.gz", data, np.diag([1.0, 0.0, 1.0, 1.0]), sform=1, qform=0)
    elif kind == "vector":
        path = folder / "x.mha"
        sitk.WriteImage(sitk.Compose([_sitk_image(data)] * 3), str(path))
    elif kind == "mha-2d":
        path = folder / "x.mha"
        sitk.WriteImage(sitk.GetImageFromArray(data[:, :, 0]), str(path))
    elif kind == "one-dicom-slice":
        return find_scans(_write_series(folder / "s", _sitk_image(data[:, :, :1]), "1.2.3"))[0]
    elif kind == "missing-slice":
        return find_scans(_write_series(folder / "s", _sitk_image(data, OBLIQUE), "1.2.3", skip=(5,)))[0]
    elif kind == "off-grid":  # one slice moved 0.5 mm in-plane, as in a tilted or mixed series
        return find_scans(_write_series(folder / "s", _sitk_image(data, OBLIQUE), "1.2.3", shift={9: (0.5, 0, 0)}))[0]
    else:
        raise AssertionError(kind)
    return ScanCase("x", "image", path, (path,))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        pytest.param("4d", r"expected a 3D volume, got shape \(20, 24, 28, 2\)", id="4d"),
        pytest.param("one-slice", r"image too small: shape \(20, 24, 1\)", id="too-small"),
        pytest.param("nan", "voxels are NaN or Inf", id="nan"),
        pytest.param("constant", "constant", id="constant"),
        pytest.param("singular", "singular", id="singular-affine"),
        pytest.param("vector", "single-channel", id="vector-pixels"),
        pytest.param("mha-2d", "expected a 3D volume", id="2d"),
        pytest.param("one-dicom-slice", r"image too small: shape \(20, 24, 1\)", id="dicom-one-slice"),
        pytest.param("missing-slice", "not evenly spaced", id="dicom-missing-slice"),
        pytest.param("off-grid", "not evenly spaced", id="dicom-slice-off-grid"),
    ],
)
def test_read_errors(tmp_path: Path, kind: str, message: str) -> None:
    case = _bad_input(kind, tmp_path)
    with pytest.raises(InputError, match=message) as info:
        read_scan(case)
    assert info.value.path in (os.fspath(case.source), os.fspath(case.files[0]))


def test_read_brats_folder_and_four_channel_file(brats_cases, brats_input: Path) -> None:
    scan = read_scan(brats_cases["BraTS-GLI-00000-000"])
    assert scan.array.shape == (4, *SHAPE) and scan.axcodes == ("L", "P", "S")
    for c, path in enumerate(brats_cases["BraTS-GLI-00000-000"].files):
        np.testing.assert_array_equal(scan.array[c], np.asanyarray(nib.load(path).dataobj))
    scan = read_scan(brats_cases["BraTS2021_00099"])
    assert scan.array.shape == (4, *SHAPE)
    for c in range(4):
        np.testing.assert_array_equal(scan.array[c], _phantom(seed=c))
    with pytest.raises(InputError, match=r"expected a 4-channel image \(X, Y, Z, 4\), got shape \(20, 24, 28\)"):
        read_scan(brats_cases["single_modality"])
    with pytest.raises(InputError, match="found 3"):
        read_scan(brats_cases["BraTS2021_00000__2"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            "shape", r"not co-registered with .*_t1.nii.gz \(shapes differ\): shape \(20, 24, 27\) vs", id="shape"
        ),
        pytest.param(
            "affine", r"not co-registered with .*\(origins differ by 2 mm\).*affines differ by up to 2 mm", id="affine"
        ),  # fmt: skip
    ],
)
def test_read_brats_modalities_on_different_grids(brats_input: Path, tmp_path: Path, edit: str, message: str) -> None:
    folder = shutil.copytree(brats_input / "BraTS2021_00000", tmp_path / "BraTS2021_00000")
    t2 = folder / "BraTS2021_00000_t2.nii.gz"
    image = nib.load(t2)
    data, affine = np.asanyarray(image.dataobj), image.affine.copy()
    if edit == "shape":
        data = data[:, :, :-1]
    else:
        affine[0, 3] += 2.0
    _write_nifti(t2, data, affine)
    [case] = find_scans(folder, expect="brats")
    with pytest.raises(InputError, match=message) as info:
        read_scan(case)
    assert info.value.path == os.fspath(t2)


# ------------------------------------------------------------------------------------------------ geometry round trip


def _nifti_source(folder: Path, direction: np.ndarray, sform: int, qform: int) -> tuple[ScanCase, np.ndarray]:
    path = _write_nifti(folder / "in.nii.gz", _phantom(), _affine(direction), sform=sform, qform=qform)
    return ScanCase("in", "image", path, (path,)), nib.load(path).affine


NIFTI_GEOMETRIES = [
    pytest.param(np.eye(3), 1, 1, ("R", "A", "S"), id="ras"),
    pytest.param(np.diag([-1.0, -1.0, 1.0]), 1, 1, ("L", "P", "S"), id="lps"),
    pytest.param(OBLIQUE @ np.diag([-1.0, 1.0, 1.0]), 2, 0, ("L", "A", "S"), id="oblique-sform-only"),
    pytest.param(np.diag([1.0, -1.0, -1.0]) @ OBLIQUE, 0, 1, ("R", "P", "I"), id="oblique-qform-only"),
    pytest.param(np.eye(3)[[2, 0, 1]], 2, 1, ("A", "S", "R"), id="permuted-axes"),
]


@pytest.mark.parametrize(("direction", "sform", "qform", "axcodes"), NIFTI_GEOMETRIES)
def test_nifti_geometry_round_trip(tmp_path, direction, sform, qform, axcodes) -> None:
    case, source_affine = _nifti_source(tmp_path, direction, sform, qform)
    scan = read_scan(case)
    assert np.array_equal(scan.affine, source_affine) and scan.axcodes == axcodes
    np.testing.assert_allclose(scan.spacing, SPACING, rtol=1e-6)
    out = write_label(_labels_of(scan.array[0]), scan, tmp_path / "out" / "in.nii.gz")
    back, source = nib.load(out), nib.load(case.files[0])
    assert back.shape == SHAPE and back.get_data_dtype() == np.uint8
    assert np.array_equal(back.affine, source.affine)  # bit for bit
    assert nib.aff2axcodes(back.affine) == axcodes
    for form in ("sform", "qform"):
        assert back.header[f"{form}_code"] == source.header[f"{form}_code"]
    labels = np.asanyarray(back.dataobj)
    np.testing.assert_array_equal(labels, _labels_of(_phantom()))  # the same voxels
    for value in (1, 2):  # and the same places in the world, by the source file's own affine
        expected = _world(source.affine, _labels_of(_phantom()) == value)
        np.testing.assert_array_equal(_world(back.affine, labels == value), expected)
    assert back.header.get_intent()[0] == "label" and back.header.get_slope_inter() in ((None, None), (1.0, 0.0))
    assert sorted(os.listdir(out.parent)) == ["in.nii.gz"]  # nothing temporary left behind


def test_nifti2_stays_nifti2(tmp_path: Path) -> None:
    affine = _affine(OBLIQUE) + np.array([[0, 0, 0, 1e-9], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # float64 detail
    path = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti2Image(_phantom(), affine), path)
    scan = read_scan(ScanCase("in", "image", path, (path,)))
    back = nib.load(write_label(_labels_of(scan.array[0]), scan, tmp_path / "out.nii.gz"))
    assert isinstance(back, nib.Nifti2Image) and np.array_equal(back.affine, nib.load(path).affine)


def _itk_source(folder: Path, fmt: str, direction: np.ndarray) -> tuple[ScanCase, sitk.Image]:
    image = _sitk_image(_phantom(), direction)
    if fmt == "dicom":
        _write_series(folder / "series", image, "1.2.3", compressor="JPEG2000")
        return find_scans(folder / "series")[0], image
    path = folder / f"in.{fmt}"
    sitk.WriteImage(image, str(path))
    return ScanCase("in", "image", path, (path,)), image


@pytest.mark.parametrize(
    ("fmt", "direction", "axcodes"),
    [
        pytest.param("mha", OBLIQUE, ("L", "P", "S"), id="mha-oblique"),
        pytest.param("nrrd", np.diag([-1.0, -1.0, 1.0]), ("R", "A", "S"), id="nrrd-ras"),
        pytest.param("nrrd", np.eye(3), ("L", "P", "S"), id="nrrd-lps"),
        pytest.param("dicom", np.eye(3), ("L", "P", "S"), id="dicom-lps"),
        # DICOM derives the slice axis from the row and column directions, so a series is always right-handed.
        pytest.param("dicom", OBLIQUE @ np.diag([-1.0, -1.0, 1.0]), ("R", "A", "S"), id="dicom-oblique-jpeg2000"),
    ],
)
def test_itk_geometry_round_trip(tmp_path, fmt, direction, axcodes) -> None:
    case, source = _itk_source(tmp_path, fmt, direction)
    scan = read_scan(case)
    assert scan.axcodes == axcodes and scan.array.shape == (1, *SHAPE)
    out = write_label(_labels_of(scan.array[0]), scan, tmp_path / "out.nii.gz")
    back = nib.load(out)
    assert back.shape == SHAPE and nib.aff2axcodes(back.affine) == axcodes
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)  # float32 in the NIfTI header
    labels = np.asanyarray(back.dataobj)
    np.testing.assert_array_equal(labels, _labels_of(_phantom()))
    for value in (1, 2):  # world position of each label = where ITK puts those voxels of the source
        expected = _itk_world_ras(source, labels == value)
        np.testing.assert_allclose(_world(back.affine, labels == value), expected, atol=1e-3)
    itk_back = sitk.ReadImage(str(out))  # ITK readers agree too (origin, spacing, direction in LPS)
    np.testing.assert_allclose(itk_back.GetOrigin(), source.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(itk_back.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(itk_back.GetDirection(), source.GetDirection(), atol=1e-5)


def test_brats_label_written_on_the_t1_grid(brats_cases, tmp_path: Path) -> None:
    case = brats_cases["BraTS2021_00000"]
    scan = read_scan(case)
    labels = (scan.array[3] > np.percentile(scan.array[3], 90)).astype(np.uint8) * 4  # a 2021-style label value
    back = nib.load(write_label(labels, scan, tmp_path / "BraTS2021_00000.nii.gz"))
    t1 = nib.load(case.files[0])
    assert np.array_equal(back.affine, t1.affine) and back.shape == t1.shape
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels)


@pytest.mark.parametrize(
    ("labels", "dtype", "error"),
    [
        pytest.param(np.zeros(SHAPE, bool), np.uint8, None, id="bool"),
        pytest.param(np.full(SHAPE, 255, np.int64), np.uint8, None, id="uint8-range"),
        pytest.param(np.full(SHAPE, 300, np.int32), np.int16, None, id="int16-range"),
        pytest.param(np.full(SHAPE, -1, np.int8), np.int16, None, id="negative"),
        pytest.param(np.full(SHAPE, 2.0, np.float32), np.uint8, None, id="integral-floats"),
        pytest.param(np.full(SHAPE, 0.5, np.float32), None, "non-integer", id="fractions"),
        pytest.param(np.full(SHAPE, 40000, np.int32), None, "do not fit in int16", id="too-large"),
        pytest.param(
            np.zeros((20, 24, 27), np.uint8), None, r"\(20, 24, 27\) do not match .* \(20, 24, 28\)", id="shape"
        ),
        pytest.param(np.zeros((28, 24, 20), np.uint8), None, "do not match", id="transposed"),
    ],
)
def test_write_label_dtypes_and_errors(tmp_path: Path, labels, dtype, error) -> None:
    path = _write_nifti(tmp_path / "in.nii.gz", _phantom(), _affine(np.eye(3)))
    scan = read_scan(ScanCase("in", "image", path, (path,)))
    if error:
        with pytest.raises(ValueError, match=error):
            write_label(labels, scan, tmp_path / "out.nii.gz")
        assert not (tmp_path / "out.nii.gz").exists()
        return
    back = nib.load(write_label(labels, scan, tmp_path / "out.nii.gz"))
    assert back.get_data_dtype() == dtype
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), labels.astype(dtype))


def test_batch_with_bad_files_finishes_the_good_cases(image_cases, tmp_path: Path) -> None:
    """The runner's loop: each failure is recorded with its reason, every good case is written."""
    written, failed = {}, {}
    for case_id, case in sorted(image_cases.items()):
        try:
            scan = read_scan(case)
        except InputError as exc:
            failed[case_id] = str(exc)
            continue
        written[case_id] = write_label(_labels_of(scan.array[0]), scan, tmp_path / f"{case_id}.nii.gz")
    assert set(failed) == {"corrupt", "truncated", "broken", "notes.txt", "README", "broken.dcm", "empty_folder",
                           "brats_tree"}  # fmt: skip
    assert "truncated.nii.gz: cannot read the voxel data" in failed["truncated"]
    assert "notes.txt: not an image file" in failed["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{c}.nii.gz" for c in written)
    for case_id, path in written.items():
        assert nib.load(path).shape == read_scan(image_cases[case_id]).spatial_shape


# -------------------------------------------------------------------------------------------------------- real scans


@pytest.mark.integration
def test_real_jpeg2000_series_without_uids(real_data: Path, tmp_path: Path) -> None:
    """TotalSegmentator's CT series: JPEG-2000 lossless, SeriesInstanceUID empty, 512 x 512 x 20 at 0.977/2.0 mm.

    Its reference segmentation (a TotalSegmentator output made from the same series) lies on the same world grid
    with the Y axis stored the other way round (LAS, as dcm2niix writes it; the series reads as LPS).
    """
    folder = real_data / "totalseg_ct_dicom"
    [case] = find_scans(folder / "dicom", exclude=[])
    assert (case.case_id, case.kind, case.series_uid, len(case.files)) == ("dicom", "dicom", None, 20)
    scan = read_scan(case)
    assert scan.array.shape == (1, 512, 512, 20) and scan.axcodes == ("L", "P", "S")
    np.testing.assert_allclose(scan.spacing, (0.9765625, 0.9765625, 2.0))
    assert scan.array.min() == -1024  # rescale intercept applied: HU
    seg = nib.load(folder / "example_seg_dicom.nii.gz")
    flip_y = np.diag([1.0, -1.0, 1.0, 1.0])
    flip_y[1, 3] = 511
    np.testing.assert_allclose(seg.affine, scan.affine @ flip_y, atol=1e-3)
    labels = np.asanyarray(seg.dataobj)[:, ::-1, :]  # to the series' own index order
    hu = scan.array[0]
    aorta, liver = labels == 52, labels == 5
    assert aorta.sum() > 1000 and liver.sum() > 10000
    # Contrast-filled aorta above 150 HU, liver 50-150 HU: on the scan's grid the labels sit on the right tissue ...
    assert hu[aorta].mean() > 150 and 50 < hu[liver].mean() < 150
    # ... and would not without the flip (the check can fail).
    assert hu[np.asanyarray(seg.dataobj) == 52].mean() < 100
    back = nib.load(write_label(labels, scan, tmp_path / "dicom.nii.gz"))
    assert back.shape == (512, 512, 20) and nib.aff2axcodes(back.affine) == ("L", "P", "S")
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4)
    back_labels = np.asanyarray(back.dataobj)
    np.testing.assert_array_equal(back_labels, labels)
    np.testing.assert_allclose(
        _world(back.affine, back_labels == 52).mean(0),
        _world(seg.affine, np.asanyarray(seg.dataobj) == 52).mean(0),
        atol=1e-3,
    )


@pytest.mark.integration
def test_real_unevenly_spaced_series_is_refused(real_data: Path) -> None:
    """MONAI's tiny CT series: 4 slices at z = -99.5, 103.0, 104.3, 105.5 mm; ITK would assume 68.3 mm spacing."""
    [case] = find_scans(real_data / "monai_ct_dicom_tiny")
    assert (case.kind, len(case.files), case.series_uid) == (
        "dicom",
        4,
        "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2",
    )
    with pytest.raises(InputError, match=r"not evenly spaced.*gaps from 1.25 to 202.5 mm"):
        read_scan(case)


@pytest.mark.integration
def test_real_lps_nifti_and_brats2023_folder(real_data: Path, tmp_path: Path) -> None:
    ct = real_data / "totalseg_aorta_cta" / "ct_cropped.nii.gz"
    [case] = find_scans(ct)
    scan = read_scan(case)
    aorta = np.asanyarray(nib.load(real_data / "totalseg_aorta_cta" / "aorta.nii.gz").dataobj)
    back = nib.load(write_label(aorta, scan, tmp_path / "ct_cropped.nii.gz"))
    source = nib.load(ct)
    assert np.array_equal(back.affine, source.affine) and nib.aff2axcodes(back.affine) == ("L", "P", "S")
    assert back.header["sform_code"] == source.header["sform_code"]
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), aorta)
    assert scan.array[0][aorta > 0].mean() > 200  # the model's aorta mask sits on the bright lumen
    [brats] = find_scans(real_data / "brats_gli_00001_000", expect="brats", exclude=[])
    assert (brats.case_id, brats.edition) == ("BraTS-GLI-00001-000", "2023")
    assert [f.name.rsplit("-", 1)[1] for f in brats.files] == ["t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"]
    assert read_scan(brats).array.shape == (4, 240, 240, 155)


def test_scan_dataclass_shapes() -> None:
    scan = Scan(ScanCase("x", "image", Path("x.nii")), np.zeros((1, *SHAPE), np.float32), np.eye(4), (1.0, 1.0, 1.0))
    assert scan.spatial_shape == SHAPE and scan.axcodes == ("R", "A", "S")
