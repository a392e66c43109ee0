"""Scans of a batch-inference input: finding them, reading them, writing labels in their exact geometry.

An INPUT folder holds cases: image files (NIfTI, NRRD, MHA/MHD), DICOM series folders (nested patient/study/series
trees too, several series per folder allowed) and, for four-modality models, BraTS case folders or 4-channel NIfTI
files. :func:`find_scans` turns every entry into a :class:`ScanCase` (a bad entry carries its ``problem`` so that it
is reported, never skipped), :func:`read_scan` reads one into a :class:`Scan` (float32, (C, X, Y, Z) in the file's
own index order, voxel -> RAS affine) and :func:`write_label` writes a label map of that grid so that it lies voxel
for voxel on the input: same shape, same affine, same orientation, whether the input is LPS, RAS or oblique.
nnU-Net's channel files (``<case>_0000.nii.gz`` ... in ``imagesTs/``) are grouped into one case ``<case>`` by
``medseg3d.data.nnunet``'s rule. The on-disk rules are in ``docs/inference.md`` and ``docs/nnunet.md``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from medseg3d.core.constants import IMAGE_EXTENSIONS, MODALITIES, MODALITY_ALIASES, NIFTI_EXTENSIONS, SEG_ALIASES
from medseg3d.core.errors import InputError
from medseg3d.core.io import atomic_path, save_nifti
from medseg3d.data.brats import (
    detect_edition,
    edition_of_case_id,
    is_nifti,
    modality_token,
    pair_folder,
    safe_case_id,
    unique_case_ids,
)
from medseg3d.data.nnunet import channel_problem, group_channel_files
from medseg3d.data.reader import (
    ImageData,
    check_same_grid,
    gdcm_series,
    image_extension,
    looks_like_dicom,
    read_dicom_series,
    read_image,
)

logger = logging.getLogger(__name__)

EXPECTS: tuple[str, ...] = ("image", "brats")
MIN_VOXELS = 2  # along every axis; a single slice is not a volume
NOT_AN_IMAGE = "not an image file (expected .nii/.nii.gz/.nrrd/.mha/.mhd or a DICOM series folder)"
NOT_A_BRATS_INPUT = "not a BraTS input (expected a case folder of four NIfTI modality files or a 4-channel NIfTI file)"
_MODALITY_TOKENS = frozenset(alias for aliases in MODALITY_ALIASES.values() for alias in aliases)
_SEG_TOKENS = frozenset(SEG_ALIASES)


@dataclass(frozen=True)
class ScanCase:
    """One case of a batch, as found on disk (nothing read yet).

    Attributes:
        case_id: unique in the batch and a plain file name: the file stem, the folder name, or
            ``<folder>_<n>`` (n = 1, 2, ...) when one folder holds several DICOM series.
        kind: ``"image"`` (one single-channel image file), ``"brats"`` (four modality files, or one 4-channel
            NIfTI file) or ``"dicom"`` (one DICOM series).
        source: what the user gave: the file or the (top) folder.
        files: image files; brats: in ``MODALITIES`` order (t1, t1ce, t2, flair); dicom: slice files in slice order.
        series_uid: the DICOM SeriesInstanceUID; None when missing or empty, and for other kinds.
        edition: brats only: the BraTS edition its file names follow (``"2021"``, ``"2023"``...), None if unknown.
        problem: why the case cannot be read, when discovery already knows; None otherwise.
    """

    case_id: str
    kind: str
    source: Path
    files: tuple[Path, ...] = ()
    series_uid: str | None = None
    edition: str | None = None
    problem: str | None = None


@dataclass
class Scan:
    """A case read into memory.

    Attributes:
        case: the case read.
        array: float32 of shape (C, X, Y, Z) in the file's index order (C = 1, or 4 for brats in MODALITIES order);
            each channel is Fortran-ordered in memory, as NIfTI and ITK store voxels (``np.ascontiguousarray``
            where C order is needed).
        affine: float64 (4, 4) voxel index (i, j, k) -> RAS mm, nibabel's convention.
        spacing: voxel size (mm) along i, j, k.
    """

    case: ScanCase
    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    # The NIfTI header of the (first) source file, so a label map gets the same sform/qform codes and values.
    _nifti_header: nib.Nifti1Header | None = field(default=None, repr=False)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) of the scan."""
        return tuple(int(n) for n in self.array.shape[1:])  # type: ignore[return-value]

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """Orientation codes of the index axes, e.g. ``("L", "P", "S")`` for DICOM/ITK's usual grid."""
        return nib.aff2axcodes(self.affine)


