"""The one image reader: every image the project accepts, read one way, with one set of geometry rules.

Formats (file names in ``medseg3d.core.constants.IMAGE_EXTENSIONS``):

- NIfTI (``.nii.gz``, ``.nii``) through nibabel, so the affine is the header's own (sform or qform, as nibabel and
  MONAI's loader pick it);
- NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK;
- DICOM series (a folder holding one series, or the ordered slice files of one series) through SimpleITK's GDCM,
  compressed transfer syntaxes included; a series is refused unless its slices lie on the regular grid ITK builds
  (:func:`check_slice_positions`).

Every image comes as voxels of shape (C, X, Y, Z) in the file's own index order and a (4, 4) voxel -> RAS affine
(nibabel's and MONAI's convention); ITK's LPS geometry becomes RAS in one place (:func:`lps_to_ras`). Two grids are
compared by one function with one tolerance (:func:`check_same_grid`, :func:`position_tolerance`). Preparation, the
datalist, training (``medseg3d.data.sitk_reader``), inference (``medseg3d.data.scans``) and evaluation all read here,
so they agree on what an image is and where its voxels lie. Every failure is an ``InputError`` naming the file (the
series folder for DICOM) and what was expected.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medseg3d.core.constants import DICOM_EXTENSIONS, IMAGE_EXTENSIONS, NIFTI_EXTENSIONS
from medseg3d.core.errors import InputError

logger = logging.getLogger(__name__)

# ITK and DICOM give world coordinates in LPS, NIfTI and MONAI in RAS: the first two world axes point the other way.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# The one geometric tolerance (see position_tolerance): a fraction of the voxel size, with a floor in mm.
POSITION_TOLERANCE_VOXELS = 0.01
POSITION_TOLERANCE_MM = 0.01
_CHUNK = 1 << 22  # voxels per block when scanning label values (bounded memory on full-size CT)
_POSITION_TAG = "0020|0032"  # ImagePositionPatient
_MODALITY_TAG = "0008|0060"


# --------------------------------------------------------------------------------------------------------- file names


def image_extension(path: str | os.PathLike) -> str | None:
    """The accepted image extension ``path`` ends with (lower case), or None.

    >>> image_extension("a/CT_1.NII.GZ"), image_extension("b.mha"), image_extension("notes.txt")
    ('.nii.gz', '.mha', None)
    """
    name = Path(path).name.lower()
    return next((ext for ext in IMAGE_EXTENSIONS if name.endswith(ext)), None)


def looks_like_dicom(path: Path) -> bool:
    """Cheap pre-check before GDCM: the 'DICM' magic at byte 128, a DICOM extension, or a bare tag stream."""
    if path.name.upper() == "DICOMDIR" or image_extension(path):
        return False  # DICOMDIR indexes a media folder and holds no pixels
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    # Files without the 128-byte preamble (old exports) start with a group 0002 or 0008 tag.
    return head[128:132] == b"DICM" or path.suffix.lower() in DICOM_EXTENSIONS or head[:2] in (b"\x02\x00", b"\x08\x00")


def gdcm_series(folder: Path, files: list[Path]) -> tuple[list[tuple[str | None, tuple[Path, ...]]], list[Path]]:
    """DICOM series directly in ``folder`` as (uid or None, ordered files), and the DICOM-like files in none.

    GDCM groups by SeriesInstanceUID (missing and empty UIDs form the series ``""``) and orders each series by
    ImagePositionPatient along the slice normal, falling back to InstanceNumber.

    Args:
        folder: the folder searched (not its subfolders).
        files: the files of ``folder`` that may belong to a series (others, e.g. hidden ones, are left out).
    """
    candidates = [f for f in files if looks_like_dicom(f)]
    if not candidates:
        return [], []
    series = []
    listed = set(files)
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)
        paths = tuple(Path(n) for n in names if Path(n) in listed)
        if paths:
            series.append((uid.strip() or None, paths))
    used = {p for _, paths in series for p in paths}
    series.sort(key=lambda s: (s[0] or "", s[1][0].name))
    return series, [f for f in candidates if f not in used]


# ---------------------------------------------------------------------------------------------------------- geometry


def lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """A (4, 4) voxel -> world matrix with its world axes turned from LPS (ITK, DICOM) to RAS (NIfTI, MONAI).

    Negating the first two world axes is its own inverse, so the same call turns RAS into LPS.

    >>> lps_to_ras(np.diag([0.5, 0.5, 2.0, 1.0])).diagonal().tolist()
    [-0.5, -0.5, 2.0, 1.0]
    """
    return LPS_TO_RAS @ np.asarray(matrix, dtype=np.float64)


def itk_affine_ras(direction: Sequence[float], spacing: Sequence[float], origin: Sequence[float]) -> np.ndarray:
    """Voxel -> RAS (4, 4) from ITK's 3D geometry (direction cosines, spacing and origin, all LPS).

    >>> itk_affine_ras((1, 0, 0, 0, 1, 0, 0, 0, 1), (0.5, 0.5, 2.0), (10.0, 20.0, 30.0))[:3].tolist()
    [[-0.5, 0.0, 0.0, -10.0], [0.0, -0.5, 0.0, -20.0], [0.0, 0.0, 2.0, 30.0]]
    """
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    affine[:3, 3] = origin
    return lps_to_ras(affine)


def sitk_affine_ras(image: sitk.Image) -> np.ndarray:
    """Voxel -> RAS (4, 4) of a 3D SimpleITK image (whose origin and direction are LPS)."""
    return itk_affine_ras(image.GetDirection(), image.GetSpacing(), image.GetOrigin())


def position_tolerance(spacing: float) -> float:
    """How far (mm) a voxel centre may lie from where another grid puts it and still count as the same position.

    One rule for every geometry check of the project (two grids, a DICOM slice and ITK's regular grid): 1 % of the
    voxel size, at least 0.01 mm. Why: a mismatch matters by how far it moves voxels, so the tolerance is a
    fraction of a voxel, the same at 0.5 mm and at 5 mm; 1 % is far above header round-off (float32 NIfTI fields
    hold positions to about 1e-5 mm at 300 mm from the origin, DICOM writes them as decimal strings, often to 0.01 mm,
    hence the floor) and far below any real shift or resampling, which moves labels by tenths of a voxel or more.

    >>> position_tolerance(2.5), position_tolerance(0.5)
    (0.025, 0.01)
    """
    return max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_VOXELS * float(spacing))


@dataclass(frozen=True)
class Grid:
    """A voxel grid: its size and where each voxel centre lies.

    Attributes:
        shape: (X, Y, Z).
        affine: float64 (4, 4) voxel index (i, j, k) -> RAS mm.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size (mm) along i, j, k: (3,)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def direction(self) -> np.ndarray:
        """Unit direction (RAS) of each index axis, as columns: (3, 3)."""
        return self.affine[:3, :3] / np.where(self.spacing > 0, self.spacing, 1.0)

    @property
    def origin(self) -> np.ndarray:
        """RAS position (mm) of voxel (0, 0, 0): (3,)."""
        return self.affine[:3, 3]


def grid_offset(grid: Grid, reference: Grid) -> float:
    """The largest distance (mm) between where ``grid`` and ``reference`` put one voxel index of ``reference``.

    Both maps are affine, so the largest distance over the volume is reached at one of its 8 corner voxels.

    >>> a = Grid((10, 20, 30), np.diag([1.0, 1.0, 2.0, 1.0]))
    >>> round(grid_offset(Grid((10, 20, 30), np.diag([1.0, 1.0, 2.1, 1.0])), a), 6)  # 29 slices of 0.1 mm more
    2.9
    """
    corners = np.array(list(itertools.product(*[(0.0, n - 1.0) for n in reference.shape])))
    moved = corners @ (np.asarray(grid.affine) - np.asarray(reference.affine))[:3, :3].T
    moved += (np.asarray(grid.affine) - np.asarray(reference.affine))[:3, 3]
    return float(np.max(np.linalg.norm(moved, axis=1)))


def _fmt(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in np.asarray(values, dtype=np.float64).ravel()) + ")"


def check_same_grid(
    path: str | os.PathLike,
    grid: Grid,
    reference_path: str | os.PathLike,
    reference: Grid,
    relation: str = "not co-registered with",
    expected: str = "expected every file of a case on the same grid",
    reference_name: str | None = None,
) -> None:
    """Raise ``InputError`` naming ``path`` and ``reference_path`` unless both lie on one voxel grid.

    The grids must have the same shape and put every voxel centre at the same place within
    ``position_tolerance`` of the reference's smallest voxel size (:func:`grid_offset`, the largest difference,
    is in the message). The message says what differs (shape, spacing, direction, origin) and how.

    Args:
        path: the file checked (named first, as the file at fault).
        grid: its grid.
        reference_path: the file it must match.
        reference: that file's grid.
        relation: the words between the two file names, e.g. ``"not on the grid of its image"``.
        expected: what was expected, the end of the message.
        reference_name: how the message names ``reference_path``; default its path relative to the folder of
            ``path`` (the bare name when both share a folder), so that a message stays true when the tree moves.

    Example:
        >>> a = Grid((4, 5, 6), np.diag([0.8, 0.8, 2.5, 1.0]))
        >>> check_same_grid("l.nii.gz", Grid((4, 5, 6), np.diag([0.8, 0.8, 2.5005, 1.0])), "i.nii", a)  # round-off
        >>> check_same_grid("l.nii.gz", Grid((4, 5, 6), np.diag([0.8, 0.8, 2.0, 1.0])), "i.nii", a)
        Traceback (most recent call last):
        ...
        medseg3d.core.errors.InputError: l.nii.gz: not co-registered with i.nii (spacings differ): spacing (0.8, 0.8, 2) vs (0.8, 0.8, 2.5) mm, affines differ by up to 2.5 mm at a voxel centre (tolerance 0.01 mm); expected every file of a case on the same grid
    """  # noqa: E501
    tolerance = position_tolerance(float(np.min(reference.spacing)))
    offset = grid_offset(grid, reference)
    if tuple(grid.shape) == tuple(reference.shape) and offset <= tolerance:
        return
    # Each part's own effect across the volume, judged by the same tolerance: which of them moves voxels.
    extent = np.maximum(np.asarray(reference.shape, dtype=np.float64) - 1.0, 1.0)
    problems, details = [], []
    if tuple(grid.shape) != tuple(reference.shape):
        problems.append("shapes differ")
        details.append(f"shape {tuple(grid.shape)} vs {tuple(reference.shape)}")
    if np.any(np.abs(grid.spacing - reference.spacing) * extent > tolerance):
        problems.append("spacings differ")
        details.append(f"spacing {_fmt(grid.spacing)} vs {_fmt(reference.spacing)} mm")
    turned = np.linalg.norm(grid.direction - reference.direction, axis=0) * extent * reference.spacing
    if np.any(turned > tolerance):
        problems.append("orientations differ")
        details.append(f"direction {_fmt(grid.direction)} vs {_fmt(reference.direction)} (RAS)")
    shift = float(np.max(np.abs(grid.origin - reference.origin)))  # along the axis where it is largest
    if shift > tolerance:
        problems.append(f"origins differ by {shift:.4g} mm")
        details.append(f"origin {_fmt(grid.origin)} vs {_fmt(reference.origin)} mm (RAS)")
    if offset > tolerance:
        details.append(f"affines differ by up to {offset:.4g} mm at a voxel centre (tolerance {tolerance:.2g} mm)")
    if reference_name is None:
        reference_name = os.path.relpath(os.path.abspath(reference_path), os.path.dirname(os.path.abspath(path)))
    what = "; ".join(problems) or "affines differ"
    raise InputError(path, f"{relation} {reference_name} ({what}): {', '.join(details)}; {expected}")


def check_slice_positions(
    source: Path, files: Sequence[Path], reader: sitk.ImageSeriesReader, image: sitk.Image
) -> None:
    """Raise ``InputError`` unless every slice of a series lies where ITK's regular grid puts it.

    ITK builds the grid from the first and last ImagePositionPatient; a missing slice, uneven spacing, a gantry
    tilt or two acquisitions in one series would make every label drift off its slice, so they are errors. A slice
    may lie ``position_tolerance(slice spacing)`` from its place. Series whose slices have no readable
    ImagePositionPatient are read as ITK reads them, with a warning.

    Args:
        source: the series (folder), named in the error.
        files: its slice files in slice order.
        reader: the reader that read them, with its meta-data dictionaries (``MetaDataDictionaryArrayUpdateOn``).
        image: the 3D image it read.
    """
    if len(files) < 2 or image.GetDimension() != 3 or image.GetSize()[2] != len(files):
        return
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, _POSITION_TAG).split("\\")]
                              for i in range(len(files))])  # fmt: skip
    except (RuntimeError, ValueError):
        logger.warning("%s: some slices have no readable ImagePositionPatient; geometry as ITK reads it", source)
        return
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()[2]
    expected = np.asarray(image.GetOrigin()) + np.arange(len(files))[:, None] * spacing * direction[:, 2]
    errors = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(errors))
    if errors[worst] > position_tolerance(spacing):
        gaps = np.diff(positions @ direction[:, 2])
        raise InputError(
            source,
            f"slices are not evenly spaced: {Path(files[worst]).name} lies {errors[worst]:.3g} mm off the regular "
            f"grid of {spacing:.4g} mm slices (gaps from {gaps.min():.4g} to {gaps.max():.4g} mm); expected a "
            "complete series of evenly spaced, parallel slices (a missing slice, a gantry tilt, or two acquisitions "
            "in one series?)",
        )


