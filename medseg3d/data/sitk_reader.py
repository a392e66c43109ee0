"""A MONAI ``ImageReader`` on SimpleITK: DICOM series folders and NRRD/MHA files in ``LoadImage(d)``.

MONAI reads those formats through its ``ITKReader``, which needs the ``itk`` package (about 560 MB). This
package already reads them with SimpleITK (``medseg3d.data.scans``), so training pipelines use the same
library through this reader: ``LoadImaged(keys=[...], reader=SimpleITKReader())``. MONAI tries it first and
falls back to its own readers (nibabel for NIfTI) for the files it does not claim (``verify_suffix``).

The affine follows MONAI's convention (RAS world coordinates, as nibabel gives for NIfTI): ITK's LPS
direction, spacing and origin, with the first two world axes negated.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from monai.data import ImageReader
from monai.data.utils import is_supported_format
from monai.utils import MetaKeys, SpaceKeys

from medseg3d.data.scans import sitk_affine_ras

SUFFIXES = ("nrrd", "nhdr", "mha", "mhd")


def _names(data: Any) -> list[str]:
    return [str(data)] if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]


class SimpleITKReader(ImageReader):
    """Read DICOM series folders (one series per folder) and NRRD/MHA/MHD files with SimpleITK."""

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Claims folders (DICOM series) and NRRD/MHA/MHD files, nothing else."""
        return all(Path(n).is_dir() or is_supported_format(n, list(SUFFIXES)) for n in _names(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """The SimpleITK image(s) of ``data``; a folder must hold exactly one DICOM series (named if not)."""
        images = []
        for name in _names(data):
            if Path(name).is_dir():
                reader = sitk.ImageSeriesReader()
                uids = reader.GetGDCMSeriesIDs(name)
                if len(uids) != 1:
                    raise ValueError(f"{name}: expected a folder holding one DICOM series, found {len(uids)}")
                reader.SetFileNames(reader.GetGDCMSeriesFileNames(name, uids[0]))
                images.append(reader.Execute())
            else:
                images.append(sitk.ReadImage(name))
        return images if len(images) > 1 else images[0]

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Array (X, Y, Z) in ITK index order (several images: stacked on a first channel axis) and meta."""
        images = img if isinstance(img, list) else [img]
        arrays = [sitk.GetArrayFromImage(image).transpose(2, 1, 0) for image in images]
        affine = sitk_affine_ras(images[0])
        meta = {
            MetaKeys.AFFINE: affine,
            MetaKeys.ORIGINAL_AFFINE: affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[0].shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: "no_channel" if len(arrays) == 1 else 0,
        }
        return (arrays[0] if len(arrays) == 1 else np.stack(arrays)), meta
