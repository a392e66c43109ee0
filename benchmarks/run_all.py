"""Run every ``benchmarks/bench_*.py`` in turn (``make bench``); results go to bench_out/results.jsonl."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    failed = []
    for script in sorted((REPO / "benchmarks").glob("bench_*.py")):
        module = f"benchmarks.{script.stem}"
        print(f"== {module}", flush=True)
        if subprocess.run([sys.executable, "-m", module, *sys.argv[1:]], cwd=REPO).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
