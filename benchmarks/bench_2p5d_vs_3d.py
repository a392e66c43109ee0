"""2D, 2.5D and 3D on the same synthetic BraTS data and the same CPU time budget.

Synthesizes BraTS 2021 phantoms (``medseg3d synth brats``, 10 cases of 128x128x64 by default: 8 train, 2
validate), prepares them (``prep_brats``), then trains, each for ``--budget`` seconds of wall clock, with the
bundles' default configurations:

- 2D: ``bundles/brats_mri_slicestack_2p5d`` with ``k=0`` (one slice, 4 channels);
- 2.5D: the same bundle as shipped (``k=2``: 5 slices, 20 channels);
- 3D: ``bundles/brats_mri_resunet_3d``.

Each run is stopped by SIGTERM at the budget (it saves ``last.pt`` and exits cleanly, as under a cluster's
time limit). Reported per model: the best validation Dice (mean, WT, TC, ET) reached within the budget and
the epoch and second it came, the training process's peak resident memory (VmHWM, polled), the memory one
training step needs at the default batch (CPU and GPU patch sizes; measured on the CPU), and inference
seconds per case with ``medseg3d infer`` on ``--infer-cases`` held-out full-size 240x240x155 cases (median
of the per-case times in ``summary.csv``; model loading excluded). ``--val_interval`` is 2 for every model,
so each gets the same chance to report its best.

Run as ``.venv/bin/python -m benchmarks.bench_2p5d_vs_3d [--budget 300]`` (``make bench`` runs it with the
defaults: about 3 x budget + 2 minutes).
"""

from __future__ import annotations

import argparse
import csv
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, append_results, device_name, metrics_rows, vm_hwm_mb

BUNDLE_3D = REPO / "bundles" / "brats_mri_resunet_3d"
BUNDLE_2P5D = REPO / "bundles" / "brats_mri_slicestack_2p5d"
MODELS = {  # name -> (bundle, overrides)
    "2d": (BUNDLE_2P5D, ["--k", "0"]),
    "2.5d": (BUNDLE_2P5D, []),
    "3d": (BUNDLE_3D, []),
}
MEDSEG3D = [sys.executable, "-m", "medseg3d.cli"]
# The quick optimization of `make demo` for every model: the bundles' nnU-Net setting (SGD 0.01, poly) needs
# 10 minutes of CPU before the 3D network leaves its background-only plateau (docs/benchmarks.md), longer
# than a useful budget per model; AdamW at 1e-2 learns these phantoms in a few minutes.
QUICK = ["--optimizer_name", "adamw", "--learning_rate", "0.01", "--lr_schedule", "warmup_cosine"]


def train_for(bundle: Path, overrides: list[str], prepared: Path, run_dir: Path, budget: float) -> dict:
    """Train ``bundle`` for ``budget`` seconds; the best validation row, when it came, peak memory."""
    command = [*MEDSEG3D, "train", "--bundle", str(bundle), "--dataset_dir", str(prepared)]
    command += ["--output_dir", str(run_dir), "--val_interval", "2", "--iterations_per_epoch", "0", *overrides]
    print(" ".join(command), flush=True)
    start = time.monotonic()
    seen: dict[int, float] = {}
    peak = 0.0
    with open(run_dir.parent / f"{run_dir.name}_stderr.log", "w") as log:  # a file: a full pipe would block it
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
        stopped = False
        while process.poll() is None:
            elapsed = time.monotonic() - start
            peak = max(peak, vm_hwm_mb(process.pid) or 0.0)
            for row in metrics_rows(run_dir):
                seen.setdefault(int(row["epoch"]), elapsed)
            if elapsed > budget and not stopped:
                process.send_signal(signal.SIGTERM)  # finishes the iteration (or the validation), saves, exits
                stopped = True
            time.sleep(0.5)
        process.wait()
    if process.returncode not in (0, 128 + signal.SIGTERM):
        tail = (run_dir.parent / f"{run_dir.name}_stderr.log").read_text()[-3000:]
        raise RuntimeError(f"training {bundle.name} {overrides} failed ({process.returncode}):\n{tail}")
    validated = [r for r in metrics_rows(run_dir) if r.get("val_mean_dice")]
    if not validated:
        raise RuntimeError(f"{bundle.name} {overrides}: no validation within {budget} s (raise --budget)")
    best = max(validated, key=lambda r: float(r["val_mean_dice"]))
    return {
        "best_val_mean_dice": round(float(best["val_mean_dice"]), 4),
        **{f"best_{k}": round(float(v), 4) for k, v in best.items() if k.startswith("val_dice_") and v},
        "best_epoch": int(best["epoch"]),
        "best_at_s": round(seen.get(int(best["epoch"]), budget), 1),
        "epochs": len(metrics_rows(run_dir)),
        "train_peak_rss_mb": round(peak, 1),
    }


# One training step (forward, backward, SGD update) of a bundle's network at a given batch, in a fresh process:
# the growth of its peak resident memory is what the step needs (activations, gradients), device aside.
_STEP = """
import json, sys, torch
from medseg3d.bundle.workflow import make_workflow

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))

bundle, overrides, shape = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
parser = make_workflow(bundle, "train", {**overrides, "device": "$torch.device('cpu')"}).parser
net = parser.get_parsed_content("network_def").train()
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True)
x = torch.randn(shape)
before = hwm()
net(x).float().mean().backward()
opt.step()
print(json.dumps({"step_mb": hwm() - before}))
"""


