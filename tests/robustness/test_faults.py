"""Faults: a kill at any moment and a full disk during preparation, batch inference and training.

After a SIGKILL at a seeded random moment (or inside a checkpoint write) every visible file must load, and the
rerun (``prep_brats`` again, ``medseg3d infer --resume``, ``medseg3d train --resume``) must produce what an
uninterrupted run produces, compared by content hash (label maps, prepared volumes) or bit for bit (weights,
optimizer state). A full disk is a real ENOSPC: the writer's temporary file is swapped for a link to
``/dev/full``, so the kernel refuses the bytes inside nibabel's, torch's or Python's own write, and the error
must name the file, leave no temporary file and keep every earlier output.
"""

from __future__ import annotations

import csv
import errno
import fnmatch
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import medseg3d.core.io as io
from data_prep.prep_brats import main as prep_main
from medseg3d.cli import main
from medseg3d.core.checkpoint_format import load_checkpoint, save_checkpoint
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.networks import res_unet
from medseg3d.preparation.brats import PrepOptions, prep_brats

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "brats_mri_resunet_3d"
SHAPE = (40, 36, 27)  # non-cubic, odd depth
PREP_SHAPE = (112, 96, 75)  # ~0.17 s per case: a kill's random delay falls inside the conversion
CASES = 6
# The tiny inference network (as tests/inference/test_runner.py builds it).
INFER = {"roi_size": [24, 24, 16], "network_def#channels": [4, 8], "network_def#strides": [2], "progress": False}
INFER_ARGS = [arg for key, value in INFER.items() for arg in (f"--{key}", str(value))]
# The tiny training run of tests/bundles/test_resume.py: 2 training cases, batch 1, 2 iterations per epoch.
TRAIN = {
    "max_epochs": 3, "val_interval": 1, "iterations_per_epoch": 0, "roi_size": [32, 32, 32], "num_workers": 0,
    "batch_size": 1,
    "network_def#channels": [4, 8, 16], "network_def#strides": [2, 2], "prob_noise": 0.5, "prob_flip": 0.5,
}  # fmt: skip
TRAIN_ARGS = [arg for key, value in TRAIN.items() for arg in (f"--{key}", str(value))]
CLI = [sys.executable, "-m", "medseg3d.cli"]
needs_dev_full = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")


# ------------------------------------------------------------------------------------------------------ helpers


def _is_tmp(path: Path) -> bool:
    """A writer's temporary file (``.<name>.<random>.tmp<ext>``, see ``medseg3d.core.io.atomic_path``)."""
    return path.name.startswith(".") and ".tmp" in path.name


def _tmp_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if _is_tmp(p))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _hashes(folder: Path, pattern: str) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.glob(pattern)) if not _is_tmp(p)}


def _labels(out: Path) -> list[str]:
    """The label maps written (pathlib's glob also matches hidden temporary files)."""
    return sorted(p.name for p in out.glob("*.nii.gz") if not _is_tmp(p))


def _assert_loads(path: Path) -> None:
    """``path`` is whole: every voxel decompresses, every JSON/CSV parses, a checkpoint loads with weights_only."""
    name = path.name
    if name.endswith((".nii.gz", ".nii")):
        np.asarray(nib.load(str(path)).dataobj)
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith(".csv"):
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        assert rows and all(len(row) == len(rows[0]) for row in rows), path
    elif name.endswith(".pt"):
        torch.load(path, map_location="cpu", weights_only=True)
    elif name.endswith(".png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 100, path


def _assert_visible_files_load(folder: Path) -> list[Path]:
    """Every file but the writers' temporary ones loads; returns the temporary ones a kill left behind."""
    for path in folder.rglob("*"):
        if path.is_file() and not _is_tmp(path):
            try:
                _assert_loads(path)
            except Exception as exc:  # noqa: BLE001 - report which file is corrupt
                raise AssertionError(f"{path} is visible but does not load: {exc}") from exc
    return _tmp_files(folder)


def _wait(condition: Callable[[], bool], process: subprocess.Popen, timeout: float = 240) -> None:
    """Poll ``condition`` (a progress marker) until it holds, the process exits, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition() and process.poll() is None:
        assert time.monotonic() < deadline, "no progress before the timeout"
        time.sleep(0.005)


def _kill(process: subprocess.Popen) -> int:
    """SIGKILL the process and its children (it runs in its own session); its return code."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    return process.wait(timeout=60)


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as err:
        return subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, env=_env()
        )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


def _run(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout
    )


def _rows(path: Path, drop: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row[next(iter(row))]: {k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)}


