"""Multitask at full size: the same CPU budget for segmentation only and for segmentation + grade, held out.

Synthesizes ``--cases`` full-size BraTS 2020 phantoms of both grades (240x240x155, ``medseg3d synth brats
--edition 2020``: about a third LGG, the grade in ``name_mapping.csv``), prepares them (``prep_brats --folds 4``,
grade-stratified) and trains the 3D bundle with ``--max_minutes`` once for segmentation only and once per
multitask loss weighting in ``--weightings`` (``--classify grade --class_loss_weighting W``). Each model
segments ``--held-out`` phantoms of another seed with ``medseg3d infer`` (multitask: ``--classify grade``, the
grade in ``summary.csv``), scored by ``medseg3d evaluate`` (Dice per region) and by the case-level AUC of
``p_HGG`` against the held-out grades.

The radiomics-style baseline beside them: a logistic regression (L2, Newton's method) on the segmentation-only
model's predicted masks: the three sub-region volumes (NCR, ED, ET in mL) and, per sub-region and modality, the
mean intensity (each modality z-scored over the brain), fitted on the training phantoms' predicted masks and
applied to the held-out phantoms'.

Prints one JSON line per model and appends it to ``bench_out/results.jsonl``. Run:
``.venv/bin/python -m benchmarks.bench_multitask [--budget 900] [--weightings dynamic fixed uncertainty]``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_time_to_accuracy import BUNDLES, MEDSEG3D, dataset, held_out_scores, synth, train
from benchmarks.common import append_results, device_name
from medseg3d.core.constants import MODALITIES
from medseg3d.data.brats import find_cases
from medseg3d.data.reader import read_image, read_label
from medseg3d.metrics import roc_auc

SHAPE = [240, 240, 155]


def graded_phantoms(work: Path, cases: int, held_out: int, shape: list[int]) -> tuple[Path, Path, Path]:
    """BraTS 2020 phantoms of both grades in ``work`` (made once, reused): the training tree (seed 0), its prepared
    dataset (4 grade-stratified folds) and the held-out tree (seed 1000)."""
    name, edition = "x".join(map(str, shape)), ["--edition", "2020"]
    raw = synth("brats", work / f"raw2020_{cases}_{name}", cases, 0, shape, edition)
    prepared = dataset("3d", raw, work / f"prepared2020_{cases}_{name}")
    held = synth("brats", work / f"heldout2020_{held_out}_{name}", held_out, 1000, shape, edition)
    return raw, prepared, held


def grades(raw: Path) -> dict[str, int]:
    """Case id -> 1 (HGG) or 0 (LGG) of a raw BraTS 2019/2020 tree."""
    return {case.case_id: int(case.grade == "HGG") for case in find_cases(raw) if case.grade}


def summary_rows(pred: Path) -> dict[str, dict[str, str]]:
    with open(pred / "summary.csv", newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def radiomics_features(raw: Path, pred: Path) -> dict[str, np.ndarray]:
    """Per case: NCR, ED, ET volumes (mL) of the predicted mask and the mean z-scored intensity of each modality
    in each sub-region (0 where it is absent): 3 + 12 features."""
    features = {}
    for case in find_cases(raw):
        labels = read_label(pred / f"{case.case_id}.nii.gz")
        seg = labels.array[0]
        ml = float(np.prod(labels.spacing)) / 1000.0
        values = [float((seg == v).sum()) * ml for v in (1, 2, 4)]
        for modality in MODALITIES:
            image = read_image(case.images[modality]).array[0]
            brain = image != 0
            z = (image - image[brain].mean()) / (image[brain].std() + 1e-6)
            for v in (1, 2, 4):
                region = seg == v
                values.append(float(z[region].mean()) if region.any() else 0.0)
        features[case.case_id] = np.asarray(values)
    return features


def logistic_regression(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> np.ndarray:
    """Weights (with the intercept last) of an L2-regularized logistic regression, by Newton's method."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x1.shape[1])
    penalty = np.eye(x1.shape[1]) * l2
    penalty[-1, -1] = 0.0  # no penalty on the intercept
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x1 @ w))
        gradient = x1.T @ (p - y) + penalty @ w
        hessian = x1.T @ (x1 * (p * (1 - p))[:, None]) + penalty
        w -= np.linalg.solve(hessian, gradient)
    return w


def radiomics_auc(train_raw: Path, train_pred: Path, test_raw: Path, test_pred: Path) -> dict:
    train_x, test_x = radiomics_features(train_raw, train_pred), radiomics_features(test_raw, test_pred)
    train_y, test_y = grades(train_raw), grades(test_raw)
    ids = sorted(train_y)
    x = np.stack([train_x[i] for i in ids])
    mean, std = x.mean(0), x.std(0) + 1e-6
    w = logistic_regression((x - mean) / std, np.array([train_y[i] for i in ids], dtype=float))
    test_ids = sorted(test_y)
    xt = (np.stack([test_x[i] for i in test_ids]) - mean) / std
    scores = np.hstack([xt, np.ones((len(xt), 1))]) @ w
    return {"auc": roc_auc(scores, np.array([test_y[i] for i in test_ids]) == 1), "cases": len(test_ids)}