def step_memory_mb(bundle: Path, overrides: list[str], shape: list[int]) -> float:
    """Peak memory growth of one training step of ``bundle``'s network on a batch of ``shape``, MiB."""
    pairs = dict(zip(overrides[::2], overrides[1::2], strict=True))
    values = {key.lstrip("-"): json.loads(value) for key, value in pairs.items()}
    command = [sys.executable, "-c", _STEP, str(bundle), json.dumps(values), json.dumps(shape)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"step memory of {bundle.name} failed:\n{result.stderr[-3000:]}")
    return round(json.loads(result.stdout.strip().splitlines()[-1])["step_mb"], 1)


# The batch one training step sees with each bundle's defaults (batch_size x num_samples patches): on a CPU,
# and with the GPU defaults (the activations a GPU must hold).
STEP_BATCHES = {
    "2d": {"cpu": [16, 4, 128, 128], "gpu": [16, 4, 192, 192]},
    "2.5d": {"cpu": [16, 20, 128, 128], "gpu": [16, 20, 192, 192]},
    "3d": {"cpu": [4, 4, 64, 64, 64], "gpu": [4, 4, 128, 128, 128]},
}


def infer_seconds(bundle: Path, overrides: list[str], run_dir: Path, inputs: Path, output: Path) -> float:
    """Median seconds per case of ``medseg3d infer`` with the run's last checkpoint."""
    command = [*MEDSEG3D, "infer", str(inputs), str(output), "--bundle", str(bundle)]
    command += ["--checkpoint", str(run_dir / "checkpoints" / "last.pt"), *overrides]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"medseg3d infer failed ({result.returncode}):\n{result.stderr[-3000:]}")
    with open(output / "summary.csv", newline="") as f:
        return statistics.median(float(r["seconds"]) for r in csv.DictReader(f))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=300.0, help="seconds of training per model (300)")
    parser.add_argument("--cases", type=int, default=10, help="synthetic training cases (10: 8 train, 2 validate)")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], metavar=("X", "Y", "Z"))
    parser.add_argument("--infer-cases", type=int, default=2, help="held-out full-size cases to time (2)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--work", type=Path, default=None, help="working folder (a temporary one by default)")
    parser.add_argument("--prepared", type=Path, default=None, help="a prep_brats dataset to use instead of phantoms")
    parser.add_argument("--heldout", type=Path, default=None, help="a folder of BraTS cases to time inference on")
    parser.add_argument(
        "--bundle-optimizer", action="store_true", help="keep the bundles' SGD setting instead of AdamW 1e-2"
    )
    args, _ = parser.parse_known_args()  # make bench passes its own arguments to every benchmark
    models = [m for m in args.models.split(",") if m]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; expected among {list(MODELS)}")

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_2p5d_"))
    work.mkdir(parents=True, exist_ok=True)
    raw, prepared, heldout = work / "raw", work / "prepared", work / "heldout"
    shape = [str(n) for n in args.shape]
    data = f"{args.cases} synthetic cases {'x'.join(shape)}"
    if args.prepared is not None:
        prepared, data = args.prepared, f"prepared dataset {args.prepared}"
    else:
        synth = [*MEDSEG3D, "synth", "brats", str(raw), "--cases", str(args.cases), "--shape", *shape]
        subprocess.run(synth, check=True)
        folds = str(min(5, args.cases))
        prep = [sys.executable, "-m", "data_prep.prep_brats", str(raw), str(prepared), "--folds", folds]
        subprocess.run(prep, check=True, stdout=subprocess.DEVNULL)
    if args.heldout is not None:
        heldout = args.heldout
    else:
        synth_heldout = [*MEDSEG3D, "synth", "brats", str(heldout), "--cases", str(args.infer_cases), "--seed", "99"]
        subprocess.run(synth_heldout, check=True)

    results = []
    for name in models:
        bundle, overrides = MODELS[name]
        run_dir = work / f"run_{name}"
        record = {"benchmark": "2p5d_vs_3d", "model": name, "bundle": bundle.name, "overrides": overrides}
        quick = [] if args.bundle_optimizer else QUICK
        record["optimizer_overrides"] = quick
        record.update(train_for(bundle, overrides + quick, prepared, run_dir, args.budget))
        pred = work / f"pred_{name}"
        record["infer_s_per_case"] = round(infer_seconds(bundle, overrides, run_dir, heldout, pred), 2)
        for where, batch in STEP_BATCHES[name].items():
            record[f"step_mb_{where}_batch"] = step_memory_mb(bundle, overrides, batch)
            record[f"{where}_batch"] = batch
        record.update(
            case=f"{data}, {args.budget:g} s of training each; inference on "
            + (str(args.heldout) if args.heldout else f"{args.infer_cases} held-out 4x240x240x155 phantoms"),
            device=device_name(),
        )
        print(json.dumps(record), flush=True)
        results.append(record)
    append_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
