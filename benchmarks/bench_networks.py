"""Seconds per training step of the network choices: the Res-UNet (MONAI ``UNet``, the bundles' default) against
MONAI's ``DynUNet`` with and without deep supervision, on the CPU bundles' batch (4 patches of 64^3, 4 channels,
3 regions): forward, Dice + CE (summed over the heads with deep supervision), backward, an SGD step.

The baseline is the Res-UNet in the same run: one warm-up step each, then ``--rounds`` rounds that step each
network in turn (alternating, so a noisy machine slows them alike); the median per network. Prints one JSON line
per network and appends them to ``bench_out/results.jsonl``.

Run: ``.venv/bin/python -m benchmarks.bench_networks [--rounds 3] [--size 64]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from benchmarks.common import append_results, device_name
from medseg3d.networks import res_unet
from medseg3d.training.optim import make_loss

NETWORKS = {
    "res-unet": {},
    "dynunet": {"kind": "dynunet"},
    "dynunet + deep supervision 2": {"kind": "dynunet", "deep_supervision": 2},
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="patch edge (64: the CPU bundles')")
    parser.add_argument("--batch", type=int, default=4, help="patches per step (4: batch 2 x 2 samples)")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 4, *[args.size] * 3)
    y = (torch.rand(args.batch, 3, *[args.size] * 3) > 0.9).float()
    runs = {}
    for name, kwargs in NETWORKS.items():
        net = res_unet(4, 3, **kwargs)
        loss = make_loss("dice_ce", "regions", deep_supervision="deep_supervision" in kwargs)
        runs[name] = (net, loss, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.99, nesterov=True))

    def step(name: str) -> float:
        net, loss, optimizer = runs[name]
        start = time.perf_counter()
        optimizer.zero_grad()
        loss(net(x), y).backward()
        optimizer.step()
        return time.perf_counter() - start

    for name in runs:
        step(name)  # warm-up: first-call allocations and kernel choices
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name in runs:
            seconds[name].append(step(name))
    base = statistics.median(seconds["res-unet"])
    records = []
    for name, values in seconds.items():
        median = statistics.median(values)
        record = {
            "benchmark": "networks",
            "case": f"training step, {args.batch} x 4 x {args.size}^3, dice_ce, SGD",
            "network": name,
            "parameters": sum(p.numel() for p in runs[name][0].parameters()),
            "seconds": [round(v, 3) for v in values],
            "median_s": round(median, 3),
            "vs_res_unet": round(median / base, 2),
            "device": device_name(),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(record), flush=True)
        records.append(record)
    append_results(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
