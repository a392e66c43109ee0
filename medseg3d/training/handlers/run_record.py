"""The run record: everything needed to know, later, exactly what a run was.

Written into ``output_dir`` when training starts:

- ``config.json``: the bundle configuration as run (config files merged, overrides applied,
  expressions as written);
- ``resolved.json``: the value each top-level id resolved to, where it is plain data;
- ``run.json``: overrides given, command line and its working folder, seed, start time, package versions, git SHA of the
  medseg3d checkout (and whether it had uncommitted changes), host and device; each resume appends
  to ``resumed``;
- ``train.log``: the log of the run (appended on resume).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from medseg3d.core.io import write_json
from medseg3d.core.overrides import parse_overrides

logger = logging.getLogger(__name__)

PACKAGES = ("medseg3d", "monai", "torch", "pytorch-ignite", "numpy", "nibabel", "SimpleITK", "scipy")
# Arguments of the bundle runners that are not config overrides.
RUNNER_ARGS = {
    "config_file", "meta_file", "logging_file", "init_id", "run_id", "final_id", "tracking", "args_file",
    "workflow_name", "workflow_type", "bundle",
}  # fmt: skip


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def overrides_from_argv(argv: list[str]) -> dict[str, Any]:
    """The ``--KEY VALUE`` overrides on a ``python -m monai.bundle run`` or ``medseg3d train`` command line.

    >>> overrides_from_argv(["x", "run", "--config_file", "c.yaml", "--max_epochs", "2", "--roi_size", "[8,8,8]"])
    {'max_epochs': 2, 'roi_size': [8, 8, 8]}
    """

    pairs: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and argv[i][2:] not in RUNNER_ARGS:
            pairs += argv[i : i + 2]
            i += 2
        else:
            i += 2 if argv[i].startswith("--") else 1
    return parse_overrides(pairs)


def _running_parser() -> Any:
    """The ConfigParser of the bundle workflow being built (found on the call stack), or None."""

    frame = inspect.currentframe()
    found = None
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigParser):
            found = candidate  # keep the outermost: the workflow's own parser
        frame = frame.f_back
    return found


def _plain(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class RunRecord:
    """Write the run record (see the module docstring) at ``Events.STARTED``.

    Args:
        output_dir: the run directory.
        seed: the run's seed.
        config: the merged configuration; by default the parser of the bundle workflow that is building
            this handler (MONAI's ``ConfigWorkflow`` under ``python -m monai.bundle run`` and
            ``medseg3d train`` alike).
    """

    def __init__(self, output_dir: str | os.PathLike, seed: int = 0, config: dict | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.seed = seed
        self.parser = None if config is not None else _running_parser()
        self.config = config if config is not None else (self.parser.get() if self.parser is not None else None)
        self.argv = list(sys.argv)
        self._log_handler: logging.Handler | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.COMPLETED, self._close_log)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._close_log)

    def _resolved(self) -> dict[str, Any]:
        if self.parser is None:
            return {}
        done = self.parser.ref_resolver.resolved_content
        out = {}
        for key in self.parser.get():
            value = done.get(key)
            if key in done and _plain(value):
                out[key] = value
            elif key in done and type(value).__name__ == "device":
                out[key] = str(value)
        return out

    def _started(self, engine: Engine) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._log_handler = logging.FileHandler(self.output_dir / "train.log")
        self._log_handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        logging.getLogger().addHandler(self._log_handler)
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        record_path = self.output_dir / "run.json"
        if engine.state.iteration > 0 and record_path.is_file():
            record = json.loads(record_path.read_text())
            record.setdefault("resumed", []).append(
                {"at": now, "iteration": engine.state.iteration, "command": self.argv}
            )
        else:
            record = {
                "started": now,
                "command": self.argv,
                "cwd": os.getcwd(),
                "overrides": overrides_from_argv(self.argv),
                "seed": self.seed,
                "versions": _versions(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "host": platform.node(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "git": {"sha": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain"))},
            }
            if self.config is not None:
                write_json(self.config, self.output_dir / "config.json")
                write_json(self._resolved(), self.output_dir / "resolved.json")
            else:
                logger.warning("no bundle configuration found; config.json not written")
        write_json(record, record_path)

    def _close_log(self, engine: Engine, error: BaseException | None = None) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None
        if error is not None:
            raise error  # ignite hands it to the EXCEPTION_RAISED handlers instead of raising it