# ----------------------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ImageInfo:
    """What an image is without its voxels.

    Attributes:
        path: the file, or the DICOM series folder.
        grid: its voxel grid.
        channels: values per voxel (the 4th axis of a multi-channel NIfTI file), 1 otherwise.
        modality: a DICOM series' Modality tag (``"CT"``, ``"MR"``), None for other images or when missing.
    """

    path: Path
    grid: Grid
    channels: int = 1
    modality: str | None = None


@dataclass
class ImageData:
    """An image read into memory.

    Attributes:
        path: the file, or the DICOM series folder.
        array: shape (C, X, Y, Z) in the file's index order, float32 or the stored dtype; each channel is
            Fortran-ordered in memory, as NIfTI and ITK store voxels (``np.ascontiguousarray`` where C order is
            needed).
        affine: float64 (4, 4) voxel index (i, j, k) -> RAS mm.
        header: the NIfTI header of a NIfTI file (so that a label map can copy its codes), None otherwise.
        modality: a DICOM series' Modality tag, None for other images or when missing.
    """

    path: Path
    array: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header | None = field(default=None, repr=False)
    modality: str | None = None
    _range: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def grid(self) -> Grid:
        """The voxel grid: (X, Y, Z) and the affine."""
        return Grid(tuple(int(n) for n in self.array.shape[1:]), self.affine)  # type: ignore[arg-type]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along i, j, k (the affine's column norms)."""
        return tuple(float(s) for s in self.grid.spacing)  # type: ignore[return-value]

    def channel_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel minimum and maximum, each of shape (C,); NaN and Inf show in them (computed once)."""
        if self._range is None:
            # Channel by channel: reshaping a Fortran-ordered array would copy it.
            self._range = (np.array([c.min() for c in self.array]), np.array([c.max() for c in self.array]))
        return self._range


def _missing(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file not found")


def _channels_of(path: Path, shape: Sequence[int], channels: int | None) -> tuple[tuple[int, int, int], int]:
    """(X, Y, Z) and the channel count of a stored NIfTI shape; size-1 axes after Z are dropped.

    ``channels``: the count expected (1: a 3D volume), or None for any count on one 4th axis.
    """
    shape = tuple(int(n) for n in shape)
    rest = tuple(n for n in shape[3:] if n != 1)
    found = rest[0] if len(rest) == 1 else 1
    if len(shape) < 3 or len(rest) > 1 or (channels is not None and rest != ((channels,) if channels > 1 else ())):
        if channels == 1:
            expected = "a 3D volume"
        elif channels is None:
            expected = "a 3D volume or a multi-channel image (X, Y, Z, C)"
        else:
            expected = f"a {channels}-channel image (X, Y, Z, {channels})"
        raise InputError(path, f"expected {expected}, got shape {shape}")
    return shape[:3], found  # type: ignore[return-value]


def _check_affine(path: Path, affine: np.ndarray) -> None:
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(path, "the header's voxel-to-world matrix is singular or not finite; expected a valid affine")


def _load_nifti(path: Path) -> nib.Nifti1Image:
    """The NIfTI image of ``path``, header only (nibabel reads voxels on demand)."""
    _missing(path)
    try:
        return nib.load(os.fspath(path))
    except Exception as exc:  # nibabel raises many types for bad headers or non-NIfTI bytes
        raise InputError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from None


def _nifti_header(path: Path, channels: int | None) -> tuple[nib.Nifti1Image, tuple[int, int, int], int, np.ndarray]:
    """A NIfTI file's image (data not read), its (X, Y, Z), channel count and checked float64 affine."""
    image = _load_nifti(path)
    shape, found = _channels_of(path, image.shape, channels)
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_affine(path, affine)
    return image, shape, found, affine


