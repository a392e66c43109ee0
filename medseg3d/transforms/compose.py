"""A MONAI ``Compose`` for training samples: its random part runs with MONAI's meta tracking off."""

from __future__ import annotations

from typing import Any

from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose, RandomizableTrait, Transform


def is_random(transform: Any) -> bool:
    """Where MONAI's cached datasets stop caching: a random transform, or a callable that is no ``Transform``."""
    return isinstance(transform, RandomizableTrait) or not isinstance(transform, Transform)


class TrainCompose(Compose):
    """MONAI's ``Compose``, with meta tracking off (``set_track_meta(False)``) from the first random transform on.

    A training patch needs no affine and no record of the transforms applied to it: nothing inverts it
    and nothing saves it. With tracking on, every MONAI transform wraps its output in a ``MetaTensor``,
    copies the metadata and appends to the applied-operations list, and every torch operation on a
    ``MetaTensor`` goes through ``__torch_function__``. For the BraTS bundle's augmentation (4 patches of
    64^3 per case) that is a sixth of the CPU time (docs/benchmarks.md). The transforms before the first
    random one (loading, orientation, spacing: what cached datasets cache) run as ``Compose`` runs them,
    with tracking as it was, because they need the image's affine. The previous setting is restored
    afterwards, also when a transform raises. The setting is per process: DataLoader workers each have
    their own; in the main process (``num_workers=0``) nothing else runs while a sample is drawn.

    Arguments, inversion and caching are MONAI ``Compose``'s; ``flatten`` keeps this class.

    Example:
        >>> import torch
        >>> from monai.data import MetaTensor
        >>> from monai.transforms import RandFlipd, SpatialPadd
        >>> compose = TrainCompose([SpatialPadd("image", (4, 4)), RandFlipd("image", prob=1.0)])
        >>> out = compose({"image": MetaTensor(torch.ones(1, 2, 3))})
        >>> type(out["image"]).__name__, tuple(out["image"].shape)
        ('Tensor', (1, 4, 4))
    """

    def __call__(self, input_: Any, start: int = 0, end: int | None = None, threading: bool = False, lazy=None):
        first_random = self.get_index_of_first(is_random)
        stop = len(self.transforms) if end is None else end
        split = stop if first_random is None else min(max(first_random, start), stop)
        if split > start:
            input_ = super().__call__(input_, start=start, end=split, threading=threading, lazy=lazy)
        if split >= stop:
            return input_
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(input_, start=split, end=stop, threading=threading, lazy=lazy)
        finally:
            set_track_meta(tracking)

    def flatten(self) -> TrainCompose:
        flat = super().flatten()
        return TrainCompose(
            flat.transforms,
            map_items=self.map_items,
            unpack_items=self.unpack_items,
            log_stats=self.log_stats,
            lazy=self._lazy,
            overrides=self.overrides,
        )
