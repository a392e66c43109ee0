"""Exceptions that name the file at fault and what was expected of it."""

from __future__ import annotations

import os
from collections.abc import Callable


class InputError(ValueError):
    """An input file or folder is not what the pipeline expects.

    Args:
        path: the file or folder at fault.
        problem: what is wrong and what was expected, as one sentence.
    """

    def __init__(self, path: str | os.PathLike | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


def in_chain(exc: BaseException | None, match: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception of ``exc``'s cause/context chain (``exc`` itself first) for which ``match`` is true.

    MONAI's config machinery and transforms wrap what a function raised (``RuntimeError: applying transform``);
    the user's error is the one underneath.

    >>> try:
    ...     try:
    ...         raise InputError("scan.nii.gz", "empty")
    ...     except InputError as exc:
    ...         raise RuntimeError("applying transform") from exc
    ... except RuntimeError as outer:
    ...     str(in_chain(outer, lambda e: isinstance(e, InputError)))
    'scan.nii.gz: empty'
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if match(exc):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def input_error_in(exc: BaseException | None) -> InputError | None:
    """The ``InputError`` behind ``exc`` (``exc`` itself, or what it wraps), if any."""
    found = in_chain(exc, lambda e: isinstance(e, InputError))
    return found if isinstance(found, InputError) else None


def check_output_folder(path: str | os.PathLike) -> None:
    """Raise ``InputError`` unless ``path`` is a folder that exists and is writable, or can be created.

    Nothing is created: the nearest existing ancestor must be a folder this process may write into (a read-only
    folder, or a regular file where a folder is needed, fails here, before any work, with one clear line).

    >>> check_output_folder("/dev/null/out")
    Traceback (most recent call last):
    ...
    medseg3d.core.errors.InputError: /dev/null/out: cannot be created: /dev/null is not a folder; expected a folder that can be created and written
    """  # noqa: E501
    target = os.path.abspath(os.fspath(path))
    expected = "expected a folder that can be created and written"
    existing = target
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        what = "is not a folder" if existing == target else f"cannot be created: {existing} is not a folder"
        raise InputError(path, f"{what}; {expected}")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == target else f"cannot be created: {existing} is not writable"
        raise InputError(path, f"{what}; {expected}")
