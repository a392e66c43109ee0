"""Time to accuracy at full size: held-out Dice of the bundle's default recipe after a fixed CPU budget.

Synthesizes ``--cases`` full-size phantoms, lists them as a dataset with 4 folds and trains ``medseg3d train
--bundle BUNDLE`` with the bundle's defaults and only the overrides given after ``--``:

- ``--bundle 3d`` or ``2p5d``: BraTS 2021 phantoms of 240x240x155 (``medseg3d synth brats``, ``prep_brats``);
- ``--bundle ct``: CT phantoms of 512x512 and 120-290 slices of 1.5-3 mm (``medseg3d synth ct``, ``medseg3d
  datalist``), the aorta bundle.

Two ways to spend a budget (``--mode``):

- ``budget`` (default): one run per budget with ``--max_minutes`` (the run plans its epochs to end within it
  and anneals its learning rate to the end), the checkpoint it selects being ``best.pt``;
- ``stop``: one run stopped by SIGTERM at the largest budget, as a user's Ctrl+C would, ``best.pt`` (else
  ``last.pt``) copied at every budget on the way (how the defaults did before a time budget existed).

Each checkpoint segments held-out phantoms of another seed with ``medseg3d infer`` and is scored with
``medseg3d evaluate``: mean Dice over WT, TC, ET and every case's whole-tumour volume error (BraTS), or the
aorta's Dice and volume error (CT). With ``--shifted`` the held-out phantoms are also drawn as by another scanner
(``medseg3d synth brats|ct --scanner shifted``: other contrasts, bias fields, noise). Prints one JSON line per
budget and appends it to ``bench_out/results.jsonl``; the Dice-against-time curve of each run is in the line
(``curve``).

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
    "ct": REPO / "bundles" / "ct_aorta_resunet_3d",
}
MEDSEG3D = [sys.executable, "-m", "medseg3d.cli"]


def synth(kind: str, out: Path, cases: int, seed: int, shape: list[int] | None, extra: list[str] = ()) -> Path:
    """``medseg3d synth KIND`` into ``out`` unless it is there (a finished tree: the synthesis writes a sibling
    folder first and renames it)."""
    if not out.is_dir():
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        command = [*MEDSEG3D, "synth", kind, str(partial), "--cases", str(cases), "--seed", str(seed), *extra]
        subprocess.run([*command, *(["--shape", *map(str, shape)] if shape else [])], check=True)
        partial.rename(out)
    return out


def dataset(bundle: str, raw: Path, out: Path) -> Path:
    """The training dataset (a folder with dataset.json, 4 folds) of a raw tree, made once."""
    if not (out / "dataset.json").is_file():
        if bundle == "ct":
            out.mkdir(parents=True, exist_ok=True)
            command = [*MEDSEG3D, "datalist", str(raw), "--out", str(out), "--folds", "4", "--labels", "aorta"]
        else:
            command = [sys.executable, "-m", "data_prep.prep_brats", str(raw), str(out), "--folds", "4"]
        subprocess.run(command, check=True)
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


def held_out_scores(
    bundle: str, checkpoint: Path | list[Path], raw: Path, out: Path, overrides: list[str] = ()
) -> dict:
    """``medseg3d infer`` then ``medseg3d evaluate`` over a held-out tree; mean Dice and volume errors (whole
    tumour for BraTS, aorta for CT). ``checkpoint``: a file, a (cross-validation) run folder, or several (an
    ensemble)."""
    checkpoints = [checkpoint] if isinstance(checkpoint, Path) else list(checkpoint)
    missing = [c for c in checkpoints if not c.exists()]
    if missing:
        return {"error": f"no checkpoint {missing[0].name}"}
    shutil.rmtree(out, ignore_errors=True)
    images, truth = (raw / "imagesTr", raw / "labelsTr") if bundle == "ct" else (raw, raw)
    start = time.monotonic()
    subprocess.run(
        [*MEDSEG3D, "infer", str(images), str(out), "--bundle", str(BUNDLES[bundle]), "--checkpoint",
         *map(str, checkpoints), *overrides],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    infer_s = time.monotonic() - start
    task = ["--task", "labels"] if bundle == "ct" else []
    subprocess.run(
        [*MEDSEG3D, "evaluate", str(out), str(truth), *task, "--out", str(out / "evaluation")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    with open(out / "evaluation" / "report.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["status"] == "ok"]
    regions, volume = ({"aorta": "1"}, "aorta") if bundle == "ct" else ({r: r for r in ("WT", "TC", "ET")}, "WT")
    dice = {name: statistics.mean(float(r[f"{column}_dice"]) for r in rows) for name, column in regions.items()}
    column = regions[volume]
    errors = [
        abs(float(r[f"{column}_pred_ml"]) - float(r[f"{column}_gt_ml"])) / float(r[f"{column}_gt_ml"]) for r in rows
    ]
    return {
        "mean_dice": round(statistics.mean(dice.values()), 4),
        **{f"dice_{k}": round(v, 4) for k, v in dice.items()},
        f"{volume.lower()}_volume_error": [round(e, 3) for e in errors],
        f"{volume.lower()}_volume_error_max": round(max(errors), 3),
        "cases": len(rows),
        "infer_s": round(infer_s, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", choices=sorted(BUNDLES), default="3d")
    parser.add_argument("--cases", type=int, default=16, help="training phantoms (16; 4 folds: 12 train, 4 validate)")
    parser.add_argument("--held-out", type=int, default=4, help="held-out phantoms of another seed (4)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="BraTS: 240 240 155; CT: 512 x 512 x Z",
    )
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
    kind = "ct" if args.bundle == "ct" else "brats"
    shape = args.shape or ([240, 240, 155] if kind == "brats" else None)
    shape_name = "x".join(map(str, shape)) if shape else "512x512xZ"
    prefix = "ct_" if kind == "ct" else ""  # the BraTS trees keep the names earlier runs cached them under
    raw = synth(kind, work / f"{prefix}raw_{args.cases}_{shape_name}", args.cases, 0, shape)
    prepared = dataset(args.bundle, raw, work / f"{prefix}prepared_{args.cases}_{shape_name}")
    held = {"same": synth(kind, work / f"{prefix}heldout_{args.held_out}_{shape_name}", args.held_out, 1000, shape)}
    if args.shifted:
        held["shifted"] = synth(
            kind,
            work / f"{prefix}heldout_shifted_{args.held_out}_{shape_name}",
            args.held_out,
            1000,
            shape,
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
                scores = held_out_scores(args.bundle, checkpoint, tree, out, infer_overrides)
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
