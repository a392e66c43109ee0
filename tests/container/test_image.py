"""The container image (`Dockerfile`), built here with podman on a Debian base made from Debian's packages: it runs
`medseg3d` as its entrypoint, as a non-root user, with no weights inside, within the size target; and
`medseg3d --version`, `synth` and `infer` on a bind-mounted folder give what the same commands give on the host.

`make container-test` runs these; `make test` leaves them out (marker ``container``): the first build takes about
3 minutes (torch, MONAI and their requirements installed into the image), later ones reuse podman's layers. They
install podman, buildah and debootstrap with apt-get when missing (as root) and skip, saying why, where they cannot.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg3d import __version__
from medseg3d.core.checkpoint_format import save_checkpoint
from medseg3d.data.synth_brats import write_brats_tree
from medseg3d.networks import res_unet

pytestmark = pytest.mark.container

_spec = importlib.util.spec_from_file_location("container_images", Path(__file__).with_name("images.py"))
images = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(images)

TAG = "localhost/medseg3d:test"
CPU_IMAGE_TARGET = 2.5e9  # bytes: issue 21's target for the CPU image
BUNDLE = images.REPO / "bundles" / "brats_mri_resunet_3d"
MEDSEG3D = str(Path(sys.executable).with_name("medseg3d"))
SITE = "/opt/medseg3d/venv/lib/python3.11/site-packages"
WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".onnx", ".safetensors", ".ts")
SYNTH = ["synth", "brats", "raw", "--cases", "3", "--shape", "64", "56", "44", "--seed", "3"]
INFER = ["--roi_size", "[24,24,16]", "--network_def#channels", "[4,8]", "--network_def#strides", "[2]",
         "--progress", "False"]  # fmt: skip


@pytest.fixture(scope="module")
def image() -> dict:
    why = images.ensure_tools()
    if why:
        pytest.skip(why)
    if os.geteuid() != 0:
        pytest.skip("podman builds with --isolation chroot as root here; run as root")
    return images.build_image(TAG)


@pytest.fixture
def container(image):
    started = images.Container(TAG, image["Config"]["Entrypoint"])
    yield started
    started.remove()


def test_the_image_runs_medseg3d_as_a_non_root_user_without_weights(image, container) -> None:
    config = image["Config"]
    assert config["Entrypoint"] == ["medseg3d"]
    assert config["User"] == "1000" and config["WorkingDir"] == "/data"
    assert any(e == "MEDSEG3D_BUNDLES=/opt/medseg3d/bundles" for e in config["Env"])
    print(f"\nimage {TAG}: {image['Size'] / 1e9:.2f} GB")
    assert image["Size"] <= CPU_IMAGE_TARGET

    assert container.run("id", "-u", entrypoint=False).stdout.strip() == "1000"
    patterns = [arg for suffix in WEIGHT_SUFFIXES for arg in ("-o", "-name", f"*{suffix}")][1:]
    # where weights could come in with the project (torch's own test files in site-packages/torch/bin are not ours)
    places = [
        "/opt/medseg3d/bundles",
        "/data",
        "/home",
        *(f"{SITE}/{package}" for package in ("medseg3d", "data_prep")),
    ]
    assert container.run("find", *places, *patterns, entrypoint=False).stdout.split() == []
    bundles = container.run("ls", "/opt/medseg3d/bundles", entrypoint=False).stdout.split()
    assert bundles == sorted(p.name for p in (images.REPO / "bundles").iterdir() if (p / "configs").is_dir())
    assert config["Cmd"] == ["--help"]  # `docker run IMAGE` alone prints the usage
    assert container.run(*config["Cmd"]).stdout.startswith("usage: medseg3d")


def _rows(path: Path) -> dict[str, dict[str, str]]:
    """summary.csv's rows by case, without the time taken; ``input`` as its name (the two runs' paths differ)."""
    with open(path, newline="") as f:
        rows = {row["case_id"]: {k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)}
    return {case: {**row, "input": Path(row["input"]).name} for case, row in rows.items()}


def test_version_synth_and_infer_on_a_bind_mounted_folder_equal_the_host(container, tmp_path) -> None:
    data = tmp_path / "data"  # the user's folder, bind-mounted at the image's working folder /data
    data.mkdir()
    os.chown(data, 1000, 1000)
    mount = {data: "/data"}

    version = container.run("--version").stdout.strip()
    assert version.startswith(f"medseg3d {__version__} (torch {torch.__version__}, monai ")

    container.run(*SYNTH, volumes=mount)
    host_cases = write_brats_tree(tmp_path / "host_raw", cases=3, edition="2021", shape=(64, 56, 44), seed=3)
    written = sorted(p.relative_to(data / "raw") for p in (data / "raw").rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(tmp_path / "host_raw") for p in (tmp_path / "host_raw").rglob("*")
                             if p.is_file())  # fmt: skip
    for relative in written:
        assert (data / "raw" / relative).read_bytes() == (tmp_path / "host_raw" / relative).read_bytes(), relative
    assert {p.stat().st_uid for p in (data / "raw").rglob("*")} == {1000}  # written by the non-root user

    inputs = data / "inputs"
    for folder in host_cases:
        shutil.copytree(data / "raw" / folder.relative_to(tmp_path / "host_raw"), inputs / folder.name,
                        ignore=shutil.ignore_patterns("*seg*"))  # fmt: skip
    torch.manual_seed(0)
    save_checkpoint({"network": res_unet(4, 3, channels=(4, 8), strides=(2,)).state_dict()}, data / "best.pt")
    for path in [inputs, *inputs.rglob("*"), data / "best.pt"]:
        os.chown(path, 1000, 1000)

    # the bundle by name: the image's MEDSEG3D_BUNDLES; paths relative to the working folder, the bind mount
    container.run("infer", "inputs", "out", "--bundle", "brats_mri_resunet_3d", "--checkpoint", "best.pt",
                  "--preview", *INFER, volumes=mount)  # fmt: skip
    host_out = tmp_path / "host_out"
    subprocess.run([MEDSEG3D, "infer", str(inputs), str(host_out), "--bundle", str(BUNDLE), "--checkpoint",
                    str(data / "best.pt"), *INFER], check=True, capture_output=True, timeout=900)  # fmt: skip
    expected = _rows(host_out / "summary.csv")
    assert len(expected) == 3 and all(row["status"] == "ok" for row in expected.values())
    assert _rows(data / "out" / "summary.csv") == expected
    for case_id in expected:
        assert (data / "out" / f"{case_id}.nii.gz").read_bytes() == (host_out / f"{case_id}.nii.gz").read_bytes()
        assert (data / "out" / "previews" / f"{case_id}.png").stat().st_size > 0
    assert {p.stat().st_uid for p in (data / "out").rglob("*")} == {1000}

    # an exported model (medseg3d export, here on the host) runs in the image without the bundle: OpenVINO inside
    subprocess.run([MEDSEG3D, "export", "--bundle", str(BUNDLE), "--checkpoint", str(data / "best.pt"), "--out",
                    str(data / "model"), *INFER[:-2]], check=True, capture_output=True, timeout=900)  # fmt: skip
    for path in [data / "model", *(data / "model").iterdir()]:
        os.chown(path, 1000, 1000)
    container.run("infer", "inputs", "out_model", "--model", "model", "--progress", "False", volumes=mount)
    assert {case: row["status"] for case, row in _rows(data / "out_model" / "summary.csv").items()} == {
        case: "ok" for case in expected
    }
    for case_id in expected:  # float32 on OpenVINO: the checkpoint's label maps (docs/export.md's tolerance)
        ours = np.asarray(nib.load(data / "out_model" / f"{case_id}.nii.gz").dataobj)
        theirs = np.asarray(nib.load(host_out / f"{case_id}.nii.gz").dataobj)
        for label in (1, 2, 4):
            x, y = ours == label, theirs == label
            assert int(x.sum() + y.sum()) == 0 or 2 * int((x & y).sum()) / int(x.sum() + y.sum()) >= 0.999
