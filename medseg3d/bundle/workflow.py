"""Running a bundle's workflow from Python or ``medseg3d train``, with overrides checked before anything runs.

Overrides are MONAI bundle overrides (``--KEY VALUE``, nested ids joined by ``#``), the same as on
``python -m monai.bundle run``. Unlike a plain ``parse_known_args``, a mistyped key or a value of the
wrong type is an error naming the key, before any data is read.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from monai.bundle import ConfigWorkflow

from medseg3d.core.errors import InputError, in_chain, input_error_in
from medseg3d.core.io import config_path
from medseg3d.core.logs import follow_console

# workflow -> (config files merged in order, MONAI workflow type)
WORKFLOWS = {
    "train": (("common.yaml", "train.yaml"), "train"),
    "evaluate": (("common.yaml", "train.yaml", "evaluate.yaml"), "eval"),
    "inference": (("common.yaml", "inference.yaml"), "infer"),
}
_EXPRESSION_PREFIXES = ("$", "@", "%")
# Each bundle declares the schema of its settings beside its configs (types, ranges, null allowed, choices);
# ``check_overrides`` reads it, so a new setting is declared in the bundle alone.
SCHEMA_FILE = "overrides.yaml"
SCHEMA_FIELDS = frozenset({"type", "range", "entries", "nullable", "choices"})
_TYPES = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "list": lambda v: isinstance(v, list | tuple),
    # one path or several (an ensemble's checkpoints)
    "paths": lambda v: isinstance(v, str) or (isinstance(v, list | tuple) and all(isinstance(i, str) for i in v)),
}


@dataclass(frozen=True)
class Interval:
    """A range of numbers in interval notation: ``"(0, inf)"``, ``"[0, 1]"``, ``"[0, 1)"``.

    >>> Interval.parse("[0, 1)").contains(1), Interval.parse("(0, inf)").describe()
    (False, 'a positive number')
    """

    low: float
    high: float
    low_closed: bool
    high_closed: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Interval:
        """The interval ``text`` denotes; ``ValueError`` when it is not one."""
        match = re.fullmatch(r"\s*([\[(])\s*(-?inf|[-+0-9.e]+)\s*,\s*(-?inf|[-+0-9.e]+)\s*([\])])\s*", str(text))
        if not match:
            raise ValueError(f"expected an interval such as '(0, inf)' or '[0, 1]', got {text!r}")
        low, high = float(match[2]), float(match[3])
        if not low <= high:
            raise ValueError(f"interval {text!r} is empty")
        return cls(low, high, match[1] == "[", match[4] == "]", f"{match[1]}{match[2]}, {match[3]}{match[4]}")

    def contains(self, value: float) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below

    def describe(self) -> str:
        if self.high == math.inf and self.low == 0:
            return "a positive number" if not self.low_closed else "a number >= 0"
        if self.high == math.inf:
            return f"a number {'>=' if self.low_closed else '>'} {self.low:g}"
        return f"a number in {self.text}"


def load_schema(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A bundle's override schema (``configs/overrides.yaml``): setting id -> ``type`` (int, number, bool, str or
    list), ``range`` (an interval of numbers), ``entries`` (the interval of a list's numbers), ``nullable`` (null
    accepted: the setting is off) and ``choices`` (the values allowed). An absent file is an empty schema.

    Raises:
        InputError: naming the file: unreadable, or an entry with an unknown field, type or interval.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(path, f"cannot read the override schema ({exc})") from None
    if not isinstance(content, dict):
        raise InputError(path, "expected a mapping of setting ids to their schema")
    schema = {}
    for key, entry in content.items():
        problem = _schema_problem(entry)
        if problem:
            raise InputError(path, f"{key}: {problem}")
        schema[str(key)] = {
            **entry,
            **{field: Interval.parse(entry[field]) for field in ("range", "entries") if field in entry},
        }
    return schema


def _schema_problem(entry: Any) -> str:
    """What is wrong with one entry of a schema file, or ""."""
    if not isinstance(entry, dict):
        return f"expected a mapping with fields among {', '.join(sorted(SCHEMA_FIELDS))}, got {entry!r}"
    unknown = sorted(set(entry) - SCHEMA_FIELDS)
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; expected among {', '.join(sorted(SCHEMA_FIELDS))}"
    if "type" in entry and entry["type"] not in _TYPES:
        return f"type must be one of {', '.join(_TYPES)}, got {entry['type']!r}"
    if "choices" in entry and not isinstance(entry["choices"], list):
        return f"choices must be a list, got {entry['choices']!r}"
    for field in ("range", "entries"):
        if field in entry:
            try:
                Interval.parse(entry[field])
            except ValueError as exc:
                return f"{field}: {exc}"
    return ""


def bundle_schema(bundle_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The override schema of the bundle in ``bundle_dir`` (``configs/overrides.yaml``)."""
    return load_schema(Path(bundle_dir) / "configs" / SCHEMA_FILE)


def _type_name(value: Any) -> str:
    return type(value).__name__


def _schema_for(schema: Mapping[str, Mapping[str, Any]], key: str) -> Mapping[str, Any]:
    """The schema entry of ``key``: its own, else that of its last ``#`` part (``inferer#sw_batch_size``)."""
    return schema.get(key) or schema.get(key.rsplit("#", 1)[-1]) or {}


