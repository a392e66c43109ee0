"""Per-layer choice of PyTorch's CPU convolution kernel, learnt from the first calls (like ``cudnn.benchmark``).

On a CPU PyTorch runs 3D convolutions with oneDNN (``mkldnn``) whenever it can, and oneDNN is much faster for
most layers of a U-Net. Not for all: a transposed convolution with few output channels (the Res-UNet's last
one, 32 -> 2) can run faster in PyTorch's own kernel (an MKL matrix product and col2vol), and oneDNN on a
channels-last copy of the input wins for some other layers. Which kernel wins depends on the CPU, the layer and
the input shape, so it is measured rather than guessed (``docs/benchmarks.md``, ``bench_infer``).

``choose(network)`` is a context manager under which each ``Conv3d`` / ``ConvTranspose3d`` of ``network`` runs
with the kernel ``KernelChoice`` chose for that layer and input shape. The first calls with a new shape are the
trials: each candidate of ``KERNELS`` in turn serves ``samples`` real calls, timed, then the fastest (by its best
call) serves every later one. Nothing is computed twice, so the choice costs only the trial calls' share of a
slower kernel. The network object is left as it was on exit (modules, parameters and state dict unchanged). The
kernels compute the same sums in another order: outputs agree to float32 rounding (about 1e-6 relative).

Example:
    >>> import torch
    >>> conv = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    >>> x = torch.rand(2, 2, 8, 6, 4)
    >>> choice = KernelChoice(samples=1)
    >>> with torch.inference_mode(), choice.choose(conv):
    ...     tuned = [conv(x) for _ in range(4)]  # 3 trials (one per kernel), then the fastest
    >>> all(torch.allclose(t, conv(x), atol=1e-5) for t in tuned), len(choice.chosen), "forward" in vars(conv)
    (True, 1, False)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable, Iterator

import torch

logger = logging.getLogger(__name__)

# the layer classes whose kernel is chosen (exactly these: a subclass keeps its own forward and PyTorch's choice)
LAYERS = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
# the candidates, the default first: oneDNN; PyTorch's native kernel (oneDNN off for the layer); oneDNN on a
# channels-last copy of the input (the output is made contiguous again, so the next layer sees what it expects)
KERNELS = ("onednn", "native", "onednn_channels_last")
# PyTorch's native kernel unfolds the input into a matrix of (channels x kernel taps) x voxels per image (vol2col):
# 16 GB for a 32-channel layer of nnU-Net's 112x160x128 patch in pairs, and as slow as it is large. It is a
# candidate only when that matrix stays under this many bytes (where it wins, layers are small: 14 MB for the
# Res-UNet's last transposed convolution).
NATIVE_MAX_BYTES = 1 << 27


@contextlib.contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """oneDNN on or off for the block (only that flag: ``torch.backends.mkldnn.flags`` also resets the others)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def native_columns_bytes(layer: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the column matrix PyTorch's native kernel builds for ``layer`` on ``x`` (N, C, X, Y, Z), bounded
    from above: taps x input channels x input voxels for a convolution (whose output has at most the input's
    voxels), taps x output channels x input voxels for a transposed one, for all N images.

    >>> native_columns_bytes(torch.nn.ConvTranspose3d(32, 2, 3, stride=2), torch.zeros(2, 32, 32, 32, 32))
    14155776
    """
    channels = layer.out_channels if isinstance(layer, torch.nn.ConvTranspose3d) else layer.in_channels
    taps = channels // layer.groups * math.prod(layer.kernel_size)
    return taps * x.shape[0] * math.prod(x.shape[2:]) * x.element_size()


def _call(kernel: str, run: Callable[..., torch.Tensor], layer, x: torch.Tensor, args, kwargs) -> torch.Tensor:
    """``layer``'s own ``forward`` (``run``) on ``x`` with ``kernel``, one of ``KERNELS``."""
    if kernel == "native":
        with _onednn(False):
            return run(layer, x, *args, **kwargs)
    if kernel == "onednn_channels_last":
        return run(layer, x.contiguous(memory_format=torch.channels_last_3d), *args, **kwargs).contiguous()
    return run(layer, x, *args, **kwargs)


class KernelChoice:
    """Which CPU kernel each 3D convolution layer runs, per input shape: one of ``KERNELS``.

    Args:
        samples: timed calls each candidate serves before the choice; its fastest call counts (the first call
            of a kernel on a shape also builds its plan, so 2 leaves one warm call to compare).

    Attributes:
        chosen: ``{(id(layer), shape, dtype): kernel}``, filled as layers finish their trials.
    """

    def __init__(self, samples: int = 2) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        self.samples = samples
        self.chosen: dict[tuple, str] = {}
        self._trials: dict[tuple, dict[str, list[float]]] = {}

    @contextlib.contextmanager
    def choose(self, network: torch.nn.Module) -> Iterator[None]:
        """Run the ``Conv3d`` / ``ConvTranspose3d`` layers of ``network`` with their chosen CPU kernel inside
        the block (inputs on other devices, or when oneDNN is not available or turned off, run as usual)."""
        if not torch.backends.mkldnn.is_available() or not isinstance(network, torch.nn.Module):
            yield
            return
        layers = [m for m in network.modules() if type(m) in LAYERS and "forward" not in vars(m)]
        try:
            for layer in layers:
                layer.forward = functools.partial(self._forward, layer)  # shadows the class's forward
            yield
        finally:
            for layer in layers:
                vars(layer).pop("forward", None)

    def _forward(self, layer: torch.nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        run = type(layer).forward
        if x.device.type != "cpu" or x.ndim != 5 or not torch.backends.mkldnn.enabled:
            return run(layer, x, *args, **kwargs)
        key = (id(layer), tuple(x.shape), x.dtype)
        kernel = self.chosen.get(key)
        if kernel is not None:
            return _call(kernel, run, layer, x, args, kwargs)
        trials = self._trials.get(key)
        if trials is None:
            native = native_columns_bytes(layer, x) <= NATIVE_MAX_BYTES
            trials = self._trials[key] = {k: [] for k in KERNELS if k != "native" or native}
        kernel = next(k for k, times in trials.items() if len(times) < self.samples)
        start = time.perf_counter()
        out = _call(kernel, run, layer, x, args, kwargs)
        trials[kernel].append(time.perf_counter() - start)
        if all(len(times) == self.samples for times in trials.values()):
            best = {k: min(times) for k, times in trials.items()}
            self.chosen[key] = min(best, key=best.__getitem__)  # ties: the first, oneDNN
            del self._trials[key]
            if self.chosen[key] != KERNELS[0]:
                logger.debug("%s on %s: %s (%s)", layer, tuple(x.shape), self.chosen[key], best)
        return out
