"""Debian packages a test target needs (SLURM for `make cluster-test`, podman for `make container-test`): installed
with apt-get when missing and the user may (root), else the reason the test skips.

Loaded by file path (``importlib``), as the other test helpers are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path


def _found(binary: str) -> bool:
    return shutil.which(binary) is not None or Path("/usr/sbin", binary).is_file()


def ensure(binaries: Sequence[str], packages: Sequence[str]) -> str | None:
    """None when every one of ``binaries`` is on ``PATH`` (or in /usr/sbin, not on a user's ``PATH``); otherwise
    ``apt-get install packages`` as root, and None when that worked, else why not."""
    if all(_found(b) for b in binaries):
        return None
    missing = ", ".join(b for b in binaries if not _found(b))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{missing} not installed, and apt-get cannot install {' '.join(packages)} here (not root)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            return f"{' '.join(command)} failed: {result.stderr[-500:]}"
    if not all(_found(b) for b in binaries):
        return f"apt-get installed {' '.join(packages)} but {missing} is still not found"
    return None
