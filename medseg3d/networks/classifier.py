"""A classification head on a segmentation network's deepest features: one network that segments the tumour
and classifies the case (grade, tumour type) in the same pass.

``attach_classifier(net, num_classes)`` adds a ``ClassificationHead`` to a Res-UNet (MONAI ``UNet`` or
``DynUNet``, 3D or 2D) as its submodule ``classifier``: a forward hook keeps the bottleneck's output, the head
pools it (global and pyramid average pooling, global max pooling), and a small MLP turns it into class logits.
The network's output gains ``num_classes`` channels after the segmentation logits, each the class logit
broadcast over the patch: (B, C + K, *spatial). That keeps every consumer of a network whole: the sliding window
and the 2.5D slice stacks stitch the extra channels like any other (so each voxel holds the blended class logits
of the windows that cover it), flips for TTA average them, DDP sees one output, and the case-level prediction is
a pooling of those channels over the predicted tumour (``medseg3d.transforms.classes``).

Without the head the network is exactly the segmentation network (the same object, same output). With it, the
segmentation weights keep their names and the head's are ``classifier.*``, so a segmentation-only checkpoint
loads into the multitask network with the head freshly initialised (``core.checkpoint_format.load_into`` with
``optional=(HEAD_PREFIX,)``; a bundle's ``init_weights``).

Example:
    >>> import torch
    >>> from medseg3d.networks import res_unet
    >>> net = attach_classifier(res_unet(4, 3, channels=(4, 8, 16), strides=(2, 2)), num_classes=2)
    >>> out = net(torch.zeros(2, 4, 32, 24, 16))
    >>> out.shape, bool((out[:, 3:] == out[:, 3:, :1, :1, :1]).all())  # class logits constant over the patch
    (torch.Size([2, 5, 32, 24, 16]), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.layers import SkipConnection
from monai.networks.nets import DynUNet, UNet
from torch import nn

HEAD_NAME = "classifier"
HEAD_PREFIX = HEAD_NAME + "."  # the head's weight names


class ClassificationHead(nn.Module):
    """Deepest features (B, F, *spatial) to class logits (B, K).

    Pooling: global average, average over a ``2^d`` grid per pyramid level beyond 1 (``pyramid``: bins per axis
    per level, pyramid pooling as in PSPNet), and global max, concatenated; then LayerNorm -> Linear -> LeakyReLU ->
    Dropout -> Linear. The pyramid keeps where in the patch the features are (a rim around a core), which a global pool
    loses. ``stop_gradient`` detaches the features: the classification loss then trains the head alone and
    leaves the segmentation network's gradients exactly what the segmentation loss gives.

    Args:
        in_features: channels of the deepest features.
        num_classes: classes (at least 2).
        spatial_dims: 3 or 2.
        pyramid: bins per axis of each average-pooling level (1: global).
        hidden: width of the MLP's hidden layer.
        dropout: dropout before the last layer.
        stop_gradient: detach the features (no classification gradient into the segmentation network).
        learn_loss_weights: the multitask loss weighs by uncertainty and learns ``log_vars``; otherwise they stay
            fixed at 0 (no gradient: under DDP a parameter that requires one must get one every step).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        spatial_dims: int = 3,
        pyramid: Sequence[int] = (1, 2),
        hidden: int = 64,
        dropout: float = 0.2,
        stop_gradient: bool = False,
        learn_loss_weights: bool = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classification head needs num_classes >= 2, got {num_classes}")
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not pyramid or any(int(b) < 1 for b in pyramid):
            raise ValueError(f"pyramid must list positive bin counts, got {pyramid!r}")
        if hidden < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"need hidden >= 1 and dropout in [0, 1), got {hidden} and {dropout}")
        self.num_classes, self.stop_gradient = int(num_classes), bool(stop_gradient)
        self.pyramid = tuple(int(b) for b in pyramid)
        pool = nn.AdaptiveAvgPool3d if spatial_dims == 3 else nn.AdaptiveAvgPool2d
        self.pools = nn.ModuleList(pool(b) for b in self.pyramid)
        self.max_pool = nn.AdaptiveMaxPool3d(1) if spatial_dims == 3 else nn.AdaptiveMaxPool2d(1)
        pooled = in_features * (sum(b**spatial_dims for b in self.pyramid) + 1)
        # LayerNorm first: the pooled features' scale differs by pooling (max against average) and grows as the
        # segmentation trains; without it SGD with nnU-Net's momentum drove the head to the class prior or blew up
        # the shared features (docs/multitask.md, measured). LeakyReLU: no hidden unit dies for good.
        self.mlp = nn.Sequential(
            nn.LayerNorm(pooled),
            nn.Linear(pooled, hidden),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        # Kendall et al.'s log-variances (segmentation, classification), learnt with the network when the
        # multitask loss weighs by uncertainty; fixed at zero otherwise. Here so that the optimizer, DDP and the
        # checkpoints hold them with the network's own parameters (a checkpoint has them either way).
        self.log_vars = nn.Parameter(torch.zeros(2), requires_grad=bool(learn_loss_weights))
        self._features: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.stop_gradient:
            features = features.detach()
        pooled = [pool(features).flatten(1) for pool in self.pools] + [self.max_pool(features).flatten(1)]
        return self.mlp(torch.cat(pooled, dim=1))


def bottleneck(net: nn.Module) -> tuple[nn.Module, int]:
    """The module whose output is ``net``'s deepest features, and their channels: ``DynUNet.bottleneck``, or the
    innermost block of MONAI's ``UNet`` (the submodule of its innermost ``SkipConnection``).

    Raises:
        TypeError: ``net`` is neither.
    """
    if isinstance(net, DynUNet):
        return net.bottleneck, int(net.filters[-1])
    if isinstance(net, UNet):
        level: nn.Module = net.model
        while isinstance(level, nn.Sequential) and len(level) == 3 and isinstance(level[1], SkipConnection):
            inner = level[1].submodule
            if not (isinstance(inner, nn.Sequential) and len(inner) == 3 and isinstance(inner[1], SkipConnection)):
                return inner, int(net.channels[-1])
            level = inner
    raise TypeError(f"a classification head attaches to MONAI's UNet or DynUNet, got {type(net).__name__}")


def _keep_features(module: nn.Module, args: Any, output: torch.Tensor) -> None:
    module._medseg3d_head._features = output


def _append_class_logits(net: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    head: ClassificationHead = getattr(net, HEAD_NAME)
    features, head._features = head._features, None
    if features is None:
        raise RuntimeError("the classification head saw no bottleneck features in this forward pass")
    logits = head(features).to(output.dtype)
    if output.ndim != features.ndim:
        raise RuntimeError(f"a classification head needs one output of the features' rank, got {tuple(output.shape)}")
    maps = logits.reshape(*logits.shape, *([1] * (output.ndim - 2)))
    return torch.cat([output, maps.expand(-1, -1, *output.shape[2:])], dim=1)


def attach_classifier(net: nn.Module, num_classes: int, **head: Any) -> nn.Module:
    """Give ``net`` a ``ClassificationHead`` (its ``classifier``) on its bottleneck; return ``net``.

    The output becomes (B, C + num_classes, *spatial): the segmentation logits, then each class logit broadcast
    over the input's spatial size (not with deep supervision's stacked outputs). ``head``: the
    ``ClassificationHead`` options (``pyramid``, ``hidden``, ``dropout``, ``stop_gradient``,
    ``learn_loss_weights``).

    Raises:
        ValueError: ``net`` has a classifier already; TypeError: not a UNet or DynUNet.
    """
    if hasattr(net, HEAD_NAME):
        raise ValueError(f"the network has a {HEAD_NAME!r} already")
    block, channels = bottleneck(net)
    spatial_dims = int(getattr(net, "dimensions", None) or getattr(net, "spatial_dims", 3))
    classifier = ClassificationHead(channels, num_classes, spatial_dims=spatial_dims, **head)
    net.add_module(HEAD_NAME, classifier)
    object.__setattr__(block, "_medseg3d_head", classifier)  # not a submodule: its weights are named once
    block.register_forward_hook(_keep_features)
    net.register_forward_hook(_append_class_logits)
    return net
