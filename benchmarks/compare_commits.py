"""A benchmark at this tree against the same benchmark at another commit, in one run: did a change move a figure?

A refactor must leave speed and results where they were, and these machines are too noisy for a comparison of
figures taken on different days. This runs one ``benchmarks/bench_*.py`` script alternately on the working
tree and on a detached worktree of ``--base`` (under ``bench_out/``, reused), ``--repeats`` times each,
starting with the other side every round, and prints one JSON line per result the script emits: ``ours_s``
is the median of the working tree's ``ours_s``, ``baseline_s`` the median of the base commit's ``ours_s``,
``ratio`` base / ours (1.0: no change), the rounds' seconds of both sides (``rounds_s``, ``baseline_rounds_s``)
and of the script's own baseline on each side, ``own_ratio`` and ``baseline_own_ratio`` each side's own ratios
against the script's baseline, round by round, and ``agreement`` the base commit's agreement next to ours, so a
change in results shows too.

The base side runs with ``PYTHONPATH`` set to its worktree, so its own ``medseg3d``, bundles and benchmarks
are the ones imported, whatever the virtual environment's editable install points at.

Example (the refactor check of docs/benchmarks.md)::

    python -m benchmarks.compare_commits --base e646db4 --repeats 3 bench_infer --quick --skip-memory
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from benchmarks.common import OUT, REPO, emit


def worktree(base: str) -> Path:
    """A detached worktree of ``base`` under ``bench_out/`` (created once, then reused)."""
    sha = subprocess.run(["git", "rev-parse", base], cwd=REPO, capture_output=True, text=True, check=True).stdout
    path = OUT / f"base-{sha.strip()[:12]}"
    if not (path / ".git").exists():
        OUT.mkdir(exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha.strip()], cwd=REPO, check=True)
    return path


def run_side(root: Path, script: str, args: list[str], base: bool) -> list[dict]:
    """Run ``benchmarks/<script>.py`` in ``root``; return the result lines it printed."""
    env = dict(os.environ)
    if base:
        env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    result = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{script}", *args], cwd=root, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(f"{script} failed in {root}:\n{result.stderr[-3000:]}")
    records = []
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "benchmark" in record and "ours_s" in record:
                records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare with (e.g. the one before a change)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("script", help="a benchmark module name, e.g. bench_infer")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args(argv)
    base_root = worktree(options.base)
    times: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {"ours": [], "base": []})
    agreement: dict[tuple[str, str], dict[str, object]] = defaultdict(dict)
    in_run: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: {"ours": [], "base": []})
    script_baseline: dict[tuple[str, str], dict[str, list]] = defaultdict(lambda: {"ours": [], "base": []})
    for round_ in range(options.repeats):
        sides = [("ours", REPO, False), ("base", base_root, True)]
        for side, root, is_base in sides if round_ % 2 == 0 else sides[::-1]:
            for record in run_side(root, options.script, options.args, is_base):
                key = (record["benchmark"], record["case"])
                times[key][side].append(float(record["ours_s"]))
                script_baseline[key][side].append(record.get("baseline_s"))
                agreement[key][side] = record.get("agreement")
                in_run[key][side].append(record.get("ratio"))
    for (benchmark, case), sides in times.items():
        if not sides["ours"] or not sides["base"]:
            print(f"warning: {benchmark} / {case} ran on one side only", file=sys.stderr)
            continue
        emit(
            f"{benchmark} vs {options.base}",
            case,
            statistics.median(sides["ours"]),
            f"the same benchmark at {options.base}",
            statistics.median(sides["base"]),
            agreement=agreement[(benchmark, case)].get("ours"),
            baseline_agreement=agreement[(benchmark, case)].get("base"),
            rounds_s=sides["ours"],
            baseline_rounds_s=sides["base"],
            script_baseline_rounds_s=script_baseline[(benchmark, case)]["ours"],
            baseline_script_baseline_rounds_s=script_baseline[(benchmark, case)]["base"],
            own_ratio=in_run[(benchmark, case)]["ours"],
            baseline_own_ratio=in_run[(benchmark, case)]["base"],
            repeats=options.repeats,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
