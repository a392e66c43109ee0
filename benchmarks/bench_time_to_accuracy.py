"""Time to accuracy at full size: held-out Dice of the bundle's default recipe after a fixed CPU budget.

Synthesizes ``--cases`` full-size BraTS 2021 phantoms (240x240x155, ``medseg3d synth brats``), prepares them
(``prep_brats --folds 4``) and trains ``medseg3d train --bundle BUNDLE`` with the bundle's defaults and only the
overrides given after ``--``. Two ways to spend a budget (``--mode``):

- ``budget`` (default): one run per budget with ``--max_minutes`` (the run plans its epochs to end within it
  and anneals its learning rate to the end), the checkpoint it selects being ``best.pt``;
- ``stop``: one run stopped by SIGTERM at the largest budget, as a user's Ctrl+C would, ``best.pt`` (else
  ``last.pt``) copied at every budget on the way (how the defaults did before a time budget existed).

Each checkpoint segments held-out phantoms of another seed with ``medseg3d infer`` and is scored with
``medseg3d evaluate``: mean Dice over WT, TC, ET and every case's whole-tumour volume error. With
``--shifted`` the held-out phantoms are also drawn as by another scanner (``medseg3d synth brats --scanner
shifted``: other contrasts, bias fields and noise). Prints one JSON line per budget and appends it to
``bench_out/results.jsonl``; the Dice-against-time curve of each run is in the line (``curve``).

Run: ``.venv/bin/python -m benchmarks.bench_time_to_accuracy [--budgets 900 1800] [-- --KEY VALUE ...]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, append_results, device_name, metrics_rows

BUNDLES = {
    "3d": REPO / "bundles" / "brats_mri_resunet_3d",
    "2p5d": REPO / "bundles" / "brats_mri_slicestack_2p5d",
}
MEDSEG3D = [sys.executable, "-m", "medseg3d.cli"]


def synth(out: Path, cases: int, seed: int, shape: list[int], extra: list[str] = ()) -> Path:
    if not out.is_dir():
        command = [*MEDSEG3D, "synth", "brats", str(out), "--cases", str(cases), "--seed", str(seed)]
        subprocess.run([*command, "--shape", *map(str, shape), *extra], check=True)
    return out


def train(
    bundle: Path, prepared: Path, run_dir: Path, seconds: float, mode: str, snapshots: list[float], overrides: list[str]
) -> tuple[dict[float, Path], list[dict], int]:
    """Train; return {budget: checkpoint copy}, the validation curve and the exit code."""
    command = [*MEDSEG3D, "train", "--bundle", str(bundle), "--dataset_dir", str(prepared)]
    command += ["--output_dir", str(run_dir), *overrides]
    if mode == "budget":
        command += ["--max_minutes", f"{seconds / 60:g}"]
    print(" ".join(command), flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    seen: dict[int, float] = {}
    copies: dict[float, Path] = {}
    pending = sorted(snapshots) if mode == "stop" else []
    with open(run_dir.parent / f"{run_dir.name}_stderr.log", "w") as log:  # a file: a full pipe would block
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        while process.poll() is None:
            elapsed = time.monotonic() - start
            for row in metrics_rows(run_dir):
                seen.setdefault(int(row["epoch"]), elapsed)
            while pending and elapsed >= pending[0]:
                budget = pending.pop(0)
                copies[budget] = _snapshot(run_dir, budget)
            if mode == "stop" and elapsed >= seconds:
                process.send_signal(signal.SIGTERM)
                break
            if mode == "budget" and elapsed >= seconds * 1.5 + 300:  # a budget run overrunning: stop it
                process.send_signal(signal.SIGTERM)
                break
            time.sleep(1.0)
        process.wait()
    elapsed = time.monotonic() - start
    for budget in pending:
        copies[budget] = _snapshot(run_dir, budget)
    if mode == "budget":
        copies[seconds] = _snapshot(run_dir, seconds)
    curve = []
    for row in metrics_rows(run_dir):
        point = {"epoch": int(row["epoch"]), "seconds": round(seen.get(int(row["epoch"]), elapsed), 1)}
        for key in ("val_mean_dice", "patch_mean_dice"):
            if row.get(key):
                point[key] = round(float(row[key]), 4)
        if len(point) > 2:
            curve.append(point)
    print(f"training: exit {process.returncode} after {elapsed:.0f} s", flush=True)
    return copies, curve, process.returncode


def _snapshot(run_dir: Path, budget: float) -> Path:
    folder = run_dir / "checkpoints"
    source = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    target = run_dir.parent / f"{run_dir.name}_at_{budget:.0f}s.pt"
    if source.is_file():
        shutil.copyfile(source, target)
    return target


def held_out_scores(bundle: Path, checkpoint: Path, raw: Path, out: Path, overrides: list[str] = ()) -> dict:
    """``medseg3d infer`` then ``medseg3d evaluate`` over a raw tree; mean Dice and WT volume errors."""
    if not checkpoint.is_file():
        return {"error": f"no checkpoint {checkpoint.name}"}
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    subprocess.run(
        [*MEDSEG3D, "infer", "--bundle", str(bundle), "--checkpoint", str(checkpoint), str(raw), str(out), *overrides],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    infer_s = time.monotonic() - start
    subprocess.run(
        [*MEDSEG3D, "evaluate", str(out), str(raw), "--out", str(out / "evaluation")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(out / "evaluation" / "report.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["status"] == "ok"]
    dice = {region: statistics.mean(float(r[f"{region}_dice"]) for r in rows) for region in ("WT", "TC", "ET")}
    errors = [abs(float(r["WT_pred_ml"]) - float(r["WT_gt_ml"])) / float(r["WT_gt_ml"]) for r in rows]
    return {
        "mean_dice": round(statistics.mean(dice.values()), 4),
        **{f"dice_{k}": round(v, 4) for k, v in dice.items()},
        "wt_volume_error": [round(e, 3) for e in errors],
        "wt_volume_error_max": round(max(errors), 3),
        "cases": len(rows),
        "infer_s": round(infer_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", choices=sorted(BUNDLES), default="3d")
    parser.add_argument("--cases", type=int, default=16, help="training phantoms (16; 4 folds: 12 train, 4 validate)")
    parser.add_argument("--held-out", type=int, default=4, help="held-out phantoms of another seed (4)")
    parser.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155], metavar=("X", "Y", "Z"))
    parser.add_argument("--budgets", type=float, nargs="+", default=[900.0, 1800.0], help="seconds (900 1800)")
    parser.add_argument("--mode", choices=("budget", "stop"), default="budget")
    parser.add_argument("--shifted", action="store_true", help="also score phantoms of another scanner")
    parser.add_argument("--work", type=Path, default=None, help="working folder (kept; data reused when there)")
    parser.add_argument("--label", default="", help="a name for this configuration in the result lines")
    parser.add_argument(
        "--infer-set",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="an override of the inference config for the held-out segmentation (repeatable)",
    )
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    infer_overrides = [part for key, value in args.infer_set for part in (f"--{key}", value)]

    work = args.work or Path(tempfile.mkdtemp(prefix="time_to_accuracy_"))
    work.mkdir(parents=True, exist_ok=True)
    shape_name = "x".join(map(str, args.shape))
    raw = synth(work / f"raw_{args.cases}_{shape_name}", args.cases, 0, args.shape)
    prepared = work / f"prepared_{args.cases}_{shape_name}"
    if not (prepared / "dataset.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "data_prep.prep_brats", str(raw), str(prepared), "--folds", "4"], check=True
        )
    held = {"same": synth(work / f"heldout_{args.held_out}_{shape_name}", args.held_out, 1000, args.shape)}
    if args.shifted:
        held["shifted"] = synth(
            work / f"heldout_shifted_{args.held_out}_{shape_name}",
            args.held_out,
            1000,
            args.shape,
            ["--scanner", "shifted"],
        )

    bundle = BUNDLES[args.bundle]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = [(b, [b]) for b in args.budgets] if args.mode == "budget" else [(max(args.budgets), args.budgets)]
    records = []
    for seconds, snapshots in runs:
        run_dir = work / f"run_{args.bundle}_{args.mode}_{seconds:.0f}s_{stamp}"
        copies, curve, code = train(bundle, prepared, run_dir, seconds, args.mode, snapshots, overrides)
        if code not in (0, 128 + signal.SIGTERM):
            print((run_dir.parent / f"{run_dir.name}_stderr.log").read_text()[-3000:], file=sys.stderr)
            return 1
        for budget, checkpoint in sorted(copies.items()):
            record = {
                "benchmark": "time_to_accuracy",
                "label": args.label,
                "bundle": bundle.name,
                "mode": args.mode,
                "budget_s": budget,
                "case": f"{args.cases} phantoms {shape_name}, held-out {args.held_out} of seed 1000",
                "overrides": overrides,
                "infer_overrides": infer_overrides,
            }
            for name, tree in held.items():
                out = work / f"pred_{run_dir.name}_{budget:.0f}_{name}"
                scores = held_out_scores(bundle, checkpoint, tree, out, infer_overrides)
                record.update({f"{name}_{k}" if name != "same" else k: v for k, v in scores.items()})
            record.update(
                {"curve": curve, "run_dir": str(run_dir), "device": device_name(), "date": time.strftime("%Y-%m-%d")}
            )
            print(json.dumps(record), flush=True)
            records.append(record)
    append_results(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
