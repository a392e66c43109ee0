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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from medseg3d.core.checkpoint_format import load_into
from medseg3d.core.errors import InputError
from medseg3d.ops.components import parse_rules, postprocess_labels
from medseg3d.transforms.classes import ClassPool
from medseg3d.transforms.ct import sample_in_slabs
from medseg3d.transforms.decode import OUTPUT_MODES, logits_to_labels, logits_to_probabilities, probabilities_to_logits

logger = logging.getLogger(__name__)


def resample_labels_in_slabs(
    logits: torch.Tensor,
    source_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    output_mode: str,
    slab: int = 32,
    outside: float = 0.0,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Labels on a target grid from logits on another grid, ``slab`` target slices (last axis) at a time.

    Each target voxel centre is mapped into the logits' voxel space (``inv(source_affine) @ target_affine``,
    both voxel -> world matrices), the logits are interpolated trilinearly there, and the slab's labels are
    decoded at once: at no point is there a float copy of the whole target volume per channel, only one
    slab's (Invertd would resample all K channels over the whole scan, and build its sampling grid for it).
    Voxels that map outside the logits get ``outside`` in every channel (labels mode: background).
    ``probabilities`` (K, *target_shape), when given, is filled with the interpolated logits' probabilities
    (``logits_to_probabilities``), slab by slab: the labels are exactly their decoding.

    >>> logits = torch.zeros(2, 4, 4, 4); logits[1, 1:3, 1:3, 1:3] = 5.0
    >>> up = resample_labels_in_slabs(logits, np.diag([2.0, 2, 2, 1]), np.eye(4), (8, 8, 8), "labels", slab=3)
    >>> up.shape, int(up.sum()), up[3, 3, 3], up[0, 0, 0]
    ((8, 8, 8), 125, np.uint8(1), np.uint8(0))
    """

    out = np.zeros(target_shape, np.uint8)
    shifted = logits.float() - outside  # sampled with zeros outside: those voxels get ``outside`` back
    for start, stop, part in sample_in_slabs(shifted, source_affine, target_affine, target_shape, slab):
        out[:, :, start:stop] = logits_to_labels(part + outside, output_mode)
        if probabilities is not None:
            probabilities[..., start:stop] = logits_to_probabilities(part + outside, output_mode).numpy()
    return out


def chunk_slices(
    shape: tuple[int, ...], affine: np.ndarray, chunk_voxels: int | None, overlap_mm: float
) -> list[tuple[int, int, int, int]]:
    """How a scan of ``shape`` (X, Y, Z) is cut into overlapping chunks of whole slices along Z (its last index
    axis): ``(start, stop, keep_start, keep_stop)`` per chunk, the chunk being slices ``start:stop`` and the
    labels kept from it ``keep_start:keep_stop`` (the kept ranges tile 0..Z, seams in the middle of each
    overlap). One chunk, the whole scan, when it has at most ``chunk_voxels`` voxels (or that is None).

    A chunk has ``chunk_voxels // (X * Y)`` slices (at least 2); neighbours overlap by ``overlap_mm`` along Z
    (the slice spacing read from ``affine``) or a little more, at most half a chunk: the fewest chunks that do,
    spread evenly from the first slice to the last.

    >>> chunk_slices((512, 512, 900), np.diag([0.8, 0.8, 1.0, 1.0]), 512 * 512 * 400, 100.0)
    [(0, 400, 0, 325), (250, 650, 325, 575), (500, 900, 575, 900)]
    >>> chunk_slices((512, 512, 300), np.eye(4), 512 * 512 * 400, 100.0)
    [(0, 300, 0, 300)]
    """
    depth = int(shape[-1])
    if chunk_voxels is None or int(np.prod(shape)) <= chunk_voxels:
        return [(0, depth, 0, depth)]
    size = max(2, chunk_voxels // int(np.prod(shape[:-1])))
    if size >= depth:
        return [(0, depth, 0, depth)]
    spacing = float(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, 2])) or 1.0
    overlap = min(int(np.ceil(overlap_mm / spacing)), size // 2)
    count = int(np.ceil((depth - overlap) / (size - overlap)))  # fewest chunks whose overlaps are >= overlap
    starts = [round(k * (depth - size) / (count - 1)) for k in range(count)]  # spread evenly, last ends at depth
    chunks = []
    for k, start in enumerate(starts):
        stop = start + size
        keep_start = 0 if k == 0 else (start + starts[k - 1] + size) // 2  # middle of the overlap with the last
        keep_stop = depth if k == len(starts) - 1 else (starts[k + 1] + stop) // 2
        chunks.append((start, stop, keep_start, keep_stop))
    return chunks


def load_network_weights(network: torch.nn.Module, checkpoint: str | os.PathLike, key: str = "network") -> None:
    """Load ``network``'s weights from a training checkpoint or a bare state dict (``weights_only=True``).

    Raises:
        InputError: naming the file: missing, damaged, of neither layout, or not fitting ``network``.
    """

    path = Path(checkpoint)
    if not path.is_file():
        raise InputError(path, "checkpoint not found (pass --checkpoint PATH: a run's checkpoints/best.pt)")
    hint = "infer with the network_def and output_mode overrides the model was trained with"
    load_into(network, path, key, hint=hint)
    logger.info("loaded network weights from %s", path)


def checkpoint_list(checkpoint: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[Path]:
    """The checkpoint files ``checkpoint`` names: one file, several, or a cross-validation run folder (``cv.json``
    beside ``fold_<k>/``: each fold's ``checkpoints/best.pt``, an ensemble of the folds, as nnU-Net predicts).

    Raises:
        InputError: a cross-validation folder with a fold lacking ``checkpoints/best.pt``, or a folder that is
            neither a cross-validation run nor a run (``checkpoints/best.pt``).
    """
    if checkpoint is None:
        return []
    items = [checkpoint] if isinstance(checkpoint, (str, os.PathLike)) else list(checkpoint)
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if not path.is_dir():
            out.append(path)
            continue
        folds = sorted(path.glob("fold_*"), key=lambda p: (len(p.name), p.name))
        if (path / "cv.json").is_file() and folds:
            missing = [f for f in folds if not (f / "checkpoints" / "best.pt").is_file()]
            if missing:
                raise InputError(missing[0], "a fold of this cross-validation run has no checkpoints/best.pt yet")
            out += [f / "checkpoints" / "best.pt" for f in folds]
        elif (path / "checkpoints" / "best.pt").is_file():
            out.append(path / "checkpoints" / "best.pt")
        else:
            raise InputError(
                path, "expected a checkpoint file, a run folder or a cross-validation run folder (cv.json)"
            )
    return out


def ensemble_logits(outputs: Sequence[torch.Tensor], output_mode: str, class_channels: int = 0) -> torch.Tensor:
    """One output from an ensemble's outputs (each (K, ...), same grid): the mean of the members' probabilities,
    as logits again (``probabilities_to_logits``), so the decoding, resampling and pooling downstream are the
    single model's. A multitask network's last ``class_channels`` (class logits) are averaged as logits.

    >>> a, b = torch.tensor([[[[4.0]]], [[[0.0]]]]), torch.tensor([[[[0.0]]], [[[1.0]]]])
    >>> logits_to_labels(ensemble_logits([a, b], "labels"), "labels").tolist()  # p: 0.51 vs 0.49 -> label 0
    [[[0]]]
    """
    seg = [o[: len(o) - class_channels] for o in outputs]
    mean = torch.stack([logits_to_probabilities(o, output_mode) for o in seg]).mean(0)
    merged = probabilities_to_logits(mean, output_mode)
    if class_channels:
        classes = torch.stack([o[len(o) - class_channels :] for o in outputs]).mean(0)
        merged = torch.cat([merged, classes])
    return merged


class Predictor:
    """A bundle's trained network applied to whole scans, on the scan's own voxel grid.

    Args:
        network: the bundle's network (``network_def``), weights loaded from ``checkpoint`` when given.
        inferer: a MONAI inferer (``FastSlidingWindowInferer`` or ``SlidingWindowInferer``): ``inferer(x, net)``.
        preprocessing: MONAI ``Compose`` of dictionary transforms on ``{"image": MetaTensor (C, X, Y, Z)}``;
            its invertible spatial steps are undone on the logits.
        output_mode: ``regions`` (sigmoid per nested region) or ``labels`` (softmax over labels).
        postprocess: ``medseg3d.ops.components.postprocess_labels`` rules on the prepared labels
            (label value or ``"all"`` -> ``{keep_largest: k, min_size: n, fill_holes: true}``); empty: none.
        device: where the network runs.
        checkpoint: weights to load (a training checkpoint or a bare state dict), or several: an ensemble, whose
            members each run the sliding window (and TTA) and whose probabilities are averaged before the labels
            are decoded (``ensemble_logits``); None keeps ``network``'s.
        inverse_slab: when the preprocessing moved the grid (orientation, spacing, cropping), put the labels
            back on the scan's grid ``inverse_slab`` slices at a time (``resample_labels_in_slabs``: memory
            bounded by a slab, for large CTs) instead of ``Invertd`` on the whole logits; None: ``Invertd``.
        chunk_voxels: a scan with more voxels per channel than this is segmented in chunks of whole slices
            along its last index axis (``chunk_slices``), each preprocessed, tiled and put back on its own part
            of the scan's grid, so memory follows the chunk, not the scan (a 512x512x900 CT); None: never.
        chunk_overlap_mm: how far neighbouring chunks overlap along that axis, in mm; each keeps the labels
            up to the middle of its overlaps, so every kept voxel had at least half of this as context.
        class_names: a multitask network's classes (its output's last ``len(class_names)`` channels are class
            logits, ``medseg3d.networks.classifier``); empty: segmentation only. After each scan,
            ``last_class`` holds the case's class: the logits pooled over the tumour decoded on the network's
            grid, before postprocessing, as validation pools them (``medseg3d.transforms.classes``), their
            softmax, the most probable class and what they were pooled over.
        keep_probabilities: after each scan, ``last_probabilities`` holds the probabilities (K, X, Y, Z) on the
            scan's grid, float16: softmax over labels or one sigmoid per region, of the logits the labels were
            decoded from (before postprocessing), so the labels are their decoding.

    Chunks see less context than the whole scan at their seams, and their windows and resampling grids sit
    elsewhere, so a voxel where the network hesitates can come out otherwise than in one piece (tested:
    identical for a network that looks at each voxel alone on an unmoved grid). Postprocessing runs once,
    on the whole label map.
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
        inverse_slab: int | None = None,
        chunk_voxels: int | None = None,
        chunk_overlap_mm: float = 100.0,
        class_names: Sequence[str] = (),
        keep_probabilities: bool = False,
    ) -> None:
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.members: list[dict[str, torch.Tensor]] = []  # an ensemble's weights, one state dict per member
        self.member_networks: list[torch.nn.Module] = []  # or an ensemble of separate networks (use_networks)
        checkpoints = checkpoint_list(checkpoint)
        for path in checkpoints:
            load_network_weights(self.network, path)
            if len(checkpoints) > 1:
                self.members.append({k: v.detach().clone() for k, v in self.network.state_dict().items()})
        self.keep_probabilities = bool(keep_probabilities)
        self.last_probabilities: np.ndarray | None = None
        self.inferer = inferer
        self.preprocessing = preprocessing
        self.output_mode = output_mode
        if inverse_slab is not None and (isinstance(inverse_slab, bool) or int(inverse_slab) < 1):
            raise ValueError(f"inverse_slab must be None or an int >= 1, got {inverse_slab!r}")
        self.inverse_slab = None if inverse_slab is None else int(inverse_slab)
        if chunk_voxels is not None and (isinstance(chunk_voxels, bool) or int(chunk_voxels) < 1):
            raise ValueError(f"chunk_voxels must be None or an int >= 1, got {chunk_voxels!r}")
        if not (isinstance(chunk_overlap_mm, (int, float)) and 0 <= chunk_overlap_mm < float("inf")):
            raise ValueError(f"chunk_overlap_mm must be a number >= 0, got {chunk_overlap_mm!r}")
        self.chunk_voxels = None if chunk_voxels is None else int(chunk_voxels)
        self.chunk_overlap_mm = float(chunk_overlap_mm)

        # rules are checked now, so a typo fails before the first case runs
        self.postprocess = parse_rules(postprocess)
        self.class_names = [str(name) for name in class_names or ()]
        self._pool: ClassPool | None = None
        self.last_class: dict[str, Any] | None = None

    def use_networks(self, networks: Sequence[torch.nn.Module]) -> None:
        """Run ``networks`` as an ensemble instead of ``network`` (exported members, each its own file): each
        runs the sliding window, and their probabilities are averaged before decoding (``ensemble_logits``)."""
        self.member_networks = [net.to(self.device).eval() for net in networks]
        self.members = []

    def logits(self, array: np.ndarray, affine: np.ndarray) -> torch.Tensor:
        """Logits (shape (K, X, Y, Z), float32, CPU) on the grid of ``array`` (shape (C, X, Y, Z)), whose
        voxel -> RAS mm matrix is ``affine`` (4, 4)."""

        pred, data = self._forward(array, affine)
        if not data["image"].applied_operations:  # no spatial step to undo (BraTS: intensity only)
            return pred.as_tensor() if isinstance(pred, MetaTensor) else pred
        if not isinstance(pred, MetaTensor):
            pred = MetaTensor(pred)
        pred.copy_meta_from(data["image"], copy_attr=True)
        data["pred"] = pred
        data = Invertd(keys="pred", transform=self.preprocessing, orig_keys="image", nearest_interp=False)(data)
        return data["pred"].as_tensor()

    def _forward(self, array: np.ndarray, affine: np.ndarray) -> tuple[torch.Tensor, dict]:
        """Logits on the preprocessed grid (K, ...) and the preprocessed data (its image holds that grid)."""

        # float32 in the array's own memory order: a C-order copy of a Fortran-ordered scan (as NIfTI readers give)
        # transposes every voxel (3.4 s of a 512x512x300 CT); torch takes the strides as they are
        image = MetaTensor(torch.from_numpy(np.asarray(array, dtype=np.float32, order="K")), affine=affine)
        data = self.preprocessing({"image": image})
        inputs = data["image"].unsqueeze(0).to(self.device)
        with torch.no_grad():
            if self.member_networks:
                outputs = [self.inferer(inputs, net)[0].float().cpu() for net in self.member_networks]
                out = ensemble_logits(outputs, self.output_mode, len(self.class_names))[None]
            elif not self.members:
                out = self.inferer(inputs, self.network)
            else:
                outputs = []
                for state in self.members:
                    self.network.load_state_dict(state)
                    outputs.append(self.inferer(inputs, self.network)[0].float().cpu())
                out = ensemble_logits(outputs, self.output_mode, len(self.class_names))[None]
        pred = out[0].float().cpu()
        if self.class_names:  # the class channels are pooled here, on the network's grid, and dropped
            k = len(self.class_names)
            pred, class_map = pred[:-k], pred[-k:]
            labels = logits_to_labels(pred.as_tensor() if isinstance(pred, MetaTensor) else pred, self.output_mode)
            foreground = (torch.as_tensor(data["image"]) != 0).any(dim=0)
            if self._pool is None:
                self._pool = ClassPool(k)
            self._pool.add(torch.as_tensor(class_map), labels, foreground)
        return pred, data

    def __call__(self, array: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Prepared labels (shape (X, Y, Z), uint8) for the scan ``array`` (C, X, Y, Z) with ``affine``."""
        self._pool, self.last_class, self.last_probabilities = None, None, None
        chunks = chunk_slices(array.shape[1:], affine, self.chunk_voxels, self.chunk_overlap_mm)
        if len(chunks) == 1:
            labels, self.last_probabilities = self._labels(array, affine)
        else:
            labels = np.zeros(array.shape[1:], np.uint8)
            for start, stop, keep_start, keep_stop in chunks:
                shifted = np.array(affine, dtype=np.float64)
                shifted[:3, 3] += shifted[:3, 2] * start  # voxel (i, j, start) of the scan is (i, j, 0) of the chunk
                part, probabilities = self._labels(array[..., start:stop], shifted)
                keep = slice(keep_start - start, keep_stop - start)
                labels[..., keep_start:keep_stop] = part[..., keep]
                if probabilities is not None:
                    if self.last_probabilities is None:
                        self.last_probabilities = np.zeros((len(probabilities), *array.shape[1:]), np.float16)
                    self.last_probabilities[..., keep_start:keep_stop] = probabilities[..., keep]
                del part, probabilities
            logger.info("segmented in %d chunks along the last axis: %s", len(chunks), chunks)
        if self.postprocess:
            labels = postprocess_labels(labels, self.postprocess)
        if self._pool is not None:
            logits, over = self._pool.result()
            probabilities = torch.softmax(logits, dim=0).tolist()
            best = int(np.argmax(probabilities))
            self.last_class = {"class": self.class_names[best], "probabilities": dict(zip(self.class_names,
                               probabilities, strict=True)), "pooled_over": over}  # fmt: skip
        return labels

    def _labels(self, array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (X, Y, Z) of ``array`` (C, X, Y, Z) on its own grid, before postprocessing, and their
        probabilities (K, X, Y, Z) float16 when ``keep_probabilities`` (else None)."""
        probabilities = None
        if self.inverse_slab is None:
            logits = self.logits(array, affine)
            labels = logits_to_labels(logits, self.output_mode)
            if self.keep_probabilities:
                probabilities = logits_to_probabilities(logits, self.output_mode).numpy().astype(np.float16)
        else:
            pred, data = self._forward(array, affine)
            moved = bool(data["image"].applied_operations)
            grid = np.asarray(data["image"].affine, dtype=np.float64)
            logits = pred.as_tensor() if hasattr(pred, "as_tensor") else pred
            del data, pred  # only the logits on the preprocessed grid stay
            if moved:
                shape = tuple(array.shape[1:])
                if self.keep_probabilities:
                    probabilities = np.zeros((len(logits), *shape), np.float16)
                labels = resample_labels_in_slabs(
                    logits, grid, affine, shape, self.output_mode, self.inverse_slab, probabilities=probabilities
                )
            else:
                labels = logits_to_labels(logits, self.output_mode)
                if self.keep_probabilities:
                    probabilities = logits_to_probabilities(logits, self.output_mode).numpy().astype(np.float16)
        if labels.shape != array.shape[1:]:  # Invertd restores the grid; a bundle transform that is not
            raise RuntimeError(  # invertible would land here instead of silently misplacing the labels
                f"the label map has shape {labels.shape}, the scan {array.shape[1:]}: a preprocessing step of "
                "the bundle is not invertible"
            )
        return labels, probabilities
