"""Running a bundle's workflow from Python or ``medseg3d train``, with overrides checked before anything runs.

Overrides are MONAI bundle overrides (``--KEY VALUE``, nested ids joined by ``#``), the same as on
``python -m monai.bundle run``. Unlike a plain ``parse_known_args``, a mistyped key or a value of the
wrong type is an error naming the key, before any data is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from medseg3d.core.errors import InputError
from medseg3d.core.io import config_path
from medseg3d.core.logs import follow_console

# workflow -> (config files merged in order, MONAI workflow type)
WORKFLOWS = {
    "train": (("common.yaml", "train.yaml"), "train"),
    "evaluate": (("common.yaml", "train.yaml", "evaluate.yaml"), "eval"),
    "inference": (("common.yaml", "inference.yaml"), "infer"),
}
_EXPRESSION_PREFIXES = ("$", "@", "%")
# Ranges of the numeric settings the bundles share (checked on overrides, before anything runs): a value out of
# range would otherwise fail deep inside MONAI's config machinery, or worse, train without complaint.
_POSITIVE = frozenset({"learning_rate", "max_epochs", "val_interval", "batch_size", "num_samples",
                       "accumulation_steps", "sw_batch_size"})  # fmt: skip
_NON_NEGATIVE = frozenset({"num_workers", "weight_decay", "warmup_epochs", "cache_memory_gb"})
_POSITIVE_ENTRIES = frozenset({"roi_size", "target_spacing"})


def _type_name(value: Any) -> str:
    return type(value).__name__


# settings whose None means "off" in the component that takes them (an int or a number otherwise)
OPTIONAL_SETTINGS = frozenset({"chunk_voxels", "inverse_slab"})


def check_overrides(parser: Any, overrides: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for an override whose key the config lacks or whose value has the wrong type.

    A key whose current value is an expression (``$...``, ``@...``) is checked against what it resolves
    to when that is plain data (``roi_size`` chosen by device is still a list), and accepts any value
    otherwise (a device, a network); null accepts any value, and the settings of ``OPTIONAL_SETTINGS`` accept
    None (``--chunk_voxels None``: never in chunks). An int accepts a float where the config holds a float,
    and a list must stay a list. The settings every bundle shares are range-checked too
    (``learning_rate``, ``max_epochs``, ... positive; ``prob_*`` in [0, 1]; ``roi_size`` entries positive).
    """
    problems = []
    for key, value in overrides.items():
        if key not in parser:
            top = sorted(k for k in parser.get() if not k.startswith("_"))
            problems.append(f"unknown key {key!r} (top-level keys: {', '.join(top)})")
            continue
        current = parser[key]
        if isinstance(current, str) and current.startswith(_EXPRESSION_PREFIXES):
            current = _resolved_plain(parser, key)
        if current is None or (value is None and key.rsplit("#", 1)[-1] in OPTIONAL_SETTINGS):
            continue
        if isinstance(value, str) and value.startswith(_EXPRESSION_PREFIXES):
            continue
        if isinstance(current, bool) or isinstance(value, bool):
            ok = isinstance(current, bool) and isinstance(value, bool)
        elif isinstance(current, int | float):
            ok = isinstance(value, int | float) and not (isinstance(current, int) and isinstance(value, float))
        elif isinstance(current, list | tuple):
            ok = isinstance(value, list | tuple)
        else:
            ok = isinstance(value, type(current))
        if not ok:
            problems.append(f"{key} expects {_type_name(current)} (like {current!r}), got {value!r}")
        else:
            problem = _out_of_range(key, value)
            if problem:
                problems.append(problem)
    if problems:
        raise ValueError("bad override: " + "; ".join(problems))


def _out_of_range(key: str, value: Any) -> str:
    """What is wrong with the value of a shared numeric setting, or "" (any other key: "").

    >>> _out_of_range("learning_rate", -1), _out_of_range("prob_flip", 1.5), _out_of_range("max_epochs", 3)
    ('learning_rate expects a positive number, got -1', 'prob_flip expects a probability in [0, 1], got 1.5', '')
    """
    name = key.rsplit("#", 1)[-1]
    if isinstance(value, bool):
        return ""
    if isinstance(value, int | float):
        if name in _POSITIVE and not value > 0:
            return f"{key} expects a positive number, got {value!r}"
        if name in _NON_NEGATIVE and not value >= 0:
            return f"{key} expects a number >= 0, got {value!r}"
        if name.startswith("prob_") and not 0 <= value <= 1:
            return f"{key} expects a probability in [0, 1], got {value!r}"
        if name == "overlap" and not 0 <= value < 1:
            return f"{key} expects a number in [0, 1), got {value!r}"
    if name in _POSITIVE_ENTRIES and isinstance(value, list | tuple):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value):
            return f"{key} expects positive numbers, got {value!r}"
    return ""


def _resolved_plain(parser: Any, key: str) -> Any:
    """What the expression at ``key`` resolves to when that is plain data (bool, number, string, list), else
    None. Data-dependent expressions that fail here (a dataset not there yet) give None."""
    try:
        value = parser.get_parsed_content(key)
    except Exception:  # noqa: BLE001 - any failure means: not checkable here; the run reports it later
        return None
    return value if isinstance(value, bool | int | float | str | list | tuple) else None


