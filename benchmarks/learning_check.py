"""Does the bundle's default configuration learn? Validation mean Dice against CPU training time.

Synthesizes BraTS 2021 phantoms (``medseg3d synth brats``), prepares them (``prep_brats``), and runs
``medseg3d train --bundle bundles/brats_mri_resunet_3d`` with no override but the data and run folders.
After ``--budget`` seconds of wall clock it sends SIGTERM (the run stops cleanly and saves
``last.pt``, as a cluster's time limit would), then prints one JSON line per validation: epoch,
seconds since the command started, the validation Dice, and when mean Dice first reached
``--target``. Not part of ``make bench`` (it takes its whole budget): run it as
``.venv/bin/python -m benchmarks.learning_check``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, device_name, metrics_rows

BUNDLE = REPO / "bundles" / "brats_mri_resunet_3d"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10, help="synthetic training cases (10: 8 train, 2 validate)")
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--budget", type=float, default=900.0, help="seconds of training before SIGTERM (900)")
    parser.add_argument("--target", type=float, default=0.80, help="validation mean Dice to reach (0.80)")
    parser.add_argument("--work", type=Path, default=None, help="working folder (a temporary one by default)")
    args, overrides = parser.parse_known_args()  # the rest: extra --KEY VALUE bundle overrides (none by default)

    work = args.work or Path(tempfile.mkdtemp(prefix="learning_check_"))
    raw, prepared, run_dir = work / "raw", work / "prepared", work / "run"
    medseg3d = [sys.executable, "-m", "medseg3d.cli"]
    shape = [str(n) for n in args.shape]
    synth = [*medseg3d, "synth", "brats", str(raw), "--cases", str(args.cases), "--shape", *shape]
    subprocess.run(synth, check=True)
    folds = str(min(5, args.cases))
    subprocess.run(
        [sys.executable, "-m", "data_prep.prep_brats", str(raw), str(prepared), "--folds", folds], check=True
    )

    command = [*medseg3d, "train", "--bundle", str(BUNDLE), "--dataset_dir", str(prepared)]
    command += ["--output_dir", str(run_dir), *overrides]
    print(" ".join(command), flush=True)
    start = time.monotonic()
    seen: dict[int, float] = {}  # epoch -> seconds since start when its metrics row appeared
    log = open(work / "train_stderr.log", "w")  # a file, not a pipe: a full pipe would block the run
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
    while process.poll() is None:
        elapsed = time.monotonic() - start
        for row in metrics_rows(run_dir):
            seen.setdefault(int(row["epoch"]), elapsed)
        if elapsed > args.budget:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(1.0)
    process.wait()
    log.close()
    reached = None
    for row in metrics_rows(run_dir):
        if not row.get("val_mean_dice"):
            continue
        epoch, dice = int(row["epoch"]), float(row["val_mean_dice"])
        record = {
            "epoch": epoch,
            "seconds": round(seen.get(epoch, time.monotonic() - start), 1),
            "val_mean_dice": dice,
            **{k: float(v) for k, v in row.items() if k.startswith("val_dice_") and v},
        }
        print(json.dumps(record), flush=True)
        if reached is None and dice >= args.target:
            reached = record
    summary = {
        "benchmark": "learning_check",
        "case": f"{args.cases} synthetic cases {'x'.join(shape)}, bundle defaults",
        "target": args.target,
        "reached": reached,
        "budget_s": args.budget,
        "exit_code": process.returncode,
        "run_dir": str(run_dir),
        "device": device_name(),
    }
    print(json.dumps(summary), flush=True)
    if process.returncode not in (0, 128 + signal.SIGTERM):
        print((work / "train_stderr.log").read_text()[-3000:], file=sys.stderr)
        return 1
    return 0 if reached is not None else 1


if __name__ == "__main__":
    sys.exit(main())
