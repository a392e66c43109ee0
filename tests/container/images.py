"""The project's image built with podman, and containers of it run with buildah, for `make container-test`.

Loaded by file path (``importlib``), as the other test helpers are. ``podman run`` cannot start a container in
this sandbox (crun is refused RLIMIT_NOFILE), so a container is ``buildah from`` the image and each command is
``buildah run --isolation chroot``: the image's user, working folder and environment apply, and the command is
the image's entrypoint followed by the arguments, as ``docker run IMAGE ARGS`` would run it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("system_packages", Path(__file__).parents[1] / "system_packages.py")
system_packages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(system_packages)

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / "deploy" / "container" / "wheelhouse"
BASE_TAG = "localhost/medseg3d-base:bookworm"


def ensure_tools() -> str | None:
    """None when podman, buildah and debootstrap are usable (installed with apt-get as root if missing)."""
    return system_packages.ensure(("podman", "buildah", "debootstrap"), ("podman", "buildah", "debootstrap"))


def _command(*argv: str, timeout: float = 1800, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")  # fmt: skip
    return result


def torch_wheel() -> Path | None:
    """This environment's torch as a wheel file, from the folders pip finds links in (``PIP_FIND_LINKS``, pip's
    config): the image then gets the same build as the tests (here: the CPU build on this disk), not a download."""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    config = subprocess.run(["python3", "-m", "pip", "config", "get", "global.find-links"], capture_output=True,
                            text=True)  # fmt: skip
    folders += config.stdout.split() if config.returncode == 0 else []
    name = f"torch-{torch.__version__}-*.whl"
    for folder in folders:
        path = Path(folder.removeprefix("file://"))
        if path.is_dir():
            found = sorted(path.glob(name))
            if found:
                return found[0]
    return None


def build_image(tag: str) -> dict:
    """Build the repository's Dockerfile as ``tag`` on a Debian base made here from Debian's packages
    (``deploy/container/debian_base.sh``; no image registry is reachable), with torch from the wheelhouse when
    this environment's wheel is found, else from PyTorch's CPU index (the Dockerfile's default); return the
    image's ``podman image inspect`` record."""
    _command("bash", str(REPO / "deploy" / "container" / "debian_base.sh"), BASE_TAG, timeout=900)
    args = ["--build-arg", f"BASE_IMAGE={BASE_TAG}"]
    wheel = torch_wheel()
    if wheel is not None:
        target = WHEELHOUSE / wheel.name
        if not target.is_file() or target.stat().st_size != wheel.stat().st_size:
            target.write_bytes(wheel.read_bytes())
        args += ["--build-arg", "TORCH_INDEX_URL=", "--build-arg", f"TORCH_SPEC=torch=={torch.__version__}"]
    cert = os.environ.get("PIP_CERT")  # a network that inspects TLS: its CA, as the Dockerfile's build secret
    if cert and Path(cert).is_file():
        args += ["--secret", f"id=pip_cert,src={cert}"]
    _command("podman", "build", "--isolation", "chroot", "--layers", "-t", tag, *args, str(REPO))
    return json.loads(_command("podman", "image", "inspect", tag).stdout)[0]


class Container:
    """A container of ``image`` (``buildah from``); ``run`` runs the image's entrypoint with arguments in it,
    ``volumes`` bind-mounted (host path -> container path); ``remove`` deletes it."""

    def __init__(self, image: str, entrypoint: Sequence[str]) -> None:
        self.entrypoint = list(entrypoint)
        self.name = _command("buildah", "from", "--pull-never", image).stdout.strip()

    def run(self, *args: str, volumes: dict[Path, str] | None = None, entrypoint: bool = True,
            timeout: float = 900) -> subprocess.CompletedProcess:  # fmt: skip
        mounts = [f"--volume={host}:{inside}:rw" for host, inside in (volumes or {}).items()]
        argv = [*self.entrypoint, *args] if entrypoint else list(args)
        return _command("buildah", "run", "--isolation", "chroot", *mounts, self.name, "--", *argv, timeout=timeout)

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=120)
