"""Checkpoints that survive a crash mid-save and load without running code.

A checkpoint is a dict of state dicts and plain values (tensors, numbers, strings, lists, dicts), so
``torch.load(..., weights_only=True)`` reads it: a file that would need to execute code to load is
refused. It is written to a temporary file in the same folder and renamed, so a kill mid-save leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg3d.core.errors import InputError
from medseg3d.core.io import atomic_path


def rng_state() -> dict[str, Any]:
    """The state of Python's, NumPy's and torch's global generators, in types ``weights_only`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain_text(text: str) -> str:
    """``text`` without terminal escape sequences (torch's messages carry bold markers).

    >>> _plain_text("\x1b[1mWeights only load failed\x1b[0m")
    'Weights only load failed'
    """
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def training_complete(trainer: dict[str, Any], max_epochs: int | None = None) -> bool:
    """Whether a checkpoint's ``trainer`` position has trained ``max_epochs`` (default: the run's own) epochs.

    >>> training_complete({"iteration": 6, "epoch_length": 2, "max_epochs": 3}), training_complete(
    ...     {"iteration": 6, "epoch_length": 2, "max_epochs": 3}, max_epochs=5)
    (True, False)
    """
    return trainer["iteration"] >= (max_epochs or trainer["max_epochs"]) * trainer["epoch_length"]


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``checkpoint`` to ``path`` atomically: the old file stays whole until the new one is complete.

    Raises:
        OSError: the write failed (a full disk: ``errno.ENOSPC``), naming ``path``; nothing is left behind and
            the previous ``path`` is intact.
    """
    with atomic_path(path) as tmp:
        # Through a Python file object: a failed write is the OSError it is (torch's own file writer turns a
        # full disk into "RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...").
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        InputError: the file is missing, damaged, or holds objects that could run code when loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(
            path,
            "refused: the checkpoint holds objects that would run code when loaded (only tensors, numbers, "
            f"strings, lists and dicts are accepted; weights_only=True) ({_plain_text(str(exc).splitlines()[0])})",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(path, f"cannot read the checkpoint, it is damaged or truncated ({exc})") from None
    if not isinstance(checkpoint, dict):
        raise InputError(path, f"expected a checkpoint dict, got {type(checkpoint).__name__}")
    return checkpoint


def network_state(checkpoint: Mapping[str, Any], key: str = "network") -> Mapping[str, torch.Tensor]:
    """The network state dict in ``checkpoint``: ``checkpoint[key]``, or ``checkpoint`` itself when it is one.

    A training checkpoint (``checkpoints/best.pt``) holds the weights under ``key``; a bare state dict
    (``torch.save(net.state_dict())``, the weights of an exported bundle) is all tensors.

    Raises:
        ValueError: neither layout.
    """
    state = checkpoint.get(key)
    if isinstance(state, Mapping):
        return state
    if checkpoint and all(isinstance(value, torch.Tensor) for value in checkpoint.values()):
        return checkpoint
    raise ValueError(
        f"holds no {key!r} state dict and is not a bare state dict (keys: {', '.join(map(str, checkpoint))})"
    )


def state_mismatch(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    strict: bool = True,
    optional: Sequence[str] = (),
) -> str:
    """What keeps ``given`` from loading where ``expected`` is: missing and unexpected names (when ``strict``),
    shape differences; empty when it fits. Expected names under an ``optional`` prefix may be missing.

    >>> state_mismatch({"w": torch.zeros(2), "b": torch.zeros(1)}, {"w": torch.zeros(3), "x": torch.zeros(1)})
    '1 missing (b), 1 unexpected (x), 1 of another shape (w: (3,) instead of (2,))'
    """
    missing = [name for name in expected if name not in given and not name.startswith(tuple(optional))]
    unexpected = [name for name in given if name not in expected]
    shapes = [
        f"{name}: {tuple(given[name].shape)} instead of {tuple(value.shape)}"
        for name, value in expected.items()
        if name in given and given[name].shape != value.shape
    ]
    parts = [(missing, "missing"), (unexpected, "unexpected")] if strict else []
    parts.append((shapes, "of another shape"))
    return ", ".join(
        f"{len(items)} {what} ({', '.join(items[:2])}{', ...' if len(items) > 2 else ''})"
        for items, what in parts
        if items
    )


def load_into(
    network: torch.nn.Module,
    path: Path,
    key: str = "network",
    strict: bool = True,
    hint: str = "",
    optional: Sequence[str] = (),
) -> Mapping[str, Any]:
    """Load the weights in checkpoint ``path`` into ``network`` (a DDP wrapper is unwrapped); return the checkpoint.
    The network's weights under an ``optional`` prefix may be absent from the file (a segmentation-only checkpoint
    into a network with a classification head, ``"classifier."``): they keep their values.

    Raises:
        InputError: naming the file: damaged, holding objects that would run code when loaded, of neither
            layout, or with weights that do not fit ``network`` (``hint`` says what to check).
    """
    checkpoint = load_checkpoint(path)
    try:
        state = network_state(checkpoint, key)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    network = getattr(network, "module", network)
    problem = state_mismatch(network.state_dict(), state, strict, optional)
    if problem:
        raise InputError(path, f"the weights do not fit the network: {problem} ({hint})")
    network.load_state_dict(state, strict=strict and not optional)  # the names were checked just above
    return checkpoint
