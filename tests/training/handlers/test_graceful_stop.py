"""GracefulStop on a real MONAI trainer and real signals: where it stops, what it saves, the exit code, the handlers
put back; exit_if_interrupted; DataLoader workers that ignore the stop signals."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import StatsHandler

from medseg3d.core.checkpoint_format import load_checkpoint
from medseg3d.training.handlers import (
    Checkpoints,
    GracefulStop,
    MetricsCSV,
    exit_if_interrupted,
    ignore_stop_signals,
)
from medseg3d.training.handlers.graceful_stop import SIGNALS


@pytest.fixture
def stoppable(make_trainer):
    """``stoppable(run_dir, **kwargs)`` -> trainer with MetricsCSV, Checkpoints and GracefulStop, as the bundles
    attach them (4 iterations per epoch)."""

    def build(run_dir: Path, resume_hint: str = "medseg3d train --resume {run_dir}", **kwargs):
        def handlers(tiny):
            records = MetricsCSV(run_dir, optimizer=tiny.optimizer)
            checkpoints = Checkpoints(run_dir, tiny.network, tiny.optimizer, stateful={"metrics": records})
            return [records, checkpoints, GracefulStop(checkpoints, resume_hint=resume_hint)]

        return make_trainer(handlers=handlers, **kwargs).trainer

    return build


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt during the test, as in a terminal (a shell's background job ignores it)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    "signalled, signum, stopped_at, rows",
    [
        pytest.param(3, signal.SIGINT, 3, 0, id="sigint-mid-epoch"),  # stops after the iteration in progress
        pytest.param(4, signal.SIGTERM, 4, 1, id="sigterm-last-iteration"),  # after the epoch's records
        pytest.param(6, signal.SIGHUP, 6, 1, id="sighup-terminal-gone"),
        pytest.param(2, signal.SIGUSR1, 2, 0, id="sigusr1-slurm-time-limit-warning"),  # exit 138: the job requeues
    ],
)
def test_a_signal_stops_after_the_iteration_and_saves(
    tmp_path: Path, stoppable, sigint_raises, signalled: int, signum: int, stopped_at: int, rows: int
) -> None:
    trainer = stoppable(tmp_path)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=signalled), lambda: os.kill(os.getpid(), signum))
    handlers = [signal.getsignal(s) for s in SIGNALS]
    trainer.run()
    assert [signal.getsignal(s) for s in SIGNALS] == handlers, "the previous handlers are put back"
    assert trainer.state.iteration == stopped_at
    assert trainer.state.interrupted == {
        "signal": signal.Signals(signum).name,
        "exit_code": 128 + signum,
        "checkpoint": str(tmp_path / "checkpoints" / "last.pt"),
        "resume": f"medseg3d train --resume {tmp_path}",
    }
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["trainer"]["iteration"] == stopped_at
    metrics = tmp_path / "metrics.csv"
    assert (len(metrics.read_text().splitlines()) - 1 if metrics.is_file() else 0) == rows  # completed epochs only


def test_without_a_signal_the_run_completes(tmp_path: Path, stoppable) -> None:
    trainer = stoppable(tmp_path, max_epochs=2)
    trainer.run()
    assert trainer.state.iteration == 8 and trainer.state.interrupted is None
    assert exit_if_interrupted(trainer) is None


def test_with_accumulated_gradients_it_stops_where_they_are_applied(tmp_path: Path, stoppable) -> None:
    trainer = stoppable(tmp_path, accumulation_steps=2)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=1), lambda: os.kill(os.getpid(), signal.SIGTERM))
    trainer.run()
    assert trainer.state.iteration == 2  # iteration 1's gradient is applied at iteration 2
    assert trainer.state.interrupted["exit_code"] == 143


def test_a_second_signal_aborts_and_keeps_the_previous_last_pt(tmp_path: Path, stoppable, sigint_raises) -> None:
    trainer = stoppable(tmp_path)
    StatsHandler(iteration_log=False, epoch_log=False).attach(trainer)  # as on rank 0: re-raises the exception
    trainer.add_event_handler(
        Events.ITERATION_STARTED(once=6), lambda: [os.kill(os.getpid(), signal.SIGINT) for _ in range(2)]
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["trainer"]["iteration"] == 4  # epoch 1's, intact
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.pt"]


def test_the_resume_hint_names_the_run_and_the_world_size(tmp_path: Path, stoppable, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    trainer = stoppable(tmp_path, resume_hint="torchrun --nproc_per_node=$WORLD_SIZE train.py --resume {run_dir}")
    trainer.add_event_handler(Events.ITERATION_STARTED(once=2), lambda: os.kill(os.getpid(), signal.SIGTERM))
    trainer.run()
    assert trainer.state.interrupted["resume"] == f"torchrun --nproc_per_node=2 train.py --resume {tmp_path}"


@pytest.mark.parametrize("stderr_closed", [pytest.param(False, id="terminal"), pytest.param(True, id="stderr-closed")])
def test_exit_if_interrupted_exits_with_the_signal_code(
    tmp_path: Path, stoppable, monkeypatch, capsys, stderr_closed: bool
) -> None:
    trainer = stoppable(tmp_path)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=2), lambda: os.kill(os.getpid(), signal.SIGHUP))
    trainer.run()
    if stderr_closed:  # a dropped ssh session: printing fails, the stop stays clean
        closed = io.StringIO()
        closed.close()
        monkeypatch.setattr("sys.stderr", closed)
    with pytest.raises(SystemExit) as stopped:
        exit_if_interrupted(trainer)
    assert stopped.value.code == 129
    if not stderr_closed:
        err = capsys.readouterr().err
        assert f"state saved in {tmp_path / 'checkpoints' / 'last.pt'}" in err
        assert f"resume with: medseg3d train --resume {tmp_path}" in err


def test_outside_the_main_thread_it_warns_and_leaves_signals_alone(tmp_path: Path, stoppable, caplog) -> None:
    trainer = stoppable(tmp_path, max_epochs=1)
    handlers = [signal.getsignal(s) for s in SIGNALS]
    seen: list[list] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED(once=1), lambda: seen.append([signal.getsignal(s) for s in SIGNALS])
    )
    with caplog.at_level(logging.WARNING, logger="medseg3d.training.handlers.graceful_stop"):
        thread = threading.Thread(target=trainer.run)
        thread.start()
        thread.join(timeout=60)
    assert trainer.state.iteration == 4 and seen == [handlers]
    assert "not in the main thread" in caplog.text


class _SignalState(torch.utils.data.Dataset):
    """Each item: whether this process ignores each stop signal."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> list[bool]:
        return [signal.getsignal(s) is signal.SIG_IGN for s in SIGNALS]


def test_dataloader_workers_ignore_the_stop_signals() -> None:
    loader = torch.utils.data.DataLoader(
        _SignalState(), batch_size=None, num_workers=1, worker_init_fn=ignore_stop_signals
    )
    assert [list(item) for item in loader] == [[True] * len(SIGNALS)] * 2
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN, "the main process still stops on them"


def test_an_exception_in_training_is_not_swallowed() -> None:
    def step(engine: Engine, batch: int) -> None:
        raise RuntimeError("a crash in the training step")

    trainer = Engine(step)
    GracefulStop(checkpoints=None).attach(trainer)
    with pytest.raises(RuntimeError, match="a crash in the training step"):
        trainer.run([0], max_epochs=1)
