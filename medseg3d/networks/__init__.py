"""Networks: the Res-UNet, 3D for volumes and 2D for the 2.5D slice-stack models."""

from __future__ import annotations

from medseg3d.networks.resunet import res_unet

__all__ = ["res_unet"]