def class_auc(pred: Path, truth: dict[str, int]) -> dict:
    rows = summary_rows(pred)
    ids = sorted(i for i in truth if i in rows and rows[i].get("p_HGG"))
    p = np.array([float(rows[i]["p_HGG"]) for i in ids])
    y = np.array([truth[i] for i in ids])
    predicted = (p > 0.5).astype(int)
    recalls = [float((predicted[y == c] == c).mean()) for c in (0, 1) if (y == c).any()]
    pooled = [rows[i].get("class_pooled_over") for i in ids]
    return {
        "auc": roc_auc(p, y == 1),
        "balanced_accuracy": statistics.mean(recalls) if recalls else None,
        "cases": len(ids),
        "pooled_over_foreground": sum(1 for over in pooled if over == "foreground"),
    }


def model_overrides(overrides: list[str]) -> list[str]:
    """The training overrides inference needs too: the network and the patch (``--KEY VALUE`` pairs)."""
    keep = ("--network_def", "--roi_size", "--window_size", "--output_mode")
    pairs = zip(overrides[::2], overrides[1::2], strict=False)
    return [part for key, value in pairs if key.startswith(keep) for part in (key, value)]


def infer(checkpoint: Path, raw: Path, out: Path, overrides: list[str]) -> Path:
    if not (out / "summary.csv").is_file():
        command = [*MEDSEG3D, "infer", "--bundle", str(BUNDLES["3d"]), "--checkpoint", str(checkpoint), str(raw)]
        subprocess.run([*command, str(out), *overrides], check=True, stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16, help="training phantoms (16; 4 folds: 12 train)")
    parser.add_argument("--held-out", type=int, default=8, help="held-out phantoms of seed 1000 (8: 3 LGG, 5 HGG)")
    parser.add_argument("--shape", type=int, nargs=3, default=SHAPE, metavar=("X", "Y", "Z"))
    parser.add_argument("--budget", type=float, default=900.0, help="training seconds per model (900)")
    parser.add_argument("--weightings", nargs="+", default=["fixed"], choices=["dynamic", "fixed", "uncertainty"])
    parser.add_argument("--work", type=Path, default=None, help="working folder (kept; data reused when there)")
    parser.add_argument(
        "--skip-segmentation", action="store_true", help="multitask models only (the baseline ran before)"
    )
    args, overrides = parser.parse_known_args()
    overrides = [o for o in overrides if o != "--"]

    work = args.work or Path(tempfile.mkdtemp(prefix="multitask_"))
    work.mkdir(parents=True, exist_ok=True)
    shape_name = "x".join(map(str, args.shape))
    raw, prepared, held = graded_phantoms(work, args.cases, args.held_out, args.shape)
    truth = grades(held)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = ([] if args.skip_segmentation else [("segmentation", [])]) + [
        (f"multitask_{w}", ["--classify", "grade", "--class_loss_weighting", w]) for w in args.weightings
    ]
    records, seg_checkpoint = [], None
    for name, extra in runs:
        run_dir = work / f"run_{name}_{args.budget:.0f}s_{stamp}"
        copies, curve, code = train(BUNDLES["3d"], prepared, run_dir, args.budget, "budget", [], [*extra, *overrides])
        if code != 0:
            print((run_dir.parent / f"{run_dir.name}_stderr.log").read_text()[-3000:], file=sys.stderr)
            return 1
        checkpoint = copies[args.budget]
        infer_overrides = (["--classify", "grade"] if extra else []) + model_overrides(overrides)
        out = work / f"pred_{run_dir.name}"
        case = f"{args.cases} BraTS 2020 phantoms {shape_name}, held-out {args.held_out} of seed 1000"
        record = {"benchmark": "multitask", "model": name, "budget_s": args.budget, "case": case,
                  "overrides": [*extra, *overrides]}  # fmt: skip
        record.update(held_out_scores("3d", checkpoint, held, out, infer_overrides))
        if extra:
            record["classification"] = class_auc(out, truth)
        else:
            seg_checkpoint = checkpoint
            train_pred = infer(checkpoint, raw, work / f"pred_train_{run_dir.name}", model_overrides(overrides))
            record["radiomics_baseline"] = radiomics_auc(raw, train_pred, held, out)
        record.update({"curve": curve, "run_dir": str(run_dir), "device": device_name(),
                       "date": time.strftime("%Y-%m-%d")})  # fmt: skip
        print(json.dumps(record), flush=True)
        records.append(record)
    append_results(records)
    return 0 if seg_checkpoint is not None or args.skip_segmentation else 1


if __name__ == "__main__":
    sys.exit(main())
