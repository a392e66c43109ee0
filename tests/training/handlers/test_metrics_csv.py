"""MetricsCSV on real ignite engines: one row per epoch, validation columns, consistency after resume."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from medseg3d.training.handlers import MetricsCSV


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _engines(tmp_path: Path, val_interval: int = 2):
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    def train_step(engine: Engine, batch: float) -> list[dict]:
        # MONAI's trainer output after decollation: one dict per sample, each carrying the batch loss.
        return [{"loss": torch.tensor(batch * engine.state.epoch)}]

    trainer = Engine(train_step)
    evaluator = Engine(lambda engine, batch: batch)

    @evaluator.on(Events.COMPLETED)
    def _score(engine: Engine) -> None:
        engine.state.metrics = {"val_mean_dice": 0.1 * trainer.state.epoch, "per_region": torch.ones(3)}

    @trainer.on(Events.EPOCH_COMPLETED(every=val_interval))
    def _validate(engine: Engine) -> None:
        evaluator.state.max_epochs = None
        evaluator.run([0], max_epochs=1)
        evaluator.state.epoch = engine.state.epoch  # as MONAI's Evaluator.run(global_epoch) sets it

    handler = MetricsCSV(tmp_path, optimizer=optimizer, evaluator=evaluator)
    handler.attach(trainer)
    return trainer, handler


def test_one_row_per_epoch_with_validation_columns(tmp_path: Path) -> None:
    trainer, handler = _engines(tmp_path)
    trainer.run([1.0, 3.0], max_epochs=4)
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert [float(r["train_loss"]) for r in rows] == [2.0, 4.0, 6.0, 8.0]
    assert [r["iteration"] for r in rows] == ["2", "4", "6", "8"]
    assert all(r["lr"] == "0.5" for r in rows)
    assert [r["val_mean_dice"] for r in rows] == ["", "0.2", "", "0.4"]
    assert "val_per_region" not in rows[0], "vector metrics are not squeezed into one cell"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_resume_drops_rows_newer_than_the_checkpoint(tmp_path: Path) -> None:
    trainer, _ = _engines(tmp_path)
    trainer.run([1.0, 3.0], max_epochs=3)
    assert len(_rows(tmp_path / "metrics.csv")) == 3
    # A crash after epoch 3's row but before its checkpoint: the resumed run restarts from epoch 2.
    resumed, _ = _engines(tmp_path)
    resumed.load_state_dict({"iteration": 4, "epoch_length": 2, "max_epochs": 4})
    resumed.run([1.0, 3.0])
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[2]["train_loss"] == "6" and rows[3]["val_mean_dice"] == "0.4"


def test_curves_png_is_drawn_from_metrics_csv(tmp_path: Path) -> None:
    from PIL import Image

    from medseg3d.training.handlers import Curves

    trainer, _ = _engines(tmp_path)
    Curves(tmp_path).attach(trainer)
    trainer.run([1.0, 3.0], max_epochs=4)
    image = Image.open(tmp_path / "curves.png")
    assert image.size[0] > image.size[1] > 100
    pixels = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert len(pixels) > 20, "the plot holds lines and text, not a blank canvas"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_curves_rejects_bad_interval(tmp_path: Path) -> None:
    import pytest

    from medseg3d.training.handlers import Curves

    with pytest.raises(ValueError, match="every must be >= 1"):
        Curves(tmp_path, every=0)


def test_patch_check_and_validation_timing_columns(tmp_path: Path) -> None:
    """The patch check's metrics every epoch (``patch_`` columns), the full validation's at its epochs (``val_``),
    and from the schedule the seconds of the epoch's full validation and the share so far."""
    trainer = Engine(lambda engine, batch: [{"loss": torch.tensor(1.0)}])
    full, patches = Engine(lambda engine, batch: batch), Engine(lambda engine, batch: batch)

    class Schedule:  # what MetricsCSV reads of a ValidationSchedule
        last_seconds, share = 0.0, 0.0

    schedule = Schedule()

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine: Engine) -> None:
        for evaluator, name in ((patches, "patch_mean_dice"), (full, "val_mean_dice")):
            if evaluator is full and engine.state.epoch != 2:
                schedule.last_seconds = 0.0
                continue
            evaluator.state.max_epochs = None
            evaluator.run([0], max_epochs=1)
            evaluator.state.epoch = engine.state.epoch
            evaluator.state.metrics = {name: 0.25 * engine.state.epoch}
        if engine.state.epoch == 2:
            schedule.last_seconds, schedule.share = 1.5, 0.125

    MetricsCSV(tmp_path, evaluator=full, patch_evaluator=patches, schedule=schedule).attach(trainer)
    trainer.run([1.0], max_epochs=3)
    rows = _rows(tmp_path / "metrics.csv")
    assert [r["patch_mean_dice"] for r in rows] == ["0.25", "0.5", "0.75"]
    assert [r["val_mean_dice"] for r in rows] == ["", "0.5", ""]
    assert [r["validation_seconds"] for r in rows] == ["0.000", "1.500", "0.000"]
    assert [r["validation_share"] for r in rows] == ["0.0000", "0.1250", "0.1250"]
