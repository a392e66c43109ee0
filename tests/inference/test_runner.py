"""Batch inference: every good case written in its input's geometry, every bad one reported, resumable, sharded."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import slicerio
import torch

from medseg3d.bundle.infer import default_checkpoint, infer_overrides
from medseg3d.cli import main
from medseg3d.core.checkpoint_format import save_checkpoint
from medseg3d.core.errors import InputError
from medseg3d.data.label_formats import read_dicom_seg, segment_specs
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.inference.predictor import Predictor, checkpoint_list, logits_to_labels
from medseg3d.inference.preview import radiological_views, save_preview
from medseg3d.inference.runner import label_volumes, parse_shard, shard_of
from medseg3d.networks import res_unet
from medseg3d.transforms.array import regions_to_labels

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brats_mri_resunet_3d"
TINY = {"roi_size": [24, 24, 16], "network_def#channels": [4, 8], "network_def#strides": [2], "progress": False}
TINY_ARGS = [arg for key, value in TINY.items() for arg in (f"--{key}", str(value))]
SHAPE = (40, 36, 27)  # non-cubic, odd depth


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Random weights of the tiny bundle network, in a training checkpoint's layout."""
    torch.manual_seed(0)
    net = res_unet(4, 3, channels=(4, 8), strides=(2,))
    path = tmp_path_factory.mktemp("weights") / "best.pt"
    save_checkpoint({"network": net.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """Two BraTS 2021 cases, one 2023 case, and four bad entries: corrupt, truncated, text, 3 modalities."""
    root = tmp_path_factory.mktemp("batch")
    raw21 = write_brats_tree(root / "raw21", cases=2, edition="2021", shape=SHAPE, seed=1)
    raw23 = write_brats_tree(root / "raw23", cases=1, edition="2023", shape=SHAPE, seed=2)
    inputs = root / "inputs"
    inputs.mkdir()
    for folder in [*raw21, *raw23]:
        target = inputs / folder.name
        shutil.copytree(folder, target)
        for seg in target.glob("*seg*"):
            seg.unlink()  # new scans come without ground truth
    (inputs / "corrupt.nii.gz").write_bytes(os.urandom(3000))
    whole = next((inputs / raw21[0].name).glob("*_t1.nii.gz")).read_bytes()
    (inputs / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (inputs / "notes.txt").write_text("not a scan\n")
    three = inputs / "BraTS2021_09999"
    shutil.copytree(raw21[1], three)
    for path in [*three.glob("*seg*"), *three.glob("*_t2.nii.gz")]:
        path.unlink()
    return inputs


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def _infer(inputs: Path, out: Path, checkpoint: Path, *flags: str) -> int:
    return main(
        ["infer", str(inputs), str(out), "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint), *flags, *TINY_ARGS]
    )


@pytest.fixture(scope="module")
def first_run(batch: Path, checkpoint: Path, tmp_path_factory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("predictions") / "out"
    return out, _infer(batch, out, checkpoint, "--preview")


def test_good_cases_are_written_in_their_input_geometry_and_convention(batch: Path, first_run) -> None:
    out, code = first_run
    assert code == 1  # some cases failed
    rows = _rows(out)
    good = sorted(p.name for p in batch.iterdir() if p.is_dir() and p.name != "BraTS2021_09999")
    assert len(good) == 3
    for case_id in good:
        assert rows[case_id]["status"] == "ok", rows[case_id]
        source = nib.load(str(next((batch / case_id).glob("*t1*.nii.gz"))))
        written = nib.load(str(out / f"{case_id}.nii.gz"))
        assert written.shape == source.shape
        assert np.array_equal(written.affine, source.affine)
        assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
        values = set(np.unique(np.asarray(written.dataobj)).tolist())
        allowed = {0, 1, 2, 3} if case_id.startswith("BraTS-") else {0, 1, 2, 4}
        assert values <= allowed, (case_id, values)
        counts = {name: int(rows[case_id][f"{name}_voxels"]) for name in ("NCR", "ED", "ET")}
        labels = np.asarray(written.dataobj)
        et_value = 3 if case_id.startswith("BraTS-") else 4
        assert counts == {
            "NCR": int((labels == 1).sum()),
            "ED": int((labels == 2).sum()),
            "ET": int((labels == et_value).sum()),
        }
        assert float(rows[case_id]["ED_ml"]) == pytest.approx(
            counts["ED"] * np.prod(source.header.get_zooms()) / 1000, abs=1e-3
        )
        assert (out / "previews" / f"{case_id}.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("case_id", "reason"),
    [
        pytest.param("corrupt", "corrupt.nii.gz", id="corrupt"),
        pytest.param("truncated", "truncated.nii.gz", id="truncated"),
        pytest.param("notes", "notes.txt", id="text-file"),
        pytest.param("BraTS2021_09999", "BraTS2021_09999", id="three-modalities"),
    ],
)
def test_bad_cases_are_reported_with_the_file_and_write_nothing(first_run, case_id: str, reason: str) -> None:
    out, _ = first_run
    rows = _rows(out)
    matches = [row for row in rows.values() if Path(row["input"]).name.startswith(case_id)]
    assert len(matches) == 1, sorted(rows)
    assert matches[0]["status"] == "failed"
    assert reason in matches[0]["error"]
    assert not (out / f"{matches[0]['case_id']}.nii.gz").exists()


def test_nothing_half_written_is_left(first_run) -> None:
    out, _ = first_run
    leftovers = [p.name for p in out.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    assert leftovers == []


def test_resume_skips_finished_cases(batch: Path, checkpoint: Path, first_run, tmp_path: Path) -> None:
    out, _ = first_run
    again = tmp_path / "again"
    shutil.copytree(out, again)
    done = sorted(again.glob("*.nii.gz"))
    stamps = {p.name: p.stat().st_mtime_ns for p in done}
    assert _infer(batch, again, checkpoint, "--resume") == 1  # the bad cases still fail
    rows = _rows(again)
    for path in done:
        case_id = path.name[: -len(".nii.gz")]
        assert rows[case_id]["status"] == "skipped"
        assert rows[case_id]["ED_voxels"] == _rows(out)[case_id]["ED_voxels"]
        assert path.stat().st_mtime_ns == stamps[path.name]


def test_a_missing_checkpoint_fails_before_any_case(batch: Path, tmp_path: Path, capsys) -> None:
    code = _infer(batch, tmp_path / "out", tmp_path / "nope.pt")
    assert code == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_default_checkpoint_prefers_the_exported_model(tmp_path: Path) -> None:
    bundle = tmp_path / "my_bundle"
    with pytest.raises(InputError, match="--checkpoint"):
        default_checkpoint(bundle, tmp_path / "runs")
    best = tmp_path / "runs" / "my_bundle" / "20260101-000000" / "checkpoints" / "best.pt"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"x")
    assert default_checkpoint(bundle, tmp_path / "runs") == best
    (bundle / "models").mkdir(parents=True)
    (bundle / "models" / "model.pt").write_bytes(b"x")
    assert default_checkpoint(bundle, tmp_path / "runs") == bundle / "models" / "model.pt"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"device": "tpu"}, "--device", id="device"),
        pytest.param({"overlap": 1.0}, "--overlap", id="overlap"),
    ],
)
def test_bad_flags_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        infer_overrides("in", "out", "w.pt", **kwargs)


class _Threshold(torch.nn.Module):
    """Two logits per voxel, background 0.5 - x and foreground x - 0.5: the label map is ``x > 0.5``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], dim=1)


@pytest.mark.parametrize(
    "affine",
    [
        pytest.param(np.diag([-1.0, -1.0, 1.0, 1.0]), id="LPS"),
        pytest.param(np.diag([1.0, 1.0, 1.0, 1.0]), id="RAS"),
        pytest.param(np.array([[0, -1.2, 0, 5], [0, 0, 2.0, -3], [0.9, 0, 0, 7], [0, 0, 0, 1.0]]), id="permuted"),
    ],
)
def test_predictor_undoes_orientation_exactly(affine: np.ndarray) -> None:
    from monai.inferers import SimpleInferer
    from monai.transforms import Compose, Orientationd

    rng = np.random.default_rng(0)
    image = rng.random((1, 20, 24, 28)).astype(np.float32)
    predictor = Predictor(
        _Threshold(), SimpleInferer(), Compose([Orientationd(keys="image", axcodes="RAS", labels=None)]), "labels"
    )
    labels = predictor(image, affine)
    assert labels.shape == image.shape[1:]
    assert np.array_equal(labels, (image[0] > 0.5).astype(np.uint8))


def test_predictor_undoes_resampling() -> None:
    from monai.inferers import SimpleInferer
    from monai.transforms import Compose, Orientationd, Spacingd

    image = np.zeros((1, 30, 26, 12), dtype=np.float32)
    image[0, 8:22, 6:20, 3:9] = 1.0  # a box the 0.8 x 0.8 x 2.5 mm grid resamples to 1.1 mm and back
    affine = np.diag([-0.8, 0.8, 2.5, 1.0])
    preprocessing = Compose(
        [Orientationd(keys="image", axcodes="RAS", labels=None), Spacingd(keys="image", pixdim=(1.1, 1.1, 1.1))]
    )
    labels = Predictor(_Threshold(), SimpleInferer(), preprocessing, "labels")(image, affine)
    truth = image[0] > 0.5
    dice = 2 * np.logical_and(labels > 0, truth).sum() / ((labels > 0).sum() + truth.sum())
    assert labels.shape == truth.shape
    assert dice > 0.95


def test_logits_to_labels_decodes_nested_regions() -> None:
    logits = torch.full((3, 2, 2, 1), -5.0)
    logits[0] = 5.0  # WT everywhere
    logits[1, 0] = 5.0  # TC in the first row
    logits[2, 0, 0] = 5.0  # ET in one voxel
    assert logits_to_labels(logits, "regions")[..., 0].tolist() == [[3, 1], [2, 2]]
    with pytest.raises(ValueError, match="output_mode"):
        logits_to_labels(logits, "softmax")


def test_label_volumes_counts_every_name() -> None:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[0, 0, :3] = 4
    assert label_volumes(labels, (0.5, 1.0, 2.0), {"NCR": 1, "ET": 4}) == {
        "NCR_voxels": 0,
        "NCR_ml": 0.0,
        "ET_voxels": 3,
        "ET_ml": 0.003,
    }


def test_monai_bundle_run_inference(batch: Path, checkpoint: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    case = sorted(p for p in batch.iterdir() if p.name.startswith("BraTS2021_0000"))[0]
    shutil.copytree(case, inputs / case.name)
    out = tmp_path / "out"
    configs = "['configs/common.yaml','configs/inference.yaml']"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(BUNDLE)]
    command += ["--input_dir", str(inputs), "--output_dir", str(out), "--checkpoint", str(checkpoint)]
    command += ["--device", "$torch.device('cpu')", *TINY_ARGS]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _rows(out)[case.name]["status"] == "ok"
    assert nib.load(str(out / f"{case.name}.nii.gz")).shape == SHAPE


def test_two_processes_share_the_cases_and_merge_one_summary(batch: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["-m", "medseg3d.cli", "infer", str(batch), str(out), "--bundle", str(BUNDLE)]
    command += ["--checkpoint", str(checkpoint), "--device", "cpu", *TINY_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode != 0  # the bad cases failed, on whichever rank had them
    rows = _rows(out)
    assert len(rows) == 7, sorted(rows)
    assert sum(row["status"] == "ok" for row in rows.values()) == 3, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(
        f"{cid}.nii.gz" for cid, r in rows.items() if r["status"] == "ok"
    )
    assert not list(out.glob(".summary*"))


def test_logits_to_labels_equals_argmax_with_ties() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(-2, 3, (4, 9, 7, 5), generator=generator).float()  # many exact ties
    assert np.array_equal(logits_to_labels(logits, "labels"), logits.argmax(0).numpy())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused(batch: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    assert _infer(batch, tmp_path / "out", checkpoint, "--device", "cuda") == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_multitask_model_writes_each_case_class(batch: Path, tmp_path: Path) -> None:
    """``--classify grade``: the label maps as a segmentation model writes them from the same segmentation
    weights, and summary.csv gains the predicted grade, a probability per grade and what was pooled."""
    torch.manual_seed(0)
    net = res_unet(4, 3, channels=(4, 8), strides=(2,), num_classes=2)
    save_checkpoint({"network": net.state_dict()}, tmp_path / "multi.pt")
    seg_only = {k: v for k, v in net.state_dict().items() if not k.startswith("classifier.")}
    save_checkpoint({"network": seg_only}, tmp_path / "seg.pt")
    ok = ["BraTS2021_00000", "BraTS2021_00001"]
    inputs = tmp_path / "in"
    for case in ok:
        shutil.copytree(batch / case, inputs / case)
    assert _infer(inputs, tmp_path / "multi", tmp_path / "multi.pt", "--classify", "grade") == 0
    assert _infer(inputs, tmp_path / "seg", tmp_path / "seg.pt") == 0
    rows = _rows(tmp_path / "multi")
    header = (tmp_path / "multi" / "summary.csv").read_text().splitlines()[0].split(",")
    assert header[-4:] == ["class", "p_LGG", "p_HGG", "class_pooled_over"]
    for case in ok:
        row = rows[case]
        assert row["class"] in ("LGG", "HGG") and row["class_pooled_over"] in ("tumour", "foreground")
        assert float(row["p_LGG"]) + float(row["p_HGG"]) == pytest.approx(1.0, abs=2e-4)
        assert (float(row["p_HGG"]) > 0.5) == (row["class"] == "HGG")
        multi = nib.load(tmp_path / "multi" / f"{case}.nii.gz").get_fdata()
        seg = nib.load(tmp_path / "seg" / f"{case}.nii.gz").get_fdata()
        np.testing.assert_array_equal(multi, seg)
    assert "class" not in (tmp_path / "seg" / "summary.csv").read_text().splitlines()[0].split(",")


def test_output_formats_hold_the_same_labels(batch: Path, checkpoint: Path, first_run, tmp_path: Path) -> None:
    """``--output_format nifti seg.nrrd dicom-seg``: Slicer's and the PACS's reading of each case equal the NIfTI
    label map voxel for voxel, with each edition's label values; resume skips a case only when all exist."""
    out = tmp_path / "formats"
    assert _infer(batch, out, checkpoint, "--output_format", "nifti", "seg.nrrd", "dicom-seg") == 1
    rows = _rows(out)
    good = sorted(p.name for p in batch.iterdir() if p.is_dir() and p.name != "BraTS2021_09999")
    for case_id in good:
        assert rows[case_id]["status"] == "ok", rows[case_id]
        nifti = np.asarray(nib.load(str(out / f"{case_id}.nii.gz")).dataobj)
        assert np.array_equal(nifti, np.asarray(nib.load(str(first_run[0] / f"{case_id}.nii.gz")).dataobj))
        seg = slicerio.read_segmentation(str(out / f"{case_id}.seg.nrrd"))
        assert np.array_equal(seg["voxels"], nifti)
        et = 3 if case_id.startswith("BraTS-") else 4
        assert [(s["name"], s["labelValue"]) for s in seg["segments"]] == [("NCR", 1), ("ED", 2), ("ET", et)]
        flair = sorted((out / f"{case_id}.dicom").glob("series04_MR/*.dcm"))
        assert len(flair) == nifti.shape[2]
        numbers, names = read_dicom_seg(out / f"{case_id}.seg.dcm", [pydicom.dcmread(f).SOPInstanceUID for f in flair])
        assert names == {1: "NCR", 2: "ED", 3: "ET"}
        values = np.select([numbers == 1, numbers == 2, numbers == 3], [1, 2, et], 0)
        assert np.array_equal(values, nifti)
    bad = [row["case_id"] for row in rows.values() if row["status"] == "failed"]
    assert bad and not any(out.glob(f"{bad[0]}.*"))
    # resume: every format there -> skipped (volumes re-read); a format missing -> the case runs again
    (out / f"{good[0]}.seg.nrrd").unlink()
    assert _infer(batch, out, checkpoint, "--resume", "--output_format", "nifti", "seg.nrrd", "dicom-seg") == 1
    again = _rows(out)
    assert again[good[0]]["status"] == "ok" and (out / f"{good[0]}.seg.nrrd").is_file()
    assert [again[c]["status"] for c in good[1:]] == ["skipped"] * (len(good) - 1)
    assert again[good[1]]["ED_voxels"] == rows[good[1]]["ED_voxels"]


def _two_checkpoints(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = res_unet(4, 3, channels=(4, 8), strides=(2,))
        paths.append(save_checkpoint({"network": net.state_dict()}, tmp_path / f"member{seed}.pt"))
    return paths


def test_probabilities_are_what_the_labels_were_decoded_from(batch: Path, checkpoint: Path, tmp_path: Path) -> None:
    """``--save_probabilities``: float16 sigmoids of WT, TC, ET on the scan's grid, beside labels (postprocessing
    off) that are exactly their decoding; the same labels as without the flag."""
    inputs = tmp_path / "in"
    shutil.copytree(batch / "BraTS2021_00000", inputs / "BraTS2021_00000")
    off = ["--postprocess", "{}"]
    assert _infer(inputs, tmp_path / "plain", checkpoint, *off) == 0
    assert _infer(inputs, tmp_path / "probs", checkpoint, "--save_probabilities", *off) == 0
    saved = np.load(tmp_path / "probs" / "BraTS2021_00000.probabilities.npz")
    source = nib.load(str(next((inputs / "BraTS2021_00000").glob("*_t1.nii.gz"))))
    p = saved["probabilities"]
    assert p.dtype == np.float16 and p.shape == (3, *source.shape)
    assert saved["channels"].tolist() == ["WT", "TC", "ET"] and str(saved["output_mode"]) == "regions"
    assert np.array_equal(saved["affine"], source.affine)
    labels = np.asarray(nib.load(str(tmp_path / "probs" / "BraTS2021_00000.nii.gz")).dataobj)
    plain = np.asarray(nib.load(str(tmp_path / "plain" / "BraTS2021_00000.nii.gz")).dataobj)
    assert np.array_equal(labels, plain)
    decoded = regions_to_labels(p.astype(np.float32) > 0.5)
    # float16 rounds a probability within 2**-11 of 0.5 onto 0.5: only such voxels may decode otherwise
    near = (np.abs(p.astype(np.float32) - 0.5) <= 2**-11).any(axis=0)
    written = np.where(labels == 4, 3, labels)  # the 2021 convention back to prepared values
    assert np.array_equal(decoded[~near], written[~near])
    assert near.mean() < 0.05  # an untrained network: most voxels far enough from 0.5 to be checked


def test_an_ensemble_averages_its_members_probabilities(batch: Path, tmp_path: Path) -> None:
    """Several checkpoints: the labels decode the mean of the members' probabilities (the ensemble's own
    probabilities are that mean), and one member alone is not the ensemble."""
    members = _two_checkpoints(tmp_path)
    inputs = tmp_path / "in"
    shutil.copytree(batch / "BraTS2021_00000", inputs / "BraTS2021_00000")
    off = ["--postprocess", "{}", "--save_probabilities"]
    for i, member in enumerate(members):
        assert _infer(inputs, tmp_path / f"m{i}", member, *off) == 0
    code = main(["infer", str(inputs), str(tmp_path / "ens"), "--bundle", str(BUNDLE), "--checkpoint",
                 *map(str, members), *off, *TINY_ARGS])  # fmt: skip
    assert code == 0
    load = lambda d: np.load(tmp_path / d / "BraTS2021_00000.probabilities.npz")["probabilities"].astype(np.float32)  # noqa: E731
    mean = (load("m0") + load("m1")) / 2
    assert np.allclose(load("ens"), mean, atol=2e-3)
    ensemble = np.asarray(nib.load(str(tmp_path / "ens" / "BraTS2021_00000.nii.gz")).dataobj)
    decoded = regions_to_labels(mean > 0.5)
    near = (np.abs(mean - 0.5) < 2e-3).any(axis=0)
    assert np.array_equal(np.where(ensemble == 4, 3, ensemble)[~near], decoded[~near])
    single = np.asarray(nib.load(str(tmp_path / "m0" / "BraTS2021_00000.nii.gz")).dataobj)
    assert not np.array_equal(single, ensemble)


def test_checkpoint_list_takes_files_runs_and_cross_validation_folders(tmp_path: Path) -> None:
    cv = tmp_path / "cv"
    for fold in (0, 1, 10, 2):
        (cv / f"fold_{fold}" / "checkpoints").mkdir(parents=True)
        (cv / f"fold_{fold}" / "checkpoints" / "best.pt").write_bytes(b"x")
    (cv / "cv.json").write_text("{}")
    assert [p.parts[-3] for p in checkpoint_list(cv)] == ["fold_0", "fold_1", "fold_2", "fold_10"]
    assert checkpoint_list(cv / "fold_1") == [cv / "fold_1" / "checkpoints" / "best.pt"]
    assert checkpoint_list([tmp_path / "a.pt", tmp_path / "b.pt"]) == [tmp_path / "a.pt", tmp_path / "b.pt"]
    (cv / "fold_2" / "checkpoints" / "best.pt").unlink()
    with pytest.raises(InputError, match="fold_2.*no checkpoints/best.pt"):
        checkpoint_list(cv)
    with pytest.raises(InputError, match="cross-validation run folder"):
        checkpoint_list(tmp_path / "cv" / "fold_2")


def test_a_cross_validation_run_is_an_ensemble_with_its_chosen_postprocessing(batch: Path, tmp_path: Path) -> None:
    """``--checkpoint CV_DIR``: every fold's best.pt, and the rules of its postprocessing.json instead of the
    bundle's default (as if given with --postprocess); --postprocess still wins."""
    members = _two_checkpoints(tmp_path)
    cv = tmp_path / "cv"
    for fold, member in enumerate(members):
        (cv / f"fold_{fold}" / "checkpoints").mkdir(parents=True)
        shutil.copy(member, cv / f"fold_{fold}" / "checkpoints" / "best.pt")
    (cv / "cv.json").write_text("{}")
    rules = {"all": {"keep_largest": 1}, "2": {"min_size": 5}}
    (cv / "postprocessing.json").write_text(json.dumps({"rules": rules}))
    inputs = tmp_path / "in"
    shutil.copytree(batch / "BraTS2021_00000", inputs / "BraTS2021_00000")
    run = lambda out, *extra: main(["infer", str(inputs), str(tmp_path / out), "--bundle", str(BUNDLE), *extra,  # noqa: E731
                                    *TINY_ARGS])  # fmt: skip
    assert run("cv_out", "--checkpoint", str(cv)) == 0
    assert run("explicit", "--checkpoint", *map(str, members), "--postprocess", json.dumps(rules)) == 0
    assert run("override", "--checkpoint", str(cv), "--postprocess", "{}") == 0
    assert run("raw", "--checkpoint", *map(str, members), "--postprocess", "{}") == 0
    read = lambda out: np.asarray(nib.load(str(tmp_path / out / "BraTS2021_00000.nii.gz")).dataobj)  # noqa: E731
    assert np.array_equal(read("cv_out"), read("explicit"))
    assert np.array_equal(read("override"), read("raw"))
    assert not np.array_equal(read("cv_out"), read("raw"))


def test_previews_are_in_radiological_orientation_whatever_the_voxel_order() -> None:
    """A marker at the patient's right, anterior, superior corner lands top-left in the axial view (right on the
    image's left, anterior up), top-left in coronal (right on the left, superior up) and top-left in sagittal
    (anterior on the left, superior up), for a RAS and an LPS scan alike."""
    labels = np.zeros((10, 12, 8), np.uint8)
    labels[3:7, 3:9, 2:6] = 1
    for affine in (np.diag([1.0, 1.0, 2.0, 1.0]), np.diag([-1.0, -1.0, 2.0, 1.0])):
        volume = np.zeros((10, 12, 8), np.float32)
        # the voxel of most R, A and S inside the structure's slices: index order depends on the affine
        i = 6 if affine[0, 0] > 0 else 3
        j = 8 if affine[1, 1] > 0 else 3
        volume[i, j, :] = 5.0  # a rod along S through (R, A)
        volume[i, :, 5] = 7.0  # a bar along A at the top of the structure
        views = radiological_views(volume, labels, affine)
        axial, _, aspect = views["axial"]
        assert aspect == 1.0 and axial.shape == (12, 10)
        rows, cols = np.nonzero(axial == 5.0)
        assert rows.min() == 12 - 1 - 8 and cols.min() == 10 - 1 - 6  # towards the top-left
        coronal, _, aspect = views["coronal"]
        assert aspect == 2.0 and coronal.shape == (8, 10)
        assert coronal[8 - 1 - 5, 10 - 1 - 6] == 7.0
        # sagittal: through the structure's centre (RAS i = 4, mean of 3..6 rounded); a bar along A at k = 5
        centre = 4 if affine[0, 0] > 0 else 10 - 1 - 4
        volume[centre, :, 5] = 9.0
        sagittal = radiological_views(volume, labels, affine)["sagittal"][0]
        assert sagittal.shape == (8, 12) and (sagittal[8 - 1 - 5] == 9.0).all()
        volume[centre, j, :] = 11.0  # a rod along S at the most anterior voxel: the left of the view
        sagittal = radiological_views(volume, labels, affine)["sagittal"][0]
        assert (sagittal[:, 12 - 1 - 8] == 11.0).all()


def test_a_preview_has_its_legend(tmp_path: Path) -> None:
    labels = np.zeros((10, 12, 8), np.uint8)
    labels[3:7, 3:9, 2:6] = 4
    specs = segment_specs({"NCR": 1, "ED": 2, "ET": 4}, {"ET": {"colour": [255, 220, 0]}})
    path = save_preview(np.ones((1, 10, 12, 8), np.float32), labels, tmp_path / "p.png", "c", segments=specs)
    assert path.stat().st_size > 1000


def test_shards_split_the_cases_and_the_last_one_merges_the_summary(batch: Path, checkpoint: Path, first_run) -> None:
    """``--shard I/3`` three times: every case in exactly one shard (by its id), each shard's rows in its own part,
    and once all three are done a summary.csv equal to the one-process run's, row for row (seconds aside)."""
    out = first_run[0].parent / "sharded"
    ids = sorted(_rows(first_run[0]))
    for index in range(3):
        assert not (out / "summary.csv").exists()  # written by the last shard only
        _infer(batch, out, checkpoint, "--preview", "--shard", f"{index}/3")
        part = _rows_of(out / f"summary.part-{index}-of-3.csv")
        assert all(shard_of(case_id, 3) == index for case_id in part)
    merged, single = _rows(out), _rows(first_run[0])
    assert sorted(merged) == ids
    drop = lambda row: {k: v for k, v in row.items() if k != "seconds"}  # noqa: E731
    assert [drop(merged[c]) for c in ids] == [drop(single[c]) for c in ids]
    for case_id in ids:
        if single[case_id]["status"] == "ok":
            assert (out / f"{case_id}.nii.gz").read_bytes() == (first_run[0] / f"{case_id}.nii.gz").read_bytes()
    with pytest.raises(ValueError, match="0 <= I < N"):
        parse_shard("3/3")


def _rows_of(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}
