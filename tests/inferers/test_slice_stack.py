"""SliceStackInferer against a per-slice reference: MONAI's sliding_window_inference on each stack alone."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from medseg3d.inferers.slice_stack import SliceStackInferer
from medseg3d.transforms import SliceStack, SlicesToVolume

SHAPE = (1, 2, 16, 12, 7)  # (B, C, X, Y, Z), non-cubic


def tiny_unet(channels: int, k: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = UNet(
        spatial_dims=2,
        in_channels=channels * (2 * k + 1),
        out_channels=3,
        channels=(4, 8),
        strides=(2,),
        num_res_units=1,
    )
    return net.eval()


def volume(shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def reference(
    inputs: torch.Tensor, net, roi, k: int, axis: int, edge: str = "replicate", overlap: float = 0.25
) -> torch.Tensor:
    """Every slice's stack through the network alone, placed back along ``axis`` by hand."""
    stacker = SliceStack(k=k, axis=axis, edge=edge)
    out = []
    for image in inputs:
        size = image.shape[axis % 3 + 1]
        slices = []
        with torch.no_grad():
            for z in range(size):
                stack = stacker(image, z)[None]
                slices.append(sliding_window_inference(stack, roi, 1, net, overlap=overlap, mode="gaussian")[0])
        out.append(torch.stack(slices, dim=axis % 3 + 1))  # (K, ..., Z at axis, ...)
    return torch.stack(out)


