"""End-to-end inference per case, ours versus MONAI's stock path with the same weights; memory of a batch.

1. Speed. One full-size BraTS case (4 x 240 x 240 x 155, ``write_brats_tree``) through the bundle's own
   ``inference`` workflow (``BatchRunner``: read the four files, z-score, ``FastSlidingWindowInferer`` over the
   brain's box, postprocessing on cc3d, write the label map in the input geometry), and one 512 x 512 x 300 CT
   (``write_ct_cases``) through the same runner with a CT configuration (HU window, body box, labels output).
   The baseline does the same steps the way a MONAI user writes them: ``LoadImage``, ``NormalizeIntensity``
   (non-zero, channel-wise) or ``ScaleIntensityRange``, ``sliding_window_inference`` on the whole volume (same
   roi, overlap 0.5, Gaussian blending, same sw_batch_size), ``KeepLargestConnectedComponent``, ``SaveImage``.
   The network, its random weights (seed 0) and the window size are the same; both run under
   ``torch.no_grad`` on the CPU (or the GPU when present). Ours and the baseline alternate, median of
   ``--repeats``. Agreement: mean Dice over the foreground labels between the two label maps.
2. Memory. Fresh interpreters run the runner over 5 and 20 small cases; peak RSS should not grow with the
   number of cases (one case in memory at a time, plus the one being read).

``--quick``: smaller volumes (BraTS 120 x 120 x 78, CT 256 x 256 x 150), one repeat, memory with 2 vs 6 cases.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import REPO, alternate, emit, peak_rss_mb, run_python

BUNDLE = REPO / "bundles" / "brats_mri_resunet_3d"
CT_WINDOW = (-1000.0, 1000.0)  # HU mapped to 0..1, clipped
CT_BODY = 0.25  # -500 HU after scaling: air is outside the body box


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the foreground labels present in either map."""
    from medseg3d.metrics import dice

    values = sorted((set(np.unique(a).tolist()) | set(np.unique(b).tolist())) - {0})
    return float(np.mean([dice(a == v, b == v) for v in values])) if values else 1.0


