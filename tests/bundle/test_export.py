"""`medseg3d export` and `medseg3d infer --model`: the exported model gives the checkpoint's label maps and
probabilities (float32, OpenVINO and ONNX Runtime) on an LPS NIfTI and a DICOM series, and on BraTS case folders;
an ensemble exports one network per member; int8 runs after calibration; model.json is data, not code.

Tolerance (docs/export.md): float32 probabilities within 1e-4 of PyTorch's, label maps at Dice >= 0.999 per label
(the runtimes sum in another order, so a voxel whose logits tie within float error may flip).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg3d.cli import main
from medseg3d.core.checkpoint_format import save_checkpoint
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.data.synth_ct import write_ct_cases
from medseg3d.inference.model_folder import instantiate
from medseg3d.networks import res_unet

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
CT = REPO / "bundles" / "ct_aorta_resunet_3d"
BRATS = REPO / "bundles" / "brats_mri_resunet_3d"
CT_NET = {"roi_size": [32, 32, 32], "network_def#channels": [4, 8], "network_def#strides": [2]}
BRATS_NET = {"roi_size": [24, 24, 16], "network_def#channels": [4, 8], "network_def#strides": [2]}


def _args(overrides: dict) -> list[str]:
    return [part for key, value in overrides.items() for part in (f"--{key}", json.dumps(value))]


def _checkpoint(path: Path, in_channels: int, out_channels: int, seed: int) -> Path:
    torch.manual_seed(seed)
    network = res_unet(in_channels, out_channels, channels=(4, 8), strides=(2,))
    with torch.no_grad():  # foreground somewhere: the last layer's bias shifted towards the structures
        last = [m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)][-1]
        last.bias[1:] += 0.3
    return save_checkpoint({"network": network.state_dict()}, path)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {r["case_id"]: {k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def ct_scans(tmp_path_factory) -> Path:
    """An LPS NIfTI with anisotropic voxels and a DICOM series (the generator's CT phantoms)."""
    root = tmp_path_factory.mktemp("ct_export")
    scans = root / "scans"
    scans.mkdir()
    write_ct_cases(root / "n", cases=1, shape=(64, 56, 40), seed=5)[0].rename(scans / "lps_nifti.nii.gz")
    write_ct_cases(root / "d", cases=1, shape=(64, 56, 40), seed=6, dicom=True)[0].rename(scans / "dicom_series")
    return scans


def test_an_exported_ct_model_gives_the_checkpoints_labels_on_an_lps_nifti_and_a_dicom_series(ct_scans, tmp_path):
    checkpoint = _checkpoint(tmp_path / "best.pt", 1, 2, seed=0)
    model = tmp_path / "model"
    assert main(["export", "--bundle", str(CT), "--checkpoint", str(checkpoint), "--out", str(model),
                 *_args(CT_NET)]) == 0  # fmt: skip
    record = json.loads((model / "model.json").read_text())
    assert record["source"] == [{"checkpoint": str(checkpoint),
                                 "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}]  # fmt: skip
    assert record["network"]["float32"] == ["network.onnx"] and record["network"]["int8"] == []
    assert record["network"]["check"][0]["max_abs_diff"] < 1e-4
    assert record["inferer"]["roi_size"] == [32, 32, 32] and record["predictor"]["inverse_slab"] == 32
    assert record["runner"]["label_names"] == {"aorta": 1} and record["input"]["in_channels"] == 1
    # what the bundle itself cannot hold: no expression or reference is left in the model
    assert "$" not in json.dumps(record["preprocessing"]) + json.dumps(record["inferer"])

    reference = tmp_path / "checkpoint_out"
    assert main(["infer", str(ct_scans), str(reference), "--bundle", str(CT), "--checkpoint", str(checkpoint),
                 "--save_probabilities", *_args(CT_NET), "--progress", "False"]) == 0  # fmt: skip
    for backend in ("openvino", "onnxruntime"):
        out = tmp_path / backend
        assert main(["infer", str(ct_scans), str(out), "--model", str(model), "--backend", backend,
                     "--save_probabilities", "--progress", "False"]) == 0  # fmt: skip
        assert (
            _rows(out / "summary.csv").keys()
            == _rows(reference / "summary.csv").keys()
            == {
                "lps_nifti",
                "dicom_series",
            }
        )
        for case in ("lps_nifti", "dicom_series"):
            ours, theirs = nib.load(out / f"{case}.nii.gz"), nib.load(reference / f"{case}.nii.gz")
            assert ours.shape == theirs.shape and np.array_equal(ours.affine, theirs.affine)
            a, b = np.asarray(ours.dataobj), np.asarray(theirs.dataobj)
            assert int((b == 1).sum()) > 100, "the reference segments something"
            assert _dice(a, b, 1) >= 0.999, (backend, case)
            p = np.load(out / f"{case}.probabilities.npz")["probabilities"].astype(np.float32)
            q = np.load(reference / f"{case}.probabilities.npz")["probabilities"].astype(np.float32)
            assert np.abs(p - q).max() <= 1e-3  # float16 files: 1e-4 in float32 plus the float16 rounding


@pytest.fixture(scope="module")
def brats_cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats_export")
    inputs = root / "inputs"
    for folder in write_brats_tree(root / "raw", cases=2, edition="2021", shape=(64, 56, 44), seed=3):
        shutil.copytree(folder, inputs / folder.name, ignore=shutil.ignore_patterns("*seg*"))
    return inputs


def test_an_ensemble_exports_a_network_per_member_and_averages_as_the_checkpoints_do(brats_cases, tmp_path):
    members = [str(_checkpoint(tmp_path / f"fold{k}.pt", 4, 3, seed=k)) for k in (1, 2)]
    model = tmp_path / "model"
    assert main(["export", "--bundle", str(BRATS), "--checkpoint", *members, "--out", str(model),
                 *_args(BRATS_NET)]) == 0  # fmt: skip
    record = json.loads((model / "model.json").read_text())
    assert record["network"]["float32"] == ["network_0.onnx", "network_1.onnx"]
    assert [s["checkpoint"] for s in record["source"]] == members
    reference, out = tmp_path / "reference", tmp_path / "exported"
    assert main(["infer", str(brats_cases), str(reference), "--bundle", str(BRATS), "--checkpoint", *members,
                 *_args(BRATS_NET), "--progress", "False"]) == 0  # fmt: skip
    assert main(["infer", str(brats_cases), str(out), "--model", str(model), "--progress", "False"]) == 0
    rows, expected = _rows(out / "summary.csv"), _rows(reference / "summary.csv")
    assert rows.keys() == expected.keys() and len(rows) == 2
    for case in rows:
        a = np.asarray(nib.load(out / f"{case}.nii.gz").dataobj)
        b = np.asarray(nib.load(reference / f"{case}.nii.gz").dataobj)
        assert set(np.unique(b)) - {0}, "the reference segments something"
        for label in (1, 2, 4):  # BraTS 2021 label values, written as the checkpoint path writes them
            assert _dice(a, b, label) >= 0.999, (case, label)


def test_int8_needs_calibration_then_runs_on_openvino(brats_cases, tmp_path, capsys):
    checkpoint = str(_checkpoint(tmp_path / "best.pt", 4, 3, seed=3))
    plain, calibrated = tmp_path / "plain", tmp_path / "calibrated"
    assert main(["export", "--bundle", str(BRATS), "--checkpoint", checkpoint, "--out", str(plain),
                 *_args(BRATS_NET)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["infer", str(brats_cases), str(tmp_path / "no"), "--model", str(plain), "--precision", "int8"]) == 2
    assert "no int8 network in this model" in capsys.readouterr().err

    assert main(["export", "--bundle", str(BRATS), "--checkpoint", checkpoint, "--out", str(calibrated),
                 "--calibration", str(brats_cases), "--calibration-windows", "8", *_args(BRATS_NET)]) == 0  # fmt: skip
    record = json.loads((calibrated / "model.json").read_text())
    assert record["network"]["int8"] == ["network.int8.xml"] and record["network"]["calibration"]["windows"] == 8
    assert (calibrated / "network.int8.bin").stat().st_size > 0
    out = tmp_path / "int8"
    assert main(["infer", str(brats_cases), str(out), "--model", str(calibrated), "--precision", "int8",
                 "--progress", "False"]) == 0  # fmt: skip
    for case in brats_cases.iterdir():
        labels = nib.load(out / f"{case.name}.nii.gz")
        assert labels.shape == (64, 56, 44) and set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 4}
    assert not list(tmp_path.glob(".calibrated.*")), "no temporary folder is left"


def test_model_json_is_data_a_foreign_target_is_refused(brats_cases, tmp_path, capsys):
    with pytest.raises(ValueError, match="_target_ 'os.system' is not allowed"):
        instantiate({"_target_": "os.system", "command": "true"})
    with pytest.raises(ValueError, match="_target_ 'medseg3d.core.io.write_text' is not allowed"):  # ours, but a writer
        instantiate({"_target_": "medseg3d.core.io.write_text", "text": "x", "path": str(tmp_path / "written")})
    assert not (tmp_path / "written").exists()
    checkpoint = str(_checkpoint(tmp_path / "best.pt", 4, 3, seed=4))
    model = tmp_path / "model"
    assert main(["export", "--bundle", str(BRATS), "--checkpoint", checkpoint, "--out", str(model),
                 *_args(BRATS_NET)]) == 0  # fmt: skip
    record = json.loads((model / "model.json").read_text())
    record["preprocessing"] = {"_target_": "subprocess.run", "args": ["touch", str(tmp_path / "pwned")]}
    (model / "model.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(["infer", str(brats_cases), str(tmp_path / "out"), "--model", str(model)]) == 2
    assert "_target_ 'subprocess.run' is not allowed" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists()


def test_export_refuses_an_existing_folder_the_2p5d_bundle_and_mixed_flags(brats_cases, tmp_path, capsys):
    checkpoint = str(_checkpoint(tmp_path / "best.pt", 4, 3, seed=5))
    (tmp_path / "taken").mkdir()
    capsys.readouterr()
    assert main(["export", "--bundle", str(BRATS), "--checkpoint", checkpoint, "--out", str(tmp_path / "taken")]) == 2
    assert "exists" in capsys.readouterr().err
    slices = REPO / "bundles" / "brats_mri_slicestack_2p5d"
    assert main(["export", "--bundle", str(slices), "--checkpoint", checkpoint, "--out", str(tmp_path / "m")]) == 2
    assert "FastSlidingWindowInferer" in capsys.readouterr().err and not (tmp_path / "m").exists()
    assert main(["infer", str(brats_cases), str(tmp_path / "o"), "--model", str(tmp_path / "taken"),
                 "--checkpoint", checkpoint]) == 2  # fmt: skip
    assert "--checkpoint goes with --bundle" in capsys.readouterr().err
    assert main(["infer", str(brats_cases), str(tmp_path / "o"), "--model", str(tmp_path / "taken")]) == 2
    assert "no model.json" in capsys.readouterr().err
