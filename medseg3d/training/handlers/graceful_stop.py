"""Ctrl+C (SIGINT), SIGTERM, SIGHUP or SLURM's SIGUSR1 warning: finish the current iteration, save ``last.pt``,
say how to resume, exit non-zero (128 + the signal)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data.utils import worker_init_fn

from medseg3d.core.ranks import is_distributed, is_rank_zero

logger = logging.getLogger(__name__)

# Ctrl+C, a scheduler's or kill's SIGTERM, the hang-up of a closed terminal or dropped ssh session, and SLURM's
# warning before the time limit (`#SBATCH --signal=B:USR1@120`, forwarded by deploy/slurm/train.sbatch, which
# requeues the job when the run exits 128 + SIGUSR1 = 138: docs/deploy.md).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)


def _say(message: str) -> None:
    """Print to stderr; a closed terminal or pipe (a dropped ssh session) must not turn a clean stop into a crash."""
    try:
        print(message, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        logger.warning(message)


def _stop_everywhere(requested: bool) -> bool:
    """Under torch.distributed, True on every rank when any rank was signalled, so all stop at one iteration."""
    if not is_distributed():
        return requested
    flag = torch.tensor([1 if requested else 0], dtype=torch.int32)
    if torch.distributed.get_backend() == "nccl":
        flag = flag.cuda()
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())


class GracefulStop:
    """Turn SIGINT/SIGTERM/SIGHUP into a clean stop at the next safe point of training.

    The signal only sets a flag. After the iteration in progress (after the epoch's validation and records
    when it was the epoch's last; and only where no accumulated gradient would be lost, with
    ``accumulation_steps`` > 1), ``checkpoints.save_last`` writes ``last.pt``, the
    trainer terminates, and ``exit_if_interrupted`` (the bundle's last ``run`` step) exits with 128 + the
    signal number (130 for Ctrl+C, 143 for SIGTERM, 129 for a hang-up, 138 for SIGUSR1) after printing the resume
    command. A second signal while stopping aborts at once, with the previous ``last.pt`` intact (it is
    replaced atomically). DataLoader workers ignore these signals, so only this process decides when to
    stop; a closed terminal or pipe does not turn the stop into a crash.

    Args:
        checkpoints: the ``Checkpoints`` handler whose ``save_last`` writes the state.
        resume_hint: the command to print; ``{run_dir}`` is replaced by the run directory and ``$WORLD_SIZE``
            by the number of processes (under torchrun).
    """

    def __init__(self, checkpoints: Any, resume_hint: str = "medseg3d train --resume {run_dir}") -> None:
        self.checkpoints = checkpoints
        self.resume_hint = resume_hint
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._install)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._maybe_stop)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._maybe_stop)
        for event in (Events.COMPLETED, Events.EXCEPTION_RAISED):
            engine.add_event_handler(event, self._uninstall)
        engine.state.interrupted = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
        name = signal.Signals(signum).name
        _say(f"\n{name} received: stopping after this iteration and saving checkpoints/last.pt "
             f"(send {name} again to abort without saving)")  # fmt: skip

    def _install(self, engine: Engine) -> None:
        self.received = None
        engine.state.interrupted = None
        if threading.current_thread() is not threading.main_thread():
            logger.warning("not in the main thread: SIGINT/SIGTERM/SIGHUP/SIGUSR1 will not stop training gracefully")
            return
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _uninstall(self, engine: Engine, error: BaseException | None = None) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous = {}
        if error is not None:
            # ignite hands an exception to the EXCEPTION_RAISED handlers instead of raising it: raise it again,
            # or a crash (or a second Ctrl+C) would end trainer.run() as if training had finished
            raise error

    def _maybe_stop(self, engine: Engine) -> None:
        accumulation = max(1, int(getattr(engine, "accumulation_steps", 1) or 1))
        position = (engine.state.iteration - 1) % engine.state.epoch_length + 1
        if engine.last_event_name == Events.ITERATION_COMPLETED:
            if position == engine.state.epoch_length:
                return  # the epoch's last iteration: stop once its validation and records are done
            if position % accumulation:
                return  # gradients of this accumulation group are not applied yet; saving now would lose them
        if not _stop_everywhere(self.received is not None):
            return
        path = self.checkpoints.save_last(engine)
        signum = self.received if self.received is not None else signal.SIGTERM
        engine.state.interrupted = {
            "signal": signal.Signals(signum).name,
            "exit_code": 128 + int(signum),
            "checkpoint": str(path),
            "resume": self.resume_hint.replace("$WORLD_SIZE", os.environ.get("WORLD_SIZE", "N")).format(
                run_dir=path.parent.parent
            ),
        }
        logger.info(
            "stopped by %s at epoch %d, iteration %d; saved %s. Resume with: %s",
            engine.state.interrupted["signal"],
            engine.state.epoch,
            engine.state.iteration,
            path,
            engine.state.interrupted["resume"],
        )
        engine.terminate()


def exit_if_interrupted(engine: Engine) -> None:
    """After ``engine.run()``: when ``GracefulStop`` stopped it, print how to resume and exit 128 + signal."""
    interrupted = getattr(engine.state, "interrupted", None)
    if not interrupted:
        return
    if is_rank_zero():
        _say(
            f"training stopped by {interrupted['signal']}; state saved in {interrupted['checkpoint']}\n"
            f"resume with: {interrupted['resume']}"
        )
    raise SystemExit(interrupted["exit_code"])


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore the stop signals (the main process stops them), then seed
    MONAI's random transforms as MONAI's own ``worker_init_fn`` does."""

    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    worker_init_fn(worker_id)
