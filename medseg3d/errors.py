"""Exceptions that name the file at fault and what was expected of it."""

from __future__ import annotations

import os


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