def check_overrides(
    parser: Any, overrides: Mapping[str, Any], schema: Mapping[str, Mapping[str, Any]] | None = None
) -> None:
    """Raise ``ValueError`` for an override whose key the config lacks or whose value does not fit.

    The bundle's ``schema`` (``load_schema``) gives a setting's type, range, choices and whether null turns it
    off (``--chunk_voxels None``). Without a declared type, a value must have the type of the setting's
    current value: a key whose current value is an expression (``$...``, ``@...``) is checked against what it
    resolves to when that is plain data (``roi_size`` chosen by device is still a list), and accepts any value
    otherwise (a device, a network); null accepts any value. An int accepts a float where the config holds a
    float, and a list must stay a list. Expression values (``$...``) are not checked.
    """
    schema = schema or {}
    problems = []
    for key, value in overrides.items():
        if key not in parser:
            top = sorted(k for k in parser.get() if not k.startswith("_"))
            problems.append(f"unknown key {key!r} (top-level keys: {', '.join(top)})")
            continue
        if isinstance(value, str) and value.startswith(_EXPRESSION_PREFIXES):
            continue
        entry = _schema_for(schema, key)
        current = parser[key]
        if isinstance(current, str) and current.startswith(_EXPRESSION_PREFIXES):
            current = _resolved_plain(parser, key)
        if value is None and entry.get("nullable"):
            continue
        problem = _type_problem(key, value, current, entry.get("type")) or _out_of_range(key, value, entry)
        if problem:
            problems.append(problem)
    if problems:
        raise ValueError("bad override: " + "; ".join(problems))


def _type_problem(key: str, value: Any, current: Any, declared: str | None) -> str:
    """What is wrong with the type of ``value``, or "": the ``declared`` type, else that of ``current``."""
    if declared is not None:
        ok = _TYPES[declared](value)
        like = "" if current is None else f" (like {current!r})"
        return "" if ok else f"{key} expects {declared}{like}, got {value!r}"
    if current is None:
        return ""
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(current, bool) and isinstance(value, bool)
    elif isinstance(current, int | float):
        ok = isinstance(value, int | float) and not (isinstance(current, int) and isinstance(value, float))
    elif isinstance(current, list | tuple):
        ok = isinstance(value, list | tuple)
    else:
        ok = isinstance(value, type(current))
    return "" if ok else f"{key} expects {_type_name(current)} (like {current!r}), got {value!r}"


def _out_of_range(key: str, value: Any, entry: Mapping[str, Any]) -> str:
    """What is wrong with ``value`` by the schema ``entry`` (range, entries, choices), or "".

    >>> positive, probability = {"range": Interval.parse("(0, inf)")}, {"range": Interval.parse("[0, 1]")}
    >>> _out_of_range("learning_rate", -1, positive), _out_of_range("prob_flip", 1.5, probability)
    ('learning_rate expects a positive number, got -1', 'prob_flip expects a number in [0, 1], got 1.5')
    >>> _out_of_range("cache", "ram", {"choices": ["memory", "disk", "none"]})
    "cache expects one of memory, disk, none, got 'ram'"
    """
    interval = entry.get("range")
    if interval is not None and isinstance(value, int | float) and not isinstance(value, bool):
        if not interval.contains(value):
            return f"{key} expects {interval.describe()}, got {value!r}"
    entries = entry.get("entries")
    if entries is not None and isinstance(value, list | tuple):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and entries.contains(v) for v in value):
            what = "positive numbers" if entries.describe() == "a positive number" else f"numbers in {entries.text}"
            return f"{key} expects {what}, got {value!r}"
    choices = entry.get("choices")
    if choices is not None and value not in choices:
        return f"{key} expects one of {', '.join(map(str, choices))}, got {value!r}"
    return ""


def _resolved_plain(parser: Any, key: str) -> Any:
    """What the expression at ``key`` resolves to when that is plain data (bool, number, string, list), else
    None. Data-dependent expressions that fail here (a dataset not there yet) give None."""
    try:
        value = parser.get_parsed_content(key)
    except Exception:  # noqa: BLE001 - any failure means: not checkable here; the run reports it later
        return None
    return value if isinstance(value, bool | int | float | str | list | tuple) else None


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
    check_overrides(wf.parser, overrides, bundle_schema(bundle))
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
    check_overrides(wf.parser, overrides, bundle_schema(bundle_root))
    wf.parser.update(pairs=overrides)
    return wf


def run_workflow(wf):
    """Initialize, run and finalize a ``ConfigWorkflow``; an ``InputError``, or else an ``OSError`` naming a file
    (a full disk), that MONAI's engine wrapped is re-raised as such (the CLI prints it as one line)."""
    try:
        wf.initialize()
        follow_console()  # the handlers MONAI's StatsHandler put on sys.stdout while the config was parsed
        result = wf.run()
        wf.finalize()
    except Exception as exc:
        cause = input_error_in(exc) or in_chain(exc, lambda e: isinstance(e, OSError) and e.filename is not None)
        if cause is not None:
            raise cause from None
        raise
    return result
