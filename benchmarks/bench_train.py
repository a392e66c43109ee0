"""Training throughput with the bundle's data pipeline versus the network alone, and the memory of cached loading.

Data: 10 synthetic BraTS 2021 cases of 128x128x96 (``write_brats_tree``) prepared by ``prep_brats``
into 5 folds (fold 0 validates, 8 cases train), in a temporary folder.

1. Speed. The bundle's own ``train#trainer`` (SupervisedTrainer, handlers, ``train#dataloader`` with
   its sampler, transforms and memory cache) is built with ``make_workflow`` at a CPU size (``CPU``
   below), once per DataLoader ``num_workers`` setting; an epoch is the 8 training cases twice (8
   iterations). The baseline is the same trainer run on one epoch of batches collated beforehand and
   held in memory: the same network, loss, optimizer and handlers, the same number of iterations, no
   data loading. Rounds alternate one epoch of every setting; seconds per iteration are the median
   over rounds, counted from the start of each epoch to its last iteration (the wait for the first
   batch included, the end-of-epoch checkpoint and records left out). The data pipeline's cost is
   ``1 - ratio``, ``ratio`` being baseline s/it over pipeline s/it (its/s with the pipeline over its/s
   alone). Other programs may share the CPU, so the CPU seconds per iteration of the process and its
   DataLoader workers are reported as well (``cpu_cost``): they change little with the machine's load.
2. Memory. Fresh interpreters build ``train#dataset`` through the bundle with 8 and with 32 cached
   cases and iterate one epoch of ``train#dataloader`` with 2 workers (no network). A sampler thread
   reads ``/proc/PID/smaps_rollup`` of the process and its workers every 20 ms: the peak sum of RSS
   counts the pages the workers share with the parent once per process; the peak sum of PSS counts
   every page once (a shared page is divided among the processes that map it); a worker's private
   memory (USS) is what it holds alone. Before the last batch, the physical page of every cached
   voxel is compared between the parent and each worker (``/proc/PID/pagemap``, root only): the share
   of identical pages is the direct proof that the workers hold no copy. A third run has 32 cases and
   a budget that fits 8. The 32 entries are the 8 training cases four times over: CacheDataset caches
   every entry separately, so memory sees 32 cases.

Extra ``--KEY VALUE`` arguments are bundle overrides applied to every trainer and dataset, checked as
by ``medseg3d train`` (docs/benchmarks.md shows a run with proposed changes to train.yaml this way).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, emit, run_python

BUNDLE = REPO / "bundles" / "brats_mri_resunet_3d"
# A CPU-sized training: the configuration of the learning check in docs/benchmarks.md (64^3 patches, 4 per
# case, 2 cases per batch, a four-level Res-UNet), without its learning rate, which does not change the speed.
CPU = {
    "roi_size": [64, 64, 64],
    "num_samples": 4,
    "network_def#channels": [16, 32, 64, 128],
    "network_def#strides": [2, 2, 2],
    "max_epochs": 1000,  # the lr schedule's length only; every measurement sets its own epochs
    "val_interval": 1000,  # no validation inside the measured epochs
}
SHAPE = (128, 128, 96)
CASES = 10  # 5 folds: 8 train, 2 validate
SPEED_ENTRIES = 16  # the 8 training cases twice per epoch: 8 iterations, so an epoch's first batch weighs less
CLK_TCK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (DataLoader workers), from ``/proc/*/stat``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def repeated_datalists(entries: int) -> str:
    """A ``datalists`` override: fold 0's training list repeated to ``entries`` entries, validation as is."""
    return (
        f"$(lambda t: ([t[0][i % len(t[0])] for i in range({entries})], t[1]))"
        "(medseg3d.data.dataset_json.fold_datalists(@dataset_dir, @fold))"
    )


def dataset_overrides(parser: Any, cache: str, budget_gb: float) -> dict[str, Any]:
    """Overrides that give the bundle memory-budgeted datasets (``medseg3d.training.datasets.make_dataset``)."""
    if "cache_memory_gb" in parser:
        return {"cache": cache, "cache_memory_gb": budget_gb}
    # train.yaml without the cache settings yet: the same datasets, declared here.
    datasets = {}
    for part, index in (("train", 0), ("validate", 1)):
        datasets[f"{part}#dataset"] = {
            "_target_": "medseg3d.training.datasets.make_dataset",
            "data": f"$@datalists[{index}]",
            "transform": f"@{part}#preprocessing",
            "cache": cache,
            "memory_budget_gb": budget_gb,
            "num_workers": "@num_workers",
            "progress": False,
        }
    return datasets


