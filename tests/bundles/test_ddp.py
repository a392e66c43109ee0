"""Every bundle's ``multi_gpu_train`` overlay: two gloo processes under ``torchrun`` train an epoch; rank 0 alone
writes."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medseg3d.core.checkpoint_format import load_checkpoint

BUNDLES = ["brats_mri_resunet_3d", "brats_mri_slicestack_2p5d", "ct_aorta_resunet_3d", "brats_mri_resunet_3d+grade"]
CONFIGS = ["configs/common.yaml", "configs/train.yaml"]
DDP_CONFIGS = [*CONFIGS, "configs/multi_gpu_train.yaml"]
# 4 tiny cases in 2 folds: 2 training cases, one per rank and epoch; 2 validation cases, one per rank.
EPOCH = {"max_epochs": 1, "val_interval": 1, "iterations_per_epoch": 0, "batch_size": 1, "num_workers": 0}


# Loaded by every worker through PYTHONPATH: on ranks > 0, an audit hook notes each file opened for
# writing, renamed, removed or folder made under the run folder, so the test knows who wrote what.
WATCH_WRITES = """
import os, sys

if os.environ.get("RANK", "0") != "0" and "WATCH_DIR" in os.environ:
    _WATCHED, _LOG, _RANK = os.environ["WATCH_DIR"], os.environ["WATCH_LOG"], os.environ["RANK"]

    def _inside(path):
        try:
            return os.path.abspath(os.fsdecode(os.fspath(path))).startswith(_WATCHED)
        except TypeError:
            return False  # a file descriptor

    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if mode else bool(flags & (os.O_WRONLY | os.O_RDWR))
            paths = [path] if writes else []
        elif event in ("os.mkdir", "os.remove", "os.rename"):
            paths = [args[0]] if event != "os.rename" else list(args[:2])
        else:
            return
        if any(_inside(p) for p in paths):
            with open(_LOG, "a") as log:
                log.write(f"rank {_RANK} {event} {[os.fsdecode(os.fspath(p)) for p in paths]}\\n")

    sys.addaudithook(_hook)
"""


@dataclass
class DDPRun:
    """One bundle's two-rank run: the finished ``torchrun`` command, its run folder, the bundle and its tiny data."""

    result: subprocess.CompletedProcess
    run_dir: Path
    bundle: Path
    dataset: Path
    tiny: dict


@pytest.fixture(scope="module", params=BUNDLES)
def ddp_run(request, tiny_bundle, tmp_path_factory) -> DDPRun:
    bundle, dataset, tiny = tiny_bundle(request.param)
    root = tmp_path_factory.mktemp(f"ddp_{request.param}")
    run_dir = root / "run"
    (root / "hooks").mkdir()
    (root / "hooks" / "sitecustomize.py").write_text(WATCH_WRITES)
    overrides = {"dataset_dir": str(dataset), "output_dir": str(run_dir), **tiny, **EPOCH}
    args = [part for key, value in overrides.items() for part in (f"--{key}", str(value))]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command = [*torchrun, "-m", "monai.bundle", "run", "--config_file", str(DDP_CONFIGS), *args]
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path (gloo) even on a GPU machine
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "hooks"), os.environ.get("PYTHONPATH")])),
        "WATCH_DIR": str(run_dir),
        "WATCH_LOG": str(root / "writes_by_other_ranks.txt"),
    }
    result = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    return DDPRun(result, run_dir, bundle, dataset, tiny)


def _parser(run: DDPRun, **overrides) -> ConfigParser:
    """The bundle's training config, single process on the CPU, with the run's tiny overrides."""
    parser = ConfigParser()
    parser.read_config([str(run.bundle / name) for name in CONFIGS])
    cpu = {"device": "$torch.device('cpu')", "amp": False}
    parser.update({"dataset_dir": str(run.dataset), **run.tiny, "num_workers": 0, **cpu, **overrides})
    return parser


