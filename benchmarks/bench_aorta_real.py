"""The CT aorta bundle on the three real CTs in ``../shared/data/real``: leave-one-out Dice, and batch throughput.

1. Leave-one-out. The three real CTs (``totalseg_abdomen_ct``: 3 mm abdomen; ``totalseg_aorta_cta``: 1.5 mm
   thoracoabdominal CTA; ``totalseg_ct_dicom``: a 20-slice JPEG-2000 DICOM series) with their aorta masks
   (label 52 of TotalSegmentator's ``total`` output, or its binary aorta mask: another model's output, not
   manual ground truth) join ``--phantoms`` synthetic CTs (``medseg3d synth ct``). For each real case, the
   bundle trains for ``--budget`` seconds on the other two real cases and the phantoms (the held-out case is
   the validation fold, so its Dice is also tracked), with heavier spatial augmentation than the default,
   then ``medseg3d infer`` segments the held-out scan in its own geometry and its Dice to the reference mask
   is computed. The DICOM series goes in as the series folder itself (SimpleITK reads it); its reference
   mask, saved by TotalSegmentator as LAS, is put on the series' LPS grid first (an exact axis flip).
2. Throughput. ``--throughput-cases`` phantom CTs of 512x512x300 in one folder, ``medseg3d infer`` with the
   last fold's weights: cases per minute (model loading included) and the peak resident memory of the
   process (VmHWM, polled).

Skips (exit 0, one JSON line saying so) when ``../shared/data/real`` is absent. Run as
``.venv/bin/python -m benchmarks.bench_aorta_real [--budget 240]``; ``make bench`` runs it with the defaults
(about 3 x budget + 5 minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, append_results, device_name, vm_hwm_mb

REAL = REPO.parent / "shared" / "data" / "real"
BUNDLE = REPO / "bundles" / "ct_aorta_resunet_3d"
MEDSEG3D = [sys.executable, "-m", "medseg3d.cli"]
AORTA_TOTAL = 52  # TotalSegmentator "total" task
CASES = {  # case id -> (image, mask, label value in the mask)
    "real_abdomen": (
        "totalseg_abdomen_ct/example_ct.nii.gz", "totalseg_abdomen_ct/example_seg_fast_force_split.nii.gz", AORTA_TOTAL
    ),
    "real_cta": ("totalseg_aorta_cta/ct_cropped.nii.gz", "totalseg_aorta_cta/aorta.nii.gz", 1),
    "real_dicom": ("totalseg_ct_dicom/dicom", "totalseg_ct_dicom/example_seg_dicom.nii.gz", AORTA_TOTAL),
}  # fmt: skip
# The quick optimization (as make demo) and heavier spatial augmentation: three real scans are very few.
TRAIN = [
    "--optimizer_name", "adamw", "--learning_rate", "0.003", "--lr_schedule", "warmup_cosine",
    "--prob_rotate", "0.4", "--prob_zoom", "0.4", "--prob_noise", "0.2", "--val_interval", "5",
    "--iterations_per_epoch", "0",  # one pass over the cases per epoch, as when the figures were taken
]  # fmt: skip


def _read(path: Path):
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def build_dataset(work: Path, phantoms: int, seed: int = 0) -> Path:
    """imagesTr/labelsTr with the three real CTs (binary aorta masks on their scans' grids) and phantoms."""
    import SimpleITK as sitk

    from medseg3d.data.synth_ct import write_ct_cases

    data = work / "data"
    (data / "imagesTr").mkdir(parents=True, exist_ok=True)
    (data / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case_id, (image, mask, value) in CASES.items():
        source = REAL / image
        target = data / "imagesTr" / (case_id if source.is_dir() else f"{case_id}.nii.gz")
        if not target.exists():
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy(source, target)
        grid = _read(source)
        labels = sitk.ReadImage(str(REAL / mask))
        labels = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
        binary = sitk.Cast(sitk.BinaryThreshold(labels, value, value, 1, 0), sitk.sitkUInt8)
        sitk.WriteImage(binary, str(data / "labelsTr" / f"{case_id}.nii.gz"))
    synth = work / "phantoms"
    write_ct_cases(synth, cases=phantoms, seed=seed, shape=(160, 160, 96))
    for path in sorted((synth / "imagesTr").glob("*.nii.gz")):
        path.rename(data / "imagesTr" / f"phantom_{path.name}")
        (synth / "labelsTr" / path.name).rename(data / "labelsTr" / f"phantom_{path.name}")
    return data


def write_folds(data: Path, held_out: str) -> None:
    """dataset.json (as ``medseg3d datalist`` writes it) with ``held_out`` alone in fold 1."""
    from medseg3d.data.pairs import build_datalist

    result = build_datalist(data, out=data / "lists" / held_out, folds=1, label_names=["aorta"])
    content = json.loads(result.path.read_text())
    for entry in content["training"]:
        entry["fold"] = 1 if entry["case_id"] == held_out else 0
    result.path.write_text(json.dumps(content, indent=2))


def run_polled(command: list[str], log: Path, budget: float | None = None) -> tuple[int, float, float]:
    """Run ``command`` (SIGTERM after ``budget`` s); exit code, seconds, peak memory (MiB)."""
    start, peak = time.monotonic(), 0.0
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        stopped = False
        while process.poll() is None:
            peak = max(peak, vm_hwm_mb(process.pid) or 0.0)
            if budget is not None and time.monotonic() - start > budget and not stopped:
                process.send_signal(signal.SIGTERM)
                stopped = True
            time.sleep(0.5)
    return process.returncode, time.monotonic() - start, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=240.0, help="seconds of training per held-out case (240)")
    parser.add_argument("--phantoms", type=int, default=6, help="synthetic CTs added to the training data (6)")
    parser.add_argument("--throughput-cases", type=int, default=10, help="512x512x300 phantoms to infer (10)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="max_epochs of each training run, so that the cosine schedule ends "
        "inside the budget (default: the bundle's)",
    )
    parser.add_argument("--num-workers", type=int, default=None, help="data loader workers (default: the bundle's)")
    parser.add_argument(
        "--held-out", nargs="+", choices=sorted(CASES), default=list(CASES), help="the cases to hold out (all three)"
    )
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args, _ = parser.parse_known_args()  # make bench passes its own arguments to every benchmark
    if not REAL.is_dir():
        print(json.dumps({"benchmark": "aorta_real", "skipped": f"{REAL} is absent"}))
        return 0
    import SimpleITK as sitk

    from medseg3d.metrics import dice

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_aorta_"))
    work.mkdir(parents=True, exist_ok=True)
    data = build_dataset(work, args.phantoms)
    records = []
    run_dir = None
    for held_out in args.held_out:
        image = CASES[held_out][0]
        write_folds(data, held_out)
        run_dir = work / f"run_{held_out}"
        command = [*MEDSEG3D, "train", "--bundle", str(BUNDLE), "--dataset_dir", str(data / "lists" / held_out)]
        command += ["--output_dir", str(run_dir), "--fold", "1", *TRAIN]
        if args.epochs is not None:
            command += ["--max_epochs", str(args.epochs)]
        if args.num_workers is not None:
            command += ["--num_workers", str(args.num_workers)]
        code, seconds, peak = run_polled(command, work / f"train_{held_out}.log", args.budget)
        if code not in (0, 128 + signal.SIGTERM):
            print((work / f"train_{held_out}.log").read_text()[-3000:], file=sys.stderr)
            return 1
        scans = work / f"scan_{held_out}"
        scans.mkdir(exist_ok=True)
        source = REAL / image
        link = scans / (held_out if source.is_dir() else f"{held_out}.nii.gz")
        if not link.exists():
            link.symlink_to(source)
        pred_dir = work / f"pred_{held_out}"
        infer = [*MEDSEG3D, "infer", str(scans), str(pred_dir), "--bundle", str(BUNDLE)]
        infer += ["--checkpoint", str(run_dir / "checkpoints" / "last.pt")]
        done = subprocess.run(infer, capture_output=True, encoding="utf-8", errors="replace")
        if done.returncode != 0:
            print(f"inference on {held_out} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}", file=sys.stderr)
            return 1
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_dir / f"{held_out}.nii.gz"))) == 1
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(data / "labelsTr" / f"{held_out}.nii.gz"))) == 1
        with open(run_dir / "metrics.csv", newline="") as f:
            epochs = len(list(csv.DictReader(f)))
        record = {
            "benchmark": "aorta_real_leave_one_out",
            "held_out": held_out,
            "dice": round(dice(pred, ref), 4),
            "reference_voxels": int(ref.sum()),
            "predicted_voxels": int(pred.sum()),
            "train_s": round(seconds, 1),
            "epochs": epochs,
            "train_peak_rss_mb": round(peak, 1),
            "max_epochs": args.epochs,
            "case": f"trained on the 2 other real CTs + {args.phantoms} phantoms for {args.budget:g} s; "
            "reference = TotalSegmentator output, not manual",
            "device": device_name(),
        }
        print(json.dumps(record), flush=True)
        records.append(record)
    if not args.skip_throughput:
        records.append(throughput(args, work, run_dir))
    append_results(records)
    return 0


