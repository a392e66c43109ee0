"""Networks: the 3D Res-UNet (and, later, the 2.5D slice-stack model)."""

from __future__ import annotations

from medseg3d.networks.resunet import res_unet

__all__ = ["res_unet"]