@pytest.mark.parametrize(
    "k, axis, roi, edge",
    [
        pytest.param(2, 2, (16, 12), "replicate", id="axial-whole-slice"),
        pytest.param(2, -1, -1, "zero", id="roi-minus-one-zero-edge"),
        pytest.param(1, 2, 16, "replicate", id="roi-larger-than-slice"),
        pytest.param(1, 2, (8, 8), "replicate", id="tiled"),
        pytest.param(1, 0, (8, 8), "zero", id="axis0-tiled"),
        pytest.param(0, 1, (16, 8), "replicate", id="axis1-k0"),
    ],
)
def test_matches_per_slice_reference(k: int, axis: int, roi, edge: str) -> None:
    inputs = volume()
    net = tiny_unet(inputs.shape[1], k)
    inferer = SliceStackInferer(roi_size=roi, k=k, axis=axis, edge=edge, sw_batch_size=3)
    out = inferer(inputs, net)
    assert out.shape == (1, 3, *SHAPE[2:]) and out.dtype == torch.float32
    assert not out.is_inference()
    expected = reference(inputs, net, inferer.roi_size, k, axis, edge)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_batch_of_two_and_network_arguments() -> None:
    inputs = volume((2, 2, 16, 12, 7))
    net = tiny_unet(2, 1)
    calls = []

    def network(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        calls.append(len(x))
        return net(x) * scale

    out = SliceStackInferer(roi_size=(16, 12), k=1, sw_batch_size=4, skip_empty=False)(inputs, network, scale=2.0)
    assert out.shape == (2, 3, 16, 12, 7)
    assert calls == [4, 4, 4, 4]  # 7 slices per volume in chunks of 4, the second filled up with a copy
    torch.testing.assert_close(out, 2.0 * reference(inputs, net, (16, 12), 1, 2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sw_batch_size", [1, 3, 8])
@pytest.mark.parametrize("edge", ["replicate", "zero"])
def test_skip_empty_is_exact(edge: str, sw_batch_size: int) -> None:
    inputs = volume()
    inputs[..., :2] = 0
    inputs[..., -2:] = 0
    net = tiny_unet(2, 1)
    seen = []

    def network(x: torch.Tensor) -> torch.Tensor:
        seen.extend(bool(s.any()) for s in x)
        return net(x)

    kwargs = {"roi_size": (16, 12), "k": 1, "edge": edge, "sw_batch_size": sw_batch_size}
    full = SliceStackInferer(**kwargs, skip_empty=False)(inputs, net)
    skipped = SliceStackInferer(**kwargs)(inputs, network)
    assert torch.equal(full, skipped)
    # with k=1 slices 0 and 6 are all-zero stacks (1 and 5 see a non-zero neighbour): one of them runs
    per_call = max(min(sw_batch_size, 7), 2)
    assert len(seen) == -(-6 // per_call) * per_call  # 6 stacks, the last call filled up
    assert seen[:6].count(False) == 1
    assert torch.equal(skipped[..., 0], skipped[..., 6])
    torch.testing.assert_close(full, reference(inputs, net, (16, 12), 1, 2, edge), atol=1e-5, rtol=1e-5)


def test_skip_empty_tiled() -> None:
    """Zero slabs at the ends of the volume and in its middle, slices tiled in-plane."""
    inputs = volume((1, 2, 16, 12, 9))
    inputs[..., :3] = 0
    inputs[..., 5] = 0
    net = tiny_unet(2, 0)
    kwargs = {"roi_size": (8, 8), "k": 0, "sw_batch_size": 2}
    skipped = SliceStackInferer(**kwargs)(inputs, net)
    assert torch.equal(skipped, SliceStackInferer(**kwargs, skip_empty=False)(inputs, net))
    torch.testing.assert_close(skipped, reference(inputs, net, (8, 8), 0, 2), atol=1e-5, rtol=1e-5)


def test_all_empty_volume_runs_once() -> None:
    net = tiny_unet(2, 2)
    calls = []

    def network(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return net(x)

    inputs = torch.zeros(SHAPE)
    out = SliceStackInferer(roi_size=(16, 12), k=2)(inputs, network)
    assert calls == [7]  # one stack, filled up to min(sw_batch_size, depth) with copies
    assert torch.equal(out, SliceStackInferer(roi_size=(16, 12), k=2, skip_empty=False)(inputs, net))


def test_meta_tensor_in_meta_tensor_out() -> None:
    affine = torch.diag(torch.tensor([1.0, 2.0, 3.0, 1.0], dtype=torch.float64))
    inputs = MetaTensor(volume(), affine=affine)
    net = tiny_unet(2, 1)
    out = SliceStackInferer(roi_size=-1, k=1)(inputs, net)
    assert isinstance(out, MetaTensor) and out.shape == (1, 3, 16, 12, 7)
    assert torch.equal(out.affine, affine)
    assert torch.equal(out.as_tensor(), SliceStackInferer(roi_size=-1, k=1)(inputs.as_tensor(), net))


def test_integer_inputs_are_run_as_float() -> None:
    net = tiny_unet(2, 0)
    inputs = (volume() * 10).to(torch.int16)
    out = SliceStackInferer(roi_size=16, k=0)(inputs, net)
    assert torch.equal(out, SliceStackInferer(roi_size=16, k=0)(inputs.float(), net))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"roi_size": (16, 12, 7)}, "roi_size"),
        ({"roi_size": 0}, "roi_size"),
        ({"roi_size": 16, "k": -1}, "k"),
        ({"roi_size": 16, "axis": 3}, "axis"),
        ({"roi_size": 16, "edge": "mirror"}, "edge"),
        ({"roi_size": 16, "sw_batch_size": 0}, "sw_batch_size"),
        ({"roi_size": 16, "overlap": 1.0}, "overlap"),
        ({"roi_size": 16, "mode": "linear"}, "mode"),
    ],
)
def test_invalid_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SliceStackInferer(**kwargs)


def test_call_errors() -> None:
    inferer = SliceStackInferer(roi_size=16, k=0)
    with pytest.raises(ValueError, match="B, C, X, Y, Z"):
        inferer(torch.zeros(2, 16, 12, 7), tiny_unet(2, 0))
    with pytest.raises(ValueError, match="network must return"):
        inferer(volume(), lambda x: x[:, :, ::2, ::2])


def test_tta_averages_the_in_plane_mirrored_copies() -> None:
    torch.manual_seed(3)
    net = UNet(2, in_channels=2 * 3, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    volume = torch.randn(1, 2, 16, 12, 5)
    plain = SliceStackInferer(roi_size=-1, k=1, skip_empty=False)
    stacks = SliceStack(k=1).stack_all(volume[0])  # (Z, 6, 16, 12)
    with torch.no_grad():
        copies = [net(stacks.flip(f)).flip(f) if f else net(stacks) for f in [(), (2,), (3,), (2, 3)]]
    expected = SlicesToVolume()(torch.stack(copies).mean(0))[None]
    out = SliceStackInferer(roi_size=-1, k=1, skip_empty=False, tta=True)(volume, net)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, plain(volume, net), atol=1e-4)  # a random network is not mirror-symmetric