def root_input_error(exc: BaseException) -> InputError | None:
    """The ``InputError`` behind an exception MONAI's config machinery wrapped, if any."""
    return _in_chain(exc, lambda e: isinstance(e, InputError))


def _in_chain(exc: BaseException | None, match) -> BaseException | None:
    """The first exception of ``exc``'s cause/context chain for which ``match`` is true, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if match(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def make_workflow(bundle_dir: str | os.PathLike, workflow: str = "train", overrides: Mapping[str, Any] | None = None):
    """A MONAI ``ConfigWorkflow`` for ``bundle_dir``'s ``workflow``, overrides checked first."""

    bundle = Path(bundle_dir)
    configs = bundle / "configs"
    if workflow not in WORKFLOWS:
        raise ValueError(f"unknown workflow {workflow!r}; expected one of {', '.join(WORKFLOWS)}")
    names, workflow_type = WORKFLOWS[workflow]
    files = [configs / name for name in names]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(bundle, f"not a medseg3d bundle: missing {', '.join(missing)}")
    overrides = dict(overrides or {})
    overrides.setdefault("bundle_root", str(bundle))
    wf = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow_type,
    )
    follow_console()  # the handler logging.conf put on sys.stdout follows it (medseg3d/core/logs.py)
    check_overrides(wf.parser, overrides)
    wf.parser.update(pairs=overrides)
    return wf


def run_bundle(bundle_dir: str | os.PathLike, workflow: str = "train", overrides: Mapping[str, Any] | None = None):
    """Initialize, run and finalize ``workflow`` of the bundle; an ``InputError`` inside is re-raised as such."""
    return run_workflow(make_workflow(bundle_dir, workflow, overrides))


def find_run(run_dir: str | os.PathLike | None = None, runs_root: str | os.PathLike = "runs") -> Path:
    """The run directory to resume: ``run_dir`` itself, or the newest run under ``runs_root`` with a ``last.pt``.

    Raises:
        InputError: ``run_dir`` has no ``config.json`` or ``checkpoints/last.pt``, or no run is found.
    """
    if run_dir is None:
        candidates = sorted(Path(runs_root).glob("**/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise InputError(runs_root, "no run to resume: no checkpoints/last.pt below it (pass the run directory)")
        run_dir = candidates[-1].parent.parent
    run_dir = Path(run_dir)
    for needed in ("config.json", "checkpoints/last.pt"):
        if not (run_dir / needed).is_file():
            raise InputError(
                run_dir / needed,
                "not found: a resumable run directory holds config.json and checkpoints/last.pt "
                "(a run writes last.pt after its first epoch or when stopped)",
            )
    return run_dir


def resume_workflow(run_dir: str | os.PathLike, overrides: Mapping[str, Any] | None = None):
    """A training ``ConfigWorkflow`` that continues ``run_dir`` with the configuration it ran with.

    The run's ``config.json`` (config files merged, overrides applied) is the configuration, so the run
    continues exactly; ``overrides`` may change anything further (``max_epochs`` to train longer).
    """

    run_dir = Path(run_dir)
    config = run_dir / "config.json"
    try:
        content = json.loads(config.read_text())
        started_in = Path(json.loads((run_dir / "run.json").read_text()).get("cwd", "."))
    except (ValueError, OSError) as exc:
        raise InputError(config, f"cannot read the run's configuration ({exc})") from None
    # Relative paths in the configuration are relative to the folder the run was started in.
    rebased = {
        key: str(started_in / content[key])
        for key in ("bundle_root", "dataset_dir")
        if isinstance(content.get(key), str)
        and not content[key].startswith(_EXPRESSION_PREFIXES)
        and not Path(content[key]).is_absolute()
    }
    bundle_root = Path(rebased.get("bundle_root", content.get("bundle_root", ".")))
    meta, logging_conf = bundle_root / "configs" / "metadata.json", bundle_root / "configs" / "logging.conf"
    wf = ConfigWorkflow(
        config_file=str(config),
        meta_file=str(meta) if meta.is_file() else None,
        logging_file=str(logging_conf) if logging_conf.is_file() else None,
        workflow_type="train",
    )
    follow_console()
    overrides = {**rebased, **dict(overrides or {}), "output_dir": config_path(run_dir), "resume": True}
    check_overrides(wf.parser, overrides)
    wf.parser.update(pairs=overrides)
    return wf


def run_workflow(wf):
    """Initialize, run and finalize a ``ConfigWorkflow``; an ``InputError``, or else an ``OSError`` naming a file
    (a full disk), that MONAI's engine wrapped is re-raised as such (the CLI prints it as one line)."""
    try:
        wf.initialize()
        result = wf.run()
        wf.finalize()
    except Exception as exc:
        cause = root_input_error(exc) or _in_chain(exc, lambda e: isinstance(e, OSError) and e.filename is not None)
        if cause is not None:
            raise cause from None
        raise
    return result
