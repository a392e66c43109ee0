"""Checkpoints on a real MONAI trainer: last.pt every epoch, best.pt on improvement, exact restore, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from medseg3d.core.checkpoint_format import load_checkpoint
from medseg3d.core.errors import InputError
from medseg3d.training.handlers import Checkpoints, MetricsCSV

SCORES = [0.2, 0.5, 0.3, 0.6]  # best at epochs 2 and 4


@pytest.fixture
def with_checkpoints(make_trainer):
    """``with_checkpoints(run_dir, evaluator=None, save=True, **trainer_kwargs)`` -> (trainer, checkpoints): a trainer
    with ``MetricsCSV`` and ``Checkpoints`` attached in the bundles' order."""

    def build(run_dir: Path, evaluator=None, save: bool = True, **kwargs):
        made = {}

        def handlers(tiny):
            records = MetricsCSV(run_dir, optimizer=tiny.optimizer, evaluator=evaluator)
            made["checkpoints"] = Checkpoints(
                run_dir, tiny.network, tiny.optimizer, tiny.lr_scheduler, evaluator, seed=7,
                stateful={"metrics": records}, save=save,
            )  # fmt: skip
            return [records, made["checkpoints"]]

        tiny = make_trainer(evaluator=evaluator, handlers=handlers, **kwargs)
        return tiny.trainer, made["checkpoints"]

    return build


def _saved(run_dir: Path, name: str) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / name)  # torch.load(weights_only=True)


def test_last_every_epoch_and_best_on_improvement(tmp_path: Path, with_checkpoints, scripted_evaluator) -> None:
    trainer, _ = with_checkpoints(tmp_path, scripted_evaluator(SCORES), max_epochs=4)
    saved: list[tuple[int, int]] = []  # (epoch in last.pt, epoch in best.pt) after each epoch

    @trainer.on(Events.EPOCH_COMPLETED)
    def _look(engine) -> None:
        saved.append((_saved(tmp_path, "last.pt")["trainer"]["epoch"], _saved(tmp_path, "best.pt")["trainer"]["epoch"]))

    trainer.run()
    assert saved == [(1, 1), (2, 2), (3, 2), (4, 4)]
    last = _saved(tmp_path, "last.pt")
    assert last["trainer"] == {"iteration": 16, "epoch": 4, "epoch_length": 4, "max_epochs": 4}
    assert last["best"] == {"metric": 0.6, "epoch": 4, "key": "val_mean_dice"} and last["seed"] == 7
    assert last["lr_scheduler"]["last_epoch"] == 16 and set(last) >= {"optimizer", "rng", "evaluator"}
    assert len(last["stateful"]["metrics"]["losses"]) == 4  # the epoch's losses, for a resume mid-epoch
    for key, tensor in trainer.network.state_dict().items():
        assert torch.equal(last["network"][key], tensor), key
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp files


def test_a_nan_metric_writes_no_best(tmp_path: Path, with_checkpoints, scripted_evaluator) -> None:
    trainer, _ = with_checkpoints(tmp_path, scripted_evaluator([float("nan")] * 2), max_epochs=2)
    trainer.run()
    assert _saved(tmp_path, "last.pt")["best"]["epoch"] == -1
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


def test_other_ranks_save_nothing_but_track_the_best(tmp_path: Path, with_checkpoints, scripted_evaluator) -> None:
    trainer, checkpoints = with_checkpoints(tmp_path, scripted_evaluator(SCORES), save=False, max_epochs=3)
    trainer.run()
    assert checkpoints.save_last(trainer) == tmp_path / "checkpoints" / "last.pt"
    assert not (tmp_path / "checkpoints").exists()
    assert (checkpoints.best_metric, checkpoints.best_epoch) == (0.5, 2)


def test_a_wrapped_network_is_saved_without_module_prefix(tmp_path: Path, make_trainer) -> None:
    tiny = make_trainer(max_epochs=1)
    wrapped = torch.nn.DataParallel(tiny.network)  # on a CPU it only holds the module, as DistributedDataParallel
    Checkpoints(tmp_path, wrapped, tiny.optimizer).save_last(tiny.trainer)
    assert set(_saved(tmp_path, "last.pt")["network"]) == {"weight", "bias"}


