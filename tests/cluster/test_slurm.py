"""On a real SLURM (one node, started here): a training job that is warned, requeued and killed ends with the
weights of an uninterrupted run; a 3-task inference array equals one process, also with a task killed midway.

`make cluster-test` runs these (and `make robustness`); `make test` leaves them out (marker ``cluster``). They
install slurm-wlm and munge with apt-get when missing (as root) and skip, saying why, where that is impossible.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medseg3d.core.checkpoint_format import load_checkpoint, network_state, save_checkpoint
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.networks import res_unet

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brats_mri_resunet_3d"
SLURM_DIR = REPO / "deploy" / "slurm"
MEDSEG3D = str(Path(sys.executable).with_name("medseg3d"))
_spec = importlib.util.spec_from_file_location("slurm_cluster", Path(__file__).with_name("slurm.py"))
slurm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(slurm)

TRAIN = [
    "--max_epochs", "5", "--val_interval", "1", "--iterations_per_epoch", "12", "--batch_size", "1",
    "--roi_size", "[32,32,32]", "--num_workers", "0", "--network_def#channels", "[4,8,16]",
    "--network_def#strides", "[2,2]",
]  # fmt: skip
INFER = ["--roi_size", "[24,24,16]", "--network_def#channels", "[4,8]", "--network_def#strides", "[2]",
         "--progress", "False"]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = slurm.ensure_packages()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("the one-node cluster runs slurmctld and slurmd as root (SlurmUser=root); run as root")
    started = slurm.OneNodeCluster(tmp_path_factory.mktemp("slurm")).start()
    yield started
    started.stop()


def _weights_hash(checkpoint: Path) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network_state(load_checkpoint(checkpoint)).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _wait_for(predicate, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise TimeoutError(f"waited {timeout} s for {what}")


def _running_again(cluster, job: str) -> None:
    """After a requeue: SLURM holds the job about a minute (its begin time); start it now, and wait until it runs."""

    seen: list[str] = []
    pending_since: list[float] = []

    def running() -> bool:
        state = cluster.state(job)
        seen.append(f"{state}/{cluster.field(job, 'Reason')}")
        if state == "PENDING":
            pending_since.append(time.monotonic())
            # not at once: slurmd refuses to launch a job whose previous instance it is still killing ("already
            # killed, do not launch batch job") and the job then fails
            if time.monotonic() - pending_since[0] > 15:
                cluster.start_now(job)
        return state == "RUNNING"

    try:  # SLURM's own delay before a requeued job may start again is about a minute, up to three seen here
        _wait_for(running, f"job {job} to run again", timeout=900)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; states seen: {sorted(set(seen))}") from None


def _in_epoch(run_dir: Path, epoch: int, iteration: int = 3):
    """True once the run's log shows ``iteration`` of ``epoch``: the signal then lands mid-epoch."""

    def seen() -> bool:
        log = run_dir / "train.log"
        return log.is_file() and f"Epoch: {epoch}/5, Iter: {iteration}/12" in log.read_text(errors="replace")

    return seen


def _training_pid(run_dir: Path) -> int | None:
    found = subprocess.run(["pgrep", "-f", f"train .*{run_dir}"], capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in found if int(p) != os.getpid()]
    return max(pids) if pids else None


