"""Validation wiring: the postprocessing ``medseg3d infer`` ships, encoded for the metrics, Dice per region or
label, and the cheap per-epoch check on a fixed set of validation patches.

Validation scores what inference writes: the bundles validate with the inferer ``medseg3d infer`` uses (declared
once, in ``common.yaml``) and with ``postprocessing`` below, which decodes the logits exactly as the predictor
does (``medseg3d.transforms.decode.logits_to_labels``) and applies the same connected-component rules
(``postprocess`` in ``common.yaml``) before the label map is encoded as regions or one-hot for Dice.

That full validation costs a sliding window over every validation case; between two of them the run watches
a pseudo-Dice, as nnU-Net does: ``FixedPatches`` cuts a fixed, seeded set of patches from the validation cases
once, the network segments them whole (no sliding window, no postprocessing) every epoch, and ``GlobalDice``
pools their voxels into one Dice per region (``patch_dice_metrics``). The same patches every epoch make the
curve comparable from one epoch to the next.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.metrics import Metric
from monai.data.utils import set_rnd
from monai.handlers import MeanDice, from_engine
from monai.transforms import AsDiscreted, Compose, CopyItemsd, DeleteItemsd
from torch.utils.data import Dataset

from medseg3d.core.constants import CLASS_KEY, PREPARED_LABELS, REGIONS
from medseg3d.metrics import classification_scores
from medseg3d.transforms.classes import CLASS_LOGITS, CLASS_MAP, PoolClassLogitsd, SplitClassMapd
from medseg3d.transforms.decode import LogitsToLabelsd
from medseg3d.transforms.dictionary import ConnectedComponentsd, LabelsToRegionsd

CLASS_TARGET = "class_target"  # a case's class index in the evaluator's output (copied from the batch)


def output_names(output_mode: str, label_names: Sequence[str] | None = None) -> list[str]:
    """Channel names scored: the BraTS regions, or the foreground labels (``label_names`` in value order
    1, 2, ...; default the prepared BraTS labels NCR, ED, ET).

    >>> output_names("labels"), output_names("labels", ["aorta"])
    (['NCR', 'ED', 'ET'], ['aorta'])
    """
    if output_mode == "regions":
        return list(REGIONS)
    if output_mode == "labels":
        if label_names is not None:
            names = [str(name) for name in label_names]
            if not names or len(set(names)) != len(names):
                raise ValueError(f"label_names must be distinct foreground label names, got {label_names!r}")
            return names
        return [name for name, value in PREPARED_LABELS.items() if value]
    raise ValueError(f"output_mode must be 'regions' or 'labels', got {output_mode!r}")


def postprocessing(
    output_mode: str,
    label_names: Sequence[str] | None = None,
    rules: Mapping[Any, Mapping[str, Any]] | None = None,
    num_classes: int = 0,
    pool_classes: bool = True,
) -> Compose:
    """Logits to the label map ``medseg3d infer`` writes, encoded as binary channels for Dice.

    ``pred`` (K, X, Y, Z) is decoded as the predictor decodes it (regions: each logit above 0, nested regions to
    labels; labels: argmax), cleaned by the connected-component ``rules`` the predictor applies (label value or
    ``"all"`` -> ``{keep_largest: k, min_size: n, fill_holes: true}``, ``medseg3d.ops.components``; None or
    empty: none), and encoded again: regions mode as WT, TC, ET channels (3, X, Y, Z), labels mode as a
    one-hot over background and labels (K, X, Y, Z), the ``label`` entry one-hot too.

    Args:
        output_mode: ``regions`` or ``labels``.
        label_names: the foreground labels in value order (labels mode; default the prepared BraTS labels).
        rules: the bundle's ``postprocess`` rules, checked here, so a typo fails when the workflow is built.
        num_classes: K > 0: a multitask network's output, whose last K channels are class logits. They are split
            off before decoding and pooled over the decoded tumour (before the rules) into ``class_logits`` (K,)
            (``medseg3d.transforms.classes``, as ``medseg3d infer`` pools them); the case's class index is copied
            from the batch's ``class`` into ``class_target``.
        pool_classes: False: the class channels are split off and dropped (the patch check scores segmentation).

    Example:
        >>> import torch
        >>> logits = -torch.ones(3, 6, 5, 4)
        >>> logits[:, :2] = 1.0  # a slab of enhancing tumour (WT, TC and ET on)
        >>> logits[:, 5, 4, 3] = 1.0  # and a speck
        >>> out = postprocessing("regions", rules={"all": {"keep_largest": 1}})({"pred": logits})
        >>> tuple(out["pred"].shape), [int(c.sum()) for c in out["pred"]]
        ((3, 6, 5, 4), [40, 40, 40])
    """
    names = output_names(output_mode, label_names)
    seg_channels = len(names) + (output_mode == "labels")
    transforms: list = [SplitClassMapd(keys="pred", seg_channels=seg_channels)] if num_classes else []
    if num_classes and not pool_classes:
        transforms.append(DeleteItemsd(keys=CLASS_MAP))
    transforms.append(LogitsToLabelsd(keys="pred", output_mode=output_mode))
    if num_classes and pool_classes:  # over the decoded labels, as the predictor pools them (before the rules)
        transforms += [PoolClassLogitsd(keys="pred"), CopyItemsd(keys=CLASS_KEY, names=CLASS_TARGET)]
    if rules:
        transforms.append(ConnectedComponentsd(keys="pred", rules=rules))
    if output_mode == "regions":
        transforms.append(LabelsToRegionsd(keys="pred"))
    else:
        classes = len(names) + 1
        transforms += [AsDiscreted(keys="pred", to_onehot=classes), AsDiscreted(keys="label", to_onehot=classes)]
    return Compose(transforms)


def _channel(index: int):
    def select(output: Sequence[dict]) -> tuple[list, list]:
        preds, labels = from_engine(["pred", "label"])(output)
        return [p[index : index + 1] for p in preds], [y[index : index + 1] for y in labels]

    return select


def dice_metrics(output_mode: str, label_names: Sequence[str] | None = None) -> dict[str, MeanDice]:
    """``val_mean_dice`` (mean over scored channels) and ``val_dice_<name>`` per region or label.

    Labels mode scores channels 1.. of the one-hot (background excluded).
    """
    names = output_names(output_mode, label_names)
    offset = 0 if output_mode == "regions" else 1
    metrics = {
        "val_mean_dice": MeanDice(include_background=offset == 0, output_transform=from_engine(["pred", "label"]))
    }
    for i, name in enumerate(names):
        metrics[f"val_dice_{name}"] = MeanDice(include_background=True, output_transform=_channel(i + offset))
    return metrics


class GlobalDice(Metric):
    """Dice of binary channels over all the samples of a run pooled (true and false positives and negatives
    summed over every voxel of every sample, then one Dice per channel): nnU-Net's pseudo-Dice. Unlike a mean of
    per-sample Dice, a patch without the region counts by its false positives only, never as a 0 or a 1.

    ``compute`` returns the mean over ``channels`` of the channels whose Dice is defined (some voxel of the
    channel predicted or true), NaN when none is.

    Args:
        channels: the channel indices averaged (None: all).
        output_transform: the engine's output to ``(preds, labels)``, lists of (C, ...) binary tensors (default:
            the ``pred`` and ``label`` entries).

    >>> metric = GlobalDice(channels=[0])
    >>> metric.update(([torch.tensor([[1, 1, 0, 0]])], [torch.tensor([[1, 0, 0, 0]])]))
    >>> metric.update(([torch.tensor([[0, 0, 0, 0]])], [torch.tensor([[0, 0, 0, 1]])]))
    >>> round(metric.compute(), 4)  # TP 1, FP 1, FN 1
    0.5
    """

    def __init__(
        self,
        channels: Sequence[int] | None = None,
        output_transform: Callable | None = None,
    ) -> None:
        self.channels = None if channels is None else [int(c) for c in channels]
        super().__init__(output_transform=output_transform or from_engine(["pred", "label"]))

    def reset(self) -> None:
        self._counts: torch.Tensor | None = None  # (C, 3): TP, FP, FN per channel

    def update(self, output: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]) -> None:
        preds, labels = output
        for pred, label in zip(preds, labels, strict=True):
            p, y = torch.as_tensor(pred).bool(), torch.as_tensor(label).bool()
            if p.shape != y.shape:
                raise ValueError(f"prediction {tuple(p.shape)} and label {tuple(y.shape)} differ in shape")
            dims = tuple(range(1, p.ndim))
            counts = torch.stack([(p & y).sum(dims), (p & ~y).sum(dims), (~p & y).sum(dims)], dim=1).double().cpu()
            self._counts = counts if self._counts is None else self._counts + counts

    def compute(self) -> float:
        if self._counts is None:
            return float("nan")
        counts = self._counts if self.channels is None else self._counts[self.channels]
        tp, fp, fn = counts.unbind(1)
        defined = (2 * tp + fp + fn) > 0
        if not bool(defined.any()):
            return float("nan")
        return float((2 * tp[defined] / (2 * tp + fp + fn)[defined]).mean())


class CaseClassification(Metric):
    """Case-level classification over a validation pass: each case's pooled ``class_logits`` (softmax) against
    its ``class_target`` (-1: unknown, left out), scored by ``medseg3d.metrics.classification_scores`` at the end.

    ``compute`` returns a dict, which ignite also spreads into the engine's metrics: ``<prefix>accuracy``,
    ``<prefix>balanced_accuracy``, ``<prefix>auc`` (NaN where not computable, e.g. one class only) and
    ``<prefix>confusion_<true>_<predicted>`` counts, all scalars, so ``metrics.csv`` has a column for each.
    Under DDP the ranks' cases are gathered first, so every rank scores all of them.

    >>> metric = CaseClassification(["LGG", "HGG"])
    >>> metric.update(([torch.tensor([2.0, -1.0]), torch.tensor([0.0, 1.0])], [torch.tensor(0), torch.tensor(1)]))
    >>> scores = metric.compute()
    >>> scores["val_class_accuracy"], scores["val_class_auc"], scores["val_class_confusion_HGG_HGG"]
    (1.0, 1.0, 1)
    """

    def __init__(self, names: Sequence[str], prefix: str = "val_class_", output_transform: Callable | None = None):
        self.names, self.prefix = [str(n) for n in names], prefix
        super().__init__(output_transform=output_transform or from_engine([CLASS_LOGITS, CLASS_TARGET]))

    def reset(self) -> None:
        self._probabilities: list[np.ndarray] = []
        self._targets: list[int] = []

    def update(self, output: tuple[Sequence[torch.Tensor], Sequence[Any]]) -> None:
        for logits, target in zip(*output, strict=True):
            self._probabilities.append(torch.softmax(torch.as_tensor(logits).float().reshape(-1), 0).cpu().numpy())
            self._targets.append(int(torch.as_tensor(target).reshape(-1)[0]))

    def compute(self) -> dict[str, float]:
        k = len(self.names)
        found = list(zip(self._probabilities, self._targets, strict=True))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # under DDP each rank scored its share of the cases: every rank scores them all, as Dice does
            parts: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(parts, found)
            found = [item for part in parts for item in part]
        probabilities = np.stack([p for p, _ in found]) if found else np.zeros((0, k))
        scores = classification_scores(probabilities, np.asarray([t for _, t in found], dtype=int), self.names)
        nan = float("nan")
        out = {f"{self.prefix}{key}": nan if scores[key] is None else float(scores[key])
               for key in ("accuracy", "balanced_accuracy", "auc")}  # fmt: skip
        for i, true in enumerate(self.names):
            for j, predicted in enumerate(self.names):
                out[f"{self.prefix}confusion_{true}_{predicted}"] = int(scores["confusion"][i][j])
        return out


def validation_metrics(
    output_mode: str, label_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None
) -> dict[str, Metric]:
    """The full validation's metrics: ``dice_metrics`` and, with ``class_names`` (a multitask network), the
    case classification's ``val_class_*`` (``CaseClassification``).

    >>> sorted(validation_metrics("regions", class_names=["LGG", "HGG"]))
    ['val_class', 'val_dice_ET', 'val_dice_TC', 'val_dice_WT', 'val_mean_dice']
    """
    metrics: dict[str, Metric] = dict(dice_metrics(output_mode, label_names))
    if class_names:
        metrics["val_class"] = CaseClassification(class_names)
    return metrics


def patch_dice_metrics(output_mode: str, label_names: Sequence[str] | None = None) -> dict[str, GlobalDice]:
    """The per-epoch patch check: ``patch_mean_dice`` (mean over the scored channels) and ``patch_dice_<name>``
    per region or label, each a ``GlobalDice`` over all the fixed validation patches.

    >>> sorted(patch_dice_metrics("regions"))
    ['patch_dice_ET', 'patch_dice_TC', 'patch_dice_WT', 'patch_mean_dice']
    """
    names = output_names(output_mode, label_names)
    offset = 0 if output_mode == "regions" else 1
    metrics = {"patch_mean_dice": GlobalDice(channels=range(offset, offset + len(names)))}
    for i, name in enumerate(names):
        metrics[f"patch_dice_{name}"] = GlobalDice(channels=[i + offset])
    return metrics


class FixedPatches(Dataset):
    """A fixed, seeded set of ``samples`` validation patches, cut once and kept in memory.

    The patches are spread over the validation cases, as evenly as the count allows (with more cases than
    patches, evenly spaced cases give one each). Each case is loaded once (``load``), then ``crop`` (the
    random patch sampling and the training target, e.g. the bundle's class-balanced crop) is applied with a
    seed drawn from ``(seed, case)`` until the case's share is cut. Built on first use, so a workflow that
    never validates on patches never reads the cases. Memory: ``samples`` patches of image and target.

    Args:
        data: the validation datalist.
        load: a case's deterministic loading (its result is what ``crop`` receives).
        crop: random patch sampling and target encoding; returns one patch (a dict) or a list of them.
        samples: patches in all; 0 leaves the set empty.
        seed: the run's seed.
    """

    def __init__(
        self, data: Sequence[Mapping[str, Any]], load: Callable, crop: Callable, samples: int, seed: int = 0
    ) -> None:
        if isinstance(samples, bool) or samples < 0:
            raise ValueError(f"samples must be an integer >= 0, got {samples!r}")
        self.data, self.load, self.crop = list(data), load, crop
        self.samples, self.seed = int(samples), int(seed)
        self._patches: list[dict[str, Any]] | None = None

    def shares(self) -> list[tuple[int, int]]:
        """``(case index, patches)`` of each case that gives patches, in datalist order."""
        cases = len(self.data)
        if not cases or not self.samples:
            return []
        if self.samples < cases:
            picked = np.unique(np.linspace(0, cases - 1, self.samples).round().astype(int))
            return [(int(i), 1) for i in picked]
        base, extra = divmod(self.samples, cases)
        return [(i, base + (i < extra)) for i in range(cases)]

    @property
    def patches(self) -> list[dict[str, Any]]:
        if self._patches is None:
            patches: list[dict[str, Any]] = []
            for index, count in self.shares():
                case = self.load(dict(self.data[index]))
                rng = np.random.default_rng([self.seed, index])
                cut: list[dict[str, Any]] = []
                while len(cut) < count:
                    set_rnd(self.crop, int(rng.integers(0, 2**31 - 1)))
                    out = self.crop(dict(case))
                    cut += out if isinstance(out, list) else [out]
                patches += [_plain(patch) for patch in cut[:count]]
            self._patches = patches
        return self._patches

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.patches[index]


def _plain(patch: Mapping[str, Any]) -> dict[str, Any]:
    """A patch's image and label alone, as plain contiguous tensors (no metadata, no transform record)."""
    return {key: torch.as_tensor(patch[key]).as_subclass(torch.Tensor).contiguous() for key in ("image", "label")}
