"""Fast sliding-window inference: MONAI's window grid and blending, run on the foreground's box only.

The stock path (``monai.inferers.sliding_window_inference``) tiles the whole image (B, C, X, Y, Z) with windows
of ``roi_size`` every ``int(roi * (1 - overlap))`` voxels (the last one flush with the border), runs the network
on each and blends the window logits with an importance map ``w``: ``out = sum_i w_i * net(x_i) / sum_i w_i``.
``FastSlidingWindowInferer`` computes that blend with less work:

1. ``crop_foreground``: only the bounding box of the foreground (any channel != 0, or > ``foreground_threshold``)
   plus ``margin``, grown to the roi where the image allows, is tiled (nnU-Net crops the same way); the voxels
   outside get constant ``outside`` logits. A BraTS brain (about 140x170x140 of 240x240x155) needs 8 windows of
   128^3 instead of 18, and 80 of 64^3 instead of 196.
2. ``skip_empty``: an all-zero window has the same output wherever it lies, so the network runs once on a zero
   window (cached while the weights stay the same) and every all-zero window reuses it: exact.
3. On a CPU at least ``CPU_MIN_BATCH`` images go through each network call (see there: 4.5x per 64^3 window).
   Importance map and grid are computed once, the network runs under ``torch.inference_mode``, weighted logits
   are added in place into the output and divided once at the end. ``cpu_kernels``: each 3D convolution runs
   the fastest CPU kernel for its shape, learnt from its first calls (``medseg3d.inferers.cpu_kernels``).
4. ``tta``: nnU-Net's mirroring; every window is also predicted flipped along each subset of ``tta_axes`` (8
   copies for 3 axes), flipped back and averaged; the mirrored copies share network calls.
5. Devices: windows run on ``sw_device`` (default: the network's), autocast to float16 on CUDA. Stitching is on
   ``device`` (default: the input's); a GPU whose free memory cannot hold the output, or that runs out of memory
   while stitching, hands the stitching to the CPU (one warning).

Agreement with the stock path: with ``crop_foreground=False`` the logits are equal to float precision. The crop
moves the windows, and a network with instance norm normalizes each window by its content, so logits inside the
box shift a little: the bundle's Res-UNet trained on BraTS phantoms (validation Dice 0.95) gave label maps with
region Dice 0.97-0.99 to stock's (0.99-0.997 with TTA), and Dice to the ground truth equal to stock's +-0.005.
Seconds on the 2-core CPU for a BraTS-sized volume with the bundle's network: 5.5 (stock 11.4) at roi 128, 5.4
(stock 12.2; 55 with ``sw_batch_size=1``) at roi 64; with TTA 42.5 and 44 (stock: 8 passes, about 91 and 98).

Example:
    >>> import torch
    >>> from medseg3d.networks import res_unet
    >>> net = res_unet(in_channels=1, out_channels=2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    >>> image = torch.zeros(1, 1, 40, 36, 20)
    >>> image[:, :, 10:30, 8:28, 4:16] = 1.0
    >>> FastSlidingWindowInferer(roi_size=16, overlap=0.5)(image, net).shape
    torch.Size([1, 2, 40, 36, 20])
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type, optional_import

from medseg3d.inferers.cpu_kernels import KernelChoice

logger = logging.getLogger(__name__)

T = TypeVar("T")
Box = tuple[slice, slice, slice]
MODES = ("gaussian", "constant")
# Images per network call on a CPU, whatever sw_batch_size says: PyTorch convolves a batch of one with its slow
# im2col kernel instead of oneDNN when N * C * D * H <= 20480, true of most layers for a 64^3 window (the bundle's
# Res-UNet: 0.35 s for one window alone, 0.07-0.08 s each in pairs, on 2 cores). Pairs of 128^3 gain nothing.
CPU_MIN_BATCH = 2
# Network calls after which (this image's included) the CPU kernel of each convolution is chosen (``cpu_kernels``):
# the choice's trials, 6 calls per layer and shape, some on slower kernels, are then at most a tenth of the calls.
# A 512x512x300 CT at 64^3 makes 585 calls; a BraTS brain 40 (the second case of a batch starts the trials); an
# nnU-Net-sized patch 4, where a trial on channels-last input costs more than any choice could save.
CPU_KERNEL_MIN_CALLS = 60


def foreground_box(
    image: torch.Tensor, threshold: float | None = None, margin: Sequence[int] = (0, 0, 0)
) -> Box | None:
    """Bounding box of the foreground of ``image`` (C, X, Y, Z), grown by ``margin`` voxels and clipped.

    A voxel is foreground when any channel is != 0 (``threshold`` None) or > ``threshold``. None: no foreground.

    >>> image = torch.zeros(2, 10, 8, 6)
    >>> image[1, 3:5, 2, 1:4] = 7.0
    >>> foreground_box(image, margin=(1, 1, 1))
    (slice(2, 6, None), slice(1, 4, None), slice(0, 5, None))
    """
    mask = (image != 0).any(0) if threshold is None else (image > threshold).any(0)
    box = []
    for axis in range(3):
        hits = torch.nonzero(mask.any(dim=tuple(a for a in range(3) if a != axis)))
        if hits.numel() == 0:
            return None
        lo, hi = int(hits[0]) - margin[axis], int(hits[-1]) + 1 + margin[axis]
        box.append(slice(max(lo, 0), min(hi, image.shape[axis + 1])))
    return tuple(box)  # type: ignore[return-value]


def grow_box(box: Box, roi_size: Sequence[int], spatial_shape: Sequence[int]) -> Box:
    """Grow each side of ``box`` shorter than the roi to the roi (about its centre, inside the image), so
    the windows see image voxels rather than padding; an image axis shorter than the roi is taken whole.

    >>> grow_box((slice(2, 6), slice(0, 8), slice(10, 12)), (8, 4, 4), (20, 8, 12))
    (slice(0, 8, None), slice(0, 8, None), slice(8, 12, None))
    """
    grown = []
    for s, roi, size in zip(box, roi_size, spatial_shape, strict=True):
        lo, hi = s.start, s.stop
        if hi - lo < roi:
            lo = max(0, min(lo - (roi - (hi - lo)) // 2, size - roi))
            hi = min(size, lo + roi)
        grown.append(slice(lo, hi))
    return tuple(grown)  # type: ignore[return-value]


def window_slices(spatial_shape: Sequence[int], roi_size: Sequence[int], overlap: Sequence[float]) -> list[Box]:
    """MONAI's window grid (``sliding_window_inference``) over an image at least as large as the roi.

    >>> [s[0] for s in window_slices((40, 16, 16), (16, 16, 16), (0.5, 0.5, 0.5))]
    [slice(0, 16, None), slice(8, 24, None), slice(16, 32, None), slice(24, 40, None)]
    """

    interval = [
        roi if roi == size else max(int(roi * (1 - o)), 1)
        for size, roi, o in zip(spatial_shape, roi_size, overlap, strict=True)
    ]
    starts = dense_patch_slices(tuple(spatial_shape), tuple(roi_size), interval, return_slice=False)
    return [tuple(slice(int(a), int(b)) for a, b in window) for window in starts]  # type: ignore[misc]


def flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (nnU-Net's mirroring), the empty one first.

    >>> flip_combinations((0, 2))
    [(), (0,), (2,), (0, 2)]
    """
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


