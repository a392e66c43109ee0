"""Array transforms: each works on one channel-first tensor or array of shape (C, X, Y, Z).

These are the preprocessing steps that dataset preparation and inference must apply identically, so
they live here once. They build on MONAI's transforms and add what MONAI leaves to the caller: the pad
widths needed to undo padding from a datalist, and a label remap that refuses unexpected values instead
of passing them through silently.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    DivisiblePad,
    MapLabelValue,
    NormalizeIntensity,
    RandGaussianNoise,
    RandomizableTransform,
    Transform,
)
from monai.utils import TransformBackends, convert_to_dst_type, get_equivalent_dtype

from medseg3d.core.constants import PREPARED_LABELS, REGIONS
from medseg3d.core.errors import InputError
from medseg3d.ops.components import parse_rules, postprocess_labels

PadWidth = tuple[tuple[int, int], ...]


class NormalizeNonZero(Transform):
    """Z-score each channel over its non-zero voxels; voxels that are zero stay exactly zero.

    For skull-stripped MRI the non-zero voxels are the brain, so every modality ends with mean 0 and
    standard deviation 1 inside the brain and 0 outside. A channel whose non-zero voxels are constant
    is only shifted (MONAI divides by 1 when the standard deviation is 0).

    Example:
        >>> import numpy as np
        >>> image = np.zeros((1, 4, 3, 2), dtype=np.float32)
        >>> image[0, 1:3, 1, :] = [[10, 20], [30, 40]]
        >>> brain = np.asarray(NormalizeNonZero()(image))[image != 0]
        >>> round(float(brain.mean()), 6), round(float(brain.std()), 6)
        (0.0, 1.0)
    """

    backend = NormalizeIntensity.backend

    def __init__(self, dtype: type = np.float32) -> None:
        self._normalize = NormalizeIntensity(nonzero=True, channel_wise=True, dtype=dtype)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Normalize ``img`` of shape (C, X, Y, Z)."""
        return self._normalize(img)


class NonZero:
    """``x != 0`` as a picklable callable: ``CropForegroundd``'s ``select_fn`` for skull-stripped, z-scored MRI,
    whose brain voxels may be negative in every channel (MONAI's default keeps ``x > 0`` only).

    >>> NonZero()(torch.tensor([-1.0, 0.0, 2.0])).tolist()
    [True, False, True]
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x != 0

    def __repr__(self) -> str:
        return "NonZero()"


class CheckFinite(Transform):
    """Refuse an image with NaN or infinite voxels (``InputError`` naming its file), pass it through otherwise.

    Training on such an image makes the loss NaN for every later step; the datalist helper reads only the
    headers of NIfTI images, so the voxels are checked here, when the loader reads them (once per case with a
    cached dataset, before the first epoch).

    Example:
        >>> import torch
        >>> from monai.data import MetaTensor
        >>> CheckFinite()(torch.zeros(1, 2, 2, 2)).shape
        torch.Size([1, 2, 2, 2])
        >>> bad = MetaTensor(torch.tensor([[[[0.0, float("nan")]]]]), meta={"filename_or_obj": "ct_007.nii.gz"})
        >>> CheckFinite()(bad)
        Traceback (most recent call last):
        ...
        medseg3d.core.errors.InputError: ct_007.nii.gz: 1 voxels are NaN or Inf; expected finite values
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        finite = torch.isfinite(img) if isinstance(img, torch.Tensor) else np.isfinite(img)
        if not bool(finite.all()):
            name = img.meta.get("filename_or_obj") if isinstance(img, MetaTensor) else None
            bad = int((~finite).sum())
            raise InputError(name or None, f"{bad} voxels are NaN or Inf; expected finite values")
        return img


class PadToDivisible(Transform):
    """Pad every spatial axis with zeros up to a multiple of ``k``, symmetrically, and report the widths.

    BraTS volumes are 240x240x155; with ``k=16`` they become 240x240x160, which a network with four
    stride-2 levels accepts. The widths are needed to undo the padding later (``CropPadding``).

    Args:
        k: the multiple, one int for all axes or one per spatial axis.

    Example:
        >>> import numpy as np
        >>> PadToDivisible(16).pad_width((240, 240, 155))
        ((0, 0), (0, 0), (2, 3))
        >>> PadToDivisible(16)(np.ones((4, 240, 240, 155), dtype=np.float32)).shape
        torch.Size([4, 240, 240, 160])
    """

    backend = DivisiblePad.backend

    def __init__(self, k: Sequence[int] | int = 16) -> None:
        values = [k] if isinstance(k, int) else list(k)
        if not values or any(not isinstance(v, int) or v < 1 for v in values):
            raise ValueError(f"k must be a positive int or a sequence of positive ints, got {k!r}")
        self.k = k
        self._pad = DivisiblePad(k=k, method="symmetric", mode="constant")

    def pad_width(self, spatial_shape: Sequence[int]) -> PadWidth:
        """(before, after) zero-padding of each spatial axis for a volume of ``spatial_shape``."""
        widths = self._pad.compute_pad_width(tuple(int(s) for s in spatial_shape))
        return tuple((int(b), int(a)) for b, a in widths[1:])

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Pad ``img`` of shape (C, X, Y, Z); a ``MetaTensor``'s affine moves its origin accordingly."""
        return self._pad(img)


