"""Inference per case against the strongest peer: nnU-Net v2's predictor, same network plan, random weights.

nnU-Net is a benchmark-only dependency, never a runtime one: ``pip install nnunetv2`` would replace this
project's torch build (through timm/torchvision), so it lives in its own environment, named by
``--nnunet-python`` (or ``NNUNET_PYTHON``): a venv with ``torch==2.13.0`` and ``nnunetv2`` (torchvision and
timm uninstalled; the predictor does not need them). Without one, the benchmark prints a skip line.

Steps: 3 synthetic BraTS 2021 cases of 240x240x155 become an nnU-Net raw dataset; nnU-Net plans it
(``extract_fingerprints`` + ``plan_experiments``: its default ``3d_fullres``) and builds that network with
random weights into a results folder; ``nnUNetPredictor`` (tile step 0.5, Gaussian, CPU) times
``predict_single_npy_array`` on case 0 from its files read to its label map written, without and with
mirroring. Ours runs the same architecture (MONAI ``DynUNet`` with nnU-Net's kernels, strides, features,
instance norm and leaky ReLU, no deep supervision: the same layers and FLOPs) through ``BatchRunner`` with
``FastSlidingWindowInferer`` (patch = nnU-Net's, overlap 0.5, Gaussian, brain box) on the same case folder,
without and with TTA. Each side runs in its own interpreter; ``--repeats`` alternate, median.

``--backend`` (issue 22): ours also with the network exported (``medseg3d.networks.exported``): ONNX float32 on
OpenVINO or ONNX Runtime, and OpenVINO int8 calibrated on 16 windows of another case (case 1; case 0 is timed).
The export and the calibration are done once per run, outside the timed part, as ``medseg3d export`` does them
once per model. Each row's ``agreement`` is the Dice per region of its label map to our PyTorch float32 one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, emit

BACKENDS = ("torch", "openvino", "onnxruntime", "openvino-int8")

_NNUNET = r"""
import json, os, shutil, sys, time
from pathlib import Path
work = Path(sys.argv[1]); tta = sys.argv[2] == "1"; cases = json.loads(sys.argv[3])
for name in ("raw", "preprocessed", "results"):
    os.environ[f"nnUNet_{name}"] = str(work / f"nnUNet_{name}")
