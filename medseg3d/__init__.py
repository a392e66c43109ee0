"""medseg3d: 3D and 2.5D medical image segmentation on MONAI, from a raw dataset tree to label maps."""

from __future__ import annotations

__version__ = "0.1.0"
