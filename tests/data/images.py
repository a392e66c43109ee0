"""Image builders the data tests share: rotations for oblique grids and ITK images of (X, Y, Z) arrays.

Loaded by file path (``importlib``), as tests/robustness/corpus.py is, since the tests run in importlib mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk


def rotation(degrees: float, axis: int) -> np.ndarray:
    """(3, 3) rotation by ``degrees`` about ``axis``."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


OBLIQUE = rotation(17.0, 2) @ rotation(-9.0, 0)


def itk_image(
    data: np.ndarray, direction: np.ndarray | None, spacing: Sequence[float], origin: Sequence[float]
) -> sitk.Image:
    """ITK image of an (X, Y, Z) array; ``direction`` (None: identity) and ``origin`` in ITK's LPS."""
    direction = np.eye(3) if direction is None else direction
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # ITK arrays are (Z, Y, X)
    image.SetSpacing(tuple(float(v) for v in spacing))
    image.SetOrigin(tuple(float(v) for v in origin))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    return image
