"""Peak memory of one long CT through the CT bundle's inference, in chunks of whole slices versus in one piece.

One 512 x 512 x 900 CT phantom (``write_ct_cases``; ``--slices`` to change) goes through the CT bundle's own
``runner`` (``bundles/ct_aorta_resunet_3d/configs/inference.yaml``: read, orientation, 1.5 mm spacing, the body's
box, HU window, sliding window, labels back on the scan's grid, largest component, write) twice, each in a fresh
interpreter so its peak resident memory (VmHWM) is its own: with the bundle's ``chunk_voxels`` (512x512x320
slices per chunk, 100 mm overlap) and with ``chunk_voxels: null`` (the scan in one piece). The weights are the
bundle's own network trained for ``--epochs`` (default 200: about 4 minutes on 2 cores, validation Dice 0.83) on
6 phantoms of 160x160x96, the same file for both runs: a model with structure in its output, where random
weights would label salt and pepper over half the scan and measure the postprocessing and the diameter of that
instead (see ``docs/benchmarks.md``).
Agreement: Dice of the aorta label between the two maps, and the fraction of voxels that differ. Ratio
(``emit``'s baseline over ours): peak RSS in one piece / peak RSS chunked, higher is better; the seconds show
what the overlaps cost.

``--quick``: 256 x 256 x 600, the chunk size scaled to 256x256x320, 2 epochs of training.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, emit, run_python

CT_BUNDLE = REPO / "bundles" / "ct_aorta_resunet_3d"

_RUN = r"""
import json, os, sys, time
from pathlib import Path
from benchmarks.common import vm_hwm_mb
from medseg3d.bundle.workflow import make_workflow
wf = make_workflow(Path(sys.argv[1]), "inference", json.loads(sys.argv[2]))
wf.initialize()
start = time.perf_counter()
rows = wf.parser.get_parsed_content("runner").run()
seconds = time.perf_counter() - start
ok = sum(r["status"] == "ok" for r in rows)
# VmHWM: this interpreter's own peak (ru_maxrss would start from the parent's peak at fork)
print(json.dumps({"peak_rss_mb": vm_hwm_mb(os.getpid()), "ok": ok, "seconds": seconds}))
"""


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def trained_checkpoint(work: Path, epochs: int, overrides: dict[str, Any]) -> Path:
    """The CT bundle trained ``epochs`` epochs on 6 phantoms (``medseg3d synth ct``, 160x160x96), 2 folds."""
    from medseg3d.bundle.workflow import run_bundle
    from medseg3d.data.pairs import build_datalist
    from medseg3d.data.synth_ct import write_ct_cases
    from medseg3d.demo import FAST_SYNTHETIC

    data = work / "train_data"
    write_ct_cases(data, cases=6, shape=(160, 160, 96), seed=3)
    build_datalist(data, folds=2, label_names=["aorta"])
    run = work / "train_run"
    inference_only = ("sw_batch_size", "overlap", "tta", "postprocess", "chunk_voxels", "chunk_overlap_mm")
    train = {k: v for k, v in overrides.items() if k not in inference_only}
    settings = {
        "dataset_dir": str(data),
        "output_dir": str(run),
        "max_epochs": epochs,
        "val_interval": epochs,
        "iterations_per_epoch": 0,
    }
    run_bundle(CT_BUNDLE, "train", {**settings, **FAST_SYNTHETIC, **train})
    return run / "checkpoints" / "last.pt"


def bench_chunks(
    work: Path, shape: tuple[int, int, int], chunk_voxels: int, epochs: int, overrides: dict[str, Any]
) -> dict:
    from medseg3d.data.synth_ct import write_ct_cases
    from medseg3d.inference.predictor import chunk_slices
    from medseg3d.metrics import dice

    scans = work / "scans"
    scans.mkdir()
    image = write_ct_cases(work / "raw", cases=1, shape=shape, seed=0)[0]
    shutil.move(image, scans / image.name)
    shutil.rmtree(work / "raw")
    checkpoint = trained_checkpoint(work, epochs, overrides)
    results = {}
    for name, chunks in (("chunked", chunk_voxels), ("whole", None)):
        settings = {"input_dir": str(scans), "output_dir": str(work / name), "checkpoint": str(checkpoint)}
        result = run_python(_RUN, str(CT_BUNDLE), json.dumps({**settings, "progress": False, **overrides,
                                                                 "chunk_voxels": chunks}))  # fmt: skip
        if result["ok"] != 1:
            raise RuntimeError(f"the {name} run failed; see {work / name / 'summary.csv'}")
        results[name] = result
    import nibabel as nib

    affine = nib.load(str(scans / image.name)).affine
    parts = chunk_slices(shape, affine, chunk_voxels, 100.0)
    chunked, whole = _load(work / "chunked" / image.name), _load(work / "whole" / image.name)
    return emit(
        "infer_ct_chunks",
        f"peak RSS, CT {'x'.join(map(str, shape))} through the CT bundle's inference in {len(parts)} chunks of "
        f"{parts[0][1] - parts[0][0]} slices (100 mm overlap); weights trained {epochs} epochs on phantoms",
        results["chunked"]["peak_rss_mb"],
        "the same inference with chunk_voxels null (the scan in one piece)",
        results["whole"]["peak_rss_mb"],
        agreement=round(float(dice(chunked == 1, whole == 1)), 5),
        peak_rss_mb=round(results["chunked"]["peak_rss_mb"], 1),
        unit="MiB (ours_s and baseline_s are peak RSS here)",
        voxels_differing=round(float(np.mean(chunked != whole)), 6),
        seconds_chunked=round(results["chunked"]["seconds"], 1),
        seconds_whole=round(results["whole"]["seconds"], 1),
        chunks=parts,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 600")
    parser.add_argument("--slices", type=int, default=900, help="slices of the 512 x 512 scan (default 900)")
    parser.add_argument(
        "--epochs", type=int, default=200, help="training epochs on the phantoms (default 200, about 4 minutes)"
    )
    args, extra = parser.parse_known_args()
    from medseg3d.core.overrides import parse_overrides

    overrides = parse_overrides(extra)
    shape = (256, 256, 600) if args.quick else (512, 512, args.slices)
    chunk_voxels = shape[0] * shape[1] * 320  # the bundle's 83886080 at 512 x 512
    with tempfile.TemporaryDirectory(prefix="bench_ct_memory_") as tmp:
        bench_chunks(Path(tmp), shape, chunk_voxels, 2 if args.quick else args.epochs, overrides)


if __name__ == "__main__":
    main()
