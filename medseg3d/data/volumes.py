"""Reading 3D volumes with the checks every consumer needs, each failure naming the file at fault."""

from __future__ import annotations

import os
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from medseg3d.core.errors import InputError

# Two co-registered volumes may differ by float round-off in their headers, never by a real shift.
AFFINE_TOLERANCE_MM = 1e-3


def _load_header(path: str | os.PathLike) -> nib.Nifti1Image:
    try:
        return nib.load(os.fspath(path))
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except Exception as exc:  # nibabel raises many types for bad headers; all mean "not a NIfTI"
        raise InputError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from None


def _spatial_shape(path: str | os.PathLike, shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D volume, got shape {shape}")
    return shape


def _read_data(path: str | os.PathLike, image: nib.Nifti1Image, dtype: type | None) -> np.ndarray:
    try:
        data = np.asarray(image.dataobj) if dtype is None else np.asarray(image.dataobj, dtype=dtype)
    except Exception as exc:  # truncated gzip, short file: zlib.error, EOFError, OSError, ValueError
        raise InputError(path, f"cannot read the voxel data, the file is damaged or truncated ({exc})") from None
    if data.dtype.kind == "f":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise InputError(path, f"{bad} voxels are NaN or Inf; expected finite values")
    return data


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an intensity volume as float32.

    Returns:
        (data, affine): data of shape (X, Y, Z), affine the 4x4 voxel-to-RAS matrix.

    Raises:
        InputError: unreadable or truncated file, not 3D, NaN/Inf voxels, or every voxel 0.
    """
    image = _load_header(path)
    shape = _spatial_shape(path, image.shape)
    data = _read_data(path, image, np.float32).reshape(shape)
    if not np.any(data):
        raise InputError(path, "the image is empty (every voxel is 0); expected a scan")
    return data, np.asarray(image.affine, dtype=np.float64)


def read_label(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a label map in its stored dtype (float only when the file stores floats).

    Returns:
        (labels, affine): labels of shape (X, Y, Z).

    Raises:
        InputError: unreadable or truncated file, not 3D, NaN/Inf voxels.
    """
    image = _load_header(path)
    shape = _spatial_shape(path, image.shape)
    return _read_data(path, image, None).reshape(shape), np.asarray(image.affine, dtype=np.float64)


def check_same_grid(
    path: str | os.PathLike,
    shape: Sequence[int],
    affine: np.ndarray,
    reference_path: str | os.PathLike,
    reference_shape: Sequence[int],
    reference_affine: np.ndarray,
) -> None:
    """Raise ``InputError`` unless ``path`` has the voxel grid (shape and affine) of ``reference_path``."""
    if tuple(shape) != tuple(reference_shape):
        raise InputError(
            path,
            f"not co-registered with {os.path.basename(reference_path)}: shape {tuple(shape)} "
            f"vs {tuple(reference_shape)}; expected every file of a case on the same grid",
        )
    difference = float(np.max(np.abs(np.asarray(affine) - np.asarray(reference_affine))))
    if difference > AFFINE_TOLERANCE_MM:
        raise InputError(
            path,
            f"not co-registered with {os.path.basename(reference_path)}: affines differ by up to "
            f"{difference:.4g}; expected every file of a case on the same grid",
        )
