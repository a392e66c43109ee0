"""The 3D Res-UNet factory: shapes on non-cubic inputs, argument errors."""

from __future__ import annotations

import pytest
import torch

from medseg3d.networks import res_unet


@pytest.mark.parametrize("kind", [pytest.param("unet", id="unet"), pytest.param("dynunet", id="dynunet")])
@pytest.mark.parametrize("out_channels", [3, 4])
def test_output_shape_matches_input(kind: str, out_channels: int) -> None:
    net = res_unet(4, out_channels, channels=(4, 8, 16), strides=(2, 2), kind=kind, dropout=0.1)
    out = net(torch.randn(2, 4, 32, 24, 16))
    assert out.shape == (2, out_channels, 32, 24, 16)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"kind": "vnet"}, "kind must be one of", id="kind"),
        pytest.param({"channels": (8, 16), "strides": (2, 2)}, "one more entry than strides", id="lengths"),
        pytest.param({"channels": (8, 0), "strides": (2,)}, "must be positive", id="zero-channels"),
        pytest.param({"num_res_units": 0}, "num_res_units >= 1", id="not-residual"),
        pytest.param({"norm": "group"}, "norm must be", id="norm"),
        pytest.param({"dropout": 1.0}, r"dropout must be in \[0, 1\)", id="dropout"),
        pytest.param({"in_channels": 0}, "in_channels and out_channels must be >= 1", id="channels-in"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        res_unet(**kwargs)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_deep_supervision_heads_in_training_only(spatial_dims: int) -> None:
    """Training mode: the full-resolution output and each head, stacked on dim 1 at the input size; eval mode
    (validation, inference): the full-resolution output alone, as a network without heads gives it."""
    net = res_unet(4, 3, channels=(4, 8, 16, 32), strides=(2, 2, 2), kind="dynunet", deep_supervision=2,
                   spatial_dims=spatial_dims)  # fmt: skip
    size = (32, 24, 16)[:spatial_dims]
    x = torch.randn(2, 4, *size)
    out = net(x)
    assert out.shape == (2, 3, 3, *size)
    out[:, 2].mean().backward()  # the coarsest head alone reaches the encoder
    assert net.input_block.conv1.conv.weight.grad is not None
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *size)


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"kind": "unet", "deep_supervision": 1}, id="unet"),
        pytest.param(
            {"kind": "dynunet", "deep_supervision": 2, "strides": (2, 2), "channels": (4, 8, 16)}, id="too-many"
        ),
    ],
)
def test_deep_supervision_needs_dynunet_and_coarser_levels(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="deep_supervision needs kind='dynunet'"):
        res_unet(4, 3, **kwargs)
