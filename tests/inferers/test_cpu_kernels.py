"""KernelChoice: every CPU kernel gives the layer's own output, the network is left unchanged, the choice is
remembered per layer and shape, and the inferer's logits do not move when it is on."""

from __future__ import annotations

import pytest
import torch

from medseg3d.inferers import cpu_kernels, sliding_window
from medseg3d.inferers.cpu_kernels import KERNELS, KernelChoice, _call
from medseg3d.inferers.sliding_window import FastSlidingWindowInferer
from medseg3d.networks import res_unet

LAYERS = [
    pytest.param(lambda: torch.nn.Conv3d(3, 5, 3, padding=1), (2, 3, 12, 10, 8), id="conv"),
    pytest.param(lambda: torch.nn.Conv3d(4, 6, 3, stride=2, padding=1, groups=2), (2, 4, 11, 9, 7), id="strided"),
    pytest.param(lambda: torch.nn.Conv3d(2, 2, (3, 1, 3), padding="same", bias=False), (1, 2, 9, 6, 5), id="same"),
    pytest.param(
        lambda: torch.nn.ConvTranspose3d(6, 2, 3, stride=2, padding=1, output_padding=1), (2, 6, 5, 4, 3), id="up"
    ),
    pytest.param(lambda: torch.nn.ConvTranspose3d(4, 3, 2, stride=2), (1, 4, 6, 5, 4), id="up-k2"),
]


@pytest.mark.parametrize("make, shape", LAYERS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel_computes_the_layer(make, shape, kernel):
    torch.manual_seed(0)
    layer = make().eval()
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = layer(x)
        out = _call(kernel, type(layer).forward, layer, x, (), {})
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_network_is_left_as_it_was_and_the_choice_is_kept_per_layer_and_shape():
    torch.manual_seed(0)
    net = res_unet(1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    keys = list(net.state_dict())
    convs = [m for m in net.modules() if type(m) in cpu_kernels.LAYERS]
    choice = KernelChoice(samples=2)
    shapes = ((16, 16, 8), (24, 16, 16))
    inputs = {s: torch.rand(2, 1, *s) for s in shapes}
    with torch.inference_mode():
        plain = {s: net(x) for s, x in inputs.items()}
        with choice.choose(net):
            assert all("forward" in vars(m) for m in convs)
            for calls in range(1, 2 * len(KERNELS) + 1):  # 2 trials of each kernel for each shape
                for s, x in inputs.items():
                    torch.testing.assert_close(net(x), plain[s], atol=1e-5, rtol=1e-5)
                assert (len(choice.chosen) == 2 * len(convs)) == (calls == 2 * len(KERNELS))
            assert choice._trials == {}
            torch.testing.assert_close(net(inputs[shapes[0]]), plain[shapes[0]], atol=1e-5, rtol=1e-5)
    assert all("forward" not in vars(m) for m in convs)
    assert list(net.state_dict()) == keys
    assert len(choice.chosen) == 2 * len(convs)  # one entry per layer and input shape, the last call reused them
    assert set(choice.chosen.values()) <= set(KERNELS)


def test_same_logits_through_each_kernel_as_the_choice():
    torch.manual_seed(0)
    net = res_unet(1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.rand(2, 1, 24, 16, 16)
    with torch.inference_mode():
        expected = net(x)
        choice = KernelChoice(samples=1)
        with choice.choose(net):
            for _ in KERNELS:
                net(x)
            assert len(choice.chosen) == sum(type(m) in cpu_kernels.LAYERS for m in net.modules())
            for forced in KERNELS:  # each candidate, through the same code path as a measured choice
                choice.chosen = dict.fromkeys(choice.chosen, forced)
                torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)


def test_the_native_kernel_is_no_candidate_where_its_columns_would_be_too_large(monkeypatch):
    layer = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    x = torch.rand(2, 2, 10, 8, 6)
    assert cpu_kernels.native_columns_bytes(layer, x) == 2 * 27 * 2 * 480 * 4
    monkeypatch.setattr(cpu_kernels, "NATIVE_MAX_BYTES", 2 * 27 * 2 * 480 * 4 - 1)
    used = []
    real_call = cpu_kernels._call
    monkeypatch.setattr(cpu_kernels, "_call", lambda k, *a: used.append(k) or real_call(k, *a))
    choice = KernelChoice(samples=1)
    with torch.inference_mode(), choice.choose(layer):
        for _ in range(3):
            layer(x)
    assert used == ["onednn", "onednn_channels_last", choice.chosen[(id(layer), tuple(x.shape), x.dtype)]]


def test_layers_are_restored_after_an_exception():
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.ReLU()).eval()
    with pytest.raises(RuntimeError, match="boom"), KernelChoice().choose(net):
        raise RuntimeError("boom")
    assert "forward" not in vars(net[0])


def test_subclasses_and_an_own_forward_are_left_alone():
    class MyConv(torch.nn.Conv3d):
        pass

    net = torch.nn.Sequential(MyConv(1, 2, 3), torch.nn.Conv3d(2, 2, 3))
    own = net[1].forward = lambda x: x  # somebody else's instance forward
    with KernelChoice().choose(net):
        assert "forward" not in vars(net[0]) and vars(net[1])["forward"] is own
    assert vars(net[1])["forward"] is own


def test_nothing_is_timed_when_onednn_is_off():
    net = torch.nn.Conv3d(1, 2, 3).eval()
    choice = KernelChoice()
    before = torch.backends.mkldnn.enabled
    try:
        torch.backends.mkldnn.enabled = False
        with torch.inference_mode(), choice.choose(net):
            net(torch.rand(2, 1, 8, 8, 8))
        assert torch.backends.mkldnn.enabled is False
    finally:
        torch.backends.mkldnn.enabled = before
    assert choice.chosen == {}


def test_the_native_kernel_restores_the_onednn_flag():
    layer = torch.nn.Conv3d(1, 2, 3).eval()
    with torch.inference_mode():
        _call("native", type(layer).forward, layer, torch.rand(1, 1, 6, 6, 6), (), {})
    assert torch.backends.mkldnn.enabled is True


@pytest.mark.parametrize("samples", [0, -1, 1.5, True])
def test_bad_samples(samples):
    with pytest.raises(ValueError, match="samples"):
        KernelChoice(samples)


def test_inferer_logits_do_not_move_with_the_kernel_choice(monkeypatch):
    monkeypatch.setattr(sliding_window, "CPU_KERNEL_MIN_CALLS", 20)
    torch.manual_seed(0)
    net = res_unet(1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.rand(1, 1, 40, 28, 20)  # 24 windows of 16^3: 12 network calls in pairs
    tuned = FastSlidingWindowInferer(16, 2, crop_foreground=False, cpu_kernels=True)
    plain = FastSlidingWindowInferer(16, 2, crop_foreground=False, cpu_kernels=False)
    expected = plain(x, net)
    torch.testing.assert_close(tuned(x, net), expected, atol=1e-5, rtol=1e-5)
    assert tuned._kernels.chosen == {}  # 12 calls: under CPU_KERNEL_MIN_CALLS, no trials
    torch.testing.assert_close(tuned(x, net), expected, atol=1e-5, rtol=1e-5)  # 12 + 12 calls: the trials run
    convs = sum(type(m) in cpu_kernels.LAYERS for m in net.modules())
    assert len(tuned._kernels.chosen) == convs and plain._kernels.chosen == {}
    assert all("forward" not in vars(m) for m in net.modules())
    torch.testing.assert_close(tuned(x, net), expected, atol=1e-5, rtol=1e-5)  # every layer on its chosen kernel