def _check_nifti_size(path: Path, image: nib.Nifti1Image) -> None:
    """Raise ``InputError`` for a truncated or damaged NIfTI file without decompressing a sound one.

    A sound ``.nii`` holds at least offset + voxel bytes; a sound single-stream ``.nii.gz`` ends with that size
    (mod 2**32). Anything else (a multi-stream gzip too) is read in full, which raises for a damaged file.
    """
    header = image.header
    # The offset of the file as read (the proxy's): a loaded image's header copy says 0 (nibabel resets vox_offset).
    offset = getattr(image.dataobj, "offset", None)
    offset = int(header.get_data_offset() if offset is None else offset)
    expected = offset + int(np.prod(image.shape)) * header.get_data_dtype().itemsize
    try:
        if path.name.lower().endswith(".nii"):
            sound = path.stat().st_size >= expected
        else:
            with open(path, "rb") as f:
                f.seek(-4, os.SEEK_END)
                sound = int.from_bytes(f.read(4), "little") == expected % 2**32
    except OSError:
        sound = False
    if not sound:
        _nifti_voxels(path, image, None)


def _nifti_voxels(path: Path, image: nib.Nifti1Image, dtype: type | None) -> np.ndarray:
    try:
        return np.asarray(image.dataobj) if dtype is None else np.asarray(image.dataobj, dtype=dtype)
    except Exception as exc:  # truncated gzip, short file: zlib.error, EOFError, OSError, ValueError
        raise InputError(path, f"cannot read the voxel data, the file is damaged or truncated ({exc})") from None