def make_trainer(dataset_dir: Path, output_dir: Path, overrides: dict[str, Any]):
    """The bundle's ``train#trainer`` with ``overrides`` on top of the CPU size and a memory cache."""
    from medseg3d.bundle.workflow import make_workflow

    base = {"dataset_dir": str(dataset_dir), "output_dir": str(output_dir), **CPU}
    base["datalists"] = repeated_datalists(SPEED_ENTRIES)
    probe = make_workflow(BUNDLE, "train", base)
    wf = make_workflow(BUNDLE, "train", {**base, **dataset_overrides(probe.parser, "memory", 8.0), **overrides})
    return wf.parser.get_parsed_content("train#trainer")


class EpochClock:
    """Wall and CPU seconds per iteration of a trainer's epochs, the end-of-epoch handlers left out.

    Wall time runs from EPOCH_STARTED to the last ITERATION_COMPLETED; CPU time is this process's plus
    that of its child processes (DataLoader workers, started and stopped within the epoch).
    """

    def __init__(self, trainer: Any) -> None:
        from ignite.engine import Events

        self.wall: list[float] = []
        self.cpu: list[float] = []
        trainer.add_event_handler(Events.EPOCH_STARTED, self._started)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)

    def _cpu_now(self) -> dict[int, float]:
        own = os.times()
        pid = os.getpid()
        return {pid: own.user + own.system, **{child: cpu_seconds(child) for child in children(pid)}}

    def _started(self, engine: Any) -> None:
        self.start_wall, self.start_cpu, self.iterations = time.perf_counter(), self._cpu_now(), 0

    def _iteration(self, engine: Any) -> None:
        self.iterations += 1
        if self.iterations < engine.state.epoch_length:
            return
        end = self._cpu_now()
        cpu = sum(seconds - self.start_cpu.get(pid, 0.0) for pid, seconds in end.items())
        self.wall.append((time.perf_counter() - self.start_wall) / self.iterations)
        self.cpu.append(cpu / self.iterations)


def run_epoch(trainer: Any, data: Any) -> None:
    """One epoch of ``trainer`` over ``data`` (its DataLoader, or a list of batches)."""
    from ignite.engine import Engine

    Engine.run(trainer, data, max_epochs=1)


def bench_speed(dataset_dir: Path, work: Path, workers: list[int], repeats: int, overrides: dict[str, Any]) -> None:
    import torch

    trainers = {w: make_trainer(dataset_dir, work / f"run_w{w}", {**overrides, "num_workers": w}) for w in workers}
    clocks = {w: EpochClock(trainer) for w, trainer in trainers.items()}
    alone_trainer = trainers[workers[-1]]
    batches = list(alone_trainer.data_loader)  # one epoch, collated, held in memory
    alone_clock = clocks[workers[-1]]
    runs: dict[str, list[tuple[float, float]]] = {f"w{w}": [] for w in workers}
    runs["alone"] = []

    def measure(trainer: Any, clock: EpochClock, data: Any, key: str) -> None:
        run_epoch(trainer, data)
        runs[key].append((clock.wall[-1], clock.cpu[-1]))

    for w in workers:  # warm-up: first allocations, first worker start
        run_epoch(trainers[w], trainers[w].data_loader)
    run_epoch(alone_trainer, batches)
    load_before = os.getloadavg()[0]
    for _ in range(repeats):  # rounds alternate every setting, one epoch each
        for w in workers:
            measure(trainers[w], clocks[w], trainers[w].data_loader, f"w{w}")
        measure(alone_trainer, alone_clock, batches, "alone")
    load_after = os.getloadavg()[0]

    def median(key: str, index: int) -> float:
        return statistics.median(run[index] for run in runs[key])

    alone_wall, alone_cpu = median("alone", 0), median("alone", 1)
    for w in workers:
        wall, cpu = median(f"w{w}", 0), median(f"w{w}", 1)
        emit(
            "train",
            f"seconds per training iteration with the bundle's data pipeline, num_workers={w}",
            wall,
            "network alone on batches already in memory",
            alone_wall,
            data_pipeline_cost=round(1 - alone_wall / wall, 3),
            cpu_s_per_it=round(cpu, 3),
            baseline_cpu_s_per_it=round(alone_cpu, 3),
            cpu_cost=round(1 - alone_cpu / cpu, 3),
            rounds=[[round(a[0], 3), round(b[0], 3)] for a, b in zip(runs[f"w{w}"], runs["alone"], strict=True)],
            iterations_per_epoch=len(batches),
            patches_per_iteration=int(batches[0]["image"].shape[0]),
            torch_threads=torch.get_num_threads(),
            load_average=[round(load_before, 2), round(load_after, 2)],
            config={**CPU, **overrides, "num_workers": w, "training_entries": SPEED_ENTRIES},
        )


