"""Network outputs to label maps: the decoding ``medseg3d infer`` ships and validation scores.

``logits_to_labels`` turns the logits of one case into prepared labels; ``LogitsToLabels`` and
``LogitsToLabelsd`` are its transform pair for MONAI ``Compose`` (the validation postprocessing of the bundles,
``medseg3d.training.validation.postprocessing``), so the label map validation scores is the one the predictor
writes, voxel for voxel.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from medseg3d.transforms.array import regions_to_labels

OUTPUT_MODES = ("regions", "labels")


def logits_to_labels(logits: torch.Tensor, output_mode: str) -> np.ndarray:
    """Network output of one case (shape (K, X, Y, Z)) -> prepared labels (shape (X, Y, Z), uint8).

    ``regions``: one sigmoid per nested BraTS region (WT, TC, ET), each above 0.5, decoded to labels
    (WT outside TC is ED, TC outside ET is NCR). ``labels``: argmax over the channels (0 is background).

    >>> logits_to_labels(torch.tensor([[[[2.0]]], [[[-1.0]]], [[[-3.0]]]]), "regions").tolist()
    [[[2]]]
    >>> logits_to_labels(torch.tensor([[[[0.1, 2.0]]], [[[0.5, -1.0]]]]), "labels").tolist()
    [[[1, 0]]]
    """

    if output_mode == "regions":
        return regions_to_labels((logits > 0).cpu().numpy())  # sigmoid(x) > 0.5 <=> x > 0
    if output_mode == "labels":
        # a running maximum over the channels: each step reads one contiguous channel, about 3x faster than
        # argmax(0) over the strided channel axis of a large volume; ``>`` keeps the first maximum, as argmax
        logits = logits.cpu()
        best = logits[0].clone()
        labels = torch.zeros(logits.shape[1:], dtype=torch.uint8)
        for channel in range(1, logits.shape[0]):
            better = logits[channel] > best
            labels[better] = channel
            torch.maximum(best, logits[channel], out=best)
        return labels.numpy()
    raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")


def logits_to_probabilities(logits: torch.Tensor, output_mode: str) -> torch.Tensor:
    """Network output (K, ...) -> probabilities (K, ...), float32: one sigmoid per region (``regions``), or the
    softmax over the channels (``labels``). ``logits_to_labels`` of the logits is their decoding (p > 0.5 per
    region; the most probable label).

    >>> logits_to_probabilities(torch.tensor([[[[0.0]]], [[[0.0]]]]), "labels").flatten().tolist()
    [0.5, 0.5]
    """
    logits = torch.as_tensor(logits).float()
    if output_mode == "regions":
        return torch.sigmoid(logits)
    if output_mode == "labels":
        return torch.softmax(logits, dim=0)
    raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")


def probabilities_to_logits(probabilities: torch.Tensor, output_mode: str, eps: float = 1e-7) -> torch.Tensor:
    """The inverse of ``logits_to_probabilities`` up to what decoding cannot see: log-odds per region, or the log
    of each label's probability (softmax's logits up to a per-voxel constant). Probabilities are clamped to
    [eps, 1 - eps] first.

    >>> [round(v, 3) for v in probabilities_to_logits(torch.tensor([0.5, 0.9]), "regions").tolist()]
    [0.0, 2.197]
    """
    p = torch.as_tensor(probabilities).float().clamp(eps, 1.0 - eps)
    if output_mode == "regions":
        return torch.log(p) - torch.log1p(-p)
    if output_mode == "labels":
        return torch.log(p)
    raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")


class LogitsToLabels(Transform):
    """Logits (K, X, Y, Z) -> label map (1, X, Y, Z) by ``logits_to_labels``, on the input's type and device.

    Args:
        output_mode: ``regions`` (sigmoid per nested BraTS region) or ``labels`` (softmax over labels).

    Example:
        >>> LogitsToLabels("labels")(torch.tensor([[[[0.1, 2.0]]], [[[0.5, -1.0]]]])).tolist()
        [[[[1, 0]]]]
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, output_mode: str = "regions") -> None:
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.output_mode = output_mode

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Decode ``img`` of shape (K, X, Y, Z); the result (1, X, Y, Z) is uint8 where ``img`` was."""
        logits = img.detach() if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
        labels = logits_to_labels(logits, self.output_mode)[None]
        return convert_to_dst_type(labels, dst=img, dtype=torch.uint8 if isinstance(img, torch.Tensor) else np.uint8)[0]


class LogitsToLabelsd(MapTransform):
    """Dictionary form of ``LogitsToLabels``."""

    backend = LogitsToLabels.backend

    def __init__(self, keys: KeysCollection, output_mode: str = "regions", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LogitsToLabels(output_mode)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


def background_logits(
    output_mode: str, channels: int, margin: float = 10.0, class_channels: int = 0
) -> float | list[float]:
    """Constant logits that decode to background: every region off (regions), or label 0 first (labels).

    The sliding-window inferer gives them to the voxels outside the foreground's box (air around the head), as
    nnU-Net does; a float for every channel, or one per channel. A multitask network's ``class_channels`` after
    the segmentation channels get 0 there (no evidence; the case's class is pooled over the tumour anyway).

    >>> background_logits("regions", 3), background_logits("labels", 3), background_logits("regions", 3, 10, 2)
    (-10.0, [10.0, -10.0, -10.0], [-10.0, -10.0, -10.0, 0.0, 0.0])
    >>> int(logits_to_labels(torch.tensor(background_logits("labels", 3))[:, None, None, None], "labels").max())
    0
    """
    if output_mode == "regions":
        return -float(margin) if not class_channels else [-float(margin)] * int(channels) + [0.0] * class_channels
    if output_mode == "labels":
        return [float(margin)] + [-float(margin)] * (int(channels) - 1) + [0.0] * int(class_channels)
    raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