@pytest.mark.parametrize(
    "event, stopped_at, best_epoch",
    [
        pytest.param(Events.ITERATION_COMPLETED(once=6), 6, 1, id="mid-epoch"),  # the sampler skips 2 trained samples
        pytest.param(Events.EPOCH_COMPLETED(once=2), 8, 2, id="epoch-end"),  # epoch 2 validated: its best is kept
    ],
)
def test_restore_continues_exactly(
    tmp_path: Path, with_checkpoints, scripted_evaluator, event, stopped_at: int, best_epoch: int, assert_same_run
) -> None:
    reference, run = tmp_path / "reference", tmp_path / "run"
    trainer, _ = with_checkpoints(reference, scripted_evaluator(SCORES), max_epochs=4)
    trainer.run()

    stopped, checkpoints = with_checkpoints(run, scripted_evaluator(SCORES), max_epochs=4)

    @stopped.on(event)
    def _stop(engine) -> None:  # what GracefulStop does on a signal
        checkpoints.save_last(engine)
        engine.terminate()

    stopped.run()
    assert _saved(run, "last.pt")["trainer"]["iteration"] == stopped_at
    resumed, checkpoints = with_checkpoints(run, scripted_evaluator(SCORES), max_epochs=4)
    assert checkpoints.restore(resumed, "true") is True
    assert (resumed.state.iteration, checkpoints.best_epoch) == (stopped_at, best_epoch)
    resumed.run()
    assert_same_run(reference, run)


def test_restore_false_does_nothing(tmp_path: Path, with_checkpoints) -> None:
    trainer, checkpoints = with_checkpoints(tmp_path)
    assert checkpoints.restore(trainer, False) is False and checkpoints.restore(trainer, "False") is False
    assert trainer.state.iteration == 0


@pytest.mark.parametrize(
    "broken, trainer_kwargs, message",
    [
        pytest.param("absent", {}, "nothing to resume: no checkpoint here", id="no-checkpoint"),
        pytest.param(None, {"max_epochs": 2}, "the run is complete: it trained 2 of max_epochs=2", id="complete"),
        pytest.param(None, {"max_epochs": 4, "cases": 6}, "saved with 4 iterations per epoch, but this run has 6",
                     id="other-dataset-size"),
        pytest.param("truncated", {}, "damaged or truncated", id="damaged"),
    ],
)  # fmt: skip
def test_restore_refuses_naming_the_file(
    tmp_path: Path, with_checkpoints, broken: str | None, trainer_kwargs: dict, message: str
) -> None:
    trainer, _ = with_checkpoints(tmp_path / "done", max_epochs=2)
    trainer.run()
    path = tmp_path / "done" / "checkpoints" / "last.pt"
    if broken == "absent":
        path = tmp_path / "elsewhere" / "last.pt"
    elif broken == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    trainer, checkpoints = with_checkpoints(tmp_path / "new", **trainer_kwargs)
    with pytest.raises(InputError, match=message) as error:
        checkpoints.restore(trainer, str(path))
    assert str(path) in str(error.value)
    assert trainer.state.iteration == 0


def test_mid_epoch_restore_needs_a_resumable_sampler(tmp_path: Path, with_checkpoints) -> None:
    trainer, checkpoints = with_checkpoints(tmp_path, max_epochs=3)

    @trainer.on(Events.ITERATION_COMPLETED(once=2))
    def _stop(engine) -> None:
        checkpoints.save_last(engine)
        engine.terminate()

    trainer.run()
    resumed, checkpoints = with_checkpoints(tmp_path, max_epochs=3)
    resumed.data_loader = torch.utils.data.DataLoader(list(range(4)), batch_size=1)  # a plain sampler
    with pytest.raises(InputError, match="needs a medseg3d.training.sampling.ResumableSampler"):
        checkpoints.restore(resumed)
