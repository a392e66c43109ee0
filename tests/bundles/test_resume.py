"""A run stopped by SIGINT/SIGTERM and resumed ends with the same weights and metrics as one never stopped: every
bundle in process; the 3D BraTS bundle also from the command line, and its refusals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ignite.engine import Events

from medseg3d.bundle.workflow import make_workflow, run_bundle, run_workflow
from medseg3d.core.checkpoint_format import load_checkpoint
from medseg3d.core.errors import InputError
from medseg3d.training.handlers.metrics_csv import TIME_COLUMNS

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_mri_resunet_3d"
# The 2.5D cases are slow only because the fast suite already resumes that bundle mid-epoch
# (tests/bundles/test_slicestack_2p5d.py::test_interrupt_then_resume_equals_uninterrupted).
BUNDLES = [
    pytest.param("brats_mri_resunet_3d", id="brats_mri_resunet_3d"),
    pytest.param("brats_mri_slicestack_2p5d", id="brats_mri_slicestack_2p5d", marks=pytest.mark.slow),
    pytest.param("ct_aorta_resunet_3d", id="ct_aorta_resunet_3d"),
    pytest.param("brats_mri_resunet_3d+grade", id="brats_mri_resunet_3d+grade"),  # with the classification head
]
# 2 training cases, batch 1: 2 iterations per epoch, so a stop can fall mid-epoch.
RUN = {
    "max_epochs": 3,
    "val_interval": 1,
    "iterations_per_epoch": 0,
    "num_workers": 0,
    "batch_size": 1,
    "prob_noise": 0.5,
    "prob_flip": 0.5,
}
TINY = {
    "max_epochs": 3, "val_interval": 1, "iterations_per_epoch": 0, "roi_size": [32, 32, 32], "num_workers": 0,
    "batch_size": 1,
    "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2], "prob_noise": 0.5, "prob_flip": 0.5,
}  # fmt: skip


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def references(tiny_bundle, tmp_path_factory):
    """``references(bundle_name)`` -> the uninterrupted run of that bundle on its tiny data (trained on first use)."""
    runs: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in runs:
            bundle, dataset, tiny = tiny_bundle(name)
            run_dir = tmp_path_factory.mktemp(f"reference_{name}") / "run"
            run_bundle(bundle, "train", {**tiny, **RUN, "dataset_dir": str(dataset), "output_dir": str(run_dir)})
            runs[name] = run_dir
        return runs[name]

    return get


@pytest.fixture(scope="module")
def reference(references) -> Path:
    """The uninterrupted run of the 3D BraTS bundle (``TINY``)."""
    return references("brats_mri_resunet_3d")


@pytest.mark.parametrize("name", BUNDLES)
@pytest.mark.parametrize(
    "event, signum, stopped_at",
    [
        # Signalled during iteration 3 (epoch 2, batch 1): stops after it, mid-epoch.
        pytest.param(Events.ITERATION_STARTED(once=3), signal.SIGINT, 3, id="sigint-mid-epoch"),
        # Signalled after iteration 3: iteration 4 ends epoch 2, so it stops once epoch 2 is validated.
        pytest.param(Events.ITERATION_COMPLETED(once=3), signal.SIGTERM, 4, id="sigterm-epoch-end"),
    ],
)
def test_interrupt_then_resume_equals_uninterrupted(
    tiny_bundle, references, tmp_path: Path, name: str, event, signum: int, stopped_at: int, assert_same_run
) -> None:
    bundle, dataset, tiny = tiny_bundle(name)
    run_dir = tmp_path / "run"
    overrides = {**tiny, **RUN, "dataset_dir": str(dataset), "output_dir": str(run_dir)}
    workflow = make_workflow(bundle, "train", overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(event, lambda: os.kill(os.getpid(), signum))
    before = signal.getsignal(signal.SIGINT)  # default_int_handler; SIG_IGN in a shell's background job
    with pytest.raises(SystemExit) as stopped:
        workflow.run()
    assert stopped.value.code == 128 + signum
    assert signal.getsignal(signal.SIGINT) is before  # handlers put back

    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert last["trainer"]["iteration"] == stopped_at
    assert len(_metrics(run_dir)) == stopped_at // 2  # only completed epochs have rows

    run_workflow(make_workflow(bundle, "train", {**overrides, "resume": True}))
    assert_same_run(references(name), run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    assert [r["iteration"] for r in record["resumed"]] == [stopped_at]


def test_a_fixed_epoch_resumes_exactly(tiny_bundle, tmp_path: Path, assert_same_run) -> None:
    """The default epoch is a fixed number of draws (here 3 from 2 training cases, so cases repeat within an epoch,
    each draw with its own patch): stopped in the middle of epoch 2 and resumed, the run ends as one never stopped."""
    bundle, dataset, tiny = tiny_bundle("brats_mri_resunet_3d")
    fixed = {**tiny, **RUN, "iterations_per_epoch": 3, "dataset_dir": str(dataset)}
    reference = tmp_path / "reference"
    run_bundle(bundle, "train", {**fixed, "output_dir": str(reference)})
    assert [int(r["iteration"]) for r in _metrics(reference)] == [3, 6, 9]

    run_dir = tmp_path / "run"
    workflow = make_workflow(bundle, "train", {**fixed, "output_dir": str(run_dir)})
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_STARTED(once=5), lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit):
        workflow.run()
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["trainer"]["iteration"] == 5
    run_workflow(make_workflow(bundle, "train", {**fixed, "output_dir": str(run_dir), "resume": True}))
    assert_same_run(reference, run_dir)


@pytest.mark.parametrize(
    "signum, exit_code, close_stderr",
    [
        pytest.param(signal.SIGINT, 130, False, id="ctrl-c"),
        pytest.param(signal.SIGKILL, -signal.SIGKILL, False, id="crash"),  # no chance to save: from the epoch end
        pytest.param(signal.SIGHUP, 129, True, id="terminal-gone"),  # a dropped ssh session: stderr is dead too
    ],
)
def test_stop_on_the_command_line_then_resume(
    tiny_prepared: Path,
    tmp_path: Path,
    reference: Path,
    signum: int,
    exit_code: int,
    close_stderr: bool,
    assert_same_run,
) -> None:
    """Ctrl+C reaches the whole process group (DataLoader workers too) at an arbitrary moment, and so does a
    kill; whatever it interrupted, `medseg3d train --resume RUN_DIR` finishes the same run. Two workers
    here, none in the reference: the augmentation seeds do not depend on which process draws a case."""
    run_dir = tmp_path / "run"
    args = [text for key, value in {**TINY, "num_workers": 2}.items() for text in (f"--{key}", str(value))]
    command = [sys.executable, "-m", "medseg3d.cli", "train"]
    overrides = [*args, "--dataset_dir", str(tiny_prepared), "--output_dir", str(run_dir)]
    process = subprocess.Popen(
        [*command, "--bundle", str(BUNDLE), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while (
        not (run_dir / "checkpoints" / "last.pt").is_file() and process.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    if close_stderr:
        process.stderr.close()
    os.killpg(process.pid, signum)
    if close_stderr:
        process.wait(timeout=300)
        err = (run_dir / "train.log").read_text()
    else:
        _, err = process.communicate(timeout=300)
    assert process.returncode == exit_code, err[-3000:]
    if signum != signal.SIGKILL:
        assert f"medseg3d train --resume {run_dir}" in err

    resumed = subprocess.run([*command, "--resume", str(run_dir)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(reference, run_dir)


def test_resume_without_a_checkpoint_names_the_file(tmp_path: Path) -> None:
    from medseg3d.cli import main

    (tmp_path / "config.json").write_text("{}")
    assert main(["train", "--resume", str(tmp_path)]) == 2


def test_resume_refuses_a_different_dataset_size(tiny_prepared: Path, tmp_path: Path, reference: Path) -> None:
    overrides = {**TINY, "dataset_dir": str(tiny_prepared), "output_dir": str(tmp_path), "batch_size": 2}
    workflow = make_workflow(BUNDLE, "train", {**overrides, "resume": str(reference / "checkpoints" / "last.pt")})
    with pytest.raises(InputError, match="iterations per epoch"):
        run_workflow(workflow)


def test_resuming_a_finished_run_says_so(reference: Path, capsys) -> None:
    from medseg3d.cli import main

    before = (reference / "metrics.csv").read_text()
    assert main(["train", "--resume", str(reference)]) == 2
    assert "the run is complete: it trained 3 of max_epochs=3 epochs" in capsys.readouterr().err
    assert (reference / "metrics.csv").read_text() == before