class CropPadding(Transform):
    """Undo ``PadToDivisible``: remove ``pad_width`` voxels from the ends of every spatial axis.

    Args:
        pad_width: ((before, after), ...) per spatial axis, as ``PadToDivisible.pad_width`` returned
            and ``dataset.json`` records.

    Example:
        >>> import numpy as np
        >>> CropPadding(((0, 0), (0, 0), (2, 3)))(np.ones((1, 240, 240, 160))).shape
        (1, 240, 240, 155)
    """

    backend = [*DivisiblePad.backend]

    def __init__(self, pad_width: Sequence[Sequence[int]]) -> None:
        widths = tuple((int(b), int(a)) for b, a in pad_width)
        if any(b < 0 or a < 0 for b, a in widths):
            raise ValueError(f"pad_width must hold non-negative (before, after) pairs, got {pad_width!r}")
        self.pad_width = widths

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Crop ``img`` of shape (C, X, Y, Z); a ``MetaTensor``'s affine origin moves back."""
        spatial = img.shape[1:]
        if len(spatial) != len(self.pad_width):
            raise ValueError(f"image has {len(spatial)} spatial axes but pad_width has {len(self.pad_width)}")
        slices = [slice(None)]
        for size, (before, after) in zip(spatial, self.pad_width, strict=True):
            if before + after >= size:
                raise ValueError(f"cannot crop {before}+{after} voxels from an axis of size {size}")
            slices.append(slice(before, size - after))
        out = img[tuple(slices)]
        if isinstance(img, MetaTensor):
            affine = img.affine.clone()
            shift = torch.tensor([b for b, _ in self.pad_width], dtype=affine.dtype)
            affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ shift
            # A fresh meta dict: the input's must not see the new affine.
            meta = {k: v for k, v in img.meta.items() if k != "affine"}
            out = MetaTensor(out.as_tensor(), affine=affine, meta=meta)
        return out