def _itk_error(path: Path, what: str, exc: RuntimeError) -> InputError:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return InputError(path, f"cannot read as {what} ({lines[-1].strip() if lines else exc})")


def _itk_grid(path: Path, size, spacing, origin, direction, components: int) -> Grid:  # noqa: ANN001
    """The grid of an ITK image (a header or a whole image); a 3D scalar volume (a trailing size-1 axis dropped)."""
    shape = tuple(int(n) for n in size)
    if components != 1:
        raise InputError(path, f"expected a single-channel image, got {components} components per voxel")
    if len(shape) == 4 and shape[3] == 1:
        direction = np.asarray(direction, dtype=np.float64).reshape(4, 4)[:3, :3].ravel()
        shape, spacing, origin = shape[:3], spacing[:3], origin[:3]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D volume, got a {len(shape)}D image of size {shape}")
    affine = itk_affine_ras(direction, spacing, origin)
    _check_affine(path, affine)
    return Grid(shape, affine)  # type: ignore[arg-type]


def _sitk_grid(path: Path, image: sitk.Image) -> Grid:
    return _itk_grid(path, image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(),
                     image.GetNumberOfComponentsPerPixel())  # fmt: skip


def _sitk_voxels(image: sitk.Image, dtype: type | None) -> np.ndarray:
    """(1, X, Y, Z) voxels of a 3D (or X, Y, Z, 1) scalar ITK image, Fortran-ordered."""
    if image.GetDimension() == 4:
        image = image[:, :, :, 0]
    # (Z, Y, X) C-order is (X, Y, Z) Fortran-order: transposing the view and copying in memory order is one
    # sequential copy, where a C-order (X, Y, Z) copy would be a slow strided transpose. A copy either way: the
    # view dies with the image.
    view = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    return (np.array(view) if dtype is None else view.astype(dtype))[None]


