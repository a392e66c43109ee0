"""RunRecord on a real ignite engine: config.json, resolved.json, run.json and train.log, what a resume appends, and
the overrides read from a command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from medseg3d.training.handlers import RunRecord
from medseg3d.training.handlers.run_record import overrides_from_argv

logger = logging.getLogger("medseg3d.tests.run_record")


@pytest.mark.parametrize(
    "argv, expected",
    [
        pytest.param(["monai.bundle", "run", "--config_file", "['a.yaml','b.yaml']", "--max_epochs", "2"],
                     {"max_epochs": 2}, id="monai-bundle-run"),
        pytest.param(["medseg3d", "train", "--bundle", "b", "--roi_size", "[32,32,16]", "--amp", "False"],
                     {"roi_size": [32, 32, 16], "amp": False}, id="medseg3d-train"),
        pytest.param(["x", "run", "--network_def#channels", "[4,8]", "--learning_rate", "1e-3", "--name", "adamw"],
                     {"network_def#channels": [4, 8], "learning_rate": 0.001, "name": "adamw"}, id="nested-and-text"),
        pytest.param(["x", "run", "--meta_file", "m.json", "--logging_file", "l.conf", "--args_file", "a.json"],
                     {}, id="runner-args-are-not-overrides"),
        pytest.param(["x", "run", "--fold", "1", "--resume"], {"fold": 1}, id="trailing-flag"),
    ],
)  # fmt: skip
def test_overrides_from_argv(argv: list[str], expected: dict) -> None:
    assert overrides_from_argv(argv) == expected


def _engine(record: RunRecord, message: str = "an epoch") -> Engine:
    engine = Engine(lambda engine, batch: None)
    record.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda: logger.warning(message))
    return engine


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_new_run_writes_its_record(tmp_path: Path, monkeypatch) -> None:
    argv = ["medseg3d", "train", "--bundle", "b", "--max_epochs", "2", "--roi_size", "[32,32,16]"]
    monkeypatch.setattr("sys.argv", argv)
    config = {"max_epochs": "$1 + 1", "network_def": {"_target_": "UNet"}}
    _engine(RunRecord(tmp_path / "run", seed=3, config=config), "logged during the run").run([0], max_epochs=2)
    logger.warning("logged after the run")

    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "resolved.json", "run.json", "train.log"]
    assert _json(run / "config.json") == config and _json(run / "resolved.json") == {}
    record = _json(run / "run.json")
    assert record["command"] == argv and record["overrides"] == {"max_epochs": 2, "roi_size": [32, 32, 16]}
    assert record["seed"] == 3 and record["cwd"] and "resumed" not in record
    assert record["versions"]["torch"] and record["versions"]["monai"]
    assert record["git"]["sha"] is None or len(record["git"]["sha"]) == 40
    log = (run / "train.log").read_text()
    assert log.count("logged during the run") == 2 and "logged after the run" not in log  # closed at the end


def test_a_resumed_run_appends_and_keeps_the_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["medseg3d", "train", "--max_epochs", "3"])
    _engine(RunRecord(tmp_path, seed=3, config={"max_epochs": 3}), "first").run([0, 0], max_epochs=1)
    first = _json(tmp_path / "run.json")

    monkeypatch.setattr("sys.argv", ["medseg3d", "train", "--resume", str(tmp_path)])
    resumed = _engine(RunRecord(tmp_path, seed=3, config={"max_epochs": 99}), "second")
    resumed.load_state_dict({"iteration": 2, "epoch_length": 2, "max_epochs": 2})
    resumed.run([0, 0])

    record = _json(tmp_path / "run.json")
    assert [r["iteration"] for r in record["resumed"]] == [2]
    assert record["resumed"][0]["command"] == ["medseg3d", "train", "--resume", str(tmp_path)]
    assert {k: v for k, v in record.items() if k != "resumed"} == first  # what the run started as
    assert _json(tmp_path / "config.json") == {"max_epochs": 3}
    log = (tmp_path / "train.log").read_text()
    assert log.index("first") < log.index("second")  # appended


def test_built_by_a_bundle_parser_it_records_the_config_and_resolved_values(tmp_path: Path) -> None:
    parser = ConfigParser(
        {
            "imports": ["$import torch"],
            "output_dir": str(tmp_path),
            "max_epochs": "$2 * 3",
            "device": "$torch.device('cpu')",
            "network": {"_target_": "torch.nn.Linear", "in_features": 1, "out_features": 1},
            "unused": "$1 / 0",
            "record": {"_target_": "medseg3d.training.handlers.RunRecord", "output_dir": "@output_dir", "seed": 5},
        }
    )
    parser.get_parsed_content("network")
    parser.get_parsed_content("max_epochs")
    parser.get_parsed_content("device")
    record = parser.get_parsed_content("record")  # the handler finds the parser that builds it
    _engine(record).run([0], max_epochs=1)
    assert _json(tmp_path / "config.json")["max_epochs"] == "$2 * 3"  # as written
    resolved = _json(tmp_path / "resolved.json")
    assert resolved["max_epochs"] == 6 and resolved["device"] == "cpu" and resolved["output_dir"] == str(tmp_path)
    assert "network" not in resolved and "unused" not in resolved  # not plain data; never evaluated


def test_without_a_config_it_warns_and_writes_run_json(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="medseg3d.training.handlers.run_record"):
        _engine(RunRecord(tmp_path)).run([0], max_epochs=1)
    assert "no bundle configuration found; config.json not written" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "train.log"]


def test_a_crash_closes_the_log_and_is_raised_again(tmp_path: Path) -> None:
    def step(engine: Engine, batch: int) -> None:
        logging.getLogger("medseg3d.test").warning("before the crash")
        raise RuntimeError("a crash in the training step")

    trainer = Engine(step)
    RunRecord(tmp_path, config={}).attach(trainer)
    before = list(logging.getLogger().handlers)
    with pytest.raises(RuntimeError, match="a crash in the training step"):
        trainer.run([0], max_epochs=1)
    assert logging.getLogger().handlers == before  # the run's log file handler is gone
    logs = [p for p in tmp_path.rglob("*.log")]
    assert logs and "before the crash" in logs[0].read_text()