# ---------------------------------------------------------------------------------------------------------- discovery


def _companions(header: Path) -> set[Path]:
    """Data files named by a detached header (.mhd ElementDataFile, .nhdr data file): part of that image."""
    if header.suffix.lower() not in (".mhd", ".nhdr"):
        return set()
    try:
        text = header.read_bytes()[:65536].decode("latin-1")
    except OSError:
        return set()
    names = re.findall(r"^\s*(?:ElementDataFile\s*=|data\s?file\s*:)\s*(\S+)\s*$", text, re.MULTILINE | re.IGNORECASE)
    return {header.parent / name for name in names if name.upper() not in ("LOCAL", "LIST")}


class _Excluder:
    """Skips hidden entries and the excluded paths (e.g. the OUTPUT folder lying inside INPUT)."""

    def __init__(self, exclude: Sequence[os.PathLike | str]) -> None:
        self.paths = [Path(p).resolve() for p in exclude]

    def __call__(self, path: Path) -> bool:
        if path.name.startswith("."):
            return True
        resolved = path.resolve()
        return any(resolved == p or resolved.is_relative_to(p) for p in self.paths)


def _walk(top: Path, skip: _Excluder) -> Iterator[tuple[Path, list[Path]]]:
    """(folder, sorted files) for ``top`` and every folder below it, hidden and excluded ones pruned."""
    for dirpath, dirnames, filenames in os.walk(top):
        folder = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not skip(folder / d))
        yield folder, sorted(folder / n for n in filenames if not skip(folder / n) and (folder / n).is_file())


def _series_cases(
    source: Path, base_id: str, found: list[tuple[str | None, tuple[Path, ...], str | None]]
) -> list[ScanCase]:
    """One case per (uid, files, problem) of ``found``; ids ``base_id``, or ``base_id_<n>`` when there are several."""
    many = len(found) > 1
    return [
        ScanCase(f"{base_id}_{n}" if many else base_id, "dicom", source, paths, uid, problem=problem)
        for n, (uid, paths, problem) in enumerate(found, start=1)
    ]


def _dicom_cases(source: Path, base_id: str, folders: list[tuple[Path, list[Path]]]) -> list[ScanCase]:
    """The DICOM series of ``folders`` (``source`` and the folders below it), one case each."""
    found: list[tuple[str | None, tuple[Path, ...], str | None]] = []
    for folder, files in folders:
        series, orphans = gdcm_series(folder, files)
        found.extend((uid, paths, None) for uid, paths in series)
        if orphans and not series:
            names = ", ".join(f.name for f in orphans[:3]) + (", ..." if len(orphans) > 3 else "")
            problem = f"DICOM-like files that GDCM cannot read in {folder.name}/ ({names}); expected DICOM slices"
            found.append((None, tuple(orphans), problem))
        elif orphans:
            logger.info("%s: ignored files outside every DICOM series: %s", folder, ", ".join(f.name for f in orphans))
    return _series_cases(source, base_id, found)


def _brats_folder_case(source: Path, folder: Path, niftis: list[Path]) -> ScanCase:
    """The BraTS case held by ``folder`` (files paired by modality token, as prep_brats does)."""
    raw = pair_folder(folder, niftis)
    found = tuple(raw.images[key] for key in MODALITIES if key in raw.images)
    if raw.problems:
        problem = (
            f"a BraTS case folder needs 4 modality files (t1, t1ce, t2, flair), found {len(found)}: "
            f"{', '.join(f.name for f in found) or 'none'}; " + "; ".join(raw.problems)
        )
        return ScanCase(raw.case_id, "brats", source, found, edition=raw.edition, problem=problem)
    edition = detect_edition([raw]).name  # names without an edition's prefix: the 0/1/2/4 labels, with a warning
    return ScanCase(raw.case_id, "brats", source, found, edition=edition)


def _modality_files(files: list[Path]) -> tuple[list[Path], bool]:
    """NIfTI files named like a BraTS modality or segmentation (``_t1ce.nii.gz``, ``-seg.nii.gz``), and whether
    any is a modality (then their folder is a case folder)."""
    tokens = [(f, modality_token(f)[1].lower()) for f in files if is_nifti(f)]
    named = [f for f, token in tokens if token in _MODALITY_TOKENS or token in _SEG_TOKENS]
    return named, any(token in _MODALITY_TOKENS for _, token in tokens)


