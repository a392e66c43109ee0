"""The 2.5D slice-stack bundle: configs, slab sampling, training records, resume, folds, DDP and inference."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from scipy import ndimage

from medseg3d.bundle.workflow import make_workflow, run_bundle, run_workflow
from medseg3d.core.checkpoint_format import load_checkpoint
from medseg3d.core.io import save_nifti
from medseg3d.networks import res_unet
from medseg3d.training.handlers.metrics_csv import TIME_COLUMNS

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brats_mri_slicestack_2p5d"
CONFIGS = "['configs/common.yaml','configs/train.yaml']"
# tiny cases are 48x40x32: in-plane patch 32x32, 2 slabs per volume, a 3-level 2D network
TINY = {
    "max_epochs": 2, "val_interval": 1, "iterations_per_epoch": 0, "roi_size": [32, 32], "num_workers": 0,
    "num_samples": 2,
    "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2],
}  # fmt: skip
SPATIAL = ("prob_rotate", "prob_zoom", "prob_elastic", "prob_flip")
INTENSITY = ("prob_brightness", "prob_gamma", "prob_gamma_inverted", "prob_noise", "prob_blur")


def _args(overrides: dict) -> list[str]:
    return [part for key, value in overrides.items() for part in (f"--{key}", json.dumps(value))]


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


@pytest.mark.parametrize("workflow", ["train", "evaluate", "inference"])
def test_every_part_instantiates(workflow: str, tmp_path: Path) -> None:
    overrides = {"output_dir": str(tmp_path)} if workflow != "inference" else {}
    parser = make_workflow(BUNDLE, workflow, overrides).parser
    net = parser.get_parsed_content("network_def")
    assert net(torch.zeros(2, 20, 32, 48)).shape == (2, 3, 32, 48)  # 4 modalities x 5 slices -> 3 regions
    inferer = parser.get_parsed_content("inferer")
    assert (inferer.k, inferer.axis, inferer.edge) == (2, 2, "replicate")
    assert inferer(torch.zeros(1, 4, 32, 32, 9), net.eval()).shape == (1, 3, 32, 32, 9)
    if workflow == "train":
        assert parser.get_parsed_content("train#slab_size") == [128, 128, 5]  # the CPU default
        assert parser.get_parsed_content("in_channels") == 20
    if workflow == "inference":  # the predictor is built by the inference tests below (it needs weights)
        assert parser.get_parsed_content("preprocessing") is not None


def _case(tmp_path: Path) -> dict[str, str]:
    """Blocky labels; every image channel encodes its voxel's label (10 x label + 5) so alignment is visible."""
    rng = np.random.default_rng(0)
    label = np.zeros((48, 40, 32), np.uint8)
    for value in (2, 1, 3):
        start = rng.integers(4, 20, 3)
        label[tuple(slice(s, s + 14) for s in start)] = value
    image = label.astype(np.float32) * 10 + 5
    save_nifti(np.repeat(image[..., None], 4, axis=-1), np.eye(4), tmp_path / "image.nii.gz")
    save_nifti(label, np.eye(4), tmp_path / "label.nii.gz")
    return {"image": str(tmp_path / "image.nii.gz"), "label": str(tmp_path / "label.nii.gz")}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slabs_are_stacked_and_augmented_with_their_label(tmp_path: Path, seed: int) -> None:
    overrides = {"output_mode": "labels", "roi_size": [32, 24], "num_samples": 4}
    overrides.update({name: 1.0 for name in SPATIAL})
    overrides.update({name: 0.0 for name in INTENSITY})
    parser = make_workflow(BUNDLE, "train", overrides).parser
    transform = parser.get_parsed_content("train#preprocessing")
    transform.set_random_state(seed=seed)
    samples = transform(_case(tmp_path))
    assert len(samples) == 4
    matches, shifted = [], []
    for sample in samples:
        image, label = np.asarray(sample["image"]), np.asarray(sample["label"])
        assert image.shape == (20, 32, 24) and label.shape == (1, 32, 24)
        assert set(np.unique(label)) <= {0, 1, 2, 3}, "labels stay integer class values (nearest interpolation)"
        inside = ndimage.binary_erosion(image[2] > 4.5, iterations=2)
        # the centre channel (slice z) carries the label: compare away from label boundaries and padding
        decoded = np.clip(np.round((image[2] - 5) / 10), 0, 3)
        uniform = ndimage.maximum_filter(label[0], size=5) == ndimage.minimum_filter(label[0], size=5)
        core = inside & uniform
        matches.append(decoded[core] == label[0][core])
        shifted.append(np.roll(decoded, 4, axis=0)[core & (label[0] > 0)] == label[0][core & (label[0] > 0)])
    matches, shifted = np.concatenate(matches), np.concatenate(shifted)
    assert matches.size > 300
    assert matches.mean() > 0.99, f"image and label drifted apart: {matches.mean():.3f} agreement"
    assert shifted.size > 100, "slabs are centred on labelled voxels (sampling by class)"
    assert shifted.mean() < 0.95, "the check must be able to see a 4-pixel misalignment"


