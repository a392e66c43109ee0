"""plot_curves and Curves: what is drawn from metrics.csv, when curves.png is redrawn, and that it is replaced whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ignite.engine import Engine, Events
from matplotlib.figure import Figure
from PIL import Image

from medseg3d.training.handlers import Curves, plot_curves
from medseg3d.training.handlers.curves import curves_figure

HEADER = "epoch,iteration,train_loss,lr,seconds,val_mean_dice,val_dice_WT,patch_mean_dice,validation_share\n"


def _colours(path: Path) -> int:
    return len(Image.open(path).convert("RGB").getcolors(maxcolors=1_000_000))


@pytest.mark.parametrize(
    "rows, loss, metrics",
    [
        pytest.param(["1,2,0.9,0.01,1.0,,,0.2,0", "2,4,0.7,0.01,1.0,0.4,0.5,0.3,0.1"], [(1, 0.9), (2, 0.7)],
                     {"val_mean_dice": [(2, 0.4)], "val_dice_WT": [(2, 0.5)], "patch_mean_dice": [(1, 0.2), (2, 0.3)]},
                     id="loss-validation-and-patch-check"),
        pytest.param(["1,2,0.9,0.01,1.0,,,,", "2,4,0.7,0.01,1.0,,,,"], [(1, 0.9), (2, 0.7)], {},
                     id="not-validated-yet"),
        pytest.param(["1,2,,0.01,1.0,0.3,,,", "2,4,,0.01,1.0,0.4,,,"], [], {"val_mean_dice": [(1, 0.3), (2, 0.4)]},
                     id="no-loss-one-metric"),
    ],
)  # fmt: skip
def test_plot_draws_what_the_file_holds(
    tmp_path: Path, monkeypatch, rows: list[str], loss: list, metrics: dict
) -> None:
    """A curve per column with values, against epoch: train loss on the left, each ``val_`` (full validation) and
    ``patch_`` (patch check) metric on the right; the timing columns are not drawn."""
    (tmp_path / "metrics.csv").write_text(HEADER + "\n".join(rows) + "\n")
    saved: list[Figure] = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), savefig(fig, *a, **k))[1])
    assert plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png") == tmp_path / "curves.png"
    loss_ax, val_ax = saved[0].axes
    curves = {line.get_label(): list(zip(*line.get_data(), strict=True)) for line in val_ax.lines}
    assert [list(zip(*line.get_data(), strict=True)) for line in loss_ax.lines] == ([loss] if loss else [])
    assert curves == metrics
    image = Image.open(tmp_path / "curves.png")
    assert image.format == "PNG" and image.size == (880, 320)  # 11 x 4 inches at 80 dpi
    assert _colours(tmp_path / "curves.png") > 20, "lines and text, not a blank canvas"


MULTITASK = (
    "epoch,iteration,train_loss,lr,seconds,val_mean_dice,val_class_accuracy,val_class_balanced_accuracy,"
    "val_class_auc,val_class_confusion_LGG_LGG,val_class_confusion_LGG_HGG,val_class_confusion_HGG_LGG,"
    "val_class_confusion_HGG_HGG,patch_mean_dice\n"
    "1,2,0.9,0.01,1.0,,,,,,,,,0.2\n"
    "2,4,0.7,0.01,1.0,0.4,0.5,0.5,nan,0,0,1,1,0.3\n"  # the AUC undefined at this validation: no point
    "3,6,0.6,0.01,1.0,0.5,0.75,0.75,0.8,1,0,1,2,0.4\n"
    "4,8,0.5,0.01,1.0,0.6,1,1,0.95,1,0,0,3,0.5\n"
)


def test_plot_of_a_multitask_run_draws_the_case_classification(tmp_path: Path) -> None:
    """A multitask run's AUC and balanced accuracy in a third panel, at the full validations that defined them;
    the accuracy and the confusion counts (not on a 0-1 scale) are drawn nowhere, the Dice panel is unchanged."""
    (tmp_path / "metrics.csv").write_text(MULTITASK)
    fig = curves_figure(tmp_path / "metrics.csv")
    assert len(fig.axes) == 3
    _, val_ax, class_ax = fig.axes
    drawn = {line.get_label(): list(zip(*line.get_data(), strict=True)) for line in class_ax.lines}
    assert drawn == {
        "val_class_auc": [(3, 0.8), (4, 0.95)],
        "val_class_balanced_accuracy": [(2, 0.5), (3, 0.75), (4, 1.0)],
    }
    assert [text.get_text() for text in class_ax.get_legend().get_texts()] == list(drawn)
    assert class_ax.get_title() == "case classification" and class_ax.get_ylim() == (-0.02, 1.02)
    assert [line.get_label() for line in val_ax.lines] == ["val_mean_dice", "patch_mean_dice"]

    assert plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png") == tmp_path / "curves.png"
    assert Image.open(tmp_path / "curves.png").size == (1280, 320)  # 16 x 4 inches at 80 dpi: room for 3 panels


def test_plot_without_class_columns_keeps_two_panels(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(HEADER + "1,2,0.9,0.01,1.0,0.4,0.5,0.3,0.1\n")
    fig = curves_figure(tmp_path / "metrics.csv")
    assert [ax.get_title() for ax in fig.axes] == ["training", "validation"]


def test_plot_of_a_header_only_file_draws_nothing(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(HEADER)
    assert plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_plot_of_a_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.csv"):
        plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")


def _trainer(tmp_path: Path, every: int, epochs_written: list[int]) -> Engine:
    """An engine that appends a metrics.csv row per epoch (as MetricsCSV does) before Curves redraws."""
    trainer = Engine(lambda engine, batch: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def _row(engine: Engine) -> None:
        path = tmp_path / "metrics.csv"
        text = path.read_text() if path.is_file() else HEADER
        path.write_text(text + f"{engine.state.epoch},{engine.state.iteration},{1 / engine.state.epoch},0.01,1,,\n")

    curves = Curves(tmp_path, every=every)
    curves.attach(trainer)

    @trainer.on(Events.EPOCH_COMPLETED)
    @trainer.on(Events.COMPLETED)
    def _seen(engine: Engine) -> None:
        if curves.path.is_file():
            epochs_written.append(engine.state.epoch)
            curves.path.unlink()  # so the next redraw, and only it, brings the file back

    return trainer


@pytest.mark.parametrize(
    "every, epochs, redraws",
    [
        pytest.param(1, 3, 4, id="every-epoch-and-at-the-end"),
        pytest.param(2, 5, 3, id="every-2nd-epoch-and-at-the-end"),  # epochs 2 and 4, then the end
    ],
)
def test_curves_redraw_every_n_epochs_and_at_the_end(tmp_path: Path, every: int, epochs: int, redraws: int) -> None:
    written: list[int] = []
    _trainer(tmp_path, every, written).run([0], max_epochs=epochs)
    assert len(written) == redraws
    assert not [p for p in tmp_path.iterdir() if p.name not in ("metrics.csv",)], "no temp file left behind"


def test_curves_without_metrics_csv_write_nothing(tmp_path: Path) -> None:
    trainer = Engine(lambda engine, batch: None)
    Curves(tmp_path).attach(trainer)
    trainer.run([0], max_epochs=2)
    assert list(tmp_path.iterdir()) == []


def test_curves_replace_the_previous_png_whole(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(HEADER + "1,2,0.9,0.01,1.0,0.4,0.5\n")
    (tmp_path / "curves.png").write_bytes(b"the previous image")
    os.link(tmp_path / "curves.png", tmp_path / "previous.png")  # a second name for the old file's data
    trainer = Engine(lambda engine, batch: None)
    Curves(tmp_path, filename="curves.png").attach(trainer)
    trainer.run([0], max_epochs=1)
    assert Image.open(tmp_path / "curves.png").format == "PNG"
    assert (tmp_path / "previous.png").read_bytes() == b"the previous image", "renamed over, never written in place"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.csv", "previous.png"]