def _file_case(path: Path, expect: str) -> ScanCase:
    """A case for one file given directly (an entry of INPUT, or INPUT itself)."""
    extension = image_extension(path)
    stem = path.name[: -len(extension)] if extension else path.name
    if expect == "brats":
        if extension in NIFTI_EXTENSIONS:
            return ScanCase(safe_case_id(stem), "brats", path, (path,), edition=edition_of_case_id(stem))
        return ScanCase(safe_case_id(path.name), "brats", path, problem=NOT_A_BRATS_INPUT)
    if extension:
        return ScanCase(safe_case_id(stem), "image", path, (path,))
    if looks_like_dicom(path):  # one file: a multi-frame DICOM (a single slice fails as too small)
        return ScanCase(safe_case_id(path.name), "dicom", path, (path,))
    return ScanCase(safe_case_id(path.name), "image", path, problem=NOT_AN_IMAGE)


def _channel_cases(files: Sequence[Path], expect: str) -> tuple[list[ScanCase], set[Path]]:
    """The cases of nnU-Net channel files ``<case>_XXXX<ext>`` among ``files`` (loose files of one folder), and the
    files they take.

    brats (4 channels): the files of a case that has a ``_0000`` file or several channel files are grouped, in
    channel order, into one case ``<case>``; unless they are exactly ``_0000`` to ``_0003``, one each, the case
    carries a ``problem`` naming the missing (or extra, or repeated) files. A lone ``<name>_0007.nii.gz`` stays a
    file of its own (it may hold 4 channels). image (1 channel): a case whose only channel file is ``<case>_0000``
    is named ``<case>``; several channel files of one case stay cases of their own, under their full names, as a
    folder of numbered scans (``ct_0000``, ``ct_0001``, ...) needs, with a warning when they may be channels.
    """
    extensions = NIFTI_EXTENSIONS if expect == "brats" else IMAGE_EXTENSIONS
    cases: list[ScanCase] = []
    taken: set[Path] = set()
    for case_id, channels in group_channel_files(files, extensions).items():
        paths = [path for found in channels.values() for path in found]
        if expect == "image":
            if list(channels) == [0] and len(paths) == 1:
                cases.append(ScanCase(safe_case_id(case_id), "image", paths[0], (paths[0],)))
                taken.add(paths[0])
            elif 0 in channels and len(paths) > 1:
                logger.warning("%s: named like the channels of one nnU-Net case %s; a single-channel model reads "
                               "each as a case of its own", ", ".join(p.name for p in paths), case_id)  # fmt: skip
            continue
        if 0 not in channels and len(paths) == 1:
            continue
        problem = channel_problem(case_id, channels, MODALITIES)
        ordered = tuple(found[0] for found in channels.values())
        edition = edition_of_case_id(case_id)
        cases.append(ScanCase(safe_case_id(case_id), "brats", ordered[0], ordered, edition=edition,
                              problem=problem[1] if problem else None))  # fmt: skip
        taken.update(paths)
    return cases, taken


def _folder_cases(entry: Path, expect: str, skip: _Excluder) -> list[ScanCase]:
    """Every case under the folder ``entry`` of INPUT (recursively); one problem case if there is none."""
    base_id = safe_case_id(entry.name)
    tree = list(_walk(entry, skip))
    if expect == "image":
        cases = _dicom_cases(entry, base_id, tree)
        hint = ""
        if any(is_nifti(f) for _, files in tree for f in files):
            hint = "; it holds NIfTI files: put image files directly in INPUT (BraTS case folders need a BraTS model)"
        problem = f"no DICOM series found in this folder or below it (expected DICOM slice files){hint}"
    else:
        cases = []
        for folder, files in tree:
            modality, is_case = _modality_files(files)
            if is_case:
                cases.append(_brats_folder_case(entry, folder, modality))
            else:  # e.g. a prepared imagesTs/ folder: 4-channel files; segmentations are not inputs
                loose = [f for f in files if is_nifti(f) and f not in modality]
                grouped, taken = _channel_cases(loose, expect)  # nnU-Net's imagesTs/: <case>_0000 ... _0003
                cases += grouped + [_file_case(f, expect) for f in loose if f not in taken]
        problem = f"no BraTS case found in this folder or below it; {NOT_A_BRATS_INPUT}"
    return cases or [ScanCase(base_id, "dicom" if expect == "image" else "brats", entry, problem=problem)]


