"""``curves.png``: loss and validation curves drawn from ``metrics.csv`` after every validation."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from ignite.engine import Engine, Events
from matplotlib.figure import Figure

from medseg3d.core.io import atomic_path

# A multitask run's case classification (docs/multitask.md), drawn in a panel of its own when metrics.csv has
# them: the AUC and the balanced accuracy, both 0.5 at chance for two classes. The other ``val_class_`` columns
# (accuracy, confusion counts) stay in the file: the counts are not on the scores' 0-1 scale.
CLASS_CURVES = ("val_class_auc", "val_class_balanced_accuracy")


def curves_figure(metrics_csv: str | os.PathLike) -> Figure | None:
    """The figure of ``plot_curves``: train loss (left), every ``val_`` (full validation: dots) and ``patch_``
    (per-epoch patch check: dashed) metric (middle) against epoch and, when the file has ``CLASS_CURVES``
    columns, those (dots) in a third panel; None when the file has no rows."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = list(rows[0])
    classes = [name for name in CLASS_CURVES if name in columns]
    fig = Figure(figsize=(16, 4) if classes else (11, 4))
    axes = fig.subplots(1, 3 if classes else 2)
    loss_ax, val_ax = axes[0], axes[1]
    points = [(int(r["epoch"]), float(r["train_loss"])) for r in rows if r.get("train_loss")]
    if points:
        loss_ax.plot(*zip(*points, strict=True), marker=".", label="train loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training")
    loss_ax.legend(loc="upper right")
    for name in [key for key in columns if key.startswith(("val_", "patch_")) and not key.startswith("val_class_")]:
        points = [(int(r["epoch"]), float(r[name])) for r in rows if r.get(name)]
        if points:
            style = {"marker": "o"} if name.startswith("val_") else {"linestyle": "--"}
            val_ax.plot(*zip(*points, strict=True), label=name, **style)
    val_ax.set(xlabel="epoch", ylabel="metric", title="validation")
    if val_ax.lines:
        val_ax.legend(loc="lower right")
    if classes:
        class_ax = axes[2]
        for name in classes:  # an AUC is nan where the validation cases held one class only: no point
            points = [(int(r["epoch"]), float(r[name])) for r in rows if r.get(name) and math.isfinite(float(r[name]))]
            if points:
                class_ax.plot(*zip(*points, strict=True), marker="o", label=name)
        class_ax.set(xlabel="epoch", ylabel="score", title="case classification", ylim=(-0.02, 1.02))
        if class_ax.lines:
            class_ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path | None:
    """Draw ``curves_figure(metrics_csv)`` to ``out_png`` (replaced whole); None when nothing to draw."""
    fig = curves_figure(metrics_csv)
    if fig is None:
        return None
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80)
    return Path(out_png)


class Curves:
    """Redraw ``output_dir/curves.png`` from ``output_dir/metrics.csv`` every ``every`` epochs and at the end.

    Attach it after ``MetricsCSV`` so the file holds the epoch just finished.
    """

    def __init__(self, output_dir: str | os.PathLike, every: int = 1, filename: str = "curves.png") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.metrics_csv = Path(output_dir) / "metrics.csv"
        self.path = Path(output_dir) / filename
        self.every = every

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.metrics_csv.is_file():
            plot_curves(self.metrics_csv, self.path)