import numpy as np, nibabel as nib, torch
torch.set_num_threads(os.cpu_count())
ds = "Dataset500_BraTS"
raw = work / "nnUNet_raw" / ds
results = work / "nnUNet_results" / ds / "nnUNetTrainer__nnUNetPlans__3d_fullres"
if not (results / "fold_0" / "checkpoint_final.pth").is_file():
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True); (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        folder = Path(case)
        for c, m in enumerate(("t1", "t1ce", "t2", "flair")):
            os.symlink(next(folder.glob(f"*_{m}.nii.gz")), raw / "imagesTr" / f"BraTS_{i:03d}_{c:04d}.nii.gz")
        seg = nib.load(str(next(folder.glob("*_seg.nii.gz"))))
        labels = np.asarray(seg.dataobj).astype(np.uint8); labels[labels == 4] = 3
        nib.save(nib.Nifti1Image(labels, seg.affine, seg.header), str(raw / "labelsTr" / f"BraTS_{i:03d}.nii.gz"))
    json.dump({"channel_names": {"0": "T1", "1": "T1ce", "2": "T2", "3": "FLAIR"},
               "labels": {"background": 0, "NCR": 1, "ED": 2, "ET": 3}, "numTraining": len(cases),
               "file_ending": ".nii.gz"}, open(raw / "dataset.json", "w"))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    extract_fingerprints([500], num_processes=2, check_dataset_integrity=False, clean=True, verbose=False)
    plan_experiments([500])
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    plans = json.load(open(work / "nnUNet_preprocessed" / ds / "nnUNetPlans.json"))
    arch = plans["configurations"]["3d_fullres"]["architecture"]
    torch.manual_seed(0)
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                 4, 4, allow_init=True, deep_supervision=False)
    (results / "fold_0").mkdir(parents=True, exist_ok=True)
    json.dump(plans, open(results / "plans.json", "w"))
    shutil.copy(raw / "dataset.json", results / "dataset.json")
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               results / "fold_0" / "checkpoint_final.pth")
plans = json.load(open(results / "plans.json"))
config = plans["configurations"]["3d_fullres"]
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                            perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                            verbose_preprocessing=False, allow_tqdm=False)
predictor.initialize_from_trained_model_folder(str(results), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
folder = Path(cases[0])
files = [str(next(folder.glob(f"*_{m}.nii.gz"))) for m in ("t1", "t1ce", "t2", "flair")]
out = work / "nnunet_out"; out.mkdir(exist_ok=True)
start = time.perf_counter()
image, props = SimpleITKIO().read_images(files)
predictor.predict_single_npy_array(image, props, None, str(out / "case"), False)
seconds = time.perf_counter() - start
arch_kwargs = config["architecture"]["arch_kwargs"]
print(json.dumps({"seconds": seconds, "patch_size": config["patch_size"], "arch_kwargs": arch_kwargs}))
"""

_OURS = r"""
import json, sys, time
from pathlib import Path
import torch
from monai.networks.nets import DynUNet
from monai.transforms import Compose
from medseg3d.inference.predictor import Predictor
from medseg3d.inference.runner import BatchRunner
from medseg3d.inferers.sliding_window import FastSlidingWindowInferer
from medseg3d.transforms import NormalizeNonZerod
case, out, tta, info = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1", json.loads(sys.argv[4])
backend, calibration = sys.argv[5], Path(sys.argv[6])
kw = info["arch_kwargs"]
strides = [list(s) if isinstance(s, list) else [s] * 3 for s in kw["strides"]]
kernels = [list(k) if isinstance(k, list) else [k] * 3 for k in kw["kernel_sizes"]]
torch.manual_seed(0)
net = DynUNet(3, 4, 4, kernels, strides, strides[1:], filters=kw["features_per_stage"],
              norm_name=("INSTANCE", {"affine": True}),
              act_name=("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
              deep_supervision=False, res_block=False).eval()
def runner_for(network, folder, target, mirror):
    inferer = FastSlidingWindowInferer(info["patch_size"], sw_batch_size=2, overlap=0.5, mode="gaussian",
                                       tta=mirror, outside=[10.0, -10.0, -10.0, -10.0])
    predictor = Predictor(network, inferer, Compose([NormalizeNonZerod(keys="image")]), "labels")
    return BatchRunner(predictor, folder, target, expect="brats", label_names={"NCR": 1, "ED": 2, "ET": 3},
                       output_labels="brats", progress=False)
def linked(folder, source):
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / source.name).exists():
        (folder / source.name).symlink_to(source)
    return folder
network = net
if backend != "torch":  # the exported network (built once per work folder, outside the timed part)
    from medseg3d.networks.exported import ExportedNetwork, WindowRecorder, export_onnx, quantize_int8, spread
    models = out / "models"; models.mkdir(parents=True, exist_ok=True)
    onnx = models / "dynunet.onnx"
    if not onnx.is_file():
        export_onnx(net, torch.zeros(1, 4, *info["patch_size"]), onnx)
    if backend == "openvino-int8":
        xml = models / "dynunet.int8.xml"
        if not xml.is_file():  # calibrated on another case's windows than the timed one
            recorder = WindowRecorder(net, limit=10**6)
            runner_for(recorder, linked(out / "calib_in", calibration), out / "calib_out", False).run()
            quantize_int8(onnx, spread(recorder.windows, 16), xml)
        network = ExportedNetwork(xml, "openvino")
    else:
        network = ExportedNetwork(onnx, backend)
runner = runner_for(network, linked(out / "in", case), out / f"pred_{backend}", tta)
start = time.perf_counter()
rows = runner.run()
assert rows[0]["status"] == "ok", rows
print(json.dumps({"seconds": time.perf_counter() - start,
                  "parameters": sum(p.numel() for p in net.parameters())}))
"""


def _run(python: str, code: str, *args: str) -> dict:
    result = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, cwd=REPO, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _labels(path: Path):
    import nibabel as nib
    import numpy as np

    return np.asarray(nib.load(str(path)).dataobj)


def _region_dice(a, b) -> dict[str, float]:
    """Dice per BraTS region (WT: labels 1, 2, 4; TC: 1, 4; ET: 4) between two label maps of 2021 values."""
    import numpy as np

    scores = {}
    for name, values in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
        x, y = np.isin(a, values), np.isin(b, values)
        total = int(x.sum() + y.sum())
        scores[name] = 1.0 if total == 0 else round(2.0 * int((x & y).sum()) / total, 5)
    return scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nnunet-python", default=os.environ.get("NNUNET_PYTHON"), help="python of the nnU-Net venv")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tta", choices=("off", "on", "both"), default="both")
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=BACKENDS,
        default=list(BACKENDS),
        help="our network paths: PyTorch, the exported ONNX on OpenVINO or ONNX Runtime, OpenVINO int8",
    )
    args, _ = parser.parse_known_args()
    python = args.nnunet_python
    check = subprocess.run([python, "-c", "import nnunetv2"], capture_output=True) if python else None
    if check is None or check.returncode != 0:
        print(json.dumps({"benchmark": "infer_nnunet", "skipped": "no nnU-Net environment (--nnunet-python)"}))
        return 0
    from medseg3d.data.synth_brats import write_brats_tree

    with tempfile.TemporaryDirectory(prefix="bench_nnunet_") as tmp:
        work = Path(tmp)
        cases = [str(p) for p in write_brats_tree(work / "raw", cases=3, edition="2021", shape=(240, 240, 155))]
        modes = {"off": [False], "on": [True], "both": [False, True]}[args.tta]
        for tta in modes:
            flag = "1" if tta else "0"
            theirs, info, params = [], {}, None
            ours: dict[str, list[float]] = {backend: [] for backend in args.backend}
            for _ in range(args.repeats):
                info = _run(python, _NNUNET, str(work), flag, json.dumps(cases))
                theirs.append(info["seconds"])
                for backend in args.backend:
                    result = _run(sys.executable, _OURS, cases[0], str(work / "ours"), flag, json.dumps(info), backend,
                                  cases[1])  # fmt: skip
                    ours[backend].append(result["seconds"])
                    params = result["parameters"]
            case_id = Path(cases[0]).name
            reference = work / "ours" / "pred_torch" / f"{case_id}.nii.gz"
            for backend in args.backend:
                labels = work / "ours" / f"pred_{backend}" / f"{case_id}.nii.gz"
                agreement = _region_dice(_labels(labels), _labels(reference)) if reference.is_file() else None
                emit(
                    "infer_nnunet",
                    f"BraTS case 4x240x240x155, nnU-Net 3d_fullres plan (patch {info['patch_size']}), random "
                    f"weights, {'with' if tta else 'without'} mirroring TTA; ours: {backend}",
                    statistics.median(ours[backend]),
                    "nnUNetPredictor.predict_single_npy_array (tile step 0.5, Gaussian, CPU), files read to label map",
                    statistics.median(theirs),
                    agreement=agreement,
                    agreement_note="Dice per region to our PyTorch float32 labels; random weights: says little",
                    backend=backend,
                    features=info["arch_kwargs"]["features_per_stage"],
                    parameters=params,
                    repeats=args.repeats,
                    when=time.strftime("%Y-%m-%d %H:%M"),
                )
                if backend != "torch":
                    shutil.rmtree(labels.parent, ignore_errors=True)
            shutil.rmtree(work / "ours" / "pred_torch", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