def choose_stitch_device(preferred: torch.device, needed_bytes: int, free_bytes: int | None) -> torch.device:
    """Where to stitch: ``preferred``, or the CPU when ``preferred`` is a GPU with fewer than ``needed_bytes``
    free (``free_bytes``, from ``torch.cuda.mem_get_info``; None: unknown, keep ``preferred``).

    >>> choose_stitch_device(torch.device("cuda"), needed_bytes=10, free_bytes=5)
    device(type='cpu')
    """
    if preferred.type != "cuda" or free_bytes is None or needed_bytes <= free_bytes:
        return preferred
    return torch.device("cpu")


def with_stitch_fallback(
    run: Callable[[torch.device], T], device: torch.device, on_fallback: Callable[[BaseException], None]
) -> T:
    """``run(device)``; if that runs out of memory on a device other than the CPU, ``on_fallback(error)`` and
    ``run(cpu)`` (freeing the GPU's cached blocks first). An out-of-memory error on the CPU is raised."""
    try:
        return run(device)
    except torch.cuda.OutOfMemoryError as error:
        if device.type == "cpu":
            raise
        on_fallback(error)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return run(torch.device("cpu"))


def call_sizes(n: int, batch_size: int, least: int = 1) -> list[int]:
    """Images per network call for ``n`` images: ``batch_size`` each, a remainder smaller than ``least`` joined
    to the call before it (a single call may still be smaller).

    >>> call_sizes(7, 2, least=2), call_sizes(7, 3), call_sizes(1, 4, least=2)
    ([2, 2, 3], [3, 3, 1], [1])
    """
    sizes = [min(batch_size, n - i) for i in range(0, n, batch_size)]
    if len(sizes) > 1 and sizes[-1] < least:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
    return sizes