def test_a_warned_requeued_and_killed_job_ends_as_an_uninterrupted_run(cluster, tiny_prepared, tmp_path) -> None:
    reference = tmp_path / "reference"
    subprocess.run([MEDSEG3D, "train", "--bundle", str(BUNDLE), "--dataset_dir", str(tiny_prepared),
                    "--output_dir", str(reference), *TRAIN], check=True, capture_output=True, timeout=900)  # fmt: skip

    run_dir = tmp_path / "slurm_run"
    log = tmp_path / "job.out"
    job = cluster.sbatch("-o", str(log), "--chdir", str(REPO), str(SLURM_DIR / "train.sbatch"), str(BUNDLE),
                         str(tiny_prepared), str(run_dir), *TRAIN, env={"MEDSEG3D": MEDSEG3D})  # fmt: skip
    start = time.monotonic()
    # 1. the time-limit warning (what --signal=B:USR1@120 sends): the run saves, the script requeues the job
    _wait_for(_in_epoch(run_dir, 2), "epoch 2")
    cluster.run("scancel", "--signal=USR1", "--batch", job, check=True)
    _wait_for(lambda: "requeued job" in log.read_text(errors="replace"), "the script's requeue")
    _running_again(cluster, job)
    # 2. the scheduler requeues it (pre-emption, an admin): SIGTERM, the run saves, SLURM runs it again
    _wait_for(_in_epoch(run_dir, 3), "epoch 3 after the restart")
    cluster.run("scontrol", "requeue", job, check=True)
    _running_again(cluster, job)
    # 3. a node failure: the run is killed outright (SIGKILL), then the job is requeued
    _wait_for(lambda: _in_epoch(run_dir, 4, 5)() and _training_pid(run_dir) is not None, "epoch 4 after 2 restarts")
    os.kill(_training_pid(run_dir), 9)
    _wait_for(lambda: cluster.state(job) in ("FAILED", "COMPLETED", "PENDING"), "the job to end")
    if cluster.state(job) != "PENDING":
        cluster.run("scontrol", "requeue", job, check=True)
    assert cluster.wait(job, timeout=900) == "COMPLETED", log.read_text()[-3000:]
    elapsed = time.monotonic() - start

    text = log.read_text()
    assert text.count("): resuming") == 3 and "SIGUSR1: saving and requeueing" in text
    assert int(cluster.field(job, "Restarts")) == 3
    assert _weights_hash(run_dir / "checkpoints" / "last.pt") == _weights_hash(reference / "checkpoints" / "last.pt")
    with open(run_dir / "metrics.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [1, 2, 3, 4, 5]
    print(f"slurm training: 3 interruptions, {elapsed:.0f} s from submission to completion")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["case_id"]: {k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def nine_cases(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("nine")
    cases = write_brats_tree(root / "raw", cases=9, edition="2021", shape=(64, 56, 44), seed=3)
    inputs = root / "inputs"
    for folder in cases:
        shutil.copytree(folder, inputs / folder.name, ignore=shutil.ignore_patterns("*seg*"))
    torch.manual_seed(0)
    checkpoint = save_checkpoint({"network": res_unet(4, 3, channels=(4, 8), strides=(2,)).state_dict()},
                                 root / "best.pt")  # fmt: skip
    return inputs, checkpoint


def _array(cluster, inputs: Path, checkpoint: Path, out: Path, logs: Path) -> str:
    return cluster.sbatch("--array=0-2", "-o", str(logs / "%A_%a.out"), "--chdir", str(REPO),
                          str(SLURM_DIR / "infer_array.sbatch"), str(BUNDLE), str(checkpoint), str(inputs), str(out),
                          *INFER, env={"MEDSEG3D": MEDSEG3D})  # fmt: skip


def test_an_inference_array_equals_one_process_even_with_a_task_killed(cluster, nine_cases, tmp_path) -> None:
    inputs, checkpoint = nine_cases
    single = tmp_path / "single"
    subprocess.run([MEDSEG3D, "infer", str(inputs), str(single), "--bundle", str(BUNDLE), "--checkpoint",
                    str(checkpoint), *INFER], check=True, capture_output=True, timeout=900)  # fmt: skip
    expected = _rows(single / "summary.csv")
    assert len(expected) == 9

    out, logs = tmp_path / "array", tmp_path / "logs"
    logs.mkdir()
    job = _array(cluster, inputs, checkpoint, out, logs)
    for task in range(3):
        assert cluster.wait(f"{job}_{task}") == "COMPLETED"
    assert _rows(out / "summary.csv") == expected
    for case_id in expected:
        assert (out / f"{case_id}.nii.gz").read_bytes() == (single / f"{case_id}.nii.gz").read_bytes()

    # task 0 killed once it has written a case: only whole files stay; requeued, it finishes the rest
    killed = tmp_path / "killed"
    job = _array(cluster, inputs, checkpoint, killed, logs)
    part = killed / "summary.part-0-of-3.running.csv"  # task 0's rows so far
    _wait_for(lambda: part.is_file() and len(_rows(part)) >= 1, "task 0's first case")
    cluster.run("scancel", "--signal=KILL", "--full", f"{job}_0", check=True)
    _wait_for(lambda: cluster.state(f"{job}_0") in ("FAILED", "COMPLETED", "CANCELLED"), "task 0 to end")
    for task in (1, 2):
        cluster.wait(f"{job}_{task}")
    leftovers = [p.name for p in killed.iterdir() if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []
    done_before = len(_rows(part))
    assert not (killed / "summary.csv").exists()  # task 0 never finished: no summary merges its rows yet
    cluster.run("scontrol", "requeue", f"{job}_0", check=True)
    assert cluster.wait(f"{job}_0") == "COMPLETED"
    rows = _rows(killed / "summary.csv")
    assert {k: {c: v for c, v in r.items() if c not in ("status", "error")} for k, r in rows.items()} == {
        k: {c: v for c, v in r.items() if c not in ("status", "error")} for k, r in expected.items()
    }
    assert sum(r["status"] == "skipped" for r in rows.values()) >= done_before >= 1
    for case_id in expected:
        assert (killed / f"{case_id}.nii.gz").read_bytes() == (single / f"{case_id}.nii.gz").read_bytes()
