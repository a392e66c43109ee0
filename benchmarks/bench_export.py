"""Exported models on trained checkpoints: each path's time per full-size case and its agreement with PyTorch.

Paths: the checkpoint through the bundle (PyTorch float32, what ``medseg3d infer --bundle`` runs), and the
exported model folder (``medseg3d export``) through ``medseg3d infer --model``: ONNX float32 on OpenVINO and on
ONNX Runtime, and OpenVINO int8 (NNCF, calibrated on 16 windows of phantoms that are not the held-out ones).

- BraTS: ``--brats-checkpoint`` (default: the newest ``best.pt`` of the 30-minute run of
  ``bench_time_to_accuracy``, under ``bench_out/tta/run_3d_budget_1800s_*``), ``--cases`` held-out phantoms of
  240x240x155 (seed 1000, as ``bench_time_to_accuracy`` holds out), calibration on 2 phantoms of seed 2000.
- CT: ``--ct-checkpoint`` (default: the 15-minute CT run, ``bench_out/tta/run_ct_budget_900s_*``), one held-out
  512x512x300 phantom (seed 1000), calibration on one of 512x512x200 (seed 2000).
- Overrides after ``--`` (``--network_def "{...}" --window_size "[112,160,128]"``) are the settings the checkpoint
  was trained with; they apply to its export and its PyTorch run: nnU-Net's 3d_fullres network trained through
  the BraTS bundle (``bench_time_to_accuracy -- --network_def ...``), exported and run on nnU-Net's windows.

Each path runs in its own interpreter (its peak RSS is its own); the time is the runner's, from the first file
read to the last label map written, per case. ``agreement`` is the smallest Dice per region between the path's
label maps and PyTorch's (all regions in ``agreement_per_region``); ``dice_to_truth`` is the path's own accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import REPO, emit, run_python
from medseg3d.core.overrides import parse_overrides

BRATS = REPO / "bundles" / "brats_mri_resunet_3d"
CT = REPO / "bundles" / "ct_aorta_resunet_3d"
PATHS = ("openvino", "onnxruntime", "openvino-int8")

_RUN = r"""
import json, sys, time
from pathlib import Path
kind, bundle, source, inputs, out, overrides = sys.argv[1:7]
if kind.startswith("checkpoint"):
    from medseg3d.bundle.workflow import make_workflow
    crop = {"inferer#crop_foreground": False} if kind == "checkpoint-nocrop" else {}
    wf = make_workflow(bundle, "inference", {"input_dir": inputs, "output_dir": out, "checkpoint": source,
                                             "progress": False, "device": "$torch.device('cpu')",
                                             **json.loads(overrides), **crop})
    wf.initialize()
    runner = wf.parser.get_parsed_content("runner")
else:
    from medseg3d.inference.model_folder import build_runner
    backend, precision = ("openvino", "int8") if kind == "openvino-int8" else (kind, "float32")
    runner = build_runner(source, inputs, out, precision=precision, backend=backend, progress=False)
start = time.perf_counter()
rows = runner.run()
seconds = time.perf_counter() - start
assert all(r["status"] == "ok" for r in rows), rows
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds_per_case": seconds / len(rows), "peak_rss_mb": int(hwm.split()[1]) / 1024}))
"""

REGIONS = {
    "brats": {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)},  # BraTS 2021 label values, as written
    "ct": {"aorta": (1,)},
}


def _labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def _dice(a: np.ndarray, b: np.ndarray, values) -> float:
    x, y = np.isin(a, values), np.isin(b, values)
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def _newest(pattern: str) -> Path | None:
    found = sorted((REPO / "bench_out").glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def brats_data(work: Path, cases: int) -> tuple[Path, Path, dict[str, Path]]:
    """Held-out inputs (no seg), calibration inputs, and each held-out case's ground truth."""
    from medseg3d.data.synth_brats import write_brats_tree

    truth = {}
    held, calib = work / "brats_in", work / "brats_calib"
    for folder, seed, count, keep in ((held, 1000, cases, True), (calib, 2000, 2, False)):
        for case in write_brats_tree(work / f"raw_{seed}", cases=count, edition="2021", shape=(240, 240, 155),
                                     seed=seed):  # fmt: skip
            shutil.copytree(case, folder / case.name, ignore=lambda _, names: [n for n in names if "_seg" in n])
            if keep:
                truth[case.name] = next(case.glob("*_seg.nii.gz"))
    return held, calib, truth


def ct_data(work: Path) -> tuple[Path, Path, dict[str, Path]]:
    from medseg3d.data.synth_ct import write_ct_cases

    held, calib = work / "ct_in", work / "ct_calib"
    truth = {}
    for folder, seed, shape, keep in ((held, 1000, (512, 512, 300), True), (calib, 2000, (512, 512, 200), False)):
        folder.mkdir(parents=True)
        image = write_ct_cases(work / f"ct_raw_{seed}", cases=1, shape=shape, seed=seed)[0]
        shutil.copy(image, folder / image.name)
        if keep:
            truth[image.name.removesuffix(".nii.gz")] = work / f"ct_raw_{seed}" / "labelsTr" / image.name
    return held, calib, truth


