"""Validation wiring: post-processing of network outputs and Dice per region or label."""

from __future__ import annotations

from collections.abc import Sequence

from monai.handlers import MeanDice, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose

from medseg3d.core.constants import PREPARED_LABELS, REGIONS


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


def postprocessing(output_mode: str, label_names: Sequence[str] | None = None) -> Compose:
    """Logits to binary masks: sigmoid > 0.5 per region, or argmax one-hot over labels (label one-hot too)."""
    names = output_names(output_mode, label_names)
    if output_mode == "regions":
        return Compose([Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)])
    classes = len(names) + 1
    return Compose(
        [AsDiscreted(keys="pred", argmax=True, to_onehot=classes), AsDiscreted(keys="label", to_onehot=classes)]
    )


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
