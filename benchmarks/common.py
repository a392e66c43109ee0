"""Helpers every benchmark shares: the JSON line format of docs/benchmarks.md, timing, peak memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench_out"


def device_name() -> str:
    """A short description of the machine the numbers come from."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"cpu {platform.machine()} x{os.cpu_count()} ({platform.processor() or platform.system()})"


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def alternate(ours: Callable[[], float], baseline: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Run ``ours`` and ``baseline`` alternately ``repeats`` times; return the median of each's seconds."""
    ours_s, base_s = [], []
    for _ in range(repeats):
        ours_s.append(ours())
        base_s.append(baseline())
    return statistics.median(ours_s), statistics.median(base_s)


def emit(benchmark: str, case: str, ours_s: float, baseline: str, baseline_s: float, **extra: Any) -> dict:
    """Print one result line (the format ``docs/benchmarks.md`` documents) and append it to bench_out/."""
    record = {
        "benchmark": benchmark,
        "case": case,
        "ours_s": round(ours_s, 4),
        "baseline": baseline,
        "baseline_s": round(baseline_s, 4),
        "ratio": round(baseline_s / ours_s, 3) if ours_s else None,
        "agreement": extra.pop("agreement", None),
        "peak_rss_mb": extra.pop("peak_rss_mb", None),
        "device": device_name(),
        **extra,
    }
    print(json.dumps(record), flush=True)
    OUT.mkdir(exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def run_python(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter (so its peak memory is its own); it must print one JSON object."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def append_results(records: list[dict]) -> None:
    """Append result lines to ``bench_out/results.jsonl`` (benchmarks that print their own record format)."""
    OUT.mkdir(exist_ok=True)
    with open(OUT / "results.jsonl", "a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a running process, MiB; None once it is gone. Polled by the caller:
    ``ru_maxrss`` of a finished child would start from the parent's own peak."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


def metrics_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a training run's ``metrics.csv`` so far (none before the first epoch ends)."""
    import csv

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
