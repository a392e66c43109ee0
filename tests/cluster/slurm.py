"""A real one-node SLURM cluster for the cluster tests: munged, slurmctld and slurmd started from Debian's packages
with their state, spool, sockets and logs in a temporary folder, and stopped by their process ids.

Loaded by file path (``importlib``), as the other test helpers are. ``ensure_packages`` installs ``slurm-wlm`` and
``munge`` with apt-get when they are missing and the user may (root); ``OneNodeCluster`` needs them on ``PATH``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

_spec = importlib.util.spec_from_file_location("system_packages", Path(__file__).parents[1] / "system_packages.py")
system_packages = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(system_packages)

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sacct", "scancel")


def ensure_packages() -> str | None:
    """None when SLURM and munge are usable; otherwise why not (after trying apt-get as root)."""
    return system_packages.ensure(BINARIES[:4], ("slurm-wlm", "munge"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class OneNodeCluster:
    """Start munged, slurmctld and slurmd for this machine (2 CPUs, proctrack/linuxproc, no accounting) under
    ``root``; ``env`` is what a client command needs (``SLURM_CONF``); ``stop`` kills the daemons it started by
    their process ids and removes the folder."""

    def __init__(self, root: Path, cpus: int = 2) -> None:
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.pids: dict[str, int] = {}
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> OneNodeCluster:
        root = self.root
        for sub in ("state", "spool", "munge", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        munge_socket = root / "munge" / "munge.socket"
        subprocess.run(
            [_binary("munged"), "--force", f"--socket={munge_socket}", f"--key-file={key}",
             f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'log' / 'munged.log'}",
             f"--seed-file={root / 'munge' / 'munge.seed'}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.pids["munged"] = self._read_pid(root / "munge" / "munged.pid")
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
        self.conf.write_text(
            f"""ClusterName=medseg3dtest
SlurmctldHost={self.host}
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
KillWait=60
MinJobAge=600
NodeName={self.host} CPUs={self.cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""
        )
        for daemon, pid_file in (("slurmctld", "slurmctld.pid"), ("slurmd", "slurmd.pid")):
            flags = ["-c"] if daemon == "slurmctld" else []  # -c: no state from an earlier cluster
            subprocess.run([_binary(daemon), *flags, "-f", str(self.conf)], check=True, env=self.env, timeout=60,
                           capture_output=True)  # fmt: skip
            self.pids[daemon] = self._read_pid(root / pid_file)
        self._wait_idle()
        return self

    @staticmethod
    def _read_pid(path: Path, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.is_file() and path.read_text().strip():
                return int(path.read_text().split()[0])
            time.sleep(0.2)
        raise RuntimeError(f"no pid file {path}")

    def _wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if out in ("idle", "mixed", "allocated"):
                return
            time.sleep(1.0)
        logs = "\n".join((self.root / "log" / f).read_text()[-1500:] for f in ("slurmctld.log", "slurmd.log"))
        raise RuntimeError(f"the node did not come up: sinfo says {out!r}\n{logs}")

    def run(self, *command: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=120, check=check)

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Submit; return the job id (an array's base id)."""
        result = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True,
                                env={**self.env, **(env or {})}, timeout=60)  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"sbatch failed: {result.stderr}")
        return result.stdout.strip().split(";")[0]

    def state(self, job: str) -> str:
        """A job's state (PENDING, RUNNING, COMPLETED, FAILED, ...), from scontrol (no accounting here)."""
        out = self.run("scontrol", "show", "job", job).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def field(self, job: str, name: str) -> str:
        out = self.run("scontrol", "show", "job", job).stdout
        for item in out.split():
            if item.startswith(f"{name}="):
                return item.split("=", 1)[1]
        return ""

    def start_now(self, job: str) -> None:
        """A requeued job waits for its begin time (SLURM holds it about a minute); let it start now."""
        self.run("scontrol", "update", f"JobId={job}", "StartTime=now")

    def wait(self, job: str, states: tuple[str, ...] = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"),
             timeout: float = 600.0) -> str:  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state(job)
            if state in states:
                return state
            if state == "PENDING" and "BeginTime" in self.field(job, "Reason"):
                time.sleep(15)  # let slurmd finish killing the previous instance (else it refuses to launch)
                self.start_now(job)
            time.sleep(1.0)
        raise TimeoutError(f"job {job} still {self.state(job)} after {timeout} s")

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
