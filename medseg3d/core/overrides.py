"""Command-line overrides of a bundle's settings: ``--KEY VALUE`` pairs parsed into Python values."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import Any


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
