"""``medseg3d demo``: the pipeline end to end on synthetic data: synthesize, prepare, train, infer, evaluate."""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

from medseg3d.bundle.infer import infer_folder
from medseg3d.bundle.workflow import run_bundle
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.evaluation import run_evaluation
from medseg3d.preparation.brats import PrepOptions, format_report, prep_brats

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "brats_mri_resunet_3d"
# The quick optimization for synthetic data (measured in docs/benchmarks.md, learning check).
FAST_SYNTHETIC = {"optimizer_name": "adamw", "learning_rate": 0.01, "lr_schedule": "warmup_cosine"}


def run_demo(
    out: Path, cases: int = 8, shape: tuple[int, int, int] = (120, 120, 78), seed: int = 0, epochs: int = 40
) -> int:
    """Synthesize a raw BraTS 2021 tree, prepare it with ``prep_brats``, train the 3D Res-UNet bundle briefly,
    run batch inference on held-out cases and evaluate the predictions against their ground truth.

    The training uses the bundle's default configuration but for ``max_epochs`` (``epochs``), a validation
    every 5 epochs and AdamW at 1e-2 with warmup and cosine decay, which learns these phantoms in a couple
    of minutes on a CPU (the default, nnU-Net's SGD, takes about 11 minutes: docs/benchmarks.md). It
    writes a full run directory (``out/run``) and prints its curves path. Two held-out cases in the BraTS
    2023 layout (another seed) are segmented by ``medseg3d infer`` (``out/predictions``, with previews; labels
    in the 2023 convention) and scored by ``medseg3d evaluate`` against their segmentations.

    Returns:
        the exit code: 0 when every stage succeeded.
    """

    raw, prepared, run_dir = out / "raw", out / "prepared", out / "run"
    start = time.perf_counter()
    print(f"[1/5] synthesizing {cases} BraTS 2021 cases + 2 validation cases of {shape} into {raw}")
    write_brats_tree(raw, cases=cases, edition="2021", shape=shape, seed=seed, validation_cases=2)
    print(f"[2/5] prep_brats {raw} {prepared}")
    result = prep_brats(raw, prepared, PrepOptions(folds=min(5, cases), seed=seed, workers=2))
    print(format_report(result))
    with open(prepared / "prep_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"{'case':<18} {'status':<8} {'split':<6} {'shape':<12} {'NCR':>7} {'ED':>7} {'ET':>7}")
    for row in rows:
        print(
            f"{row['case_id']:<18} {row['status']:<8} {row['split']:<6} {row['shape']:<12} "
            f"{row['NCR_voxels']:>7} {row['ED_voxels']:>7} {row['ET_voxels']:>7}"
        )
    if result.rejected:
        return 1
    val_interval = min(5, epochs)
    fast = " ".join(f"--{key} {value}" for key, value in FAST_SYNTHETIC.items())
    print(f"[3/5] medseg3d train --bundle {BUNDLE} --max_epochs {epochs} --val_interval {val_interval} {fast}")
    overrides = {
        "dataset_dir": str(prepared),
        "output_dir": str(run_dir),
        "max_epochs": epochs,
        "val_interval": val_interval,
        "iterations_per_epoch": 0,
        "seed": seed,
        **FAST_SYNTHETIC,
    }
    run_bundle(BUNDLE, "train", overrides)
    with open(run_dir / "metrics.csv", newline="") as f:
        metrics = [row for row in csv.DictReader(f) if row.get("val_mean_dice")]
    print(f"{'epoch':>5} {'train loss':>10} {'mean Dice':>9} {'WT':>6} {'TC':>6} {'ET':>6}")
    for row in metrics:
        print(
            f"{row['epoch']:>5} {float(row['train_loss']):>10.4f} {float(row['val_mean_dice']):>9.3f} "
            f"{float(row['val_dice_WT']):>6.3f} {float(row['val_dice_TC']):>6.3f} {float(row['val_dice_ET']):>6.3f}"
        )
    code = _infer_and_evaluate(out, run_dir, shape, seed)
    print(f"prepared dataset: {prepared / 'dataset.json'}  report: {prepared / 'prep_report.csv'}")
    print(f"run: {run_dir}  curves: {run_dir / 'curves.png'}  checkpoints: {run_dir / 'checkpoints'}")
    print(f"continue training: medseg3d train --resume {run_dir} --max_epochs {epochs * 2}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return code


def _infer_and_evaluate(out: Path, run_dir: Path, shape: tuple[int, int, int], seed: int) -> int:
    """Steps 4 and 5: held-out cases without segmentation -> ``medseg3d infer`` -> ``medseg3d evaluate``."""

    heldout, truth, predictions = out / "heldout", out / "heldout_truth", out / "predictions"
    for folder in (heldout, truth, predictions):
        shutil.rmtree(folder, ignore_errors=True)
    folders = write_brats_tree(heldout, cases=2, edition="2023", shape=shape, seed=seed + 1)
    truth.mkdir(parents=True)
    for folder in folders:
        for seg in folder.glob("*-seg.nii.gz"):
            seg.rename(truth / seg.name)  # new scans come without ground truth
    checkpoint = run_dir / "checkpoints" / "best.pt"
    print(f"[4/5] medseg3d infer {heldout} {predictions} --bundle {BUNDLE} --checkpoint {checkpoint} --preview")
    infer_code = infer_folder(
        BUNDLE, heldout, predictions, checkpoint=checkpoint, preview=True, overrides={"progress": False}
    )
    print(f"[5/5] medseg3d evaluate {predictions} {truth}")
    eval_code = run_evaluation(predictions, truth, task="brats", out=predictions / "evaluation")
    print(f"predictions: {predictions}  summary: {predictions / 'summary.csv'}  previews: {predictions / 'previews'}")
    return infer_code or eval_code