def bench(task: str, bundle: Path, checkpoint: Path, work: Path, held: Path, calib: Path, truth: dict[str, Path],
          paths: tuple[str, ...], crop: bool = True, overrides: dict | None = None) -> None:  # fmt: skip
    """Export ``checkpoint``, run every path over ``held``, emit a row per path; with ``crop`` also the checkpoint
    without the foreground crop (``inferer#crop_foreground False``: stock's window positions), whose row is the
    crop's agreement with it and both paths' Dice to the truth (issue 22, item 3). ``overrides``: the bundle
    settings the checkpoint was trained with (its ``network_def``, say), for the export and the checkpoint."""
    from medseg3d.bundle.export import export_model

    model = work / f"{task}_model"
    start = time.perf_counter()
    overrides = dict(overrides or {})
    export_model(bundle, checkpoint, model, overrides, calibration=calib if "openvino-int8" in paths else None)
    export_s = time.perf_counter() - start
    results = {}
    for kind in ("checkpoint", *paths, *(("checkpoint-nocrop",) if crop else ())):
        source = checkpoint if kind.startswith("checkpoint") else model
        out = work / f"{task}_{kind}"
        results[kind] = run_python(_RUN, kind, str(bundle), str(source), str(held), str(out), json.dumps(overrides))
    regions = REGIONS[task]
    for kind in (*paths, *(("checkpoint-nocrop",) if crop else ())):
        agreement = {name: [] for name in regions}
        accuracy = {name: [] for name in regions}
        reference_accuracy = {name: [] for name in regions}
        for case, gt in truth.items():
            ours = _labels(work / f"{task}_{kind}" / f"{case}.nii.gz")
            reference = _labels(work / f"{task}_checkpoint" / f"{case}.nii.gz")
            target = _labels(gt)
            for name, values in regions.items():
                agreement[name].append(_dice(ours, reference, values))
                accuracy[name].append(_dice(ours, target, values))
                reference_accuracy[name].append(_dice(reference, target, values))
        per_region = {name: round(float(np.mean(v)), 5) for name, v in agreement.items()}
        what = ("the checkpoint without the foreground crop (the crop's agreement with it)"
                if kind == "checkpoint-nocrop" else f"exported model on {kind}")  # fmt: skip
        emit(
            "export",
            f"{task} held-out full-size phantoms ({len(truth)}), trained checkpoint {checkpoint.parent.parent.name}; "
            f"ours: {what}",
            results[kind]["seconds_per_case"],
            "the checkpoint through the bundle (PyTorch float32, medseg3d infer --bundle)",
            results["checkpoint"]["seconds_per_case"],
            agreement=min(per_region.values()),
            peak_rss_mb=round(results[kind]["peak_rss_mb"], 1),
            agreement_per_region=per_region,
            dice_to_truth={name: round(float(np.mean(v)), 4) for name, v in accuracy.items()},
            dice_to_truth_pytorch={name: round(float(np.mean(v)), 4) for name, v in reference_accuracy.items()},
            baseline_peak_rss_mb=round(results["checkpoint"]["peak_rss_mb"], 1),
            export_seconds=round(export_s, 1),
            overrides=overrides,
            when=time.strftime("%Y-%m-%d %H:%M"),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats-checkpoint", type=Path, default=None)
    parser.add_argument("--ct-checkpoint", type=Path, default=None)
    parser.add_argument("--cases", type=int, default=2, help="held-out BraTS phantoms (2)")
    parser.add_argument("--skip-brats", action="store_true")
    parser.add_argument("--skip-ct", action="store_true")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--no-crop-row", action="store_true", help="skip the run without the foreground crop")
    args, extra = parser.parse_known_args()
    # after --: the bundle overrides the checkpoint was trained with (--network_def "{...}", --window_size ...)
    overrides = parse_overrides([part for part in extra if part != "--"])
    brats = args.brats_checkpoint or _newest("tta/run_3d_budget_1800s_*/checkpoints/best.pt")
    ct = args.ct_checkpoint or _newest("tta/run_ct_budget_900s_*/checkpoints/best.pt")
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        work = Path(tmp)
        for task, bundle, checkpoint, skip in (("brats", BRATS, brats, args.skip_brats), ("ct", CT, ct, args.skip_ct)):
            if skip:
                continue
            if checkpoint is None:
                why = "no trained checkpoint: run bench_time_to_accuracy first, or pass --brats-/--ct-checkpoint"
                print(json.dumps({"benchmark": "export", "task": task, "skipped": why}))
                continue
            held, calib, truth = brats_data(work, args.cases) if task == "brats" else ct_data(work)
            crop = not args.no_crop_row
            bench(task, bundle, checkpoint, work, held, calib, truth, tuple(args.paths), crop, overrides)


if __name__ == "__main__":
    main()