def _check_finite(image: ImageData) -> None:
    if image.array.dtype.kind != "f":
        return
    lows, highs = image.channel_range()  # NaN and Inf propagate to min/max: no full-size mask for a sound image
    if not (np.all(np.isfinite(lows)) and np.all(np.isfinite(highs))):
        bad = int(image.array.size - np.count_nonzero(np.isfinite(image.array)))
        raise InputError(image.path, f"{bad} voxels are NaN or Inf; expected finite values")


def _one_series(folder: Path) -> tuple[Path, ...]:
    """The slice files of the one DICOM series directly in ``folder``."""
    files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    series, _ = gdcm_series(folder, files)
    if not series:
        raise InputError(
            folder, "no DICOM series directly in this folder; expected the DICOM slice files of one series"
        )
    if len(series) > 1:
        uids = ", ".join(uid or "(no UID)" for uid, _ in series)
        raise InputError(folder, f"holds {len(series)} DICOM series ({uids}); expected one series per case folder "
                         "(the loader reads only one)")  # fmt: skip
    return series[0][1]


def read_dicom_series(files: Sequence[Path], source: Path, dtype: type | None = np.float32) -> ImageData:
    """Read one DICOM series (GDCM, compressed transfer syntaxes included) and check its slice positions.

    Args:
        files: the slice files of the series in slice order (one file for a multi-frame image).
        source: what the series is called in errors: its folder, or the one file.
        dtype: the voxel type (float32 by default), or None for the type GDCM gives (rescale slope and intercept
            applied, e.g. int16 HU).

    Returns:
        ``ImageData`` with ``array`` of shape (1, X, Y, Z) and the ``modality`` tag.

    Raises:
        InputError: naming ``source``: GDCM cannot read it, not a 3D scalar volume, slices not evenly spaced,
            NaN/Inf voxels, a singular geometry.
    """
    source = Path(source)
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise _itk_error(source, "a DICOM series", exc) from None
    grid = _sitk_grid(source, image)
    check_slice_positions(source, files, reader, image)
    modality = reader.GetMetaData(0, _MODALITY_TAG).strip() if reader.HasMetaDataKey(0, _MODALITY_TAG) else ""
    data = ImageData(source, _sitk_voxels(image, dtype), grid.affine, modality=modality or None)
    _check_finite(data)
    return data