@pytest.fixture
def full_disk(monkeypatch) -> Callable[..., list[Path]]:
    """``full_disk(pattern, nth=1)``: the ``nth`` atomic write whose destination matches ``pattern`` (fnmatch on
    the destination's path) and every later one fails with a real ENOSPC; returns the destinations refused."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux)")
    real = io._temporary_beside
    refused: list[Path] = []

    def install(pattern: str, nth: int = 1) -> list[Path]:
        seen = [0]

        def temporary_beside(path: Path) -> Path:
            tmp = real(path)
            if fnmatch.fnmatch(path.as_posix(), pattern):
                seen[0] += 1
                if seen[0] >= nth:
                    tmp.unlink()
                    tmp.symlink_to("/dev/full")  # the writer opens it and the kernel says: no space left
                    refused.append(path)
            return tmp

        monkeypatch.setattr(io, "_temporary_beside", temporary_beside)
        return refused

    return install


# ------------------------------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def raw_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_raw") / "raw"
    write_brats_tree(root, cases=CASES, edition="2021", shape=SHAPE, seed=3)
    return root


@pytest.fixture(scope="module")
def prep_reference(raw_tree: Path, tmp_path_factory) -> Path:
    """``prep_brats`` uninterrupted."""
    out = tmp_path_factory.mktemp("faults_prep_reference") / "prepared"
    prep_brats(raw_tree, out, PrepOptions(folds=2))
    return out


@pytest.fixture(scope="module")
def large_raw_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_large_raw") / "raw"
    write_brats_tree(root, cases=CASES, edition="2021", shape=PREP_SHAPE, seed=4)
    return root


@pytest.fixture(scope="module")
def large_prep_reference(large_raw_tree: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults_large_prep_reference") / "prepared"
    prep_brats(large_raw_tree, out, PrepOptions(folds=2))
    return out


def _assert_same_prepared(reference: Path, out: Path) -> None:
    """Same volumes and dataset.json by content hash, same report (times and skipped/ok status aside)."""
    for pattern in ("imagesTr/*", "labelsTr/*", "dataset.json"):
        assert _hashes(out, pattern) == _hashes(reference, pattern), pattern
    drop = ("seconds", "status")
    assert _rows(out / "prep_report.csv", drop) == _rows(reference / "prep_report.csv", drop)


@pytest.fixture(scope="module")
def infer_inputs(raw_tree: Path, tmp_path_factory) -> Path:
    """The raw cases as new scans (no segmentation) for batch inference."""
    inputs = tmp_path_factory.mktemp("faults_infer") / "inputs"
    for folder in sorted(p for p in raw_tree.rglob("BraTS2021_*") if p.is_dir()):
        shutil.copytree(folder, inputs / folder.name)
        for seg in (inputs / folder.name).glob("*seg*"):
            seg.unlink()
    assert len(list(inputs.iterdir())) == CASES
    return inputs


@pytest.fixture(scope="module")
def infer_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = res_unet(4, 3, channels=(4, 8), strides=(2,))
    path = tmp_path_factory.mktemp("faults_weights") / "best.pt"
    save_checkpoint({"network": net.state_dict()}, path)
    return path


def _infer_command(inputs: Path, out: Path, checkpoint: Path, *flags: str) -> list[str]:
    return [*CLI, "infer", str(inputs), str(out), "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint)] + [
        "--device",
        "cpu",
        *flags,
        *INFER_ARGS,
    ]


@pytest.fixture(scope="module")
def infer_reference(infer_inputs: Path, infer_checkpoint: Path, tmp_path_factory) -> Path:
    """``medseg3d infer`` uninterrupted (a separate process, as the killed and resumed runs are)."""
    out = tmp_path_factory.mktemp("faults_infer_reference") / "out"
    done = _run(_infer_command(infer_inputs, out, infer_checkpoint))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


VOLUME_COLUMNS = ("status", "error", "seconds")


# ------------------------------------------------------------------------------------------------------ kills


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_prep_brats_killed_at_random_moments_resumes_to_the_same_dataset(
    large_raw_tree: Path, large_prep_reference: Path, tmp_path: Path, seed: int
) -> None:
    """Two SIGKILLs at seeded moments (after k cases are recorded done, plus a random delay: mid-case, mid-write,
    between cases, or while dataset.json and the report are written), then the same command again."""
    rng = random.Random(seed)
    out = tmp_path / "prepared"
    states = out / ".prep_state"
    command = [sys.executable, "-m", "data_prep.prep_brats", str(large_raw_tree), str(out), "--folds", "2"]
    done_at_kill = []
    for _ in range(2):
        before = len(list(states.glob("*.json"))) if states.is_dir() else 0
        target = min(before + rng.randint(0, 2), CASES - 2)
        process = _start(command, tmp_path / "prep.log")
        _wait(lambda n=target: states.is_dir() and len(list(states.glob("*.json"))) >= n, process)
        time.sleep(rng.uniform(0.0, 0.25))
        assert _kill(process) == -signal.SIGKILL, (tmp_path / "prep.log").read_text(errors="replace")[-2000:]
        done_at_kill.append(len(list(states.glob("*.json"))))
        _assert_visible_files_load(out)
        for state in states.glob("*.json"):  # a case recorded as done has whole outputs
            entry = json.loads(state.read_text())["entry"]
            for key in ("image", "label"):
                _assert_loads(out / entry[key])
    assert min(done_at_kill) < CASES, done_at_kill  # at least one kill landed while cases were converted
    assert prep_main([str(large_raw_tree), str(out), "--folds", "2"]) == 0
    _assert_same_prepared(large_prep_reference, out)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_batch_inference_killed_at_a_random_moment_resumes_to_the_same_labels(
    infer_inputs: Path, infer_checkpoint: Path, infer_reference: Path, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    out = tmp_path / "out"
    target = rng.randint(0, 3)  # label maps written before the kill's countdown starts
    process = _start(_infer_command(infer_inputs, out, infer_checkpoint), tmp_path / "infer.log")
    # the countdown: a random part of one case's time in the uninterrupted run (on an idle machine a case takes
    # about 0.05 s, so a fixed 0-0.3 s could let the last 3 cases finish before the kill)
    case_s = min(float(row["seconds"]) for row in _rows(infer_reference / "summary.csv").values())
    _wait(lambda: len(_labels(out)) >= target, process)
    time.sleep(rng.uniform(0.0, case_s))
    assert _kill(process) == -signal.SIGKILL, (tmp_path / "infer.log").read_text(errors="replace")[-2000:]
    _assert_visible_files_load(out)
    written = _labels(out)
    assert len(written) < CASES, "the batch finished before the kill"
    if (out / "summary.csv").is_file():  # rows written so far name whole outputs
        for case_id, row in _rows(out / "summary.csv").items():
            assert row["status"] == "ok" and (out / f"{case_id}.nii.gz").is_file()

    resumed = _run(_infer_command(infer_inputs, out, infer_checkpoint, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _hashes(out, "*.nii.gz") == _hashes(infer_reference, "*.nii.gz")
    rows = _rows(out / "summary.csv")
    assert sorted(case for case, row in rows.items() if row["status"] == "skipped") == [
        name[: -len(".nii.gz")] for name in written
    ]
    assert _rows(out / "summary.csv", VOLUME_COLUMNS) == _rows(infer_reference / "summary.csv", VOLUME_COLUMNS)


@pytest.fixture(scope="module")
def train_reference(tiny_prepared: Path, tmp_path_factory) -> Path:
    """The uninterrupted tiny run."""
    from medseg3d.bundle.workflow import run_bundle

    run_dir = tmp_path_factory.mktemp("faults_train_reference") / "run"
    run_bundle(BUNDLE, "train", {**TRAIN, "dataset_dir": str(tiny_prepared), "output_dir": str(run_dir)})
    return run_dir


# Runs `medseg3d train` with every torch.save slowed after its bytes are handed over, and a line on stderr when
# a save starts: the test can kill it between the temporary file's write and its rename.
SLOW_SAVE = (
    "import sys, time, torch\n"
    "save = torch.save\n"
    "def slow(obj, f, *args, **kwargs):\n"
    "    save(obj, f, *args, **kwargs)\n"
    "    time.sleep(3.0)\n"
    "torch.save = slow\n"
    "from medseg3d.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["random", "mid-checkpoint-write"])
def test_training_killed_then_resumed_equals_uninterrupted(
    tiny_prepared: Path, train_reference: Path, tmp_path: Path, moment: str, assert_same_run
) -> None:
    """``random``: a SIGKILL at a seeded random time after the first ``last.pt``. ``mid-checkpoint-write``: the
    saves are slowed and the SIGKILL lands while the n-th ``last.pt`` is written to its temporary file, before the
    rename: the previous ``last.pt`` must be intact and the run resumes from it."""
    rng = random.Random(7)
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    args = ["train", "--bundle", str(BUNDLE), *TRAIN_ARGS, "--dataset_dir", str(tiny_prepared)]
    args += ["--output_dir", str(run_dir)]
    log = tmp_path / "train.log"
    if moment == "random":
        process = _start([*CLI, *args], log)
        _wait(last.is_file, process)
        time.sleep(rng.uniform(0.0, 1.5))
        expected_iteration = None
    else:
        nth = rng.choice([2, 3])  # a previous last.pt exists
        seen: set[str] = set()

        def nth_save_started() -> bool:
            folder = run_dir / "checkpoints"
            if folder.is_dir():
                seen.update(p.name for p in folder.glob(".last.pt.*"))
            return len(seen) >= nth

        process = _start([sys.executable, "-c", SLOW_SAVE, *args], log)
        _wait(nth_save_started, process)
        expected_iteration = 2 * (nth - 1)  # the previous epoch's end
    assert _kill(process) == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    leftovers = _assert_visible_files_load(run_dir)
    saved = load_checkpoint(last)
    if expected_iteration is not None:
        assert saved["trainer"]["iteration"] == expected_iteration
        assert leftovers and all(p.name.startswith(".last.pt.") for p in leftovers)  # killed mid-write
    assert saved["trainer"]["iteration"] < 2 * TRAIN["max_epochs"], "the run finished before the kill"

    resumed = _run([*CLI, "train", "--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(train_reference, run_dir)


def test_sigkill_between_checkpoint_write_and_rename_keeps_the_previous_one(tmp_path: Path) -> None:
    """A real SIGKILL at the worst moment: the new checkpoint is complete in its temporary file, not yet renamed."""
    path = tmp_path / "last.pt"
    script = (
        "import os, signal, sys, torch\n"
        "import medseg3d.core.io as io\n"
        "from medseg3d.core.checkpoint_format import save_checkpoint\n"
        "path = sys.argv[1]\n"
        "save_checkpoint({'epoch': 1, 'w': torch.ones(4)}, path)\n"
        "io.os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)\n"
        "save_checkpoint({'epoch': 2, 'w': torch.zeros(4)}, path)\n"
    )
    done = _run([sys.executable, "-c", script, str(path)])
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    leftovers = _assert_visible_files_load(tmp_path)
    assert [p.name.startswith(".last.pt.") for p in leftovers] == [True]  # the unrenamed new one, hidden
    checkpoint = load_checkpoint(path)
    assert checkpoint["epoch"] == 1 and torch.equal(checkpoint["w"], torch.ones(4))


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit, OSError(errno.EIO, "I/O error")])
def test_exception_between_checkpoint_write_and_rename_keeps_the_previous_one(
    tmp_path: Path, monkeypatch, interrupt
) -> None:
    path = save_checkpoint({"epoch": 1, "w": torch.ones(4)}, tmp_path / "last.pt")

    def replace(src, dst):
        assert Path(src).stat().st_size > 0  # the new checkpoint was fully written
        raise interrupt

    monkeypatch.setattr(io.os, "replace", replace)
    with pytest.raises((KeyboardInterrupt, SystemExit, OSError)):
        save_checkpoint({"epoch": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1


# ------------------------------------------------------------------------------------------------------ full disk


def _assert_no_space_error(text: str, path: Path) -> None:
    assert "No space left on device" in text and str(path) in text, text


def test_full_disk_during_prep_brats_rejects_the_case_names_the_file_and_leaves_nothing_half_written(
    raw_tree: Path, prep_reference: Path, tmp_path: Path, full_disk
) -> None:
    out = tmp_path / "prepared"
    refused = full_disk("*/imagesTr/BraTS2021_00003.nii.gz")
    result = prep_brats(raw_tree, out, PrepOptions(folds=2))
    assert refused == [out / "imagesTr" / "BraTS2021_00003.nii.gz"]
    assert [row["case_id"] for row in result.rejected] == ["BraTS2021_00003"]
    _assert_no_space_error(result.rejected[0]["reason"], refused[0])
    assert _assert_visible_files_load(out) == []  # no temporary file left
    assert not refused[0].exists()
    assert not (out / "labelsTr" / "BraTS2021_00003.nii.gz").exists()  # no label map without its image
    listed = [entry["case_id"] for entry in json.loads((out / "dataset.json").read_text())["training"]]
    assert "BraTS2021_00003" not in listed and len(listed) == CASES - 1
    reference = _hashes(prep_reference, "imagesTr/*")
    for name, digest in _hashes(out, "imagesTr/*").items():  # the other cases are whole and right
        assert digest == reference[name]

    full_disk("*/never")  # the disk has room again: the same command completes the dataset
    prep_brats(raw_tree, out, PrepOptions(folds=2))
    _assert_same_prepared(prep_reference, out)


def test_full_disk_writing_dataset_json_keeps_the_previous_one(
    raw_tree: Path, prep_reference: Path, tmp_path: Path, full_disk
) -> None:
    out = tmp_path / "prepared"
    shutil.copytree(prep_reference, out)
    before = _sha(out / "dataset.json")
    full_disk("*/dataset.json")
    with pytest.raises(OSError) as info:
        prep_brats(raw_tree, out, PrepOptions(folds=2))
    assert info.value.errno == errno.ENOSPC
    _assert_no_space_error(str(info.value), out / "dataset.json")
    assert _sha(out / "dataset.json") == before
    assert _assert_visible_files_load(out) == []


def _infer(inputs: Path, out: Path, checkpoint: Path, *flags: str) -> int:
    return main(
        ["infer", str(inputs), str(out), "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint), "--device", "cpu"]
        + [*flags, *INFER_ARGS]
    )


def test_full_disk_during_batch_inference_fails_the_case_in_the_summary(
    infer_inputs: Path, infer_checkpoint: Path, infer_reference: Path, tmp_path: Path, full_disk
) -> None:
    out = tmp_path / "out"
    refused = full_disk("*/out/BraTS2021_00002.nii.gz")
    assert _infer(infer_inputs, out, infer_checkpoint) == 1  # non-zero: a case failed
    assert refused == [out / "BraTS2021_00002.nii.gz"]
    rows = _rows(out / "summary.csv")
    assert rows["BraTS2021_00002"]["status"] == "failed"
    _assert_no_space_error(rows["BraTS2021_00002"]["error"], refused[0])
    assert [row["status"] for case, row in rows.items() if case != "BraTS2021_00002"] == ["ok"] * (CASES - 1)
    assert _assert_visible_files_load(out) == []
    assert not refused[0].exists()
    reference = _hashes(infer_reference, "*.nii.gz")
    assert _hashes(out, "*.nii.gz") == {k: v for k, v in reference.items() if k != "BraTS2021_00002.nii.gz"}


def test_full_disk_writing_the_summary_stops_the_batch_and_keeps_the_previous_summary(
    infer_inputs: Path, infer_checkpoint: Path, tmp_path: Path, full_disk, capsys
) -> None:
    """With no room for a few hundred bytes of summary nothing more can be written: the batch stops with the
    error; the summary of the cases before stays whole and ``--resume`` continues later."""
    out = tmp_path / "out"
    full_disk("*/out/summary.csv", nth=3)
    assert _infer(infer_inputs, out, infer_checkpoint) == 2  # one error line naming the file, no traceback
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert lines and lines[-1].startswith("medseg3d infer: error:"), lines
    _assert_no_space_error(lines[-1], out / "summary.csv")
    assert _assert_visible_files_load(out) == []
    assert list(_rows(out / "summary.csv")) == ["BraTS2021_00000", "BraTS2021_00001"]


@needs_dev_full
def test_full_disk_during_checkpoint_save_names_the_file_and_keeps_the_previous_one(tmp_path: Path, full_disk) -> None:
    path = save_checkpoint({"epoch": 1, "w": torch.ones(1000)}, tmp_path / "last.pt")
    full_disk("*/last.pt")
    with pytest.raises(OSError) as info:
        save_checkpoint({"epoch": 2, "w": torch.zeros(100_000)}, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    _assert_no_space_error(str(info.value), path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.slow
def test_full_disk_during_training_stops_with_the_file_named_and_resumes_exactly(
    tiny_prepared: Path, train_reference: Path, tmp_path: Path, full_disk, assert_same_run
) -> None:
    """The second epoch's ``last.pt`` finds the disk full: training stops naming it, epoch 1's ``last.pt`` is
    intact, and once there is room ``--resume`` ends where the uninterrupted run does."""
    from medseg3d.bundle.workflow import make_workflow, run_workflow

    run_dir = tmp_path / "run"
    overrides = {**TRAIN, "dataset_dir": str(tiny_prepared), "output_dir": str(run_dir)}
    last = run_dir / "checkpoints" / "last.pt"
    full_disk("*/checkpoints/last.pt", nth=2)
    with pytest.raises(OSError) as info:  # run_workflow unwraps MONAI's RuntimeError: the CLI prints one line
        run_workflow(make_workflow(BUNDLE, "train", overrides))
    assert info.value.errno == errno.ENOSPC
    _assert_no_space_error(str(info.value), last)
    assert _assert_visible_files_load(run_dir) == []
    assert load_checkpoint(last)["trainer"]["iteration"] == 2
    full_disk("*/never")
    run_workflow(make_workflow(BUNDLE, "train", {**overrides, "resume": True}))
    assert_same_run(train_reference, run_dir)
