"""Slice-stack (2.5D) inference: a 2D network run over every slice of a 3D volume, giving a 3D output.

``SliceStackInferer`` takes what a 3D inferer takes, ``inferer(inputs, network)`` with inputs (B, C, X, Y, Z),
and returns (B, K, X, Y, Z), so validation during training, batch inference and postprocessing use a 2.5D
network unchanged. Each slice along ``axis`` goes to the network as ``SliceStack(k, axis, edge)`` builds it:
(C*(2k+1), A, B), channel-major (channel ``c*(2k+1) + (j+k)`` is input channel ``c`` at slice ``z+j``), with
the edge slice repeated (``"replicate"``) or zeros (``"zero"``) past the ends of the volume.

Example:
    >>> import torch
    >>> from monai.networks.nets import UNet
    >>> net = UNet(2, in_channels=4 * 5, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    >>> SliceStackInferer(roi_size=16, k=2)(torch.randn(1, 4, 12, 10, 7), net).shape
    torch.Size([1, 3, 12, 10, 7])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, sliding_window_inference
from monai.utils import convert_to_dst_type, optional_import

from medseg3d.inferers.sliding_window import CPU_MIN_BATCH, MODES, _module_device
from medseg3d.transforms.slices import SliceStack, SlicesToVolume


def _roi_pair(roi_size: Sequence[int] | int) -> tuple[int, int]:
    """``roi_size`` (one int or two, each -1 or >= 1) as a pair; ValueError naming it otherwise."""
    values = tuple(roi_size) if isinstance(roi_size, Sequence) and not isinstance(roi_size, str) else (roi_size,) * 2
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"roi_size must be one int or two (the in-plane window), got {roi_size!r}")
    if not all(v == -1 or v >= 1 for v in values):
        raise ValueError(f"roi_size values must be >= 1, or -1 for the whole slice, got {roi_size!r}")
    return values  # type: ignore[return-value]


class SliceStackInferer(Inferer):
    """Run a 2D network on the slice stack of every slice of a volume and stack the outputs back into a volume.

    For each volume (C, X, Y, Z) of the batch, the stacks of all Z slices along ``axis`` (``SliceStack.windows``:
    a view of the volume padded once, each chunk copied as it is needed) go through the network
    ``sw_batch_size`` slices at a time, each chunk through MONAI's ``sliding_window_inference`` with the
    in-plane ``roi_size``: a slice larger than the roi is tiled with ``overlap`` and blended (``mode``), one
    smaller is padded with zeros to the roi and the output cropped back, exactly as the 3D stock path does.
    The per-slice outputs (Z, K, A, B) are placed back with ``SlicesToVolume(axis)``.

    Channel order and edge policy are ``SliceStack``'s (see ``medseg3d.transforms.slices``): the network sees
    what ``SliceStackd`` gave it in training, with the same ``k``, ``axis`` and ``edge``.

    ``skip_empty``: a stack that is all zero (the air outside a z-scored head, in every channel of all 2k+1
    slices) always gives the same output, so the network runs on the first one only and its output is copied
    for the others. The result equals running every slice (``torch.equal`` on a CPU in float32): every network
    call has the same number of images (see ``sw_batch_size``), since PyTorch's kernels may round an image's
    output differently for another batch size, though not for another position or other images in the batch.
    (On a GPU cuDNN may pick its algorithm by more than the shapes; differences are then at float precision.)

    Args:
        roi_size: in-plane window (A, B), one int for both; -1 takes the slice's size along that axis; a
            window larger than the slice pads the slice (MONAI's behaviour).
        k: neighbours on each side of a slice, >= 0; the network takes ``C*(2k+1)`` input channels.
        axis: spatial axis of the slices, 0, 1, 2 (X, Y, Z) or negative (-1 == 2).
        edge: ``"replicate"`` or ``"zero"``: neighbours past the ends of the volume.
        sw_batch_size: slices per chunk, and windows per network call: exactly that many in every call (the
            last chunk of a volume filled up with copies), at most the volume's depth, at least
            ``CPU_MIN_BATCH`` (2) on a CPU.
        overlap: fraction of the roi shared by neighbouring in-plane windows, in [0, 1).
        mode: ``"gaussian"`` or ``"constant"`` blending of in-plane windows.
        skip_empty: run the network once for all all-zero stacks (exact, see above).
        tta: average over the 4 copies mirrored along each subset of the two in-plane axes (nnU-Net's 2D
            mirroring; 4x the network time).
        progress: show a tqdm bar over chunks.

    Raises:
        ValueError: an argument out of range, naming it; at call time inputs that are not (B, C, X, Y, Z) or a
            network output that is not one tensor (n, K, A, B) for n stacks of (A, B).
    """

    def __init__(
        self,
        roi_size: Sequence[int] | int,
        k: int = 2,
        axis: int = 2,
        edge: str = "replicate",
        sw_batch_size: int = 8,
        overlap: float = 0.25,
        mode: str = "gaussian",
        skip_empty: bool = True,
        tta: bool = False,
        progress: bool = False,
    ) -> None:
        super().__init__()
        self.roi_size = _roi_pair(roi_size)
        self.stacker = SliceStack(k=k, axis=axis, edge=edge)
        if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be an int >= 1, got {sw_batch_size!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be a number in [0, 1), got {overlap!r}")
        mode = str(getattr(mode, "value", mode))
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.k, self.axis, self.edge = self.stacker.k, self.stacker.axis, self.stacker.edge
        self.sw_batch_size = sw_batch_size
        self.overlap = float(overlap)
        self.mode = mode
        self.skip_empty = skip_empty
        self.tta = bool(tta)
        # flips of the stacks (n, C, A, B) along the in-plane axes: dims 2 and 3
        self._flips: list[tuple[int, ...]] = [(), (2,), (3,), (2, 3)] if self.tta else [()]
        self.progress = progress
        self.to_volume = SlicesToVolume(axis=self.axis)

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """Outputs (B, K, X, Y, Z), float32 on the inputs' device, for ``inputs`` (B, C, X, Y, Z).

        ``network`` takes (n, C*(2k+1), *roi) and returns (n, K, *roi); ``args`` and ``kwargs`` go with every
        call. A MetaTensor in gives a MetaTensor out with the input's meta (the output is on the input's grid).
        """
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 5:
            shape = tuple(inputs.shape) if hasattr(inputs, "shape") else type(inputs).__name__
            raise ValueError(f"inputs must be a tensor (B, C, X, Y, Z), got {shape}")
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        images = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        device = _module_device(network) or images.device
        outs = [self._infer_volume(image, network, device, args, kwargs) for image in images]
        out = torch.stack(outs)
        if meta is not None:
            out = convert_to_dst_type(out, meta, dtype=torch.float32, device=out.device)[0]
        return out

    def _infer_volume(
        self, image: torch.Tensor, network: Callable, device: torch.device, args: tuple, kwargs: dict
    ) -> torch.Tensor:
        """Outputs (K, X, Y, Z) float32 of one volume (C, X, Y, Z), on the volume's device."""
        windows = self.stacker.windows(image)  # (Z, C, 2k+1, A, B), a view
        depth = windows.shape[0]
        plane = tuple(windows.shape[3:])
        todo = list(range(depth))
        empty = torch.zeros(depth, dtype=torch.bool)
        if self.skip_empty:
            empty = self._empty_stacks(image).cpu()
            first = [z for z in todo if empty[z]][:1]  # the first all-zero stack runs; the others copy its output
            todo = [z for z in todo if not empty[z]] + first
            todo.sort()
        # Every network call gets the same number of stacks, the last chunk filled up with copies of its last stack:
        # PyTorch's CPU kernels round an image's output differently for some batch sizes (a batch of one takes the
        # slow im2col convolution; ConvTranspose2d with 2 threads differs at 1 and 3 images), so a fixed size keeps
        # a stack's output independent of which stacks run with it, and skip_empty exact. At least CPU_MIN_BATCH
        # on a CPU, as FastSlidingWindowInferer does; at most the volume's depth, the same with and without skip.
        least = CPU_MIN_BATCH if device.type == "cpu" else 1
        per_call = max(min(self.sw_batch_size, depth), least)
        chunks = [todo[i : i + per_call] for i in range(0, len(todo), per_call)]
        if self.progress:
            tqdm, has_tqdm = optional_import("tqdm", name="tqdm")
            chunks = tqdm(chunks) if has_tqdm else chunks
        slices: torch.Tensor | None = None  # (Z, K, A, B)
        for chunk in chunks:
            index = torch.as_tensor(chunk, dtype=torch.long, device=windows.device)
            batch = windows.index_select(0, index).reshape(len(chunk), -1, *plane).to(device)
            if not batch.is_floating_point():
                batch = batch.float()
            if len(batch) < per_call:  # the last chunk, filled up (see above)
                batch = torch.cat([batch, batch[-1:].expand(per_call - len(batch), *batch.shape[1:])])
            with torch.inference_mode():
                pred = None
                for flip in self._flips:
                    part = sliding_window_inference(
                        batch.flip(flip) if flip else batch,
                        self.roi_size,
                        len(batch),
                        network,
                        self.overlap,
                        self.mode,
                        *args,
                        **kwargs,
                    )
                    if isinstance(part, torch.Tensor) and flip:
                        part = part.flip(flip)
                    pred = part if pred is None else pred + part
                if len(self._flips) > 1:
                    pred = pred / len(self._flips)
            if not isinstance(pred, torch.Tensor) or pred.ndim != 4 or tuple(pred.shape[2:]) != plane:
                shape = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
                raise ValueError(
                    f"the network must return one tensor (n, K, {plane[0]}, {plane[1]}) for n slices of "
                    f"{plane[0]}x{plane[1]}, got {shape}"
                )
            # outside inference mode: the output must be a normal tensor for the caller
            if slices is None:
                slices = torch.empty((depth, pred.shape[1], *plane), dtype=torch.float32, device=image.device)
            slices[index.to(image.device)] = pred[: len(chunk)].to(device=image.device, dtype=torch.float32)
        assert slices is not None  # depth >= 1, so at least one slice ran
        if self.skip_empty and bool(empty.any()):
            zero = int(torch.nonzero(empty)[0])
            rest = torch.nonzero(empty)[1:, 0].to(image.device)
            if len(rest):
                slices[rest] = slices[zero].clone()
        return self.to_volume(slices)

    def _empty_stacks(self, image: torch.Tensor) -> torch.Tensor:
        """(Z,) bool: stack ``z`` is all zero, i.e. all its 2k+1 slices (edge slices as ``edge`` gives them)."""
        busy = image.ne(0).any(dim=0).movedim(self.axis, 0).flatten(1).any(dim=1)  # (Z,): a slice holds a non-zero
        size = len(busy)
        offsets = torch.arange(-self.k, size + self.k, device=busy.device)
        padded = busy[offsets.clamp(0, size - 1)]
        if self.edge == "zero" and self.k > 0:
            padded[: self.k] = False
            padded[size + self.k :] = False
        return ~padded.unfold(0, self.stacker.depth, 1).any(dim=1)