class RemapLabels(Transform):
    """Map label values through ``mapping`` and refuse any value the mapping does not know.

    MONAI's ``MapLabelValue`` passes unknown values through unchanged; a segmentation with a stray
    label 3 in a 0/1/2/4 dataset would then silently become a wrong class. This raises instead.

    Args:
        mapping: source value -> target value, background included (e.g. ``{0: 0, 1: 1, 2: 2, 4: 3}``).
        dtype: dtype of the output.

    Example:
        >>> import numpy as np
        >>> RemapLabels({0: 0, 1: 1, 2: 2, 4: 3})(np.array([[0, 1], [2, 4]]))
        array([[0, 1],
               [2, 3]], dtype=uint8)
    """

    backend = MapLabelValue.backend

    def __init__(self, mapping: Mapping[int, int], dtype: type = np.uint8) -> None:
        if not mapping:
            raise ValueError("mapping must not be empty")
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        self._map = MapLabelValue(list(self.mapping), list(self.mapping.values()), dtype=dtype)

    def unexpected_values(self, img: NdarrayOrTensor) -> list[float]:
        """Values present in ``img`` that ``mapping`` does not cover (non-integers included)."""
        values = torch.unique(torch.as_tensor(img)).tolist() if isinstance(img, torch.Tensor) else np.unique(img)
        return [float(v) for v in values if float(v) not in self.mapping]

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Remap ``img`` of any shape; raise ``ValueError`` naming the unexpected values if any."""
        unexpected = self.unexpected_values(img)
        if unexpected:
            shown = ", ".join(f"{v:g}" for v in unexpected[:10])
            raise ValueError(f"unexpected label values {shown}; expected only {sorted(self.mapping)}")
        return self._map(img)


class LabelsToRegions(Transform):
    """Turn a label map of consecutive labels into one binary channel per region (nested BraTS regions).

    BraTS scores whole tumour (WT), tumour core (TC) and enhancing tumour (ET), which overlap; a network
    trained on them uses one sigmoid per region. With the prepared labels (1 NCR, 2 ED, 3 ET) the
    default regions are WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.

    Args:
        regions: region name -> label values it holds, in output channel order.

    Example:
        >>> import numpy as np
        >>> LabelsToRegions()(np.array([[[[0, 1, 2, 3]]]])).squeeze().tolist()
        [[0.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, regions: Mapping[str, Sequence[int]] | None = None) -> None:
        regions = REGIONS if regions is None else regions
        if not regions or any(len(values) == 0 for values in regions.values()):
            raise ValueError(f"regions must map each name to at least one label value, got {regions!r}")
        self.regions = {name: tuple(int(v) for v in values) for name, values in regions.items()}

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Convert ``img`` of shape (1, X, Y, Z) into float regions of shape (R, X, Y, Z)."""
        if img.shape[0] != 1:
            raise ValueError(f"expected a single-channel label map of shape (1, ...), got shape {tuple(img.shape)}")
        if isinstance(img, torch.Tensor):
            # a chain of == per value: ~20x faster than torch.isin on CPU for these few label values
            channels = [
                functools.reduce(torch.logical_or, [img[0] == v for v in values]) for values in self.regions.values()
            ]
            out = torch.stack(channels).to(torch.float32)
            return MetaTensor(out, meta=img.meta) if isinstance(img, MetaTensor) else out
        return np.stack([np.isin(img[0], v) for v in self.regions.values()]).astype(np.float32)


def regions_to_labels(regions: np.ndarray) -> np.ndarray:
    """Binary WT, TC, ET masks (shape (3, X, Y, Z)) -> prepared labels (shape (X, Y, Z)): ED, NCR, ET.

    The inverse of ``LabelsToRegions`` on nested regions (ET in TC in WT): WT outside TC is edema, TC
    outside ET is necrosis.

    >>> regions_to_labels(np.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]])[..., None, None])[:, 0, 0].tolist()
    [2, 1, 3, 0]
    """
    labels = np.zeros(regions.shape[1:], dtype=np.uint8)
    for channel, name in enumerate(("ED", "NCR", "ET")):  # WT, then TC, then ET overwrite
        labels[regions[channel] > 0] = PREPARED_LABELS[name]
    return labels


class ConnectedComponents(Transform):
    """Connected-component cleanup of a label map, per label: keep the k largest, remove small, fill holes.

    A thin wrapper of ``medseg3d.ops.components.postprocess_labels`` (read it for the order of the
    operations, the ``"all"`` rule and how filled holes meet other labels). ``{"all": {"keep_largest": 1}}``
    gives what MONAI's ``KeepLargestConnectedComponent(independent=False)`` gives and
    ``{1: {"keep_largest": 1}, 2: {"keep_largest": 1}}`` what ``applied_labels=[1, 2]`` gives, voxel for
    voxel, many times faster.

    Args:
        rules: label value (or its string form, or ``"all"``) -> any of ``keep_largest: k``,
            ``min_size: n``, ``fill_holes: true``, ``connectivity: 6|18|26``; checked here, so a typo fails
            when the transform is built.

    Example:
        >>> import numpy as np
        >>> labels = np.zeros((1, 6, 5, 4), dtype=np.uint8)
        >>> labels[0, :2] = 1  # a slab of 40 voxels
        >>> labels[0, 5, 4, 3] = 1  # a speck
        >>> int(ConnectedComponents({1: {"keep_largest": 1}})(labels).sum())
        40
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, rules: Mapping[Any, Mapping[str, Any]]) -> None:
        self.rules = parse_rules(rules)

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Clean ``img`` of shape (1, X, Y, Z); the result has its type, dtype, device and metadata."""
        if img.ndim != 4 or img.shape[0] != 1:
            raise ValueError(
                f"expected a label map of shape (1, X, Y, Z), got shape {tuple(img.shape)} "
                "(take the argmax of class channels first, e.g. AsDiscrete(argmax=True))"
            )
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        out = postprocess_labels(array[0], self.rules)[None]
        return convert_to_dst_type(out, dst=img, dtype=img.dtype)[0]


class RandTorchGaussianNoise(RandGaussianNoise):
    """MONAI's ``RandGaussianNoise`` with the noise drawn by torch in float32, not by numpy in float64.

    The same distribution (mean ``mean``, standard deviation drawn from U(0, ``std``) when ``sample_std``)
    and the same arguments; the noise comes from a ``torch.Generator`` seeded from the transform's own
    random state, so ``set_random_state`` makes it reproducible as before. Drawing 4x64^3 normals this
    way takes a third of numpy's time (docs/benchmarks.md). The noise is drawn in the output ``dtype``
    when that is a floating type, else in float32.

    Example:
        >>> import torch
        >>> noise = RandTorchGaussianNoise(prob=1.0, std=0.5, sample_std=False)
        >>> a = noise.set_random_state(7)(torch.zeros(1, 40, 30, 20))
        >>> b = noise.set_random_state(7)(torch.zeros(1, 40, 30, 20))
        >>> bool(torch.equal(a, b)), round(float(a.std()), 1), a.dtype
        (True, 0.5, torch.float32)
    """

    def randomize(self, img: NdarrayOrTensor, mean: float | None = None) -> None:
        RandomizableTransform.randomize(self, None)
        if not self._do_transform:
            return None
        std = self.R.uniform(0, self.std) if self.sample_std else self.std
        dtype = torch.float32 if self.dtype is None else get_equivalent_dtype(self.dtype, torch.Tensor)
        dtype = dtype if dtype.is_floating_point else torch.float32
        device = img.device if isinstance(img, torch.Tensor) else torch.device("cpu")
        generator = torch.Generator(device=device).manual_seed(int(self.R.randint(2**31 - 1)))
        noise = torch.randn(tuple(img.shape), generator=generator, dtype=dtype, device=device)
        self.noise = noise.mul_(std).add_(self.mean if mean is None else mean)