def _make_ids_unique(cases: list[ScanCase]) -> list[ScanCase]:
    """``unique_case_ids`` over the cases: the readable ones first, then by source path, keep their id."""
    order = [(c.problem is not None, str(c.source), [str(f) for f in c.files]) for c in cases]
    ids = unique_case_ids([c.case_id for c in cases], order)
    return [c if i == c.case_id else dataclasses.replace(c, case_id=i) for c, i in zip(cases, ids, strict=True)]


def find_scans(input_dir: Path, expect: str = "image", exclude: Sequence[Path] = ()) -> list[ScanCase]:
    """Every case of a batch-inference input, sorted by case id.

    Args:
        input_dir: a folder of cases, or one case (an image file, a DICOM series folder, a BraTS case folder).
        expect: ``"image"`` for single-channel models (image files and DICOM series; an nnU-Net ``<case>_0000``
            file is case ``<case>``) or ``"brats"`` for four-modality models (BraTS case folders of any edition,
            4-channel NIfTI files with channels last, nnU-Net's ``<case>_0000`` to ``<case>_0003`` files as one case
            ``<case>``: :func:`_channel_cases`).
        exclude: paths to leave out, with everything below them (the OUTPUT folder when it lies inside INPUT).
            Hidden files and folders are always left out.

    Returns:
        One ``ScanCase`` per case; entries of ``input_dir`` that are no case come back with ``problem`` set.

    Raises:
        InputError: ``input_dir`` does not exist or holds nothing to read.
        ValueError: an unknown ``expect``.
    """
    if expect not in EXPECTS:
        raise ValueError(f"expect must be one of {', '.join(EXPECTS)}, got {expect!r}")
    input_dir = Path(input_dir)
    if not input_dir.exists():
        raise InputError(input_dir, "not found; expected a folder of scans or one scan")
    if input_dir.is_file():
        return [_file_case(input_dir, expect)]
    skip = _Excluder(exclude)
    entries = sorted(p for p in input_dir.iterdir() if not skip(p))
    files = [p for p in entries if p.is_file()]
    cases: list[ScanCase] = []
    # INPUT may itself be one case (a series folder, a BraTS case folder); then the other loose files in it are
    # ignored, as inside any case folder (DICOMDIR, a README, a segmentation), except image files in image mode.
    unreadable: list[Path] = []
    if expect == "image":
        series, unreadable = gdcm_series(input_dir, files)
        own_case = bool(series)
        cases += _series_cases(input_dir, safe_case_id(input_dir.name), [(uid, p, None) for uid, p in series])
    else:
        modality, own_case = _modality_files(files)
        if own_case:
            cases.append(_brats_folder_case(input_dir, input_dir, modality))
    used = {f for case in cases for f in case.files}
    companions = set().union(*(_companions(f) for f in files))
    if not (own_case and expect == "brats"):  # loose files that become cases: nnU-Net channel files grouped
        loose = [f for f in files if f not in used and f not in companions and f not in unreadable]
        grouped, taken = _channel_cases(loose, expect)
        cases += grouped
        used |= taken
    for entry in entries:
        if entry.is_dir():
            cases += _folder_cases(entry, expect, skip)
        elif entry in used or entry in companions:
            continue
        elif own_case and (expect == "brats" or not image_extension(entry)):
            logger.info("%s: ignored (not an image, beside the case in %s)", entry.name, input_dir)
        elif entry in unreadable:
            problem = "not a readable DICOM file (GDCM cannot parse it); expected a DICOM slice"
            cases.append(ScanCase(safe_case_id(entry.name), "dicom", entry, (entry,), problem=problem))
        else:
            cases.append(_file_case(entry, expect))
    if not cases:
        raise InputError(input_dir, "no scan found: the folder is empty (hidden and excluded entries aside)")
    return sorted(_make_ids_unique(cases), key=lambda c: (c.case_id, str(c.source)))


# ------------------------------------------------------------------------------------------------------------ reading


def _check_voxels(path: Path, image: ImageData) -> None:
    """Raise ``InputError`` for an image with fewer than ``MIN_VOXELS`` along an axis or a constant channel.

    (The reader has refused unreadable files, NaN/Inf voxels and singular affines.)
    """
    shape = image.array.shape[1:]
    if min(shape) < MIN_VOXELS:
        raise InputError(path, f"image too small: shape {shape}; expected at least {MIN_VOXELS} voxels along every "
                         "axis")  # fmt: skip
    lows, highs = image.channel_range()
    for c in np.flatnonzero(lows == highs):
        which = f"channel {c} of the image" if len(lows) > 1 else "the image"
        raise InputError(path, f"{which} is constant (every voxel is {float(lows[c]):g}); expected a scan")


