"""``ExportedNetwork``: an exported file as a module, on both runtimes; outputs that outlive the next call."""

from __future__ import annotations

import pytest
import torch

from medseg3d.core.errors import InputError
from medseg3d.networks import res_unet
from medseg3d.networks.exported import ExportedNetwork, export_onnx

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    network = res_unet(2, 3, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    path = export_onnx(network, torch.zeros(1, 2, 16, 24, 20), tmp_path_factory.mktemp("onnx") / "net.onnx")
    return network, path


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_outputs_match_pytorch_and_outlive_the_next_call(exported, backend) -> None:
    network, path = exported
    module = ExportedNetwork(path, backend, threads=1)
    torch.manual_seed(1)
    first, second = torch.randn(2, 2, 16, 24, 20), torch.randn(1, 2, 24, 16, 28)  # another batch and window too
    out_first = module(first)
    kept = out_first.clone()
    out_second = module(second)
    assert torch.equal(out_first, kept), "a later call must not overwrite an earlier output"
    if backend == "openvino":  # a model compiled per input shape
        assert sorted(module._static) == [(1, 2, 24, 16, 28), (2, 2, 16, 24, 20)]
    with torch.no_grad():
        for x, out in ((first, out_first), (second, out_second)):
            expected = network(x)
            assert out.shape == expected.shape and out.dtype == torch.float32
            assert float((out - expected).abs().max()) < 1e-3


def test_a_missing_or_foreign_file_is_named(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        ExportedNetwork(tmp_path / "none.onnx", "openvino")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a network")
    for backend in ("openvino", "onnxruntime"):
        with pytest.raises(InputError, match="cannot read this network file"):
            ExportedNetwork(bad, backend)
    xml = tmp_path / "net.xml"
    xml.write_text("<net/>")
    with pytest.raises(InputError, match="openvino backend only"):
        ExportedNetwork(xml, "onnxruntime")


def test_int8_keeps_the_first_and_last_convolutions_float(exported, tmp_path) -> None:
    pytest.importorskip("nncf")
    import openvino as ov

    from medseg3d.networks.exported import CONVOLUTIONS, end_convolutions, quantize_int8

    network, path = exported
    torch.manual_seed(2)
    windows = [torch.randn(1, 2, 16, 24, 20).numpy() for _ in range(4)]
    xml = quantize_int8(path, windows, tmp_path / "net.int8.xml")
    ends = end_convolutions(ov.Core().read_model(str(path)))
    assert len(ends) == 2
    quantized = {}
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() in CONVOLUTIONS:
            sources = [op.input_value(i).get_node().get_type_name() for i in range(op.get_input_size())]
            quantized[op.get_friendly_name()] = any(s in ("FakeQuantize", "FakeConvert") for s in sources)
    assert set(ends) <= set(quantized)
    assert not any(quantized[name] for name in ends), quantized
    # the others in int8, but for those NNCF leaves float by itself (here the transposed convolutions)
    inner = [name for name in quantized if name not in ends]
    assert sum(quantized[name] for name in inner) >= len(inner) // 2, quantized
    out = ExportedNetwork(xml, "openvino", threads=1)(torch.from_numpy(windows[0]))
    with torch.no_grad():
        assert out.shape == network(torch.from_numpy(windows[0])).shape


def test_shapes_past_the_static_ones_run_on_the_dynamic_model(exported, monkeypatch) -> None:
    from medseg3d.networks import exported as module_of

    monkeypatch.setattr(module_of, "STATIC_SHAPES", 1)
    network, path = exported
    module = ExportedNetwork(path, "openvino", threads=1)
    torch.manual_seed(3)
    for x in (torch.randn(2, 2, 16, 24, 20), torch.randn(1, 2, 24, 16, 28)):
        with torch.no_grad():
            assert float((module(x) - network(x)).abs().max()) < 1e-3
    assert list(module._static) == [(2, 2, 16, 24, 20)]
