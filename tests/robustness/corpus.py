"""A corpus of bad (and odd but valid) inputs, generated into a folder on demand.

Every function writes one input: a damaged file, a volume of the wrong dimensionality or dtype, NaN voxels, a
label off its image's grid, a DICOM series folder with two series or a missing slice, and so on. The good data
they start from comes from the project's own phantoms (``medseg3d.data.synth_brats.write_brats_tree``,
``medseg3d.data.synth_ct.write_ct_cases``), small and non-cubic (``SHAPE``) so that swapped axes show.
``tests/robustness/test_bad_inputs.py`` feeds them to ``prep_brats`` and ``medseg3d datalist|train|infer|evaluate``.
"""

from __future__ import annotations

import gzip
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medseg3d.core.io import keep_locale

SHAPE = (24, 20, 16)  # non-cubic; every axis at least the CT phantom's minimum of 16
UID_ROOT = "1.2.826.0.1.3680043.10.1234.99."


# ------------------------------------------------------------------------------------------------------ geometry


def affine(spacing: Sequence[float] = (1.0, 1.0, 1.0), origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """An axis-aligned voxel -> RAS matrix."""
    out = np.diag([*map(float, spacing), 1.0])
    out[:3, 3] = origin
    return out


def shifted(matrix: np.ndarray, mm: float) -> np.ndarray:
    """``matrix`` moved by ``mm`` along x (a resampled or misaligned copy)."""
    out = np.array(matrix, dtype=np.float64)
    out[0, 3] += mm
    return out


def oblique_affine(spacing: Sequence[float] = (1.0, 1.0, 1.0), degrees: float = 20.0) -> np.ndarray:
    """A voxel -> RAS matrix rotated by ``degrees`` about z and half that about x (an oblique acquisition)."""
    a, b = math.radians(degrees), math.radians(degrees / 2)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    out = np.eye(4)
    out[:3, :3] = rz @ rx @ np.diag([float(s) for s in spacing])
    out[:3, 3] = (-10.0, 5.0, 3.0)
    return out


# --------------------------------------------------------------------------------------------------------- files


def write_nifti(path: Path, data: np.ndarray, matrix: np.ndarray | None = None, dtype=None) -> Path:
    """``data`` as a NIfTI file (``matrix`` default: 1 mm, axis-aligned), stored as ``dtype`` (default its own)."""
    data = np.asarray(data if dtype is None else np.asarray(data).astype(dtype))
    image = nib.Nifti1Image(data, affine() if matrix is None else matrix)
    image.header.set_data_dtype(data.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data, affine) of a NIfTI file."""
    image = nib.load(str(path))
    return np.asarray(image.dataobj), np.asarray(image.affine, dtype=np.float64)


def zero_byte(path: Path) -> Path:
    """An empty file under a NIfTI name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut an existing file to ``keep`` of its size (a download or copy that stopped)."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def gzip_not_nifti(path: Path) -> Path:
    """A valid gzip stream of text under a ``.nii.gz`` name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b"this is a text file, not a NIfTI image\n" * 20, mtime=0))
    return path


def not_an_image(path: Path) -> Path:
    """A plain text file (a README beside the scans)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("notes about the scans\n")
    return path


def malformed_json(path: Path) -> Path:
    """A ``dataset.json`` cut mid-object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"training": [{"image": "imagesTr/a.nii.gz", "label": ')
    return path


# ----------------------------------------------------------------------------------------------- volume variants


def two_d(data: np.ndarray) -> np.ndarray:
    """The middle slice only: a 2D image."""
    return np.ascontiguousarray(data[:, :, data.shape[2] // 2])


def five_d(data: np.ndarray) -> np.ndarray:
    """(X, Y, Z, 1, 2): a time series of two volumes in NIfTI's 5th axis."""
    return np.stack([data, data], axis=-1)[:, :, :, None, :]


def with_nan(data: np.ndarray, value: float = np.nan) -> np.ndarray:
    """A float32 copy with a few voxels set to ``value`` (NaN or Inf)."""
    out = np.asarray(data, dtype=np.float32).copy()
    out[1:3, 2, 3] = value
    return out


def to_int8(data: np.ndarray) -> np.ndarray:
    """Intensities rescaled into int8 (0 stays 0, the largest magnitude becomes 127), as a careless export stores
    them."""
    data = np.asarray(data, dtype=np.float64)
    return np.round(data / max(float(np.abs(data).max()), 1e-6) * 127).astype(np.int8)


def shifted_shape(data: np.ndarray) -> np.ndarray:
    """One slice fewer along z: the shape of another grid."""
    return np.ascontiguousarray(data[:, :, :-1])


# ------------------------------------------------------------------------------------------------------- BraTS


def brats_tree(root: Path, cases: int, seed: int = 0) -> list[Path]:
    """A raw BraTS 2021 tree of ``cases`` training cases of ``SHAPE``; returns the case folders."""
    from medseg3d.data.synth_brats import write_brats_tree

    return write_brats_tree(root, cases=cases, edition="2021", shape=SHAPE, seed=seed)


def brats_files(folder: Path) -> dict[str, Path]:
    """Modality key (t1, t1ce, t2, flair, seg) -> file of a 2021 case folder."""
    out = {}
    for path in sorted(folder.iterdir()):
        out[path.name.split("_")[-1].split(".")[0]] = path
    return out


def rename_case(folder: Path, new_id: str) -> Path:
    """Give a 2021 case folder and its files the case ID ``new_id`` (spaces, unicode, dots...)."""
    old_id = folder.name
    target = folder.with_name(new_id)
    folder.rename(target)
    for path in target.iterdir():
        path.rename(target / path.name.replace(old_id, new_id))
    return target


def regrid_case(folder: Path, matrix: np.ndarray, dtype=None) -> None:
    """Rewrite every file of a case with the voxel -> RAS ``matrix`` (images in ``dtype`` when given)."""
    for key, path in brats_files(folder).items():
        data, _ = read(path)
        write_nifti(path, data, matrix, None if key == "seg" else dtype)


# ---------------------------------------------------------------------------------------------------------- CT


def ct_cases(root: Path, cases: int, seed: int = 0, dicom: bool = False) -> list[Path]:
    """CT phantoms of ``SHAPE`` (``imagesTr/ct_NNN`` + ``labelsTr/ct_NNN.nii.gz``); returns the images."""
    from medseg3d.data.synth_ct import write_ct_cases

    return write_ct_cases(root, cases=cases, seed=seed, shape=SHAPE, dicom=dicom)


def _ds(*values: float) -> str:
    return "\\".join(f"{v:.6f}".rstrip("0").rstrip(".") for v in values)


def write_dicom_series(
    folder: Path,
    hu: np.ndarray,
    spacing: Sequence[float],
    z_positions: Sequence[float] | None = None,
    series: int = 1,
    prefix: str = "",
) -> Path:
    """Write ``hu`` (X, Y, Z int16 HU) as one CT DICOM file per slice, slice k at ``z_positions[k]`` mm.

    ``z_positions`` defaults to evenly spaced slices; give gaps or uneven steps to break the series. ``series``
    picks the SeriesInstanceUID, so two calls into one folder make a folder of two series.
    """
    hu = np.asarray(hu, dtype=np.int16)
    if z_positions is None:
        z_positions = [k * float(spacing[2]) for k in range(hu.shape[2])]
    folder.mkdir(parents=True, exist_ok=True)
    tags = [
        ("0008|0060", "CT"), ("0008|0008", "DERIVED\\SECONDARY\\AXIAL"), ("0010|0010", "CORPUS^CT"),
        ("0010|0020", "corpus"), ("0020|000d", f"{UID_ROOT}1"), ("0020|000e", f"{UID_ROOT}2.{series}"),
        ("0020|0052", f"{UID_ROOT}3"), ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0020|0011", str(series)),
        ("0028|1052", "0"), ("0028|1053", "1"),
    ]  # fmt: skip
    with keep_locale():  # GDCM's writer would leave the process in the "C" locale
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        for k, z in enumerate(z_positions):
            image = sitk.GetImageFromArray(np.ascontiguousarray(hu[:, :, k].T))
            image.SetSpacing((float(spacing[0]), float(spacing[1])))
            for tag, value in tags:
                image.SetMetaData(tag, value)
            image.SetMetaData("0008|0018", f"{UID_ROOT}4.{series}.{k + 1}")
            image.SetMetaData("0020|0013", str(k + 1))
            image.SetMetaData("0020|0032", _ds(0.0, 0.0, float(z)))
            image.SetMetaData("0020|1041", _ds(float(z)))
            writer.SetFileName(str(folder / f"{prefix}{k + 1:04d}.dcm"))
            writer.Execute(image)
    return folder


def copy_tree(source: Path, target: Path) -> Path:
    """Copy a file or folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
    return target
