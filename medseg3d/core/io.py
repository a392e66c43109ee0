"""File I/O that never leaves a half-written file behind.

Every writer here writes to a temporary file in the destination folder and renames it into place, so a
crash or a kill mid-write leaves either the old file or no file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import json
import locale
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np


@contextlib.contextmanager
def keep_locale() -> Iterator[None]:
    """Restore the process's C locale after a library call that changes it.

    GDCM (through SimpleITK's DICOM writer) sets the C locale to "C" for every category, which turns Python's
    preferred encoding into ASCII for the rest of the process: ``subprocess`` and ``open`` in text mode then fail
    on any non-ASCII byte. Each category is put back as it was.

    >>> import locale
    >>> before = locale.setlocale(locale.LC_ALL)
    >>> with keep_locale():
    ...     _ = locale.setlocale(locale.LC_ALL, "C")
    >>> locale.setlocale(locale.LC_ALL) == before
    True
    """

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        if locale.setlocale(locale.LC_ALL) != saved:
            try:
                locale.setlocale(locale.LC_ALL, saved)
            except locale.Error:  # a composite string some C libraries cannot take back: per category
                for part in saved.split(";"):
                    name, _, value = part.partition("=")
                    category = getattr(locale, name, None)
                    if category is not None and value:
                        locale.setlocale(category, value)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without its NIfTI extension.

    >>> nifti_stem("dir/BraTS2021_00000_t1.nii.gz")
    'BraTS2021_00000_t1'
    >>> nifti_stem("case.nii")
    'case'
    """
    name = Path(path).name
    for extension in (".nii.gz", ".nii"):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


def _temporary_beside(path: Path) -> Path:
    """A new empty file in ``path``'s folder, hidden (``.<name>.<random>.tmp<ext>``), with the usual permissions."""
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates files readable by the owner only; give the final file the usual permissions.
    os.chmod(tmp, 0o666 & ~_UMASK)
    return tmp


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to the disk, so that after a power cut the renamed file is whole, not empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on error delete it.

    The temporary name keeps the destination's extension (``.nii.gz`` included) so that writers which
    choose the format by extension behave the same as with the final name. Its data is flushed to the disk
    before the rename, so the file under ``path`` is always a complete one, the old or the new.

    Raises:
        OSError: writing failed (a full disk, no permission): the same error number, naming ``path`` (the
            temporary file is deleted and the old ``path``, if any, is untouched).

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with atomic_path(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("whole")
    >>> [p.name for p in folder.iterdir()], (folder / "a.txt").read_text()
    (['a.txt'], 'whole')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename != str(path):
            # "No space left on device" alone does not say which of many files failed: name the destination.
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def config_path(path: str | os.PathLike) -> str:
    """``path`` as a MONAI bundle config value that is never read as an expression, a reference or a macro.

    MONAI evaluates a config string starting with ``$`` as Python, resolves ``@id`` and loads ``%file``; a
    folder or file name can start with any of them. Such a path gets a ``./`` in front (the same file).

    >>> config_path("$__import__('os').getcwd()"), config_path("@network"), config_path("scans/a.nii.gz")
    ("./$__import__('os').getcwd()", './@network', 'scans/a.nii.gz')
    """
    text = os.fspath(path)
    return os.path.join(".", text) if text.startswith(("$", "@", "%")) else text


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike, header: Any = None) -> Path:
    """Write ``array`` (shape (X, Y, Z) or (X, Y, Z, C)) with ``affine`` to ``path`` atomically.

    The gzip stream nibabel writes carries no time stamp, so the same array gives the same bytes.
    """
    image = nib.Nifti1Image(array, affine, header=header)
    image.header.set_data_dtype(array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return Path(path)


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return Path(path)


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
