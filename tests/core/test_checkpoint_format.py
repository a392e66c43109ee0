"""Checkpoints: atomic writes, weights_only loading, refusal of code-running pickles, RNG round trip."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from medseg3d.core.checkpoint_format import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medseg3d.core.errors import InputError


def _checkpoint() -> dict:
    model = torch.nn.Conv3d(2, 3, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 2, 5, 6, 7)).sum().backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3, "rng": rng_state()}


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    checkpoint = _checkpoint()
    path = save_checkpoint(checkpoint, tmp_path / "checkpoints" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 3
    for key, value in checkpoint["model"].items():
        assert torch.equal(loaded["model"][key], value)
    assert loaded["optimizer"]["state"][0]["step"] == checkpoint["optimizer"]["state"][0]["step"]
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_rng_state_restores_every_generator() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item(), np.random.randn()) == first


def test_rng_state_survives_a_saved_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(5)
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (np.random.rand(3).tolist(), torch.rand(3).tolist())
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert (np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("writer", [pytest.param("torch", id="torch-zip"), pytest.param("pickle", id="raw-pickle")])
def test_pickle_that_runs_code_is_refused(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save({"model": _RunsCode()}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"model": _RunsCode()}, f, protocol=2)
    with pytest.raises(InputError, match="refused: the checkpoint holds objects that would run code") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(None, "checkpoint not found", id="missing"),
        pytest.param("truncate", "damaged or truncated", id="truncated"),
        pytest.param("list", "expected a checkpoint dict", id="not-a-dict"),
    ],
)
def test_bad_checkpoints_give_clear_errors(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "c.pt"
    if content == "truncate":
        save_checkpoint(_checkpoint(), path)
        path.write_bytes(path.read_bytes()[:200])
    elif content == "list":
        torch.save([1, 2], path)
    with pytest.raises(InputError, match=message):
        load_checkpoint(path)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pt")

    class Unsaveable:
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"epoch": 2, "bad": Unsaveable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
