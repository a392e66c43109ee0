"""Connected-component postprocessing of a 512x512x300 label map: ours versus MONAI and scipy.

The label map is a synthetic CT's aorta (label 1, a tube along z) and liver (label 2, a large blob) from
``medseg3d.data.synth_ct``, plus what a network's prediction adds: 20,000 speckles of either label all over
the volume, small false-positive balls, and cavities inside the liver. Each comparison is measured in one
run, alternating ours and the baseline, median of ``--repeats``; the results must be identical (agreement
1.0 = the fraction of equal voxels). Peak memory comes from one fresh interpreter per method: the peak
RSS, and how much the call added to what the interpreter held before it (``*_added_mb``).

1. keep the largest component of each label: ``ConnectedComponents({1: {keep_largest: 1}, 2: ...})``
   versus MONAI's ``KeepLargestConnectedComponent(applied_labels=[1, 2])`` (scikit-image), same tensor in;
2. keep the 2 largest components of the foreground (aorta and liver): ``{"all": {keep_largest: 2}}``
   versus ``KeepLargestConnectedComponent(independent=False, num_components=2)``;
3. fill the liver's holes: ``fill_holes`` versus ``scipy.ndimage.binary_fill_holes``;
4. remove foreground components under 100 voxels: ``{"all": {min_size: 100}}`` versus
   ``scipy.ndimage.label`` (26-connected) with a size filter;
5. the dense case: what a network with random weights predicts, label 1 on a random half of the voxels
   (salt and pepper: ~20 M runs along z), keep its largest component: ``{1: {keep_largest: 1}}`` versus
   ``KeepLargestConnectedComponent(applied_labels=[1])``. Cases 1-4 take the run path of
   ``medseg3d.ops.components``, this one its mask path (over 1/8 of the volume: the label read as a mask,
   cc3d on its bounding box).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import alternate, emit, run_python

SHAPE = (512, 512, 300)

# Runs in a fresh interpreter: one method once on the label map in argv[1]. Memory is read from
# /proc (VmHWM), not getrusage: ru_maxrss survives execve, so a child would report the parent's peak.
_MEMORY = """
import json, sys
import numpy as np
from benchmarks.bench_postprocess import METHODS

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))

labels = np.load(sys.argv[1])
call = METHODS[sys.argv[2]](labels)  # imports and untimed preparation
before = status("VmRSS")
call()
print(json.dumps({"peak_rss_mb": status("VmHWM"), "before_mb": before}))
"""


def make_label_map(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A prediction-like uint8 label map of ``shape`` (X, Y, Z): 1 aorta, 2 liver, with speckles and holes."""
    from medseg3d.data.synth_ct import AORTA, LIVER, make_ct_tissues

    tissues = np.ascontiguousarray(make_ct_tissues(shape=shape, seed=seed)[0])  # Fortran order: 20x slower below
    labels = np.zeros(shape, dtype=np.uint8)
    labels[tissues == AORTA] = 1
    labels[tissues == LIVER] = 2
    rng = np.random.default_rng(seed)
    liver = np.column_stack(np.unravel_index(np.flatnonzero(labels == 2), shape))
    for value, centres in ((0, liver[rng.integers(0, len(liver), 40)]), (None, None)):
        if centres is None:  # false-positive balls anywhere, of either label
            centres = np.stack([rng.integers(8, s - 8, 60) for s in shape], axis=1)
        for centre in centres:
            r = int(rng.integers(2, 6))
            box = tuple(slice(max(c - r, 0), c + r + 1) for c in centre)
            grid = np.ogrid[tuple(slice(b.start - c, b.stop - c) for b, c in zip(box, centre, strict=True))]
            ball = sum(g * g for g in grid) <= r * r
            labels[box][ball] = value if value is not None else rng.integers(1, 3)
    specks = tuple(rng.integers(0, s, 20_000) for s in shape)
    labels[specks] = rng.integers(1, 3, 20_000).astype(np.uint8)
    return labels