class _Net(NamedTuple):
    """The network, the extra arguments of each call, and the device it runs on."""

    module: Callable[..., torch.Tensor]
    args: tuple
    kwargs: dict
    device: torch.device


def _triple(value: Any, name: str, kind: type) -> tuple:
    """``value`` (one number or three) as a 3-tuple of ``kind``; ValueError naming ``name`` otherwise."""
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,) * 3
    if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be one number or three (one per spatial axis), got {value!r}")
    if kind is int and any(v != int(v) for v in values):
        raise ValueError(f"{name} must be whole numbers, got {value!r}")
    return tuple(kind(v) for v in values)


def _module_device(network: Callable) -> torch.device | None:
    """The device of ``network``'s first parameter, if it is a module that has one."""
    if isinstance(network, torch.nn.Module):
        for p in itertools.chain(network.parameters(), network.buffers()):
            return p.device
    return None


def _weights_key(network: Callable) -> tuple | None:
    """Changes whenever ``network``'s weights do (an optimizer step, ``load_state_dict``): every parameter's
    storage and in-place version counter. None for a plain callable, whose output cannot be cached."""
    if not isinstance(network, torch.nn.Module):
        return None
    tensors = itertools.chain(network.parameters(), network.buffers())
    return (id(network), *((t.data_ptr(), t._version) for t in tensors))