def _read_modality_files(case: ScanCase) -> Scan:
    """A brats case of one NIfTI file per modality, stacked on the grid of the first (t1)."""
    array = grid = header = None
    for c, path in enumerate(case.files):
        image = read_image(path)
        if array is None:
            # Channels-first views of a Fortran-ordered (X, Y, Z, C) block: no transposing copy.
            array = np.moveaxis(np.empty((*image.array.shape[1:], len(case.files)), np.float32, order="F"), -1, 0)
            grid, header = image.grid, image.header
        else:
            check_same_grid(path, image.grid, case.files[0], grid)
        _check_voxels(path, image)  # one file per channel: name the file at fault
        array[c] = image.array[0]
    return Scan(case, array, grid.affine, tuple(float(s) for s in grid.spacing), _nifti_header=header)


def read_scan(case: ScanCase) -> Scan:
    """Read one case through ``medseg3d.data.reader``: NIfTI through nibabel (the header's affine exactly), NRRD, MHA
    and DICOM series through SimpleITK (a series' slice positions checked).

    Returns:
        A ``Scan`` with ``array`` float32 (C, X, Y, Z) in the file's index order: C = 1 for image and dicom cases,
        4 (t1, t1ce, t2, flair) for brats cases.

    Raises:
        InputError: naming the file (or series folder) and what was expected: ``case.problem``; an unreadable,
            corrupt or truncated file; a 4D image where 3D was expected or the wrong number of channels; fewer than
            2 voxels along an axis; BraTS modalities on different grids; NaN/Inf or constant voxels; a DICOM series
            whose slices are not evenly spaced.
    """
    if case.problem is not None:
        raise InputError(case.source, case.problem)
    if not case.files:
        raise InputError(case.source, "no image file in this case")
    missing = next((f for f in case.files if not f.is_file()), None)
    if missing is not None:
        raise InputError(missing, "file not found")
    if case.kind == "dicom":
        image = read_dicom_series(case.files, case.source)
    elif len(case.files) == 1:
        image = read_image(case.files[0], channels=len(MODALITIES) if case.kind == "brats" else 1)
    else:
        return _read_modality_files(case)
    _check_voxels(image.path, image)
    return Scan(case, image.array, image.affine, image.spacing, _nifti_header=image.header)


# ------------------------------------------------------------------------------------------------------------ writing


def _label_dtype(labels: np.ndarray) -> type:
    if labels.dtype.kind == "b":
        return np.uint8
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise ValueError("labels must be integers; got non-integer float values")
    elif labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if 0 <= low and high <= 255:
        return np.uint8
    if np.iinfo(np.int16).min <= low and high <= np.iinfo(np.int16).max:
        return np.int16
    raise ValueError(f"label values {low}..{high} do not fit in int16")


def write_label(labels: np.ndarray, scan: Scan, path: Path) -> Path:
    """Write a label map of ``scan``'s grid to ``path`` (``.nii.gz``), atomically, in exactly the input geometry.

    NIfTI inputs: the source header is copied, so the affine is bit-identical and the sform/qform codes are the
    source's; intensity fields (scaling, display range) are reset and the intent is set to "label". ITK inputs
    (DICOM, NRRD, MHA): the scan's affine (the input's origin, spacing and direction, converted to RAS) with sform
    and qform code 1 (scanner), equal to the input's to float32 precision.

    Args:
        labels: integer (or bool) array of shape (X, Y, Z) in the scan's index order; stored as uint8 when the
            values fit, else int16.
        scan: the scan the labels belong to.
        path: the output file.

    Raises:
        ValueError: ``labels`` has another shape than the scan, non-integer values, or values beyond int16.
    """
    labels = np.asarray(labels)
    if labels.shape != scan.spatial_shape:
        raise ValueError(f"labels of shape {labels.shape} do not match the scan's spatial shape {scan.spatial_shape}")
    dtype = _label_dtype(labels)
    data = labels.astype(dtype, copy=False)
    if scan._nifti_header is None:
        return save_nifti(data, scan.affine, path)
    header = scan._nifti_header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 0.0
    header.set_intent("label")
    # affine=None keeps the header's sform and qform (matrices and codes) exactly as the source stored them; a
    # NIfTI-2 source stays NIfTI-2, whose float64 matrices NIfTI-1 could not hold exactly.
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data, None, header=header)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)