def _files(run_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file())


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_ranks_train_one_epoch_and_only_rank0_writes(ddp_run: DDPRun) -> None:
    result, run_dir = ddp_run.result, ddp_run.run_dir
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "rank 0 of 2 on cpu (gloo" in output and "rank 1 of 2 on cpu (gloo" in output

    writes = run_dir.parent / "writes_by_other_ranks.txt"
    assert not writes.exists(), writes.read_text()[:3000]
    # Exactly rank 0's files: one run record, one TensorBoard file, no second copy or leftover temp file.
    files = _files(run_dir)
    events = [name for name in files if name.startswith("tensorboard/events.out.tfevents.")]
    assert len(events) == 1, files
    expected = {"config.json", "resolved.json", "run.json", "train.log", "metrics.csv", "curves.png"}
    assert set(files) == expected | {"checkpoints/last.pt", "checkpoints/best.pt", *events}
    log = (run_dir / "train.log").read_text()
    assert log.count("SupervisedTrainer INFO: Epoch[1] Complete") == 1  # rank 1 logged nothing there

    # One row per epoch; each rank trained on its half of the 2 cases: 1 iteration, not 2.
    rows = _metrics(run_dir)
    assert [(row["epoch"], row["iteration"]) for row in rows] == [("1", "1")]
    assert float(rows[0]["train_loss"]) > 0 and 0.0 <= float(rows[0]["val_mean_dice"]) <= 1.0

    config = json.loads((run_dir / "config.json").read_text())
    assert config["network"]["_target_"] == "torch.nn.parallel.DistributedDataParallel"
    assert config["validate"]["sampler"]["_target_"] == "monai.data.DistributedSampler"
    assert json.loads((run_dir / "resolved.json").read_text())["device"] == "cpu"
    assert json.loads((run_dir / "run.json").read_text())["overrides"]["max_epochs"] == 1


def test_checkpoint_loads_into_a_plain_network(ddp_run: DDPRun, tmp_path: Path) -> None:
    result, run_dir = ddp_run.result, ddp_run.run_dir
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")  # torch.load(weights_only=True)
    assert last["trainer"]["epoch"] == 1 and last["trainer"]["iteration"] == 1
    assert not [key for key in last["network"] if key.startswith("module.")]
    parser = _parser(ddp_run, output_dir=str(tmp_path))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(last["network"])  # strict: every key of the plain network, no more
    roi_size = list(ddp_run.tiny["roi_size"])
    in_channels, out_channels, classes = (parser.get_parsed_content(k) for k in ("in_channels", "out_channels",
                                                                                 "num_classes"))  # fmt: skip
    assert net(torch.zeros(1, in_channels, *roi_size)).shape == (1, out_channels + classes, *roi_size)


def test_validation_scores_all_cases_across_ranks(ddp_run: DDPRun, tmp_path: Path) -> None:
    """Each rank validated one case; the recorded Dice is that of both, as one process scores them."""
    result, run_dir = ddp_run.result, ddp_run.run_dir
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    parser = _parser(ddp_run, output_dir=str(tmp_path))
    # last.pt is written after the epoch's validation: the weights that were scored.
    weights = load_checkpoint(run_dir / "checkpoints" / "last.pt")["network"]
    parser.get_parsed_content("network").load_state_dict(weights)
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    assert len(evaluator.data_loader) == 2
    row = _metrics(run_dir)[0]
    for name, value in evaluator.state.metrics.items():
        if not isinstance(value, int | float):  # a metric's dict of scalars (case classes): its scalars are listed
            continue
        if math.isnan(value):  # the class AUC with one grade among the validation cases: undefined on both sides
            assert math.isnan(float(row[name])), name
            continue
        assert float(row[name]) == pytest.approx(value, rel=1e-4, abs=1e-6), name
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")["best"]
    assert best["metric"] == pytest.approx(float(row["val_mean_dice"]), rel=1e-4)