class FastSlidingWindowInferer(Inferer):
    """Sliding-window inference over the foreground's box, with batched mirroring TTA (see the module text).

    A drop-in for ``monai.inferers.SlidingWindowInferer`` in bundles and evaluators: ``inferer(inputs, network)``
    with MONAI's keyword names. The network is expected in eval mode, its output shaped like its input window.

    Args:
        roi_size: window size, one int or three.
        sw_batch_size: images per network call (windows, or mirrored copies of windows with ``tta``); at least
            2 on a CPU (``CPU_MIN_BATCH``).
        overlap: fraction of the roi that neighbouring windows share, in [0, 1), one or three.
        mode: ``"gaussian"`` (centre weighted) or ``"constant"`` blending.
        sigma_scale: Gaussian sigma as a fraction of the roi, one or three.
        sw_device: where the network runs; default the network's device, else the input's.
        device: where the output is stitched and returned; default the input's device, falling back to the CPU
            when a GPU runs out of memory (the output is then on the CPU). An explicit device is kept.
        progress: show a tqdm bar over network calls.
        crop_foreground: tile only the foreground's bounding box (plus ``margin``).
        foreground_threshold: None: foreground is any channel != 0 (MRI after z-scoring of the non-zero voxels);
            a float: any channel > threshold (CT "body" after intensity scaling).
        margin: voxels of background added around the box on each side, one or three. Windows that see some
            background segment the box's edge more like the stock path does (an instance-norm network
            normalizes each window by its content): 8 raised the label Dice to stock from 0.944 to 0.986 in
            the tests, and leaves a BraTS brain's window count at roi 64 and 128 unchanged.
        skip_empty: reuse the cached output of an all-zero window for every all-zero window (exact).
        tta: average over the mirrored copies along every subset of ``tta_axes`` (2^n network passes).
        tta_axes: spatial axes (0, 1, 2 = X, Y, Z) to mirror.
        amp: autocast the network: None = float16 on CUDA, off on a CPU; True = float16 on CUDA, bfloat16 on a
            CPU (160x slower on the project's AVX2 CPU, which has no native bfloat16: keep it off there).
        outside: logits of the voxels outside the box. ``"auto"``: per channel, the median of the blended logits
            on the faces of the box, i.e. background as the network sees it next to the foreground, which is
            what the stock path gives there; a float, or one float per output channel. (The output on an
            all-zero window is no substitute: a network never trained on one can call it foreground.)
        cpu_kernels: on a CPU, run each 3D convolution layer with the fastest of oneDNN, PyTorch's native
            kernel and oneDNN on channels-last input for its input shape, learnt from its first calls
            (``medseg3d.inferers.cpu_kernels``; equal logits to float rounding), once this inferer has made
            ``CPU_KERNEL_MIN_CALLS`` network calls, counting those the current image will make.

    Raises:
        ValueError: an argument out of range, naming it; at call time an input that is not (B, C, X, Y, Z),
            a network output of the wrong shape, or ``outside`` values that do not match the output channels.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        sw_batch_size: int = 1,
        overlap: Sequence[float] | float = 0.5,
        mode: str = "gaussian",
        sigma_scale: Sequence[float] | float = 0.125,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        crop_foreground: bool = True,
        foreground_threshold: float | None = None,
        margin: Sequence[int] | int = 8,
        skip_empty: bool = True,
        tta: bool = False,
        tta_axes: Sequence[int] = (0, 1, 2),
        amp: bool | None = None,
        outside: str | float | Sequence[float] = "auto",
        cpu_kernels: bool = True,
    ) -> None:
        super().__init__()
        self.roi_size = _triple(roi_size, "roi_size", int)
        if min(self.roi_size) < 1:
            raise ValueError(f"roi_size must be positive, got {roi_size!r}")
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be an int >= 1, got {sw_batch_size!r}")
        self.overlap = _triple(overlap, "overlap", float)
        if not all(0.0 <= o < 1.0 for o in self.overlap):
            raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
        mode = str(getattr(mode, "value", mode))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.sigma_scale = _triple(sigma_scale, "sigma_scale", float)
        if min(self.sigma_scale) <= 0:
            raise ValueError(f"sigma_scale must be positive, got {sigma_scale!r}")
        self.margin = _triple(margin, "margin", int)
        if min(self.margin) < 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        if foreground_threshold is not None and not math.isfinite(foreground_threshold):
            raise ValueError(f"foreground_threshold must be None or a finite number, got {foreground_threshold!r}")
        axes = tuple(tta_axes)
        if not axes or len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
            raise ValueError(f"tta_axes must be distinct spatial axes among 0, 1, 2, got {tta_axes!r}")
        values = [outside] if not isinstance(outside, Sequence) else [] if isinstance(outside, str) else list(outside)
        numbers = bool(values) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        if not (outside == "auto" if isinstance(outside, str) else numbers):
            raise ValueError(f"outside must be 'auto', a number or one number per channel, got {outside!r}")
        self.sw_batch_size = sw_batch_size
        self.mode = mode
        self.sw_device = None if sw_device is None else torch.device(sw_device)
        self.device = None if device is None else torch.device(device)
        self.progress = progress
        self.crop_foreground = crop_foreground
        self.foreground_threshold = foreground_threshold
        self.skip_empty = skip_empty
        self.tta = tta
        self.tta_axes = axes
        self.amp = amp
        self.outside = outside
        self.cpu_kernels = cpu_kernels
        self._kernels = KernelChoice()
        self._calls = 0  # network calls planned on a CPU so far, for CPU_KERNEL_MIN_CALLS
        self._flips = flip_combinations(axes) if tta else [()]

        self._weight = compute_importance_map(self.roi_size, mode, self.sigma_scale, device="cpu")[None]  # (1, *roi)
        self._empty_cache: tuple[tuple, torch.Tensor] | None = None  # (key, output of a zero window)
        self._warned_fallback = False

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        """Blended logits (B, K, X, Y, Z), float32, for ``inputs`` (B, C, X, Y, Z); a MetaTensor in gives a
        MetaTensor out carrying the input's meta (affine, applied_operations) so ``Invertd`` applies.
        ``args`` and ``kwargs`` go to ``network`` with every batch of windows."""

        if inputs.ndim != 5:
            raise ValueError(f"inputs must have shape (B, C, X, Y, Z), got {tuple(inputs.shape)}")
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        net = _Net(network, args, kwargs, self.sw_device or _module_device(network) or images.device)
        stitch = self.device or images.device
        adaptive = self.device is None and stitch.type == "cuda"  # an explicit device is kept, as MONAI does
        outs = []
        with torch.no_grad():
            for image in images:
                run = lambda dev, image=image: self._infer_image(image, net, dev)  # noqa: E731
                outs.append(with_stitch_fallback(run, stitch, self._warn_fallback) if adaptive else run(stitch))
        out_device = outs[0].device if all(o.device == outs[0].device for o in outs) else torch.device("cpu")
        out = outs[0][None].to(out_device) if len(outs) == 1 else torch.stack([o.to(out_device) for o in outs])
        if meta is not None:
            out = convert_to_dst_type(out, meta, dtype=torch.float32, device=out.device)[0]
        return out

    def _warn_fallback(self, error: BaseException) -> None:
        if not self._warned_fallback:
            logger.warning("stitching on the GPU ran out of memory (%s); stitching on the CPU instead", error)
            self._warned_fallback = True

    def _infer_image(self, image: torch.Tensor, net: _Net, stitch: torch.device) -> torch.Tensor:
        """Logits (K, X, Y, Z) of one image (C, X, Y, Z), stitched on ``stitch`` (or the CPU, if it does not fit)."""
        spatial = tuple(image.shape[1:])
        box: Box | None = tuple(slice(0, s) for s in spatial)  # type: ignore[assignment]
        if self.crop_foreground:
            box = foreground_box(image, self.foreground_threshold, self.margin)
            if box is not None:
                box = grow_box(box, self.roi_size, spatial)
        full = tuple(slice(0, n) for n in spatial)
        if box is None:  # no foreground at all: tile everything, as the stock path does (empty windows are cheap)
            box = full
        crop = image[(slice(None), *box)].to(net.device)
        short = [max(r - n, 0) for n, r in zip(crop.shape[1:], self.roi_size, strict=True)]
        pad = [(d // 2, d - d // 2) for d in short]
        if any(p != (0, 0) for p in pad):  # only an image axis shorter than the roi: padded as the stock path does
            crop = F.pad(crop, [p for lo_hi in reversed(pad) for p in lo_hi])
        windows = window_slices(crop.shape[1:], self.roi_size, self.overlap)
        weight = self._weight.to(net.device)
        stitcher = _Stitcher(crop.shape[1:], spatial, box, pad, stitch)
        per_call = max(1, self._batch_size(net.device) // len(self._flips))
        chunks = [windows[i : i + per_call] for i in range(0, len(windows), per_call)]
        tune = contextlib.nullcontext()
        if self.cpu_kernels and net.device.type == "cpu":
            self._calls += len(chunks) * math.ceil(per_call * len(self._flips) / self._batch_size(net.device))
            if self._calls >= CPU_KERNEL_MIN_CALLS:
                tune = self._kernels.choose(net.module)
        if self.progress:
            tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
            chunks = tqdm(chunks) if has_tqdm else chunks
        with tune:
            for chunk in chunks:
                batch = torch.stack([crop[(slice(None), *s)] for s in chunk])
                busy = [bool(w.any()) for w in batch] if self.skip_empty else [True] * len(chunk)
                todo = batch if all(busy) else batch[[i for i, b in enumerate(busy) if b]]
                with torch.inference_mode():
                    preds = iter(self._predict(todo, net, self._flips))
                # stitching stays outside inference mode: the output must be a normal tensor for the caller
                for s, b in zip(chunk, busy, strict=True):
                    pred = next(preds) if b else self._empty_output(image.shape[0], image.dtype, net)
                    stitcher.add(s, pred * weight)
        return stitcher.finish(windows, weight, None if box == full else self.outside)

    def _predict(self, batch: torch.Tensor, net: _Net, flips: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """Logits (N, K, *roi) float32 of windows (N, C, *roi): the mean over the copies mirrored along each of
        ``flips``, run ``sw_batch_size`` images per network call."""
        if len(batch) == 0:
            return batch
        mirrored = [batch.flip([a + 2 for a in f]) if f else batch for f in flips]
        copies = mirrored[0] if len(mirrored) == 1 else torch.cat(mirrored)  # no copy without TTA
        autocast = self._autocast(batch.device)
        least = CPU_MIN_BATCH if batch.device.type == "cpu" else 1
        outs, start = [], 0
        for size in call_sizes(len(copies), self._batch_size(batch.device), least):
            part = copies[start : start + size]
            start += size
            if size < least:  # a lone image runs beside a copy of itself: still faster on a CPU (CPU_MIN_BATCH)
                part = part.repeat(least, 1, 1, 1, 1)
            with torch.autocast(batch.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                out = net.module(part, *net.args, **net.kwargs)
            if not isinstance(out, torch.Tensor) or tuple(out.shape[2:]) != self.roi_size or len(out) != len(part):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(
                    f"the network must return one tensor ({len(part)}, K, {', '.join(map(str, self.roi_size))}) "
                    f"for a batch of {len(part)} windows, got {shape}"
                )
            outs.append(out[:size].float())
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        n = len(batch)
        if len(flips) == 1:
            return out
        mean = out[:n].clone()
        for k, f in enumerate(flips[1:], start=1):
            mean += out[k * n : (k + 1) * n].flip([a + 2 for a in f])
        return mean / len(flips)

    def _batch_size(self, device: torch.device) -> int:
        return max(self.sw_batch_size, CPU_MIN_BATCH) if device.type == "cpu" else self.sw_batch_size

    def _autocast(self, device: torch.device) -> torch.dtype | None:
        if self.amp is False or (self.amp is None and device.type != "cuda"):
            return None
        return torch.float16 if device.type == "cuda" else torch.bfloat16

    def _empty_output(self, channels: int, dtype: torch.dtype, net: _Net) -> torch.Tensor:
        """The network's output (K, *roi) on an all-zero window (TTA-averaged), cached while the weights,
        the settings and the input channels stay the same (plain callables and extra arguments: not kept)."""
        weights = _weights_key(net.module)
        key = (weights, channels, net.device, dtype, self.roi_size, tuple(self._flips), self._autocast(net.device))
        if weights is None or net.args or net.kwargs or self._empty_cache is None or self._empty_cache[0] != key:
            zeros = torch.zeros((1, channels, *self.roi_size), dtype=dtype, device=net.device)
            with torch.inference_mode():
                single = self._predict(zeros, net, [()])[0]
                # every mirrored copy of a zero window is the same zero window: one pass, flipped back
                out = sum(single.flip([a + 1 for a in f]) if f else single for f in self._flips) / len(self._flips)
            self._empty_cache = (key, out)
        return self._empty_cache[1]


class _Stitcher:
    """Adds weighted window logits into the box of a full-size output, allocated at the first window (when the
    number of channels is known) on the stitching device, or on the CPU when a GPU lacks the free memory."""

    def __init__(
        self, crop_shape: Sequence[int], spatial: Sequence[int], box: Box, pad: Sequence[tuple[int, int]], device
    ) -> None:
        self.crop_shape, self.spatial, self.box, self.pad, self.device = crop_shape, spatial, box, pad, device
        self.padded = any(p != (0, 0) for p in pad)
        self.out: torch.Tensor | None = None
        self.acc: torch.Tensor | None = None

    def _allocate(self, channels: int) -> None:
        voxels = math.prod(self.spatial) + (math.prod(self.crop_shape) if self.padded else 0)
        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None
        self.device = choose_stitch_device(self.device, (channels + 1) * voxels * 4, free)
        self.out = torch.empty((channels, *self.spatial), dtype=torch.float32, device=self.device)
        if self.padded:
            self.acc = torch.zeros((channels, *self.crop_shape), dtype=torch.float32, device=self.device)
        else:  # accumulate straight into the output's box: no second copy of the logits
            self.acc = self.out[(slice(None), *self.box)]
            self.acc.zero_()

    def add(self, window: Box, logits: torch.Tensor) -> None:
        """Add ``logits`` (K, *roi), already weighted, at ``window`` of the (padded) crop."""
        if self.acc is None:
            self._allocate(logits.shape[0])
        self.acc[(slice(None), *window)] += logits.to(self.device)

    def finish(
        self, windows: Sequence[Box], weight: torch.Tensor, outside: str | float | Sequence[float] | None
    ) -> torch.Tensor:
        """The blended logits (K, *spatial): divided by the summed ``weight`` (1, *roi) of all ``windows``, the
        voxels outside the box set to ``outside`` (None: the box is the whole image; see the inferer's Args)."""
        assert self.acc is not None and self.out is not None  # every call adds at least one window
        count = torch.zeros((1, *self.crop_shape), dtype=torch.float32, device=self.device)
        weight = weight.to(self.device)
        for window in windows:
            count[(slice(None), *window)] += weight
        self.acc /= count
        if self.padded:
            inner = tuple(slice(lo, n - hi) for (lo, hi), n in zip(self.pad, self.crop_shape, strict=True))
            self.out[(slice(None), *self.box)] = self.acc[(slice(None), *inner)]
        if outside is None:
            return self.out
        channels = self.out.shape[0]
        if isinstance(outside, str):
            values = self._surface_median()
        else:
            values = torch.as_tensor(outside, dtype=torch.float32, device=self.device).reshape(-1)
            if values.numel() == 1:
                values = values.expand(channels)
            if values.numel() != channels:
                raise ValueError(f"outside has {values.numel()} values but the network outputs {channels} channels")
        values = values[:, None, None, None]
        for axis in range(3):  # the slabs before and after the box along each axis, inside it along the axes done
            inside = self.box[:axis]
            self.out[(slice(None), *inside, slice(0, self.box[axis].start))] = values
            self.out[(slice(None), *inside, slice(self.box[axis].stop, None))] = values
        return self.out

    def _surface_median(self) -> torch.Tensor:
        """Per-channel median (K,) of the logits on the faces of the box that border outside voxels."""
        inner = self.out[(slice(None), *self.box)]
        faces = []
        for axis in range(3):
            dim = axis + 1
            if self.box[axis].start > 0:
                faces.append(inner.narrow(dim, 0, 1).reshape(len(inner), -1))
            if self.box[axis].stop < self.spatial[axis]:
                faces.append(inner.narrow(dim, inner.shape[dim] - 1, 1).reshape(len(inner), -1))
        return torch.cat(faces, dim=1).median(dim=1).values