def _load(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


# -- data --------------------------------------------------------------------------------------------------------
def brats_inputs(work: Path, shape: tuple[int, int, int], cases: int = 1, seed: int = 0) -> Path:
    """``cases`` BraTS 2021 case folders without segmentation under ``work/brats_in``."""
    from medseg3d.data.synth_brats import write_brats_tree

    folder = work / f"brats_in_{cases}"
    folders = write_brats_tree(work / f"brats_raw_{cases}", cases=cases, edition="2021", shape=shape, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    for case in folders:
        target = folder / case.name
        shutil.copytree(case, target, dirs_exist_ok=True)
        for seg in target.glob("*_seg.nii.gz"):
            seg.unlink()
    return folder


def ct_inputs(work: Path, shape: tuple[int, int, int]) -> Path:
    from medseg3d.data.synth_ct import write_ct_cases

    write_ct_cases(work / "ct_raw", cases=1, shape=shape, seed=0)
    folder = work / "ct_in"
    folder.mkdir(parents=True, exist_ok=True)
    for image in (work / "ct_raw" / "imagesTr").glob("*.nii.gz"):
        shutil.copy(image, folder / image.name)
    return folder


# -- ours ------------------------------------------------------------------------------------------------------
def brats_runner(input_dir: Path, output_dir: Path, checkpoint: Path, overrides: dict[str, Any]):
    """The bundle's ``runner`` (``inference.yaml``), built once as ``medseg3d infer`` builds it."""
    from medseg3d.bundle.workflow import make_workflow

    settings = {"input_dir": str(input_dir), "output_dir": str(output_dir), "checkpoint": str(checkpoint)}
    wf = make_workflow(BUNDLE, "inference", {**settings, "progress": False, **overrides})
    wf.initialize()
    return wf.parser.get_parsed_content("runner"), wf.parser.get_parsed_content("network"), wf.parser


def ct_network():
    from medseg3d.networks import res_unet

    return res_unet(1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2))


def ct_runner(input_dir: Path, output_dir: Path, network, roi: list[int], sw_batch_size: int, device):
    """The runner with a CT configuration: HU window, the body's box, two labels, the largest aorta component."""
    from monai.transforms import Compose, ScaleIntensityRanged

    from medseg3d.inference.predictor import Predictor
    from medseg3d.inference.runner import BatchRunner
    from medseg3d.inferers.sliding_window import FastSlidingWindowInferer

    preprocessing = Compose(
        [ScaleIntensityRanged(keys="image", a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)]
    )
    inferer = FastSlidingWindowInferer(
        roi,
        sw_batch_size=sw_batch_size,
        overlap=0.5,
        mode="gaussian",
        foreground_threshold=CT_BODY,
        outside=[10.0, -10.0],
    )
    predictor = Predictor(network, inferer, preprocessing, "labels", {1: {"keep_largest": 1}}, device)
    return BatchRunner(predictor, input_dir, output_dir, expect="image", label_names={"aorta": 1}, progress=False)


# -- stock MONAI -----------------------------------------------------------------------------------------------
def stock_brats(case: Path, output_dir: Path, network, roi: list[int], sw_batch_size: int, device) -> Path:
    """A MONAI user's inference of one BraTS case folder: load, z-score, sliding window, largest component, save."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import KeepLargestConnectedComponent, LoadImage, NormalizeIntensity, SaveImage

    from medseg3d.transforms.array import regions_to_labels

    files = [next(case.glob(f"*_{m}.nii.gz")) for m in ("t1", "t1ce", "t2", "flair")]
    image = LoadImage(image_only=True, ensure_channel_first=True)(files)  # modalities stacked as channels
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    with torch.no_grad():
        logits = sliding_window_inference(
            image[None].to(device), roi, sw_batch_size, network, overlap=0.5, mode="gaussian"
        )[0]
    labels = torch.as_tensor(regions_to_labels((logits > 0).cpu().numpy()))[None]
    labels = KeepLargestConnectedComponent(applied_labels=None, independent=False, connectivity=3)(labels)
    labels = torch.where(labels == 3, 4, labels).to(torch.uint8)  # BraTS 2021 ET
    out = image.clone()[:1]
    out.array = labels.numpy()
    SaveImage(output_dir=output_dir, output_postfix="", separate_folder=False, output_dtype=np.uint8, print_log=False)(
        out, meta_data=image.meta | {"filename_or_obj": case.name}
    )
    return next(output_dir.glob("*.nii.gz"))


def stock_ct(path: Path, output_dir: Path, network, roi: list[int], sw_batch_size: int, device) -> Path:
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import KeepLargestConnectedComponent, LoadImage, SaveImage, ScaleIntensityRange

    image = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    scaled = ScaleIntensityRange(a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)(image)
    with torch.no_grad():
        logits = sliding_window_inference(
            scaled[None].to(device), roi, sw_batch_size, network, overlap=0.5, mode="gaussian"
        )[0]
    labels = logits.argmax(0, keepdim=True).cpu()
    labels = KeepLargestConnectedComponent(applied_labels=[1], connectivity=3)(labels)
    out = image.clone()
    out.array = labels.numpy().astype(np.uint8)
    SaveImage(output_dir=output_dir, output_postfix="", separate_folder=False, output_dtype=np.uint8, print_log=False)(
        out
    )
    return next(output_dir.glob("*.nii.gz"))


# -- the benchmark ---------------------------------------------------------------------------------------------
def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def trained_checkpoint(work: Path, overrides: dict[str, Any], epochs: int = 50) -> Path:
    """Weights that segment the phantoms: the bundle trained briefly (as ``medseg3d demo`` does, about 2 minutes
    on 2 cores), so that the agreement between the two paths is measured on a model with real structure in its
    output (random weights give logits near 0 everywhere, where any rounding flips a voxel)."""
    from medseg3d.bundle.workflow import run_bundle
    from medseg3d.data.synth_brats import write_brats_tree
    from medseg3d.demo import FAST_SYNTHETIC
    from medseg3d.preparation.brats import PrepOptions, prep_brats

    write_brats_tree(work / "train_raw", cases=8, edition="2021", shape=(96, 96, 64), seed=11)
    prep_brats(work / "train_raw", work / "train_prepared", PrepOptions(folds=4, workers=2))
    run = work / "train_run"
    inference_only = ("sw_batch_size", "overlap", "tta", "postprocess")
    train = {k: v for k, v in overrides.items() if k not in inference_only and not k.startswith("inferer#")}
    run_bundle(
        BUNDLE,
        "train",
        {
            "dataset_dir": str(work / "train_prepared"),
            "output_dir": str(run),
            "max_epochs": epochs,
            "val_interval": epochs,
            "iterations_per_epoch": 0,  # one pass over the cases per epoch, as when the figures were taken
            **FAST_SYNTHETIC,
            **train,
        },
    )
    return run / "checkpoints" / "best.pt"


def heldout_agreement(work: Path, checkpoint: Path, overrides: dict[str, Any], net, roi, sw_batch, device) -> dict:
    """Agreement where the trained model is at home: 3 held-out phantoms of the training size (96x96x64).

    Mean over cases of the label-map Dice between ours and stock (with the crop, and with
    ``inferer#crop_foreground False``), and of each path's Dice to the phantoms' ground truth.
    """
    from medseg3d.data.synth_brats import write_brats_tree

    raw = write_brats_tree(work / "agree_raw", cases=3, edition="2021", shape=(96, 96, 64), seed=99)
    inputs = work / "agree_in"
    for case in raw:
        shutil.copytree(case, inputs / case.name, dirs_exist_ok=True)
        for seg in (inputs / case.name).glob("*_seg.nii.gz"):
            seg.unlink()
    brats_runner(inputs, work / "agree_ours", checkpoint, overrides)[0].run()
    uncropped = {**overrides, "inferer#crop_foreground": False}
    brats_runner(inputs, work / "agree_uncropped", checkpoint, uncropped)[0].run()
    scores: dict[str, list[float]] = {"crop": [], "no_crop": [], "ours_truth": [], "stock_truth": []}
    for case in raw:
        stock = _load(stock_brats(inputs / case.name, work / "agree_stock" / case.name, net, roi, sw_batch, device))
        ours = _load(work / "agree_ours" / f"{case.name}.nii.gz")
        truth = _load(next(case.glob("*_seg.nii.gz")))
        scores["crop"].append(_dice(ours, stock))
        scores["no_crop"].append(_dice(_load(work / "agree_uncropped" / f"{case.name}.nii.gz"), stock))
        scores["ours_truth"].append(_dice(ours, truth))
        scores["stock_truth"].append(_dice(stock, truth))
    return {key: round(float(np.mean(values)), 5) for key, values in scores.items()}


def bundle_settings(overrides: dict[str, Any]) -> tuple[Any, list[int], int]:
    """The BraTS inference bundle's device, ``roi_size`` and ``sw_batch_size`` under ``overrides``: the CT
    comparison runs at the same settings."""
    from medseg3d.bundle.workflow import make_workflow

    parser = make_workflow(BUNDLE, "inference", {"progress": False, **overrides}).parser
    return tuple(parser.get_parsed_content(key) for key in ("device", "roi_size", "sw_batch_size"))  # type: ignore[return-value]


def bench_speed(
    work: Path,
    brats_shape,
    ct_shape,
    repeats: int,
    overrides: dict[str, Any],
    checkpoint: Path | None,
    ct: bool = True,
    brats: bool = True,
    backend: str = "torch",
) -> None:
    if brats:
        bench_brats(work, brats_shape, repeats, overrides, checkpoint)
    if ct:
        bench_ct(work, ct_shape, repeats, overrides, backend)


def bench_brats(work: Path, brats_shape, repeats: int, overrides: dict[str, Any], checkpoint: Path | None) -> None:
    # BraTS: the bundle's network at its defaults for this device, weights trained here unless given
    brats_dir = brats_inputs(work, brats_shape)
    if checkpoint is None:
        checkpoint = trained_checkpoint(work, overrides)
    runner, net, parser = brats_runner(brats_dir, work / "ours_brats", checkpoint, overrides)
    device = parser.get_parsed_content("device")
    roi = parser.get_parsed_content("roi_size")
    sw_batch = parser.get_parsed_content("sw_batch_size")
    case = next(p for p in brats_dir.iterdir() if p.is_dir())
    ours_s, base_s = alternate(
        lambda: _timed(runner.run),
        lambda: _timed(lambda: stock_brats(case, work / "stock_brats", net, roi, sw_batch, device)),
        repeats,
    )
    full_size = _dice(
        _load(work / "ours_brats" / f"{case.name}.nii.gz"), _load(next((work / "stock_brats").glob("*.nii.gz")))
    )
    heldout = heldout_agreement(work, checkpoint, overrides, net, roi, sw_batch, device)
    emit(
        "infer",
        f"BraTS case {'x'.join(map(str, (4, *brats_shape)))} end to end (read, z-score, sliding window, largest "
        "component, write)",
        ours_s,
        "MONAI LoadImage + NormalizeIntensity + sliding_window_inference + KeepLargestConnectedComponent + SaveImage",
        base_s,
        agreement=heldout["crop"],
        peak_rss_mb=round(peak_rss_mb(), 1),
        agreement_note="mean label-map Dice ours vs stock on 3 held-out training-size phantoms",
        agreement_without_crop=heldout["no_crop"],
        dice_to_truth_ours=heldout["ours_truth"],
        dice_to_truth_stock=heldout["stock_truth"],
        agreement_full_size_case=round(full_size, 5),
        roi_size=list(roi),
        sw_batch_size=sw_batch,
        repeats=repeats,
    )


def bench_ct(work: Path, ct_shape, repeats: int, overrides: dict[str, Any], backend: str = "torch") -> None:
    """CT, ours vs stock with the same random network; ``backend`` ``openvino``: ours runs the network exported to
    ONNX on OpenVINO float32 (``medseg3d.networks.exported``; exported before the timing), stock stays PyTorch."""
    import torch

    device, roi, sw_batch = bundle_settings(overrides)
    ct_dir = ct_inputs(work, ct_shape)
    torch.manual_seed(0)
    network = ct_network().to(device).eval()
    ours_network = network
    if backend != "torch":
        from medseg3d.networks.exported import ExportedNetwork, export_onnx

        onnx = export_onnx(network, torch.zeros(1, 1, *roi), work / "ct_network.onnx")
        ours_network = ExportedNetwork(onnx, backend)
    runner = ct_runner(ct_dir, work / "ours_ct", ours_network, roi, sw_batch, device)
    path = next(ct_dir.glob("*.nii.gz"))
    ours_s, base_s = alternate(
        lambda: _timed(runner.run),
        lambda: _timed(lambda: stock_ct(path, work / "stock_ct", network, roi, sw_batch, device)),
        repeats,
    )
    agreement = _dice(_load(work / "ours_ct" / path.name), _load(next((work / "stock_ct").glob("*.nii.gz"))))
    emit(
        "infer",
        f"CT {'x'.join(map(str, ct_shape))} end to end (read, HU window, sliding window, largest component, "
        "write); random weights, so the agreement says little",
        ours_s,
        "MONAI LoadImage + ScaleIntensityRange + sliding_window_inference + KeepLargestConnectedComponent + SaveImage",
        base_s,
        agreement=round(agreement, 5),
        peak_rss_mb=round(peak_rss_mb(), 1),
        roi_size=list(roi),
        sw_batch_size=sw_batch,
        repeats=repeats,
        backend=backend,
    )


_MEMORY = r"""
import json, sys
from pathlib import Path
from benchmarks.bench_infer import brats_runner
runner, _, _ = brats_runner(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4]))
rows = runner.run()
# VmHWM: this interpreter's own peak (ru_maxrss would start from the parent's peak at fork)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_rss_mb": int(hwm.split()[1]) / 1024, "ok": sum(r["status"] == "ok" for r in rows)}))
"""


def bench_memory(work: Path, shape, counts: tuple[int, int], overrides: dict[str, Any]) -> None:
    import torch

    from medseg3d.bundle.workflow import make_workflow
    from medseg3d.core.checkpoint_format import save_checkpoint

    torch.manual_seed(0)
    network = make_workflow(BUNDLE, "inference", {"progress": False, **overrides}).parser.get_parsed_content(
        "network_def"
    )
    checkpoint = work / "memory.pt"
    save_checkpoint({"network": network.state_dict()}, checkpoint)
    peaks = {}
    seconds = {}
    for n in counts:
        folder = brats_inputs(work, shape, cases=n, seed=7)
        start = time.perf_counter()
        result = run_python(_MEMORY, str(folder), str(work / f"memory_out_{n}"), str(checkpoint), json.dumps(overrides))
        seconds[n] = time.perf_counter() - start
        if result["ok"] != n:
            raise RuntimeError(f"{n - result['ok']} of {n} cases failed in the memory run")
        peaks[n] = result["peak_rss_mb"]
    small, large = counts
    emit(
        "infer_memory",
        f"peak RSS of a batch of {large} vs {small} BraTS cases of {'x'.join(map(str, shape))}",
        peaks[large],
        f"the same runner over {small} cases",
        peaks[small],
        agreement=None,
        peak_rss_mb=round(peaks[large], 1),
        growth=round(peaks[large] / peaks[small], 3),
        seconds={str(k): round(v, 1) for k, v in seconds.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small volumes, one repeat")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-ct", action="store_true")
    parser.add_argument("--skip-brats", action="store_true", help="the CT comparison only (no training)")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="BraTS bundle weights (default: trained here for 3 minutes)"
    )
    parser.add_argument("--keep", type=Path, default=None, help="copy the outputs and weights here for inspection")
    parser.add_argument(
        "--ct-backend",
        choices=("torch", "openvino", "onnxruntime"),
        default="torch",
        help="the CT comparison's network on our side: PyTorch, or exported to ONNX on OpenVINO / ONNX Runtime",
    )
    args, extra = parser.parse_known_args()
    from medseg3d.core.overrides import parse_overrides

    overrides = parse_overrides(extra)
    brats_shape, ct_shape = ((120, 120, 78), (256, 256, 150)) if args.quick else ((240, 240, 155), (512, 512, 300))
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        work = Path(tmp)
        if not args.skip_speed:
            bench_speed(
                work,
                brats_shape,
                ct_shape,
                repeats,
                overrides,
                args.checkpoint,
                not args.skip_ct,
                not args.skip_brats,
                args.ct_backend,
            )
        if not args.skip_memory:
            bench_memory(work, (120, 120, 78), (2, 6) if args.quick else (5, 20), overrides)
        if args.keep is not None:
            for name in ("ours_brats", "stock_brats", "ours_ct", "stock_ct", "train_run", "agree_ours", "agree_stock"):
                if (work / name).exists():
                    shutil.copytree(work / name, args.keep / name, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
