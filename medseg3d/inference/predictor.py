"""One scan in, one label map out: a bundle's network with its preprocessing, sliding window, inverse
geometry and postprocessing.

The preprocessing is the bundle's own MONAI ``Compose`` of dictionary transforms on ``{"image": MetaTensor}``
(the functions training used: ``NormalizeNonZerod`` for BraTS, orientation and spacing where a bundle sets
them). After the sliding window, ``monai.transforms.Invertd`` undoes every invertible spatial step on the
logits (orientation, spacing, padding, cropping), so the label map lies on the scan's own voxel grid; the
batch runner then writes it with the scan's own header (``medseg3d.data.scans.write_label``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg3d.errors import InputError

logger = logging.getLogger(__name__)

OUTPUT_MODES = ("regions", "labels")


def load_network_weights(network: torch.nn.Module, checkpoint: str | os.PathLike, key: str = "network") -> None:
    """Load ``network``'s weights from a training checkpoint or a bare state dict (``weights_only=True``).

    Raises:
        InputError: naming the file: missing, damaged, of neither layout, or not fitting ``network``.
    """
    from medseg3d.engine.handlers.load_weights import load_into

    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(path, "checkpoint not found (pass --checkpoint PATH: a run's checkpoints/best.pt)")
    hint = "infer with the network_def and output_mode overrides the model was trained with"
    load_into(network, path, key, hint=hint)
    logger.info("loaded network weights from %s", path)


def logits_to_labels(logits: torch.Tensor, output_mode: str) -> np.ndarray:
    """Network output of one case (shape (K, X, Y, Z)) -> prepared labels (shape (X, Y, Z), uint8).

    ``regions``: one sigmoid per nested BraTS region (WT, TC, ET), each above 0.5, decoded to labels
    (WT outside TC is ED, TC outside ET is NCR). ``labels``: argmax over the channels (0 is background).

    >>> logits_to_labels(torch.tensor([[[[2.0]]], [[[-1.0]]], [[[-3.0]]]]), "regions").tolist()
    [[[2]]]
    >>> logits_to_labels(torch.tensor([[[[0.1, 2.0]]], [[[0.5, -1.0]]]]), "labels").tolist()
    [[[1, 0]]]
    """
    from medseg3d.engine.handlers.eval_report import regions_to_labels

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


class Predictor:
    """A bundle's trained network applied to whole scans, on the scan's own voxel grid.

    Args:
        network: the bundle's network (``network_def``), weights loaded from ``checkpoint`` when given.
        inferer: a MONAI inferer (``FastSlidingWindowInferer`` or ``SlidingWindowInferer``): ``inferer(x, net)``.
        preprocessing: MONAI ``Compose`` of dictionary transforms on ``{"image": MetaTensor (C, X, Y, Z)}``;
            its invertible spatial steps are undone on the logits.
        output_mode: ``regions`` (sigmoid per nested region) or ``labels`` (softmax over labels).
        postprocess: ``medseg3d.inference.postprocess.postprocess_labels`` rules on the prepared labels
            (label value or ``"all"`` -> ``{keep_largest: k, min_size: n, fill_holes: true}``); empty: none.
        device: where the network runs.
        checkpoint: weights to load (a training checkpoint or a bare state dict); None keeps ``network``'s.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        inferer: Callable[..., Any],
        preprocessing: Callable[[dict], dict],
        output_mode: str = "regions",
        postprocess: Mapping[Any, Mapping[str, Any]] | None = None,
        device: torch.device | str = "cpu",
        checkpoint: str | os.PathLike | None = None,
    ) -> None:
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        if checkpoint is not None:
            load_network_weights(self.network, checkpoint)
        self.inferer = inferer
        self.preprocessing = preprocessing
        self.output_mode = output_mode
        from medseg3d.inference.postprocess import parse_rules

        # rules are checked now, so a typo fails before the first case runs
        self.postprocess = parse_rules(postprocess)

    def logits(self, array: np.ndarray, affine: np.ndarray) -> torch.Tensor:
        """Logits (shape (K, X, Y, Z), float32, CPU) on the grid of ``array`` (shape (C, X, Y, Z)), whose
        voxel -> RAS mm matrix is ``affine`` (4, 4)."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        image = MetaTensor(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), affine=affine)
        data = self.preprocessing({"image": image})
        inputs = data["image"].unsqueeze(0).to(self.device)
        with torch.no_grad():
            out = self.inferer(inputs, self.network)
        pred = out[0].float().cpu()
        if not data["image"].applied_operations:  # no spatial step to undo (BraTS: intensity only)
            return pred.as_tensor() if isinstance(pred, MetaTensor) else pred
        if not isinstance(pred, MetaTensor):
            pred = MetaTensor(pred)
        pred.copy_meta_from(data["image"], copy_attr=True)
        data["pred"] = pred
        data = Invertd(keys="pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False)(data)
        return data["pred"].as_tensor()

    def __call__(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Prepared labels (shape (X, Y, Z), uint8) for the scan ``array`` (C, X, Y, Z) with ``affine``."""
        labels = logits_to_labels(self.logits(array, affine), self.output_mode)
        if labels.shape != array.shape[1:]:  # Invertd restores the grid; a bundle transform that is not
            raise RuntimeError(  # invertible would land here instead of silently misplacing the labels
                f"the label map has shape {labels.shape}, the scan {array.shape[1:]}: a preprocessing step of "
                "the bundle is not invertible"
            )
        if self.postprocess:
            from medseg3d.inference.postprocess import postprocess_labels

            labels = postprocess_labels(labels, self.postprocess)
        return labels