def test_stacks_hold_the_neighbouring_slices_in_order(tmp_path: Path) -> None:
    """Channel c*(2k+1) + j of a stack is modality c at slice z - k + j, also after 2D augmentation."""
    case = _case(tmp_path)
    z = np.arange(32, dtype=np.float32)
    image = 1 + z / 100 + np.arange(4, dtype=np.float32)[:, None] * 10  # modality c, slice z: 1 + 10c + z/100
    save_nifti(np.broadcast_to(image.T[None, None], (48, 40, 32, 4)).copy(), np.eye(4), tmp_path / "image.nii.gz")
    overrides = {"output_mode": "labels", "roi_size": [32, 24], "num_samples": 4, "prob_rotate": 1.0}
    overrides.update({name: 0.0 for name in INTENSITY})
    transform = make_workflow(BUNDLE, "train", overrides).parser.get_parsed_content("train#preprocessing")
    transform.set_random_state(seed=0)
    for sample in transform(case):
        stack = np.asarray(sample["image"])
        inside = ndimage.binary_erosion(stack[0] > 0.5, iterations=2)  # away from the rotation's zero padding
        assert inside.sum() > 200
        values = stack[:, inside]  # (20, n): every pixel of a channel holds the same slice's value
        assert np.allclose(values, values[:, :1], atol=1e-4)
        centre = round(float(values[2, 0] - 1) * 100)  # modality 0 of the centre slice
        expected = [1 + 10 * c + (centre + j) / 100 for c in range(4) for j in range(-2, 3)]
        assert np.allclose(values[:, 0], expected, atol=1e-4)