def read_image(path: str | os.PathLike, channels: int = 1, dtype: type | None = np.float32) -> ImageData:
    """Read an image file or a DICOM series folder (one series directly in it).

    NIfTI through nibabel (the header's affine exactly); NRRD, MHA/MHD through SimpleITK; a folder through GDCM with
    the slice-position check. No reorientation or resampling.

    Args:
        path: the file, or the series folder.
        channels: the values per voxel expected: 1 (a 3D volume) or C > 1 (a NIfTI file of shape (X, Y, Z, C)).
        dtype: the voxel type (float32 by default; NIfTI scaling applied), or None for the stored type.

    Returns:
        ``ImageData`` with ``array`` of shape (C, X, Y, Z) in the file's index order.

    Raises:
        InputError: naming the file (or folder): not found; unreadable, corrupt or truncated; another dimension or
            channel count (trailing size-1 axes are dropped); NaN/Inf voxels; a singular or non-finite affine; for a
            folder, not exactly one series in it or slices not evenly spaced.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(_one_series(path), path, dtype)
    _missing(path)
    if image_extension(path) in NIFTI_EXTENSIONS:
        image, shape, found, affine = _nifti_header(path, channels)
        # NIfTI data is Fortran-ordered; a channels-first view of it (no transposing copy) keeps reading fast.
        array = np.moveaxis(_nifti_voxels(path, image, dtype).reshape(*shape, found), -1, 0)
        data = ImageData(path, array, affine, header=image.header.copy())
    else:
        if channels != 1:
            raise InputError(path, f"expected a {channels}-channel NIfTI image (X, Y, Z, {channels}); NRRD/MHA "
                             "images are read as one channel")  # fmt: skip
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise _itk_error(path, "an image", exc) from None
        grid = _sitk_grid(path, image)
        data = ImageData(path, _sitk_voxels(image, dtype), grid.affine)
    _check_finite(data)
    return data


def read_info(path: str | os.PathLike, channels: int | None = 1, verify_data: bool = False) -> ImageInfo:
    """The grid of an image, reading as little as possible: a cheap check that needs no voxels.

    NIfTI, NRRD, MHA/MHD: the header only. A DICOM series folder is read whole (GDCM needs every slice for the grid
    and the slice-position check).

    Args:
        path: the file, or the series folder.
        channels: the values per voxel expected (1: a 3D volume), or None for any count (NIfTI).
        verify_data: also prove the voxel data sound: NIfTI by its file size (or the uncompressed size a ``.nii.gz``
            ends with; a mismatch reads the file in full), NRRD/MHA by reading it whole (their headers say nothing
            of damaged data).

    Raises:
        InputError: as :func:`read_image`.
    """
    path = Path(path)
    if path.is_dir() or (verify_data and image_extension(path) not in NIFTI_EXTENSIONS):
        data = read_image(path, channels=1 if channels is None else channels, dtype=None)
        return ImageInfo(path, data.grid, data.array.shape[0], data.modality)
    _missing(path)
    if image_extension(path) in NIFTI_EXTENSIONS:
        image, shape, found, affine = _nifti_header(path, channels)
        if verify_data:
            _check_nifti_size(path, image)
        return ImageInfo(path, Grid(shape, affine), found)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _itk_error(path, "an image", exc) from None
    grid = _itk_grid(path, reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(),
                     reader.GetNumberOfComponents())  # fmt: skip
    return ImageInfo(path, grid)


def read_volume(path: str | os.PathLike) -> ImageData:
    """Read an intensity volume as float32 (C = 1), refusing one whose voxels are all 0.

    Raises:
        InputError: as :func:`read_image`, or every voxel 0 (an empty export, not a scan).
    """
    data = read_image(path)
    if not np.any(data.array):
        raise InputError(path, "the image is empty (every voxel is 0); expected a scan")
    return data


def read_label(path: str | os.PathLike) -> ImageData:
    """Read a label map (C = 1) in its stored dtype (float only when the file stores floats).

    Raises:
        InputError: as :func:`read_image` (values are checked by :func:`label_values` or the caller).
    """
    return read_image(path, dtype=None)


def label_values(data: np.ndarray, path: str | os.PathLike | None = None) -> list[int]:
    """The distinct values of a label array, checked to be non-negative integers.

    Integer-valued floats (0.0, 1.0) pass; the array is scanned in blocks, so memory stays small.

    Args:
        data: label voxels of any shape.
        path: the file they come from, named in errors.

    Example:
        >>> label_values(np.array([[0, 2], [2, 0]], dtype=np.uint8), "l.nii.gz")
        [0, 2]
        >>> label_values(np.array([0.0, 0.5]), "l.nii.gz")
        Traceback (most recent call last):
        ...
        medseg3d.core.errors.InputError: l.nii.gz: non-integer label values such as 0.5; expected non-negative integers (0 = background)

    Raises:
        InputError: non-integer, negative or non-finite values, or a dtype that is no number.
    """  # noqa: E501
    expected = "expected non-negative integers (0 = background)"
    data = np.asarray(data)
    if data.dtype.kind == "b":
        data = data.view(np.uint8)
    if data.dtype.kind not in "iuf":
        raise InputError(path, f"label voxels of type {data.dtype}; {expected}")
    flat = data.ravel(order="K")
    counts = np.zeros(0, dtype=np.int64)
    others: set[int] = set()
    for start in range(0, flat.size, _CHUNK):
        block = flat[start : start + _CHUNK]
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(block)):
                raise InputError(path, f"NaN or Inf label values; {expected}")
            fraction = block != np.round(block)
            if np.any(fraction):
                raise InputError(path, f"non-integer label values such as {block[fraction][0]:g}; {expected}")
        low = block.min()
        if low < 0:
            raise InputError(path, f"negative label values such as {low:g}; {expected}")
        block = block.astype(np.intp)
        large = block >= 65536  # counted apart, so that bincount stays small
        if np.any(large):
            others.update(int(v) for v in np.unique(block[large]))
            block = block[~large]
        found = np.bincount(block)
        if found.size > counts.size:
            found[: counts.size] += counts
            counts = found
        else:
            counts[: found.size] += found
    return sorted({int(v) for v in np.flatnonzero(counts)} | others)