def make_dense_label_map(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """What a network with random weights predicts: label 1 on a random half of the voxels, uint8 (X, Y, Z)."""
    return (np.random.default_rng(seed).random(shape, dtype=np.float32) < 0.5).astype(np.uint8)


# name -> (how to make it, how a case line describes it)
LABEL_MAPS: dict[str, tuple[Callable[..., np.ndarray], str]] = {
    "speckles": (make_label_map, "label map with speckles"),
    "dense": (make_dense_label_map, "random 50% foreground label map (random weights)"),
}


# Each method takes the label map, prepares what it needs untimed, and returns the call to time.
def _ours_per_label(labels: np.ndarray) -> Callable[[], object]:
    import torch

    from medseg3d.transforms import ConnectedComponents

    transform = ConnectedComponents({1: {"keep_largest": 1}, 2: {"keep_largest": 1}})
    return lambda: transform(torch.from_numpy(labels[None]))


def _monai_per_label(labels: np.ndarray) -> Callable[[], object]:
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    transform = KeepLargestConnectedComponent(applied_labels=[1, 2])
    image = torch.from_numpy(labels[None].copy())  # MONAI writes into its input: a copy, made untimed
    return lambda: transform(image)


def _ours_union(labels: np.ndarray) -> Callable[[], object]:
    import torch

    from medseg3d.transforms import ConnectedComponents

    transform = ConnectedComponents({"all": {"keep_largest": 2}})
    return lambda: transform(torch.from_numpy(labels[None]))


def _monai_union(labels: np.ndarray) -> Callable[[], object]:
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    transform = KeepLargestConnectedComponent(independent=False, num_components=2)
    image = torch.from_numpy(labels[None].copy())
    return lambda: transform(image)


def _ours_fill(labels: np.ndarray) -> Callable[[], object]:
    from medseg3d.ops.components import fill_holes

    return lambda: fill_holes(labels == 2)


def _scipy_fill(labels: np.ndarray) -> Callable[[], object]:
    from scipy import ndimage

    return lambda: ndimage.binary_fill_holes(labels == 2)


def _ours_small(labels: np.ndarray) -> Callable[[], object]:
    from medseg3d.ops.components import postprocess_labels

    return lambda: postprocess_labels(labels, {"all": {"min_size": 100}})


def _scipy_small(labels: np.ndarray) -> Callable[[], object]:
    from scipy import ndimage

    def run() -> np.ndarray:
        components, _ = ndimage.label(labels != 0, ndimage.generate_binary_structure(3, 3))
        small = np.bincount(components.ravel()) < 100
        small[0] = False
        out = labels.copy()
        out[small[components]] = 0
        return out

    return run


def _ours_dense(labels: np.ndarray) -> Callable[[], object]:
    import torch

    from medseg3d.transforms import ConnectedComponents

    transform = ConnectedComponents({1: {"keep_largest": 1}})
    return lambda: transform(torch.from_numpy(labels[None]))


def _monai_dense(labels: np.ndarray) -> Callable[[], object]:
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    transform = KeepLargestConnectedComponent(applied_labels=[1])
    image = torch.from_numpy(labels[None].copy())
    return lambda: transform(image)


METHODS: dict[str, Callable[[np.ndarray], Callable[[], object]]] = {
    "ours_per_label": _ours_per_label,
    "monai_per_label": _monai_per_label,
    "ours_union": _ours_union,
    "monai_union": _monai_union,
    "ours_fill": _ours_fill,
    "scipy_fill": _scipy_fill,
    "ours_small": _ours_small,
    "scipy_small": _scipy_small,
    "ours_dense": _ours_dense,
    "monai_dense": _monai_dense,
}
# (what is compared, ours, baseline, what the baseline is, which of LABEL_MAPS)
CASES = [
    (
        "keep the largest component of each of 2 labels",
        "ours_per_label",
        "monai_per_label",
        "MONAI KeepLargestConnectedComponent(applied_labels=[1, 2])",
        "speckles",
    ),
    (
        "keep the 2 largest components of the foreground (all labels)",
        "ours_union",
        "monai_union",
        "MONAI KeepLargestConnectedComponent(independent=False, num_components=2)",
        "speckles",
    ),
    ("fill the holes of the liver label", "ours_fill", "scipy_fill", "scipy.ndimage.binary_fill_holes", "speckles"),
    (
        "remove foreground components under 100 voxels",
        "ours_small",
        "scipy_small",
        "scipy.ndimage.label + size filter",
        "speckles",
    ),
    (
        "keep the largest component of label 1",
        "ours_dense",
        "monai_dense",
        "MONAI KeepLargestConnectedComponent(applied_labels=[1])",
        "dense",
    ),
]


def _timed(name: str, labels: np.ndarray, outputs: dict[str, np.ndarray]) -> Callable[[], float]:
    """A timer of ``METHODS[name]`` on ``labels``; the last output lands in ``outputs[name]`` (as an array)."""

    def run() -> float:
        call = METHODS[name](labels)
        start = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - start
        outputs[name] = np.asarray(out).reshape(labels.shape)
        return seconds

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=SHAPE, metavar=("X", "Y", "Z"))
    args = parser.parse_args()

    shape = tuple(args.shape)
    work = Path(tempfile.mkdtemp(prefix="bench_postprocess_"))
    try:
        maps: dict[str, tuple[np.ndarray, float]] = {}
        for name in sorted({case[4] for case in CASES}):
            start = time.perf_counter()
            maps[name] = LABEL_MAPS[name][0](shape), time.perf_counter() - start
            np.save(work / f"{name}.npy", maps[name][0])
        for case, ours, baseline, baseline_name, map_name in CASES:
            labels, synth_s = maps[map_name]
            outputs: dict[str, np.ndarray] = {}
            ours_s, base_s = alternate(_timed(ours, labels, outputs), _timed(baseline, labels, outputs), args.repeats)
            a, b = outputs[ours], outputs[baseline]
            memory = {name: run_python(_MEMORY, str(work / f"{map_name}.npy"), name) for name in (ours, baseline)}
            before = labels if a.dtype == labels.dtype else labels == 2
            emit(
                "postprocess",
                f"{case}, {'x'.join(map(str, labels.shape))} {LABEL_MAPS[map_name][1]}",
                ours_s,
                baseline_name,
                base_s,
                agreement=float(np.mean(a == b)),
                peak_rss_mb=round(memory[ours]["peak_rss_mb"], 1),
                baseline_peak_rss_mb=round(memory[baseline]["peak_rss_mb"], 1),
                ours_added_mb=round(memory[ours]["peak_rss_mb"] - memory[ours]["before_mb"], 1),
                baseline_added_mb=round(memory[baseline]["peak_rss_mb"] - memory[baseline]["before_mb"], 1),
                differing_voxels=int(np.count_nonzero(a != b)),
                changed_voxels=int(np.count_nonzero(a != before)),
                synth_s=round(synth_s, 2),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