# Runs in a fresh interpreter: argv = dataset_dir, output_dir, entries, budget_gb. Builds the bundle's
# train#dataset and iterates one epoch of train#dataloader with 2 workers while sampling memory.
_MEMORY = """
import json, os, struct, sys, threading, time
from pathlib import Path
from benchmarks.bench_train import BUNDLE, CPU, children, dataset_overrides, repeated_datalists
from medseg3d.bundle.workflow import make_workflow

dataset_dir, output_dir, entries, budget_gb = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
overrides = json.loads(sys.argv[5])

def rollup(pid):
    values = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, value = line.split(":")
            values[key] = int(value.split()[0]) / 1024  # MiB
    except OSError:
        return None
    values["Private"] = values["Private_Clean"] + values["Private_Dirty"]
    return values

peak = {"rss_sum": 0.0, "pss_sum": 0.0, "parent_rss": 0.0, "worker_rss": 0.0, "worker_pss": 0.0, "worker_private": 0.0}
stop = threading.Event()
def sample():
    me = os.getpid()
    while not stop.is_set():
        parent = rollup(me)
        workers = [r for r in (rollup(c) for c in children(me)) if r]
        if parent:
            peak["parent_rss"] = max(peak["parent_rss"], parent["Rss"])
            peak["rss_sum"] = max(peak["rss_sum"], parent["Rss"] + sum(w["Rss"] for w in workers))
            peak["pss_sum"] = max(peak["pss_sum"], parent["Pss"] + sum(w["Pss"] for w in workers))
        for key in ("rss", "pss", "private"):
            for w in workers:
                peak["worker_" + key] = max(peak["worker_" + key], w[key.capitalize()])
        time.sleep(0.02)

base = {"dataset_dir": dataset_dir, "output_dir": output_dir, **CPU, "num_workers": 2}
# The training list repeated to `entries` entries: each one is cached separately.
base["datalists"] = repeated_datalists(entries)
probe = make_workflow(BUNDLE, "train", base)
wf = make_workflow(BUNDLE, "train", {**base, **dataset_overrides(probe.parser, "memory", budget_gb), **overrides})
thread = threading.Thread(target=sample, daemon=True)
thread.start()
before = rollup(os.getpid())["Rss"]
start = time.perf_counter()
dataset = wf.parser.get_parsed_content("train#dataset")
cache_s = time.perf_counter() - start
after_cache = rollup(os.getpid())["Rss"]
loader = wf.parser.get_parsed_content("train#dataloader")
start = time.perf_counter()
iterator = iter(loader)
for _ in range(len(loader) - 1):  # the workers live until the last batch is taken
    next(iterator)
# Are the cached volumes' pages the parent's own physical pages in every worker? (needs root for PFNs)
check_start = time.perf_counter()
regions = [(t.data_ptr(), t.numel() * t.element_size()) for item in dataset._cache for t in item.values()
           if hasattr(t, "data_ptr")]
page = os.sysconf("SC_PAGE_SIZE")
def frames(pid):
    found = []
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        for address, length in regions:
            first, last = address // page, (address + length - 1) // page
            f.seek(first * 8)
            entries = struct.iter_unpack("<Q", f.read((last - first + 1) * 8))
            found += [v & ((1 << 55) - 1) if v >> 63 else 0 for (v,) in entries]  # frame number if present
    return found
parent_frames = frames(os.getpid())
shared = []
if any(parent_frames):
    for child in children(os.getpid()):
        shared.append(sum(1 for a, b in zip(parent_frames, frames(child)) if a and a == b) / len(parent_frames))
check_s = time.perf_counter() - check_start
batches = len(loader) - 1 + sum(1 for _ in iterator)  # to the end, so that the workers stop cleanly
epoch_s = time.perf_counter() - start - check_s
stop.set()
thread.join()
from medseg3d.training.datasets import estimate_cached_bytes
estimate = estimate_cached_bytes(dataset.data, dataset.transform)
print(json.dumps({
    "entries": len(dataset), "batches": batches, "cache_num": dataset.cache_num,
    "cache_pages_shared_by_workers": shared,
    "estimated_cache_mb": sum(estimate[:dataset.cache_num]) / 2**20,
    "rss_before_mb": before, "cache_growth_mb": after_cache - before, "cache_s": cache_s, "epoch_s": epoch_s,
    **{"peak_" + k + "_mb": v for k, v in peak.items()},
}))
"""


