"""A trained network as a file that runs without PyTorch's model code: ONNX, and OpenVINO int8.

``export_onnx`` writes the network (weights loaded, eval mode) as ONNX, float32, with the batch and spatial axes
dynamic, so the sliding window's edge windows and any batch size run. ONNX is the interchange file: ONNX Runtime,
OpenVINO, TensorRT and Netron open it. ``quantize_int8`` turns it into an OpenVINO IR whose convolutions run in
int8 (NNCF's post-training quantization, calibrated on windows the network actually sees).

``ExportedNetwork`` is the file as a ``torch.nn.Module`` for ``FastSlidingWindowInferer``: torch tensors in and
out, the work done by OpenVINO (default when installed) or ONNX Runtime on the CPU.

Why these backends (docs/benchmarks.md, nnU-Net's 3d_fullres BraTS network, one 4x112x160x128 window, 2 threads,
a 2-core AVX2 CPU without VNNI): PyTorch float32 10.2 s, ONNX Runtime 8.5 s, OpenVINO float32 5.7 s, OpenVINO
int8 3.2 s. TorchScript is not exported: it runs PyTorch's own kernels (no faster) and PyTorch deprecates it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from medseg3d.core.errors import InputError

ov, HAS_OPENVINO = optional_import("openvino")
ort, HAS_ONNXRUNTIME = optional_import("onnxruntime")
nncf, HAS_NNCF = optional_import("nncf")

logger = logging.getLogger(__name__)

BACKENDS = ("openvino", "onnxruntime")
STATIC_SHAPES = 4  # input shapes ExportedNetwork compiles a static-shape model for (each holds its own buffers)
CONVOLUTIONS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData")
OPSET = 17  # InstanceNormalization, ConvTranspose and LeakyRelu as every runtime above reads them
INSTALL_HINT = "pip install 'medseg3d[export]' (OpenVINO, ONNX Runtime, ONNX, NNCF)"


def default_backend() -> str:
    """``openvino`` when installed (the fastest measured), else ``onnxruntime``.

    Raises:
        RuntimeError: neither is installed.
    """
    if HAS_OPENVINO:
        return "openvino"
    if HAS_ONNXRUNTIME:
        return "onnxruntime"
    raise RuntimeError(f"running an exported model needs OpenVINO or ONNX Runtime: {INSTALL_HINT}")


def export_onnx(network: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write ``network`` (in eval mode) as ONNX at ``path``, traced on ``example`` (B, C, *spatial); batch and
    spatial axes stay dynamic. Written to a temporary name, then renamed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    spatial = {axis: f"s{axis - 2}" for axis in range(2, example.ndim)}
    network = network.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer's notes on instance norm's shape check and on its use of the input's statistics (which is
        # what instance norm does in eval mode too): the exported graph is checked against PyTorch instead
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(
            network,
            (example,),
            str(tmp),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch", **spatial}, "logits": {0: "batch", **spatial}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript-based exporter: no onnxscript needed, and MONAI's nets trace through it
        )
    os.replace(tmp, path)
    return path


def end_convolutions(model: ov.Model) -> list[str]:
    """The names of the first and the last convolution of an OpenVINO model, in execution order."""
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in CONVOLUTIONS]
    return list(dict.fromkeys(convolutions[:1] + convolutions[-1:]))


def quantize_int8(onnx_path: str | os.PathLike, windows: Sequence[np.ndarray], xml_path: str | os.PathLike) -> Path:
    """An OpenVINO IR (``xml_path`` and its ``.bin``) of the ONNX network with int8 convolutions: NNCF's
    post-training quantization, its activation ranges calibrated on ``windows`` (each (B, C, *roi), float32,
    preprocessed as the network sees them). Instance norms, activations and the output stay float, and so do
    the first and the last convolution (``end_convolutions``): the one that reads the z-scored modalities and
    the one that writes the logits. Measured on nnU-Net's BraTS network trained through the bundle, 4 held-out
    phantoms (docs/export.md): every convolution in int8 agreed with PyTorch at Dice 0.9939 (ET), below the
    0.995 target; with the two ends in float, 0.9953 (WT) at the same 28 s per case (they are 1.5% of the FLOPs).

    Raises:
        RuntimeError: OpenVINO or NNCF is missing.
        ValueError: no calibration window.
    """
    if not (HAS_OPENVINO and HAS_NNCF):
        raise RuntimeError(f"int8 export needs OpenVINO and NNCF: {INSTALL_HINT}")
    if not windows:
        raise ValueError("int8 quantization needs calibration windows (give calibration cases)")
    model = ov.Core().read_model(str(onnx_path))
    ignored = nncf.IgnoredScope(names=end_convolutions(model))
    quantized = nncf.quantize(model, nncf.Dataset(list(windows)), subset_size=len(windows), ignored_scope=ignored)
    xml_path = Path(xml_path)
    tmp = xml_path.with_name(f".{xml_path.stem}.tmp.xml")
    ov.save_model(quantized, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), xml_path.with_suffix(".bin"))
    os.replace(tmp, xml_path)
    return xml_path


class ExportedNetwork(torch.nn.Module):
    """An exported network file (``.onnx``, or an OpenVINO ``.xml``) run by ``backend`` on the CPU, as a module:
    ``forward`` takes and returns float32 torch tensors (B, C, *spatial) -> (B, K, *spatial).

    Args:
        path: the network file.
        backend: ``openvino`` or ``onnxruntime`` (an ``.xml`` needs ``openvino``); None: ``default_backend()``.
        threads: CPU threads of the runtime; None: ``torch.get_num_threads()``, as the PyTorch path uses.

    Raises:
        InputError: the file is missing or the runtime cannot read it (naming the file).
    """

    def __init__(self, path: str | os.PathLike, backend: str | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.path.is_file():
            raise InputError(self.path, "exported network file not found")
        if self.path.suffix == ".xml" and self.backend != "openvino":
            raise InputError(self.path, "an OpenVINO IR runs with the openvino backend only")
        threads = int(threads or torch.get_num_threads())
        try:
            if self.backend == "openvino":
                if not HAS_OPENVINO:
                    raise RuntimeError(f"the openvino backend needs OpenVINO: {INSTALL_HINT}")
                self._core = ov.Core()
                self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
                self._model = self._core.read_model(str(self.path))
                self._request = self._core.compile_model(self._model, "CPU", self._config).create_infer_request()
                self._static: dict[tuple[int, ...], Any] = {}  # input shape -> request of a model of that shape
            else:
                if not HAS_ONNXRUNTIME:
                    raise RuntimeError(f"the onnxruntime backend needs ONNX Runtime: {INSTALL_HINT}")
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except RuntimeError as exc:
            if "needs" in str(exc) and INSTALL_HINT in str(exc):
                raise
            raise InputError(self.path, f"{self.backend} cannot read this network file: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - the runtimes raise their own types for a damaged file
            raise InputError(self.path, f"{self.backend} cannot read this network file: {exc}") from exc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        if self.backend == "openvino":
            # the input is read in place (the call is synchronous); the output is OpenVINO's own copy
            # (share_outputs=False), so the next call cannot overwrite it (tests/networks/test_exported.py)
            out = self._request_for(array.shape).infer({0: array}, share_inputs=True, share_outputs=False)[0]
        else:
            out = self._session.run(None, {self._session.get_inputs()[0].name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def _request_for(self, shape: tuple[int, ...]) -> Any:
        """An OpenVINO request compiled for inputs of ``shape`` (the sliding window makes one or two shapes), or
        the dynamic-shape one past ``STATIC_SHAPES`` shapes. A static shape lets OpenVINO plan its kernels and
        buffers once: the CT network's call on 2 windows of 64^3 took 53 ms against 56.5 ms with the dynamic one."""
        request = self._static.get(shape)
        if request is None and len(self._static) < STATIC_SHAPES:
            model = self._model.clone()
            model.reshape({0: list(shape)})
            request = self._static[shape] = self._core.compile_model(model, "CPU", self._config).create_infer_request()
        return self._request if request is None else request

    def extra_repr(self) -> str:
        return f"path={str(self.path)!r}, backend={self.backend!r}"


class WindowRecorder(torch.nn.Module):
    """Runs ``network`` and keeps (up to ``limit``) the windows it was given, one (1, C, *roi) array each: the
    calibration data of ``quantize_int8``, exactly what the sliding window feeds the network."""

    def __init__(self, network: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.network = network
        self.limit = int(limit)
        self.windows: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for window in x.detach().float().cpu():
            if len(self.windows) < self.limit and bool(window.abs().amax() > 0):  # an empty window calibrates nothing
                self.windows.append(window[None].numpy().copy())
        return self.network(x)


def spread(windows: Iterable[np.ndarray], count: int) -> list[np.ndarray]:
    """``count`` of ``windows`` spread evenly over the list (all of them when there are fewer).

    >>> [int(w[0]) for w in spread([np.array([i]) for i in range(10)], 3)]
    [0, 4, 9]
    """
    items = list(windows)
    if len(items) <= count:
        return items
    picks = np.linspace(0, len(items) - 1, count).round().astype(int)
    return [items[i] for i in picks]
