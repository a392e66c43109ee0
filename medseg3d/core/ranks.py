"""One training process per device under ``torchrun``: process group, device, threads, and rank-0-only writers.

The bundle's ``multi_gpu_train`` overlay calls these helpers. Each process trains a
``DistributedDataParallel`` copy of the network on its share of the cases; NCCL on GPU
(``cuda:LOCAL_RANK``), gloo on CPU. Every rank validates its share of the validation cases and MONAI's
metric handlers gather the scores, so every rank holds the same metric. Only rank 0 writes records and
checkpoints: ``medseg3d.training.rank_handlers`` drops the writing handlers on the other ranks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True inside an initialized ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank in the process group; 0 outside one."""
    return dist.get_rank() if is_distributed() else 0


def is_rank_zero() -> bool:
    """True on the process that writes records and checkpoints (also when not distributed)."""
    return get_rank() == 0


def local_device(cuda: bool | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (``torchrun`` sets ``LOCAL_RANK``), else ``cpu``.

    >>> local_device(cuda=False)
    device(type='cpu')
    """
    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def backend_for(device: torch.device | str) -> str:
    """The process-group backend for ``device``: ``nccl`` on CUDA, ``gloo`` otherwise.

    >>> backend_for("cpu"), backend_for("cuda:1")
    ('gloo', 'nccl')
    """
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def threads_per_process(cpus: int | None = None, processes: int | None = None) -> int:
    """CPU threads each process may use so that the processes on this machine share its cores, at least 1.

    Args:
        cpus: cores this process may run on; by default its CPU affinity.
        processes: training processes on this machine; by default ``LOCAL_WORLD_SIZE`` (set by ``torchrun``).

    >>> threads_per_process(cpus=16, processes=4), threads_per_process(cpus=2, processes=4)
    (4, 1)
    """
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if processes is None:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if cpus < 1 or processes < 1:
        raise ValueError(f"cpus and processes must be >= 1, got cpus={cpus}, processes={processes}")
    return max(1, cpus // processes)


def init_distributed(device: torch.device | str, cpu_threads: int | None = None) -> str:
    """Join the process group ``torchrun`` describes (``MASTER_ADDR``, ``RANK``, ``WORLD_SIZE`` ... in the
    environment) with the backend for ``device``; returns the backend. Joins once; a second call only
    binds the device again.

    On CUDA the process is bound to ``device``; on CPU it uses ``cpu_threads`` threads (default:
    ``threads_per_process()``), so that two processes on two cores do not fight over four threads.
    Ranks other than 0 log warnings and errors only: the console shows rank 0's progress.
    """
    device = torch.device(device)
    joined = is_distributed()
    if not joined and not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"} <= set(os.environ):
        launch = "torchrun --standalone --nnodes=1 --nproc_per_node=N -m"
        raise RuntimeError(
            "a multi_gpu_train run (DistributedDataParallel) runs under torchrun, which sets RANK, WORLD_SIZE, "
            f"MASTER_ADDR and MASTER_PORT: `{launch} monai.bundle run --config_file ...` for a new run, "
            f"`{launch} medseg3d.cli train --resume RUN_DIR` to continue one"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(cpu_threads if cpu_threads is not None else threads_per_process())
    if joined:
        return dist.get_backend()
    backend = backend_for(device)
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    logger.info(
        "rank %d of %d on %s (%s, %d CPU threads)",
        dist.get_rank(),
        dist.get_world_size(),
        device,
        backend,
        torch.get_num_threads(),
    )
    if dist.get_rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)
    return backend


def finalize_distributed() -> None:
    """Leave the process group (after training), if in one.

    The ranks meet at a barrier first: a rank that tore its group down while rank 0 was still writing
    its last checkpoint aborted at exit now and then (gloo: "terminate called without an active exception").
    """
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()


def from_rank_zero(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object), e.g. a run folder named by the time; ``value``
    itself outside a process group."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
