"""``curves.png``: loss and validation curves drawn from ``metrics.csv`` after every validation."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ignite.engine import Engine, Events
from matplotlib.figure import Figure

from medseg3d.core.io import atomic_path


def plot_curves(metrics_csv: str | os.PathLike, out_png: str | os.PathLike) -> Path | None:
    """Draw train loss (left) and every ``val_`` (full validation: dots) and ``patch_`` (per-epoch patch check:
    dashed) metric (right) against epoch; None when nothing to draw."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    fig = Figure(figsize=(11, 4))
    loss_ax, val_ax = fig.subplots(1, 2)
    points = [(int(r["epoch"]), float(r["train_loss"])) for r in rows if r.get("train_loss")]
    if points:
        loss_ax.plot(*zip(*points, strict=True), marker=".", label="train loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="training")
    loss_ax.legend(loc="upper right")
    for name in [key for key in rows[0] if key.startswith(("val_", "patch_"))]:
        points = [(int(r["epoch"]), float(r[name])) for r in rows if r.get(name)]
        if points:
            style = {"marker": "o"} if name.startswith("val_") else {"linestyle": "--"}
            val_ax.plot(*zip(*points, strict=True), label=name, **style)
    val_ax.set(xlabel="epoch", ylabel="metric", title="validation")
    if val_ax.lines:
        val_ax.legend(loc="lower right")
    fig.tight_layout()
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
