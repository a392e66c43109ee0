"""Validation wiring: the postprocessing ``medseg3d infer`` ships, encoded for the metrics, and Dice per region
or label.

Validation scores what inference writes: the bundles validate with the inferer ``medseg3d infer`` uses (declared
once, in ``common.yaml``) and with ``postprocessing`` below, which decodes the logits exactly as the predictor
does (``medseg3d.transforms.decode.logits_to_labels``) and applies the same connected-component rules
(``postprocess`` in ``common.yaml``) before the label map is encoded as regions or one-hot for Dice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from monai.handlers import MeanDice, from_engine
from monai.transforms import AsDiscreted, Compose

from medseg3d.core.constants import PREPARED_LABELS, REGIONS
from medseg3d.transforms.decode import LogitsToLabelsd
from medseg3d.transforms.dictionary import ConnectedComponentsd, LabelsToRegionsd


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
    transforms: list = [LogitsToLabelsd(keys="pred", output_mode=output_mode)]
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
