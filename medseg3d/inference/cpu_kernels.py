"""Per-layer choice of PyTorch's CPU convolution kernel, timed once per input shape (like ``cudnn.benchmark``).

On a CPU PyTorch runs 3D convolutions with oneDNN (``mkldnn``) whenever it can, and oneDNN is much faster for
most layers of a U-Net. Not for all: on the project's 2-core AVX2 CPU the Res-UNet's last transposed
convolution (32 -> 2 channels, 32^3 -> 64^3, two windows) takes 12.7 ms in oneDNN and 7.3 ms in PyTorch's own
kernel (an MKL matrix product and col2vol), a tenth of the whole network's convolution time. Which kernel wins
depends on the CPU, the layer and the input shape (oneDNN on a channels-last copy of the input wins for some
others: 6.4 instead of 7.5 ms for 16 -> 16 channels at 32^3), so it is measured rather than guessed:

``KernelChoice`` remembers, per layer and input shape, which of the ``KERNELS`` was fastest; ``choose(network)``
is a context manager under which each ``Conv3d`` / ``ConvTranspose3d`` of ``network`` runs with that choice,
timing every kernel (best of ``repeats``) the first time it sees a shape. The network object is left as it was
on exit (its modules, parameters and state dict are never changed). The kernels compute the same sums in
another order: outputs agree to float32 rounding (about 1e-6 relative).

Example:
    >>> import torch
    >>> conv = torch.nn.Conv3d(2, 3, 3, padding=1).eval()
    >>> x = torch.rand(2, 2, 8, 6, 4)
    >>> choice = KernelChoice()
    >>> with torch.inference_mode(), choice.choose(conv):
    ...     tuned = conv(x)
    >>> torch.allclose(tuned, conv(x), atol=1e-5), len(choice.chosen), "forward" in vars(conv)
    (True, 1, False)
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import torch

logger = logging.getLogger(__name__)

# the layer classes whose kernel is chosen (exactly these: a subclass keeps its own forward and PyTorch's choice)
LAYERS = (torch.nn.Conv3d, torch.nn.ConvTranspose3d)
# the candidates, the default first: oneDNN; PyTorch's native kernel (oneDNN off for the layer); oneDNN on a
# channels-last copy of the input (the output is made contiguous again, so the next layer sees what it expects)
KERNELS = ("onednn", "native", "onednn_channels_last")


@contextlib.contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """oneDNN on or off for the block (only that flag: ``torch.backends.mkldnn.flags`` also resets the others)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def _time(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Best of ``repeats`` timed calls of ``fn``, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class KernelChoice:
    """Which CPU kernel each 3D convolution layer runs, per input shape: one of ``KERNELS``.

    Args:
        repeats: timed runs of each kernel (after one untimed warm-up run each); the best run counts.

    Attributes:
        chosen: ``{(id(layer), shape, dtype): kernel}``, filled as layers meet new shapes.
    """

    def __init__(self, repeats: int = 3) -> None:
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
        self.repeats = repeats
        self.chosen: dict[tuple, str] = {}

    @contextlib.contextmanager
    def choose(self, network: torch.nn.Module) -> Iterator[None]:
        """Run the ``Conv3d`` / ``ConvTranspose3d`` layers of ``network`` with their fastest CPU kernel inside
        the block (inputs on other devices, or when oneDNN is not available or turned off, run as usual)."""
        if not torch.backends.mkldnn.is_available() or not isinstance(network, torch.nn.Module):
            yield
            return
        layers = [m for m in network.modules() if type(m) in LAYERS and "forward" not in vars(m)]
        try:
            for layer in layers:
                layer.forward = self._forward(layer)  # an instance attribute: shadows the class's forward
            yield
        finally:
            for layer in layers:
                vars(layer).pop("forward", None)

    def _forward(self, layer: torch.nn.Module) -> Callable[..., torch.Tensor]:
        run = type(layer).forward

        def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if x.device.type != "cpu" or x.ndim != 5 or not torch.backends.mkldnn.enabled:
                return run(layer, x, *args, **kwargs)
            key = (id(layer), tuple(x.shape), x.dtype)
            kernel = self.chosen.get(key)
            if kernel is None:
                seconds = {k: _time(lambda k=k: _call(k, run, layer, x, args, kwargs), self.repeats) for k in KERNELS}
                kernel = self.chosen[key] = min(KERNELS, key=seconds.__getitem__)  # ties: the first, oneDNN
                if kernel != KERNELS[0]:
                    logger.debug("%s on %s: %s (%s)", layer, tuple(x.shape), kernel, seconds)
            return _call(kernel, run, layer, x, args, kwargs)

        return forward


def _call(kernel: str, run: Callable[..., torch.Tensor], layer, x: torch.Tensor, args, kwargs) -> torch.Tensor:
    if kernel == "native":
        with _onednn(False):
            return run(layer, x, *args, **kwargs)
    if kernel == "onednn_channels_last":
        return run(layer, x.contiguous(memory_format=torch.channels_last_3d), *args, **kwargs).contiguous()
    return run(layer, x, *args, **kwargs)