def bench_memory(dataset_dir: Path, work: Path, overrides: dict[str, Any]) -> None:
    from medseg3d.training.datasets import GIB

    case_bytes = 5 * 4 * SHAPE[0] * SHAPE[1] * SHAPE[2]  # 4 image channels + 1 label channel, float32
    budget_fits_8 = (8.5 * case_bytes) / GIB

    def measure(entries: int, budget_gb: float) -> dict:
        out = work / f"mem_{entries}_{budget_gb:.3f}"
        return run_python(_MEMORY, str(dataset_dir), str(out), str(entries), str(budget_gb), json.dumps(overrides))

    eight, thirty_two, capped = measure(8, 64.0), measure(32, 64.0), measure(32, budget_fits_8)

    def fields(record: dict, prefix: str = "") -> dict:
        keys = ("cache_num", "cache_pages_shared_by_workers", "estimated_cache_mb", "cache_growth_mb")
        keys += ("peak_rss_sum_mb", "peak_pss_sum_mb")
        keys += ("peak_parent_rss_mb", "peak_worker_rss_mb", "peak_worker_pss_mb", "peak_worker_private_mb")
        rounded = {k: round(v, 1) if isinstance(v, float) else v for k, v in record.items()}
        rounded["cache_pages_shared_by_workers"] = [round(f, 4) for f in record["cache_pages_shared_by_workers"]]
        return {prefix + k: rounded[k] for k in keys}

    for case, record, base_case, base in (
        ("32 cached cases vs 8 (one epoch, 2 workers)", thirty_two, "8 cached cases", eight),
        ("32 cases, budget fits 8 (one epoch, 2 workers)", capped, "8 cached cases", eight),
    ):
        emit(
            "train",
            f"memory: {case}",
            record["epoch_s"],
            base_case,
            base["epoch_s"],
            peak_rss_mb=round(record["peak_pss_sum_mb"], 1),
            baseline_peak_rss_mb=round(base["peak_pss_sum_mb"], 1),
            memory_measure="peak_rss_mb: peak sum of PSS over the process and its DataLoader workers",
            budget_gb=round(budget_fits_8, 3) if record is capped else None,
            **fields(record),
            **fields(base, "baseline_"),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the speed comparison (median)")
    parser.add_argument("--quick", action="store_true", help="2 rounds, num_workers 0 and 2 only")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers to time")
    parser.add_argument("--skip-memory", action="store_true")
    args, extra = parser.parse_known_args()  # the rest: --KEY VALUE bundle overrides, checked by make_workflow

    from medseg3d.core.overrides import parse_overrides

    overrides = parse_overrides(extra)
    repeats, workers = (2, [0, 2]) if args.quick else (args.repeats, args.workers)

    from medseg3d.data.synth_brats import write_brats_tree
    from medseg3d.preparation.brats import PrepOptions, prep_brats

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        start = time.perf_counter()
        write_brats_tree(work / "raw", cases=CASES, edition="2021", shape=SHAPE, seed=0)
        result = prep_brats(work / "raw", work / "prepared", PrepOptions(folds=5, workers=2))
        assert not result.rejected, result.rejected
        print(f"data: {CASES} cases of {SHAPE} in {time.perf_counter() - start:.0f} s", flush=True)
        bench_speed(work / "prepared", work, workers, repeats, overrides)
        if not args.skip_memory:
            bench_memory(work / "prepared", work, overrides)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
