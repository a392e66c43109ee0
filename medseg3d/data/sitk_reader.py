"""A MONAI ``ImageReader`` over ``medseg3d.data.reader``: DICOM series folders and NRRD/MHA files in ``LoadImage(d)``.

MONAI reads those formats through its ``ITKReader``, which needs the ``itk`` package (about 560 MB). This package
reads them with SimpleITK in ``medseg3d.data.reader``, and training pipelines use that same reader through this
class: ``LoadImaged(keys=[...], reader=SimpleITKReader())``. So a DICOM series is read for training exactly as for
inference, its slice positions checked, and its geometry is the one inference writes labels on. Given as
``reader=``, MONAI's ``LoadImage`` reads every file through it, NIfTI included (nibabel, the header's affine, as
``medseg3d.data.reader`` reads it everywhere), and tries its own readers only for a file this one refuses;
``verify_suffix`` matters where MONAI picks readers by file name. ``load_scans`` builds that ``LoadImaged`` without
MONAI's ``PydicomReader``, to which the fallback would otherwise hand a series this reader refuses (slices not
evenly spaced; pydicom comes with highdicom), and which reads it without the check.

The affine follows MONAI's convention (RAS world coordinates): ITK's LPS geometry turned into RAS by the reader.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader, PydicomReader
from monai.data.utils import is_supported_format
from monai.transforms import LoadImage, LoadImaged
from monai.utils import MetaKeys, SpaceKeys

from medseg3d.core.constants import ITK_EXTENSIONS
from medseg3d.data.reader import ImageData, read_image


def _names(data: Any) -> list[str]:
    return [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]


class SimpleITKReader(ImageReader):
    """Read DICOM series folders (one series per folder) and NRRD/MHA/MHD files through ``medseg3d.data.reader``."""

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Claims folders (DICOM series) and NRRD/MHA/MHD files, nothing else."""
        suffixes = [extension.lstrip(".") for extension in ITK_EXTENSIONS]
        return all(Path(n).is_dir() or is_supported_format(n, suffixes) for n in _names(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """The image(s) of ``data`` in their stored voxel type (``LoadImage`` casts to its ``dtype``).

        Raises:
            InputError: as ``medseg3d.data.reader.read_image``, e.g. a folder not holding exactly one DICOM series,
                or a series whose slices are not evenly spaced.
        """
        images = [read_image(name, dtype=None) for name in _names(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Array (X, Y, Z) in the file's index order (several images: stacked on a first channel axis) and meta."""
        images: list[ImageData] = img if isinstance(img, list) else [img]
        arrays = [image.array[0] for image in images]
        affine = images[0].affine.copy()
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel" if len(arrays) == 1 else 0,
        }
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta


def without_pydicom(load: LoadImage | LoadImaged) -> LoadImage | LoadImaged:
    """``load`` (a ``LoadImage(reader=SimpleITKReader())`` or its dictionary form) without MONAI's
    ``PydicomReader``: a DICOM series this reader refuses (slices not evenly spaced) then fails with its reason
    instead of being read, unchecked, by pydicom (which highdicom brings). The other fallbacks stay, as before
    pydicom was installed: a NIfTI this reader refuses for NaN voxels is read by nibabel and refused by
    ``CheckFinited`` with an error naming the file."""
    loader = load._loader if isinstance(load, LoadImaged) else load  # LoadImaged keeps its LoadImage there
    loader.readers = [reader for reader in loader.readers if not isinstance(reader, PydicomReader)]
    return load


def load_scans(keys: Sequence[str], **kwargs: Any) -> LoadImaged:
    """``LoadImaged(keys, reader=SimpleITKReader(), **kwargs)`` without MONAI's unchecked DICOM reader."""
    return without_pydicom(LoadImaged(keys=keys, reader=SimpleITKReader(), **kwargs))
