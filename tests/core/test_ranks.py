"""DDP helpers: device and backend, threads, and a real 2-process gloo group (which handlers each rank attaches:
tests/training/test_rank_handlers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medseg3d.core import ranks as distributed


@pytest.mark.parametrize(
    "cpus, processes, expected",
    [
        pytest.param(2, 2, 1, id="2-cores-2-procs"),
        pytest.param(16, 4, 4, id="16-cores-4-procs"),
        pytest.param(7, 2, 3, id="rounds-down"),
        pytest.param(2, 8, 1, id="more-procs-than-cores"),
    ],
)
def test_threads_per_process(cpus: int, processes: int, expected: int) -> None:
    assert distributed.threads_per_process(cpus, processes) == expected


@pytest.mark.parametrize("cpus, processes", [pytest.param(0, 1, id="no-cpus"), pytest.param(4, 0, id="no-procs")])
def test_threads_per_process_rejects(cpus: int, processes: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        distributed.threads_per_process(cpus, processes)


def test_threads_per_process_reads_local_world_size(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.threads_per_process(cpus=8) == 2


def test_device_and_backend(monkeypatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed.local_device(cuda=True) == torch.device("cuda", 3)
    assert distributed.local_device(cuda=False) == torch.device("cpu")
    assert distributed.backend_for(torch.device("cuda", 3)) == "nccl"
    assert distributed.backend_for("cpu") == "gloo"


def test_outside_a_process_group(monkeypatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.is_distributed() and distributed.get_rank() == 0 and distributed.is_rank_zero()
    assert distributed.from_rank_zero({"a": 1}) == {"a": 1}
    distributed.finalize_distributed()  # nothing to leave: no error
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="runs under torchrun"):
        distributed.init_distributed("cpu")
    assert torch.get_num_threads() == threads  # refused before touching the process


WORKER = """
import json, sys, torch
from medseg3d.core import ranks as distributed
from medseg3d.training.rank_handlers import handlers_for_rank
from medseg3d.training.handlers import MetricsCSV

backend = distributed.init_distributed("cpu")
rank = distributed.get_rank()
kept = handlers_for_rank([MetricsCSV(sys.argv[1]), "a worker"])
record = {
    "backend": backend,
    "world": torch.distributed.get_world_size(),
    "threads": torch.get_num_threads(),
    "shared": distributed.from_rank_zero(f"named on rank {rank}"),
    "kept": [type(h).__name__ for h in kept],
    "again": distributed.init_distributed("cpu"),
}
distributed.finalize_distributed()
record["left"] = not distributed.is_distributed()
with open(f"{sys.argv[1]}/{rank}.json", "w") as f:
    json.dump(record, f)
"""


def test_two_gloo_processes_under_torchrun(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    result = subprocess.run([*command, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for record in records:
        assert record["backend"] == record["again"] == "gloo" and record["world"] == 2 and record["left"]
        assert record["shared"] == "named on rank 0"
        assert record["threads"] == distributed.threads_per_process(processes=2)
    assert records[0]["kept"] == ["MetricsCSV", "str"] and records[1]["kept"] == ["str"]
