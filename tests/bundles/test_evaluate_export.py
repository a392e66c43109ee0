"""The bundle's evaluate overlay scores a checkpoint on the validation fold; ckpt_export gives the same network."""

from __future__ import annotations

import csv
import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg3d.bundle.workflow import run_bundle
from medseg3d.core.checkpoint_format import load_checkpoint, network_state, save_checkpoint
from medseg3d.core.errors import InputError
from medseg3d.data.dataset_json import fold_datalists
from medseg3d.networks import res_unet
from medseg3d.training.handlers import eval_report, load_weights
from medseg3d.transforms.array import LabelsToRegions, regions_to_labels

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_resunet_3d"
CONFIGS = "['configs/common.yaml','configs/train.yaml','configs/evaluate.yaml']"
TINY = {"roi_size": [32, 32, 32], "num_workers": 0, "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]}
TINY_ARGS = [arg for key, value in TINY.items() for arg in (f"--{key}", json.dumps(value))]
REGION_COLUMNS = ["dice_WT", "dice_TC", "dice_ET"]


def tiny_net() -> torch.nn.Module:
    return res_unet(4, 3, channels=(4, 8, 16), strides=(2, 2))


@pytest.fixture(scope="module")
def trained(tiny_prepared: Path, tmp_path_factory) -> Path:
    """A run directory after one epoch of tiny training (validated once, so ``best.pt`` exists)."""
    run_dir = tmp_path_factory.mktemp("evaluate") / "run"
    overrides = {**TINY, "dataset_dir": str(tiny_prepared), "output_dir": str(run_dir), "max_epochs": 1}
    run_bundle(BUNDLE, "train", {**overrides, "val_interval": 1, "iterations_per_epoch": 0})
    return run_dir


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_dice_per_case_and_summary(trained: Path, tiny_prepared: Path) -> None:
    last = (trained / "checkpoints" / "last.pt").read_bytes()
    run_bundle(BUNDLE, "evaluate", {**TINY, "dataset_dir": str(tiny_prepared), "output_dir": str(trained)})

    rows = _read_csv(trained / "eval" / "per_case.csv")
    validation = fold_datalists(tiny_prepared, 0)[1]
    assert [row["case_id"] for row in rows] == [entry["case_id"] for entry in validation]
    assert list(rows[0]) == ["case_id", *REGION_COLUMNS, "mean_dice"]
    values = np.array([[float(row[c]) for c in [*REGION_COLUMNS, "mean_dice"]] for row in rows])
    assert ((values >= 0) & (values <= 1)).all()
    np.testing.assert_allclose(values[:, 3], values[:, :3].mean(axis=1), rtol=1e-4)

    summary = json.loads((trained / "eval" / "summary.json").read_text())
    assert summary["cases"] == len(validation)
    for column, case_values in zip([*REGION_COLUMNS, "mean_dice"], values.T, strict=True):
        stats = summary["metrics"][column]
        assert stats["n"] == len(validation)
        assert stats["mean"] == pytest.approx(case_values.mean(), rel=1e-4)
        assert stats["std"] == pytest.approx(case_values.std(), rel=1e-3, abs=1e-6)
    assert summary["info"] == {
        "checkpoint": str(trained / "checkpoints" / "best.pt"),
        "dataset_dir": str(tiny_prepared),
        "fold": 0,
        "output_mode": "regions",
    }
    # The weights of best.pt were loaded: the same Dice as training's validation when it saved them.
    best = load_checkpoint(trained / "checkpoints" / "best.pt")["best"]
    assert summary["evaluator_metrics"]["val_mean_dice"] == pytest.approx(best["metric"], rel=1e-5)
    # Nothing trained: the training record and checkpoints are untouched, no predictions by default.
    assert (trained / "checkpoints" / "last.pt").read_bytes() == last
    assert len(_read_csv(trained / "metrics.csv")) == 1
    assert not (trained / "eval" / "predictions").exists()


def test_evaluate_through_monai_bundle_run_with_a_bare_state_dict(
    trained: Path, tiny_prepared: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "weights.pt"
    torch.save(load_checkpoint(trained / "checkpoints" / "best.pt")["network"], bare)
    eval_dir = tmp_path / "eval"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        CONFIGS,
        "--dataset_dir",
        str(tiny_prepared),
    ]
    command += ["--output_dir", str(tmp_path / "unused"), "--checkpoint", str(bare), "--eval_dir", str(eval_dir)]
    command += ["--save_predictions", "True", *TINY_ARGS]
    result = subprocess.run(command, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((eval_dir / "summary.json").read_text())
    best = load_checkpoint(trained / "checkpoints" / "best.pt")["best"]
    assert summary["evaluator_metrics"]["val_mean_dice"] == pytest.approx(best["metric"], rel=1e-5)
    assert summary["info"]["checkpoint"] == str(bare)
    for entry in fold_datalists(tiny_prepared, 0)[1]:
        prediction = nib.load(eval_dir / "predictions" / f"{entry['case_id']}.nii.gz")
        label = nib.load(entry["label"])
        assert prediction.shape == label.shape
        np.testing.assert_allclose(prediction.affine, label.affine)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2, 3}
    assert not (tmp_path / "unused").exists()


@pytest.mark.filterwarnings("ignore:parsing config_file")  # MONAI: configs run code; this one is ours
def test_evaluate_with_the_runs_own_config(trained: Path, tmp_path: Path) -> None:
    from monai.bundle import run

    # RUN/config.json holds the dataset and network overrides of the run: nothing to repeat.
    configs = BUNDLE / "configs"
    run(
        config_file=[str(trained / "config.json"), str(configs / "evaluate.yaml")],
        meta_file=str(configs / "metadata.json"), logging_file=str(configs / "logging.conf"),
        eval_dir=str(tmp_path / "eval"),
    )  # fmt: skip
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    best = load_checkpoint(trained / "checkpoints" / "best.pt")["best"]
    assert summary["evaluator_metrics"]["val_mean_dice"] == pytest.approx(best["metric"], rel=1e-5)
    assert summary["info"]["checkpoint"] == str(trained / "checkpoints" / "best.pt")


def _touch(path: str) -> None:
    Path(path).touch()


class CodeOnLoad:
    """Unpickling this object would run ``_touch``: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def _code_pickle(path: Path) -> None:
    torch.save({"network": tiny_net().state_dict(), "extra": CodeOnLoad(path.parent / "code-ran")}, path)


@pytest.mark.parametrize(
    "write, message",
    [
        pytest.param(_code_pickle, "refused: the checkpoint holds objects that would run code", id="code-pickle"),
        pytest.param(None, "checkpoint not found", id="missing"),
        pytest.param(lambda p: save_checkpoint({"seed": 0}, p), "holds no 'network' state dict", id="no-network"),
        pytest.param(
            lambda p: save_checkpoint({"network": res_unet(4, 3, channels=(4, 8), strides=(2,)).state_dict()}, p),
            "the weights do not fit the network: ",
            id="other-network",
        ),
    ],
)
def test_bad_checkpoints_are_refused_naming_the_file(tiny_prepared: Path, tmp_path: Path, write, message: str) -> None:
    checkpoint = tmp_path / "model.pt"
    if write is not None:
        write(checkpoint)
    overrides = {**TINY, "dataset_dir": str(tiny_prepared), "output_dir": str(tmp_path), "checkpoint": str(checkpoint)}
    with pytest.raises(InputError, match=message) as caught:
        run_bundle(BUNDLE, "evaluate", overrides)
    assert caught.value.path == str(checkpoint)
    assert not (tmp_path / "code-ran").exists()
    assert not (tmp_path / "eval").exists()


def _export_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", *args]


def _export(trained: Path, filepath: Path, config: str, overrides: list[str]) -> None:
    """``python -m monai.bundle ckpt_export`` from the bundle folder, as its docs/README.md shows."""
    command = _export_command("--filepath", str(filepath), "--ckpt_file", str(trained / "checkpoints" / "best.pt"))
    command += ["--key_in_ckpt", "network", "--meta_file", "configs/metadata.json", "--config_file", config]
    result = subprocess.run([*command, *overrides], cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_exported_torchscript_matches_the_checkpoint(trained: Path, tmp_path: Path) -> None:
    from monai.bundle import ckpt_export
    from monai.data import load_net_with_metadata

    network = tiny_net().eval()
    network.load_state_dict(load_checkpoint(trained / "checkpoints" / "best.pt")["network"])
    image = torch.randn(1, 4, 24, 32, 40, generator=torch.Generator().manual_seed(0))  # non-cubic
    with torch.no_grad():
        expected = network(image)

    _export(trained, tmp_path / "model.ts", "configs/common.yaml", TINY_ARGS[4:])
    scripted, meta, extra = load_net_with_metadata(str(tmp_path / "model.ts"), more_extra_files=["common.json"])
    assert meta["version"] == json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    assert json.loads(extra["common.json"])["network_def"]["_target_"] == "medseg3d.networks.res_unet"
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "model.ts"))(image), expected)
        torch.testing.assert_close(scripted(image), expected)

    # The run's config.json holds its network overrides: nothing to repeat (in-process, same function).
    ckpt_export(
        "network_def", filepath=str(tmp_path / "from_run.ts"), ckpt_file=str(trained / "checkpoints" / "best.pt"),
        key_in_ckpt="network", meta_file=str(BUNDLE / "configs" / "metadata.json"),
        config_file=str(trained / "config.json"),
    )  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "from_run.ts"))(image), expected)


def test_verify_net_in_out_runs_offline() -> None:
    from monai.bundle import verify_net_in_out

    # n=2: 32^3, the smallest input whose bottleneck keeps more than one voxel for instance norm.
    configs = BUNDLE / "configs"
    verify_net_in_out(
        "network_def", meta_file=str(configs / "metadata.json"), config_file=str(configs / "common.yaml"), n=2,
        device="cpu", **{"network_def#channels": [4, 8, 16], "network_def#strides": [2, 2]},
    )  # fmt: skip


@pytest.mark.parametrize(
    "checkpoint, key",
    [
        pytest.param({"network": {"w": torch.ones(1)}, "seed": 0}, "network", id="training-checkpoint"),
        pytest.param({"w": torch.ones(1)}, "network", id="bare-state-dict"),
        pytest.param({"model": {"w": torch.ones(1)}}, "model", id="other-key"),
    ],
)
def test_network_state_finds_the_weights(checkpoint: dict, key: str) -> None:
    assert list(network_state(checkpoint, key)) == ["w"]


def test_regions_to_labels_inverts_labels_to_regions() -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=(1, 10, 20, 30))
    np.testing.assert_array_equal(regions_to_labels(LabelsToRegions()(labels)), labels[0])


def test_report_leaves_undefined_dice_empty_and_out_of_the_summary(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from medseg3d.training.handlers.eval_report import EvalReport

    nan = float("nan")
    details = {
        "val_mean_dice": torch.tensor([[0.5, 1.0, nan], [nan, nan, nan], [0.2, 0.4, 0.6]]),
        "val_dice_ET": torch.tensor([[nan], [nan], [0.6]]),
    }
    state = SimpleNamespace(metric_details=details, key_metric_name="val_mean_dice", metrics={"val_mean_dice": 0.54})
    report = EvalReport(tmp_path, info={"fold": 1})
    report.case_ids = ["a", "b", "c"]
    report._completed(SimpleNamespace(state=state))

    assert (tmp_path / "per_case.csv").read_text().splitlines() == [
        "case_id,dice_ET,mean_dice", "a,,0.75", "b,,", "c,0.6,0.4",
    ]  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metrics"]["mean_dice"] == pytest.approx({"mean": 0.575, "std": 0.175, "n": 2})
    assert summary["metrics"]["dice_ET"] == pytest.approx({"mean": 0.6, "std": 0.0, "n": 1})
    assert summary["cases"] == 3 and summary["info"] == {"fold": 1}
    assert summary["evaluator_metrics"] == {"val_mean_dice": 0.54}


@pytest.mark.parametrize("module", [load_weights, eval_report], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_doctests(module) -> None:
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_no_checkpoint_given_points_at_the_option(tmp_path: Path, tiny_prepared: Path) -> None:
    overrides = {**TINY, "dataset_dir": str(tiny_prepared), "output_dir": str(tmp_path / "run")}
    with pytest.raises(InputError, match="pass --checkpoint PATH or the run's --output_dir") as caught:
        run_bundle(BUNDLE, "evaluate", overrides)
    assert caught.value.path == os.path.join(str(tmp_path / "run"), "checkpoints", "best.pt")