def test_two_epochs_through_monai_bundle_run(tiny_prepared: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", CONFIGS]
    command += ["--dataset_dir", str(tiny_prepared), "--output_dir", str(run_dir), *_args(TINY)]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = _metrics(run_dir)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for row in rows:
        assert float(row["train_loss"]) > 0
        assert all(0.0 <= float(row[f"val_dice_{n}"]) <= 1.0 for n in ("WT", "TC", "ET"))
    for name in ("config.json", "resolved.json", "run.json", "train.log", "curves.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["network_def"]["spatial_dims"] == 2 and config["k"] == 2
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # weights_only=True
    assert last["trainer"]["epoch"] == 2
    net = res_unet(20, 3, channels=(4, 8, 16), strides=(2, 2), spatial_dims=2)
    net.load_state_dict(last["network"])
    assert (run_dir / "checkpoints" / "best.pt").is_file()


@pytest.fixture(scope="module")
def reference(tiny_prepared: Path, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run, batch 1: 2 iterations per epoch."""
    run_dir = tmp_path_factory.mktemp("reference_2p5d") / "run"
    overrides = {**TINY, "max_epochs": 3, "batch_size": 1, "prob_flip": 0.5, "prob_noise": 0.5}
    run_bundle(BUNDLE, "train", {**overrides, "dataset_dir": str(tiny_prepared), "output_dir": str(run_dir)})
    return run_dir


def test_interrupt_then_resume_equals_uninterrupted(tiny_prepared: Path, tmp_path: Path, reference: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = {**TINY, "max_epochs": 3, "batch_size": 1, "prob_flip": 0.5, "prob_noise": 0.5}
    overrides.update(dataset_dir=str(tiny_prepared), output_dir=str(run_dir))
    workflow = make_workflow(BUNDLE, "train", overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_STARTED(once=3), lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit) as stopped:
        workflow.run()
    assert stopped.value.code == 130
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]["iteration"] == 3  # mid-epoch 2

    run_workflow(make_workflow(BUNDLE, "train", {**overrides, "resume": True}))
    assert _metrics(run_dir) == _metrics(reference)
    first, second = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (reference, run_dir))
    for key, tensor in first["network"].items():
        assert torch.equal(tensor, second["network"][key]), key


def test_folds_all_writes_a_cross_validation_summary(tiny_prepared: Path, tmp_path: Path) -> None:
    from medseg3d.cli import main

    out = tmp_path / "cv"
    overrides = {**TINY, "max_epochs": 1}
    code = main(["train", "--bundle", str(BUNDLE), "--folds", "all", "--dataset_dir", str(tiny_prepared)] + [
        "--output_dir", str(out), *_args(overrides)])  # fmt: skip
    assert code == 0
    with open(out / "cv_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["fold"] for r in rows][:2] == ["0", "1"] and {"mean", "std"} <= {r["fold"] for r in rows}


def test_two_ranks_train_one_epoch(tiny_prepared: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    configs = "['configs/common.yaml','configs/train.yaml','configs/multi_gpu_train.yaml']"
    overrides = {**TINY, "max_epochs": 1, "batch_size": 1, "dataset_dir": str(tiny_prepared)}
    overrides["output_dir"] = str(run_dir)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command = [*torchrun, "-m", "monai.bundle", "run", "--config_file", configs, *_args(overrides)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "rank 0 of 2 on cpu (gloo" in output and "rank 1 of 2 on cpu (gloo" in output
    rows = _metrics(run_dir)
    assert [(row["epoch"], row["iteration"]) for row in rows] == [("1", "1")]  # each rank: 1 of the 2 cases
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1  # rank 0 alone writes
    weights = load_checkpoint(run_dir / "checkpoints" / "last.pt")["network"]
    assert not [key for key in weights if key.startswith("module.")]


def test_infer_and_evaluate_keep_the_input_geometry(tiny_prepared: Path, reference: Path, tmp_path: Path) -> None:
    """``medseg3d infer`` and ``medseg3d evaluate`` work with this bundle unchanged: label maps on the input's
    grid (an LPS BraTS 2023 case), in the edition's label values."""
    from medseg3d.cli import main
    from medseg3d.data.synth_brats import write_brats_tree

    raw = tmp_path / "raw"
    write_brats_tree(raw, cases=2, edition="2023", shape=(48, 40, 32), seed=7)
    out = tmp_path / "pred"
    network = {k: v for k, v in TINY.items() if k.startswith("network_def") or k == "roi_size"}
    checkpoint = str(reference / "checkpoints" / "last.pt")
    code = main(["infer", str(raw), str(out), "--bundle", str(BUNDLE), "--checkpoint", checkpoint, *_args(network)])
    assert code == 0
    cases = sorted(p for p in raw.rglob("*-seg.nii.gz"))
    assert len(cases) == 2
    for seg in cases:
        case_id = seg.name.removesuffix("-seg.nii.gz")
        pred, truth = nib.load(out / f"{case_id}.nii.gz"), nib.load(seg)
        assert pred.shape == truth.shape
        assert np.array_equal(pred.affine, truth.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2, 3}  # 2023 label values
    assert main(["evaluate", str(out), str(raw), "--task", "brats", "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "report.csv").is_file()


def test_evaluate_overlay_scores_the_checkpoint(tiny_prepared: Path, reference: Path, tmp_path: Path) -> None:
    eval_dir = tmp_path / "eval"
    overrides = {k: v for k, v in TINY.items() if k.startswith("network_def") or k in ("roi_size", "num_workers")}
    checkpoint = reference / "checkpoints" / "last.pt"
    run_bundle(BUNDLE, "evaluate", {
        **overrides, "dataset_dir": str(tiny_prepared), "output_dir": str(tmp_path / "unused"),
        "checkpoint": str(checkpoint), "eval_dir": str(eval_dir),
    })  # fmt: skip
    summary = json.loads((eval_dir / "summary.json").read_text())
    assert summary["cases"] == 2  # the validation fold of the tiny dataset
    # the checkpoint was saved after epoch 3's validation: its weights give that epoch's score
    last_row = [r for r in _metrics(reference) if r["val_mean_dice"]][-1]
    assert summary["evaluator_metrics"]["val_mean_dice"] == pytest.approx(float(last_row["val_mean_dice"]), rel=1e-4)
    with open(eval_dir / "per_case.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_verify_net_in_out_matches_the_metadata() -> None:
    from monai.bundle import verify_net_in_out

    configs = BUNDLE / "configs"
    verify_net_in_out(
        "network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "common.yaml"), n=2,
        device="cpu", **{"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]},
    )  # fmt: skip
