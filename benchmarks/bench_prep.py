"""prep_brats on full-size (240x240x155) synthetic BraTS cases.

Two comparisons, each measured in one run, alternating, median of ``--repeats``:

1. Memory stays flat: converting 8 cases versus 2 cases in a fresh process each; the ratio of peak
   RSS (8/2) must stay near 1, and the median seconds per case (from the report) must not grow.
2. Speed of our per-case path (MONAI transforms, checks, atomic writes) versus a plain reference
   written with nibabel and numpy only (load, z-score over non-zero voxels, np.pad, save), with the
   largest absolute difference between their prepared images as the agreement.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import alternate, emit, run_python

# Runs in a fresh interpreter: converts every case under argv[1] into argv[2], reports time and peak RSS.
_CONVERT = """
import json, sys, time
from medseg3d.preparation.brats import PrepOptions, prep_brats
start = time.perf_counter()
result = prep_brats(sys.argv[1], sys.argv[2], PrepOptions(folds=2, overwrite=True))
seconds = time.perf_counter() - start
assert not result.rejected, result.rejected
# VmHWM: this interpreter's own peak (ru_maxrss of a child starts from its parent's peak at fork)
rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) / 1024
per_case = sorted(row["seconds"] for row in result.rows)
median = per_case[len(per_case) // 2]
print(json.dumps({"seconds": seconds, "per_case_s": median, "cases": len(result.rows), "peak_rss_mb": rss}))
"""


def reference_prepare(case_dir: Path, out: Path) -> None:
    """The baseline: the same conversion with nibabel and numpy only, no checks."""
    import nibabel as nib

    names = ("t1", "t1ce", "t2", "flair")
    files = {n: next(case_dir.glob(f"*_{n}.nii.gz")) for n in names}
    first = nib.load(files["t1"])
    stack = []
    for n in names:
        data = np.asarray(nib.load(files[n]).dataobj, dtype=np.float32)
        brain = data != 0
        data[brain] = (data[brain] - data[brain].mean()) / data[brain].std()
        stack.append(np.pad(data, ((0, 0), (0, 0), (2, 3))))
    image = np.stack(stack, axis=-1)
    nib.save(nib.Nifti1Image(image, first.affine), out / "image.nii.gz")
    seg = np.asarray(nib.load(next(case_dir.glob("*_seg.nii.gz"))).dataobj).astype(np.uint8)
    seg[seg == 4] = 3
    nib.save(nib.Nifti1Image(np.pad(seg, ((0, 0), (0, 0), (2, 3))), first.affine), out / "label.nii.gz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from medseg3d.data.synth_brats import write_brats_tree

    work = Path(tempfile.mkdtemp(prefix="bench_prep_"))
    try:
        start = time.perf_counter()
        write_brats_tree(work / "raw8", cases=8, edition="2021", shape=(240, 240, 155), seed=0)
        synth_s = (time.perf_counter() - start) / 8
        raw2 = work / "raw2" / "tree"
        raw2.mkdir(parents=True)
        for case in sorted(p for p in (work / "raw8").rglob("BraTS2021_*") if p.is_dir())[:2]:
            shutil.copytree(case, raw2 / case.name)

        runs: dict[str, list[dict]] = {"2": [], "8": []}

        def convert(n: str) -> float:
            record = run_python(_CONVERT, str(work / f"raw{n}"), str(work / f"out{n}"))
            runs[n].append(record)
            return record["per_case_s"]

        per_case_8, per_case_2 = alternate(lambda: convert("8"), lambda: convert("2"), args.repeats)
        rss8 = float(np.median([r["peak_rss_mb"] for r in runs["8"]]))
        rss2 = float(np.median([r["peak_rss_mb"] for r in runs["2"]]))
        emit(
            "prep",
            "median seconds per full-size case within a run, 8 cases vs 2 cases",
            per_case_8,
            "2 cases",
            per_case_2,
            peak_rss_mb=round(rss8, 1),
            baseline_peak_rss_mb=round(rss2, 1),
            rss_ratio_8_vs_2=round(rss8 / rss2, 3),
            run_s_8=round(float(np.median([r["seconds"] for r in runs["8"]])), 2),
            run_s_2=round(float(np.median([r["seconds"] for r in runs["2"]])), 2),
            synth_s_per_case=round(synth_s, 2),
        )

        # Ours vs the plain reference on one case, same process conditions (fresh interpreter each).
        case = sorted(p for p in raw2.iterdir())[0]
        one = work / "one" / "tree"
        shutil.copytree(case, one / case.name)
        ref_out = work / "ref"
        ref_out.mkdir()

        from medseg3d.preparation.brats import PrepOptions, prep_brats

        def ours() -> float:
            start = time.perf_counter()
            prep_brats(one.parent, work / "out1", PrepOptions(folds=1, overwrite=True))
            return time.perf_counter() - start

        def reference() -> float:
            start = time.perf_counter()
            reference_prepare(one / case.name, ref_out)
            return time.perf_counter() - start

        ours_s, ref_s = alternate(ours, reference, args.repeats)
        import nibabel as nib

        a = np.asarray(nib.load(next((work / "out1" / "imagesTr").glob("*.nii.gz"))).dataobj)
        b = np.asarray(nib.load(ref_out / "image.nii.gz").dataobj)
        emit(
            "prep",
            "one full-size case: read, check, normalize, pad, write",
            ours_s,
            "nibabel+numpy reference without checks",
            ref_s,
            agreement=f"max |ours - reference| = {float(np.abs(a - b).max()):.2e}",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
