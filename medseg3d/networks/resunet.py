"""The 3D Res-UNet: MONAI's UNet with residual units, or MONAI's DynUNet with residual blocks.

Both are U-shaped encoder-decoders. ``channels[i]`` features at level ``i``; every stride-2 level halves
each spatial axis, so an input of shape (B, C, X, Y, Z) needs X, Y, Z divisible by ``2 ** len(strides)``
(``prep_brats`` pads to a multiple of 16, enough for four levels). The output has shape
(B, out_channels, X, Y, Z): one logit per region (sigmoid) or per label (softmax). With ``spatial_dims=2``
the same network works on 2D images (B, C, X, Y): the 2.5D bundle feeds it stacks of neighbouring slices.

Example:
    >>> import torch
    >>> net = res_unet(in_channels=4, out_channels=3, channels=(8, 16, 32), strides=(2, 2))
    >>> net(torch.zeros(1, 4, 32, 24, 16)).shape
    torch.Size([1, 3, 32, 24, 16])
    >>> net2d = res_unet(in_channels=20, out_channels=3, channels=(8, 16), strides=(2,), spatial_dims=2)
    >>> net2d(torch.zeros(2, 20, 32, 24)).shape
    torch.Size([2, 3, 32, 24])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.networks.nets import DynUNet, UNet

from medseg3d.networks.classifier import attach_classifier

KINDS = ("unet", "dynunet")


def res_unet(
    in_channels: int = 4,
    out_channels: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
    norm: str = "instance",
    dropout: float = 0.0,
    kind: str = "unet",
    spatial_dims: int = 3,
    deep_supervision: int = 0,
    num_classes: int = 0,
    classifier: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """Build the Res-UNet: 3D, or 2D for the 2.5D slice-stack models (``spatial_dims=2``).

    Args:
        in_channels: input channels (4 MRI modalities for BraTS).
        out_channels: output channels (3 regions, or 4 labels with background).
        channels: features per level, one more entry than ``strides``.
        strides: downsampling factor between consecutive levels.
        num_res_units: residual units per level (``kind="unet"``); at least 1 for a Res-UNet.
        norm: ``"instance"`` or ``"batch"``.
        dropout: dropout probability in [0, 1).
        kind: ``"unet"`` (MONAI ``UNet``) or ``"dynunet"`` (MONAI ``DynUNet`` with residual blocks).
        spatial_dims: 3 for volumes (B, C, X, Y, Z), 2 for slices or slice stacks (B, C, X, Y).
        deep_supervision: extra output heads on the next coarser decoder levels (``kind="dynunet"`` only;
            nnU-Net trains with them). In training mode the network then returns (B, 1 + heads, out_channels,
            ...), every head upsampled to the input size, for ``make_loss(deep_supervision=True)``; in eval
            mode (validation, inference) only the full-resolution output, so inference is unchanged.
        num_classes: 0 (default): segmentation only, exactly the network without a head. >= 2: a classification
            head on the deepest features (``medseg3d.networks.classifier``); the output gains ``num_classes``
            channels of class logits after the ``out_channels`` segmentation logits.
        classifier: the head's options (``pyramid``, ``hidden``, ``dropout``, ``stop_gradient``,
            ``learn_loss_weights``).

    Raises:
        ValueError: inconsistent or out-of-range arguments, each named.
    """

    channels, strides = tuple(int(c) for c in channels), tuple(int(s) for s in strides)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
    if len(channels) < 2 or len(channels) != len(strides) + 1:
        raise ValueError(
            f"channels needs one more entry than strides (and at least 2), got {len(channels)} and {len(strides)}"
        )
    if any(c < 1 for c in channels) or any(s < 1 for s in strides):
        raise ValueError(f"channels and strides must be positive, got {channels} and {strides}")
    if norm not in ("instance", "batch"):
        raise ValueError(f"norm must be 'instance' or 'batch', got {norm!r}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if deep_supervision and (kind != "dynunet" or not 0 < deep_supervision < len(strides)):
        raise ValueError(
            f"deep_supervision needs kind='dynunet' and 0 < heads < {len(strides)} (the decoder's coarser levels), "
            f"got {deep_supervision} heads with kind={kind!r}"
        )
    if num_classes and (num_classes < 2 or deep_supervision):
        raise ValueError(
            f"a classification head needs num_classes >= 2 and no deep_supervision, got {num_classes} and "
            f"{deep_supervision}"
        )
    net = _segmentation_net(
        in_channels, out_channels, channels, strides, num_res_units, norm, dropout, kind, spatial_dims, deep_supervision
    )
    return attach_classifier(net, num_classes, **(classifier or {})) if num_classes else net


def _segmentation_net(
    in_channels, out_channels, channels, strides, num_res_units, norm, dropout, kind, spatial_dims, deep_supervision
) -> torch.nn.Module:
    if kind == "unet":
        if num_res_units < 1:
            raise ValueError(f"a Res-UNet needs num_res_units >= 1, got {num_res_units}")
        return UNet(
            spatial_dims,
            in_channels,
            out_channels,
            channels,
            strides,
            num_res_units=num_res_units,
            norm=norm,
            dropout=dropout,
        )

    return DynUNet(
        spatial_dims,
        in_channels,
        out_channels,
        kernel_size=[3] * len(channels),
        strides=(1, *strides),
        upsample_kernel_size=strides,
        filters=channels,
        norm_name=norm,
        dropout=dropout or None,
        res_block=True,
        deep_supervision=deep_supervision > 0,
        deep_supr_num=max(deep_supervision, 1),
    )