def throughput(args: argparse.Namespace, work: Path, run_dir: Path) -> dict:
    """``medseg3d infer`` over ``--throughput-cases`` phantom CTs of 512x512x300 with ``run_dir``'s weights."""
    from medseg3d.data.synth_ct import write_ct_cases

    folder = work / "throughput"
    write_ct_cases(folder, cases=args.throughput_cases, shape=(512, 512, 300), seed=7)
    infer = [*MEDSEG3D, "infer", str(folder / "imagesTr"), str(work / "throughput_pred"), "--bundle", str(BUNDLE)]
    infer += ["--checkpoint", str(run_dir / "checkpoints" / "last.pt")]
    code, seconds, peak = run_polled(infer, work / "throughput.log")
    with open(work / "throughput_pred" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    record = {
        "benchmark": "aorta_throughput",
        "case": f"{args.throughput_cases} phantom CTs 512x512x300, medseg3d infer (model loading included)",
        "exit_code": code,
        "ok": sum(r["status"] == "ok" for r in rows),
        "cases_per_minute": round(len(rows) / seconds * 60, 2),
        "seconds_per_case_median": float(np.median([float(r["seconds"]) for r in rows])),
        "peak_rss_mb": round(peak, 1),
        "device": device_name(),
    }
    print(json.dumps(record), flush=True)
    return record


if __name__ == "__main__":
    sys.exit(main())
