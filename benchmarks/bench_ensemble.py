"""Ensembles and postprocessing chosen by cross-validation, held out: each fold's model beside their ensemble.

Trains the 3D BraTS bundle with ``medseg3d train --folds all --max_minutes B`` (or ``--folds 0,1``) on
``--cases`` full-size BraTS 2020 phantoms (``prep_brats --folds 4``; the data of ``bench_multitask`` is reused
when there), which also scores the postprocessing candidates on the out-of-fold predictions
(``postprocessing.json``). Then
``medseg3d infer`` segments ``--held-out`` phantoms of another seed with

- each fold's ``best.pt`` alone (the bundle's default postprocessing),
- the ensemble of all folds (``--checkpoint CV_DIR``) with the bundle's default postprocessing,
- the ensemble with the rules its cross-validation chose (what ``medseg3d infer --checkpoint CV_DIR`` does),

each scored by ``medseg3d evaluate`` (Dice per region, lesion-wise F1). Prints one JSON line and appends it to
``bench_out/results.jsonl``. Run: ``.venv/bin/python -m benchmarks.bench_ensemble [--budget 300]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_multitask import graded_phantoms
from benchmarks.bench_time_to_accuracy import BUNDLES, MEDSEG3D, held_out_scores
from benchmarks.common import append_results, device_name

SHAPE = [240, 240, 155]
DEFAULT_RULES = '{"all": {"min_size": 10}}'


def lesion_f1(pred: Path) -> float:
    """BraTS lesion-wise F1 over the held-out cases, pooled per region, then averaged (``medseg3d evaluate``)."""
    with open(pred / "evaluation" / "report.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["status"] == "ok"]
    scores = []
    for region in ("WT", "TC", "ET"):
        tp, fp, fn = (sum(int(float(r[f"{region}_lesion_{k}"])) for r in rows) for k in ("tp", "fp", "fn"))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    return round(statistics.mean(scores), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16, help="training phantoms (16; 4 folds)")
    parser.add_argument("--held-out", type=int, default=8, help="held-out phantoms of seed 1000")
    parser.add_argument("--shape", type=int, nargs=3, default=SHAPE, metavar=("X", "Y", "Z"))
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per fold (300)")
    parser.add_argument("--work", type=Path, default=Path("bench_out/mt"), help="working folder (data reused)")
    parser.add_argument("--folds", default="all", help="folds to train (all, or a list like 0,1)")
    args = parser.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    shape_name = "x".join(map(str, args.shape))
    _, prepared, held = graded_phantoms(work, args.cases, args.held_out, args.shape)

    cv = work / f"cv_{args.budget:.0f}s_{time.strftime('%Y%m%d-%H%M%S')}"
    command = [*MEDSEG3D, "train", "--bundle", str(BUNDLES["3d"]), "--folds", args.folds, "--dataset_dir",
               str(prepared), "--output_dir", str(cv), "--max_minutes", f"{args.budget / 60:g}"]  # fmt: skip
    print(" ".join(command), flush=True)
    start = time.monotonic()
    with open(work / f"{cv.name}_stderr.log", "w") as log:
        code = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=log).returncode
    train_s = time.monotonic() - start
    if code != 0:
        print((work / f"{cv.name}_stderr.log").read_text()[-3000:], file=sys.stderr)
        return 1

    record: dict = {"benchmark": "ensemble", "budget_per_fold_s": args.budget, "train_and_select_s": round(train_s),
                    "case": f"{args.cases} BraTS 2020 phantoms {shape_name}, 4 folds, trained: {args.folds}; "
                            f"held-out {args.held_out} of seed 1000"}  # fmt: skip
    folds = sorted(cv.glob("fold_*"), key=lambda p: int(p.name.split("_")[1]))
    default = ["--postprocess", DEFAULT_RULES]
    for fold in folds:
        out = work / f"pred_{cv.name}_{fold.name}"
        scores = held_out_scores("3d", fold / "checkpoints" / "best.pt", held, out, default)
        record[fold.name] = {**scores, "lesion_f1": lesion_f1(out)}
    out = work / f"pred_{cv.name}_ensemble"
    record["ensemble"] = {**held_out_scores("3d", cv, held, out, default), "lesion_f1": lesion_f1(out)}
    out = work / f"pred_{cv.name}_ensemble_chosen"
    record["ensemble_chosen_postprocessing"] = {**held_out_scores("3d", cv, held, out), "lesion_f1": lesion_f1(out)}
    chosen = json.loads((cv / "postprocessing.json").read_text())
    record["postprocessing"] = {key: chosen[key] for key in ("rules", "none", "bundle_default", "chosen", "cases")}
    record["postprocessing"]["candidates"] = [
        {k: c[k] for k in ("name", "mean_dice", "lesion_f1", "accepted")} for c in chosen["candidates"]
    ]
    fold_dice = [record[f.name]["mean_dice"] for f in folds]
    record.update(
        fold_mean_dice=round(statistics.mean(fold_dice), 4),
        ensemble_gain=round(record["ensemble"]["mean_dice"] - statistics.mean(fold_dice), 4),
        device=device_name(),
        date=time.strftime("%Y-%m-%d"),
        cv_dir=str(cv),
    )
    print(json.dumps(record), flush=True)
    append_results([record])
    return 0


if __name__ == "__main__":
    sys.exit(main())
