"""Running a bundle's workflow from Python or ``medseg3d train``, with overrides checked before anything runs.

Overrides are MONAI bundle overrides (``--KEY VALUE``, nested ids joined by ``#``), the same as on
``python -m monai.bundle run``. Unlike a plain ``parse_known_args``, a mistyped key or a value of the
wrong type is an error naming the key, before any data is read.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medseg3d.errors import InputError

WORKFLOW_FILES = {"train": ("common.yaml", "train.yaml")}
_EXPRESSION_PREFIXES = ("$", "@", "%")


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``["--max_epochs", "2", "--roi_size", "[32,32,32]"]`` -> ``{"max_epochs": 2, "roi_size": [32, 32, 32]}``.

    Values are Python literals where they parse as one (numbers, lists, True/None), else strings.

    >>> parse_overrides(["--max_epochs", "2", "--network_def#norm", "batch"])
    {'max_epochs': 2, 'network_def#norm': 'batch'}
    """
    if len(args) % 2:
        raise ValueError(f"overrides come in --KEY VALUE pairs; {args[-1]!r} has no value")
    overrides: dict[str, Any] = {}
    for key, value in zip(args[::2], args[1::2], strict=True):
        if not key.startswith("--") or len(key) < 3:
            raise ValueError(f"expected an override --KEY, got {key!r}")
        try:
            overrides[key[2:]] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key[2:]] = value
    return overrides


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_overrides(parser: Any, overrides: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for an override whose key the config lacks or whose value has the wrong type.

    A key whose current value is an expression (``$...``, ``@...``) or null accepts any value; an int
    accepts a float where the config holds a float, and a list must stay a list.
    """
    problems = []
    for key, value in overrides.items():
        if key not in parser:
            top = sorted(k for k in parser.get() if not k.startswith("_"))
            problems.append(f"unknown key {key!r} (top-level keys: {', '.join(top)})")
            continue
        current = parser[key]
        if current is None or (isinstance(current, str) and current.startswith(_EXPRESSION_PREFIXES)):
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
    if problems:
        raise ValueError("bad override: " + "; ".join(problems))


def root_input_error(exc: BaseException) -> InputError | None:
    """The ``InputError`` behind an exception MONAI's config machinery wrapped, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, InputError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def make_workflow(bundle_dir: str | os.PathLike, workflow: str = "train", overrides: Mapping[str, Any] | None = None):
    """A MONAI ``ConfigWorkflow`` for ``bundle_dir``'s ``workflow``, overrides checked first."""
    from monai.bundle import ConfigWorkflow

    bundle = Path(bundle_dir)
    configs = bundle / "configs"
    if workflow not in WORKFLOW_FILES:
        raise ValueError(f"unknown workflow {workflow!r}; expected one of {', '.join(WORKFLOW_FILES)}")
    files = [configs / name for name in WORKFLOW_FILES[workflow]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(bundle, f"not a medseg3d bundle: missing {', '.join(missing)}")
    overrides = dict(overrides or {})
    overrides.setdefault("bundle_root", str(bundle))
    wf = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=workflow,
    )
    check_overrides(wf.parser, overrides)
    wf.parser.update(pairs=overrides)
    return wf


def run_bundle(bundle_dir: str | os.PathLike, workflow: str = "train", overrides: Mapping[str, Any] | None = None):
    """Initialize, run and finalize ``workflow`` of the bundle; an ``InputError`` inside is re-raised as such."""
    wf = make_workflow(bundle_dir, workflow, overrides)
    try:
        wf.initialize()
        result = wf.run()
        wf.finalize()
    except Exception as exc:
        cause = root_input_error(exc)
        if cause is not None:
            raise cause from None
        raise
    return result
