"""LoadWeights on a real ignite engine: weights from a training checkpoint or a bare state dict at STARTED, refusals
that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from medseg3d.core.checkpoint_format import save_checkpoint
from medseg3d.core.errors import InputError
from medseg3d.training.handlers import LoadWeights


def _network(seed: int, out_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3), torch.nn.InstanceNorm3d(4, affine=True),
                               torch.nn.Conv3d(4, out_channels, 1))  # fmt: skip


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "layout, key",
    [
        pytest.param(lambda net: {"network": net.state_dict(), "trainer": {"epoch": 7}}, "network", id="training"),
        pytest.param(lambda net: net.state_dict(), "network", id="bare-state-dict"),
        pytest.param(lambda net: {"model": net.state_dict()}, "model", id="other-key"),
    ],
)
def test_weights_are_loaded_when_the_engine_starts(tmp_path: Path, layout, key: str) -> None:
    trained, network = _network(1), _network(2)
    save_checkpoint(layout(trained), tmp_path / "best.pt")
    engine = Engine(lambda engine, batch: None)
    loaded_at_start: list[bool] = []
    handler = LoadWeights(tmp_path / "best.pt", network, key=key)
    handler.attach(engine)
    engine.add_event_handler(Events.STARTED, lambda: loaded_at_start.append(_same(network, trained)))
    assert not _same(network, trained)  # nothing is read when the handler is built
    engine.run([0], max_epochs=1)
    assert loaded_at_start == [True]


def test_a_wrapped_network_is_unwrapped(tmp_path: Path) -> None:
    trained, network = _network(1), _network(2)
    save_checkpoint({"network": trained.state_dict()}, tmp_path / "last.pt")
    LoadWeights(tmp_path / "last.pt", torch.nn.DataParallel(network))()
    assert _same(network, trained)


def test_not_strict_leaves_missing_parameters(tmp_path: Path) -> None:
    trained, network = _network(1), _network(2)
    state = {k: v for k, v in trained.state_dict().items() if not k.startswith("2.")}  # no last layer
    save_checkpoint(state, tmp_path / "partial.pt")
    before = network[2].weight.clone()
    LoadWeights(tmp_path / "partial.pt", network, strict=False)()
    assert torch.equal(network[0].weight, trained[0].weight) and torch.equal(network[2].weight, before)


def _write(tmp_path: Path, what: str) -> Path:
    path = tmp_path / f"{what}.pt"
    if what == "other-network":
        save_checkpoint({"network": _network(1, out_channels=3).state_dict()}, path)
    elif what == "truncated":
        save_checkpoint({"network": _network(1).state_dict()}, path)
        path.write_bytes(path.read_bytes()[:100])
    elif what == "code":
        torch.save({"network": _RunsCode()}, path)  # a pickle that would call os.system
    elif what == "no-weights":
        save_checkpoint({"epoch": 3}, path)
    return path


@pytest.mark.parametrize(
    "what, message",
    [
        pytest.param("missing", "checkpoint not found", id="missing"),
        pytest.param("other-network", "the weights do not fit the network", id="other-network"),
        pytest.param("truncated", "damaged or truncated", id="truncated"),
        pytest.param("code", "objects that would run code when loaded", id="would-run-code"),
        pytest.param("no-weights", "holds no 'network' state dict and is not a bare state dict", id="neither-layout"),
    ],
)
def test_bad_checkpoints_are_refused_naming_the_file(tmp_path: Path, what: str, message: str) -> None:
    path = _write(tmp_path, what)
    network = _network(2)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(InputError, match=message) as error:
        LoadWeights(path, network).attach(engine := Engine(lambda engine, batch: None))
        engine.run([0], max_epochs=1)
    assert str(path) in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items()), "the network is untouched"
