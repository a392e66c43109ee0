"""``medseg3d demo``: the pipeline end to end on synthetic data, as far as it is built."""

from __future__ import annotations

import csv
import time
from pathlib import Path


def run_demo(out: Path, cases: int = 8, shape: tuple[int, int, int] = (120, 120, 78), seed: int = 0) -> int:
    """Synthesize a raw BraTS 2021 tree, prepare it with ``prep_brats``, print the report summary.

    Returns:
        the exit code: 0 when every stage succeeded.
    """
    from data_prep.prep_brats import PrepOptions, prep_brats, summarize
    from medseg3d.data.synth_brats import write_brats_tree

    raw, prepared = out / "raw", out / "prepared"
    start = time.perf_counter()
    print(f"[1/2] synthesizing {cases} BraTS 2021 cases + 2 validation cases of {shape} into {raw}")
    write_brats_tree(raw, cases=cases, edition="2021", shape=shape, seed=seed, validation_cases=2)
    print(f"[2/2] prep_brats {raw} {prepared}")
    result = prep_brats(raw, prepared, PrepOptions(folds=min(5, cases), seed=seed, workers=2))
    print(summarize(result))
    with open(prepared / "prep_report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    print(f"{'case':<18} {'status':<8} {'split':<6} {'shape':<12} {'NCR':>7} {'ED':>7} {'ET':>7}")
    for row in rows:
        print(
            f"{row['case_id']:<18} {row['status']:<8} {row['split']:<6} {row['shape']:<12} "
            f"{row['NCR_voxels']:>7} {row['ED_voxels']:>7} {row['ET_voxels']:>7}"
        )
    print(f"prepared dataset: {prepared / 'dataset.json'}  report: {prepared / 'prep_report.csv'}")
    print(f"demo finished in {time.perf_counter() - start:.1f} s")
    return 1 if result.rejected else 0
