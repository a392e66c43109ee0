"""Connected-component postprocessing of label maps: keep the k largest, remove small, fill holes.

The results are exactly MONAI's and scipy's (tested on random masks), only faster:

- ``keep_largest(mask, k, connectivity)`` equals MONAI's ``KeepLargestConnectedComponent`` /
  ``get_largest_connected_component_mask`` (scikit-image path) with ``connectivity`` 6/18/26 given to
  MONAI as 1/2/3 and ``num_components=k``, ties included (see below).
- ``remove_small(mask, min_voxels, connectivity)`` removes every component of fewer than ``min_voxels``
  voxels, as ``scipy.ndimage.label`` with ``generate_binary_structure(3, 1|2|3)`` plus a size filter (and
  scikit-image's ``remove_small_objects(min_size=...)``) do.
- ``fill_holes(mask, connectivity)`` equals ``scipy.ndimage.binary_fill_holes(mask, structure)`` with the
  structure of the same connectivity; the default 6 is scipy's default structure. A hole is a background
  component that does not touch the volume border; ``connectivity`` is the connectivity of the
  *background*, so the default 6 pairs with the 26-connected foreground of the other two operations (the
  usual digital-topology pairing: a 26-connected shell encloses a 6-connected inside).

Two paths label the components, with identical results (the tests force each on the same masks):

- The run path, for the clean masks of a trained model. MONAI labels every voxel of the volume with
  scikit-image, once per label. Here the foreground is read once as sorted flat indices (a scan of the
  volume as 64-bit words), cut into runs along the last (contiguous) axis, and the components are the
  connected components of the small graph of touching runs (``scipy.sparse.csgraph``). The background of a
  hole search is the gaps between those runs, so it is labelled the same way without touching a voxel. The
  work grows with the number of runs, not with the volume, so speckles all over a large map cost little,
  where labelling their bounding box (stretched to the whole volume by the speckles) would cost a full pass.
- The dense path, for salt and pepper (what a network with random weights predicts: half of the voxels,
  millions of runs, where the graph of runs costs ~1 us per run). The foreground's bounding box is labelled
  with ``cc3d.connected_components`` into one uint32 volume of the box (the only volume-sized integer array
  alive), sizes are counted from it in cache-sized chunks, and the kept components are read back through a
  lookup (or a comparison per label for a few). A hole search labels the box's background: the background
  outside the box touches the volume's faces and every face of the box it borders, so the holes are the
  background components touching no face of the box.

The dense path is taken when the foreground has more than ``DENSE_RUNS_PER_VOXEL`` (0.02) runs per voxel of
its bounding box; a sampled estimate of the runs decides clearly dense masks before the runs are computed
(``_plan``). The threshold and the two paths' costs are measured by ``benchmarks/bench_postprocess.py``
(figures in ``docs/benchmarks.md``).

Both paths start from the foreground as indices. ``postprocess_labels`` skips them for a map whose foreground is
more than ``DENSE_FOREGROUND`` (1/8) of the volume when at most ``DENSE_MASK_RULES`` (4) labels have a
``keep_largest``/``min_size`` rule: each such label is read as a bool mask of the volume and its box labelled
by cc3d as on the dense path (the mask path; the same components, so the same result). A Fortran-ordered map
(NIfTI's order: a map read from a file) is processed through its transpose, which is C-ordered, and given
back in its own order: the components, their sizes and the holes do not depend on the order of the axes, and
where the order does matter (equal sizes at ``keep_largest``'s cut, broken by C raster order) the C-ordered
copy is processed instead.

Ties: MONAI numbers the components in raster (C) order of their first voxel, puts their sizes in that order
after a 0 for the background and keeps ``np.argsort(counts)[::-1][:k]``. Both paths give the same numbering,
and the same ``np.argsort`` call is made on the same int64 array, so equal-sized components are chosen
exactly as MONAI chooses them (with few components: the one whose first voxel comes last in raster order),
whatever the memory layout of the input. On the run path, the first run of a component holds its first
voxel. On the dense path, cc3d numbers the components in the order its scan of the C-contiguous box meets
them, which is raster order of the box and so of the volume; that is checked wherever a tie at the k-th
place makes the order matter (the running maximum of the labels must rise once per label), and the labels
are sorted by their first voxels if it ever fails. (MONAI takes its scikit-image path on the CPU; only for a
CUDA tensor with cupy and cucim installed does it label with cucim instead, which neither the sandbox nor
the project's dependencies have.)

Tensors are accepted wherever arrays are and come back as tensors of the same dtype on the same device
(the work itself runs on the CPU).
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cc3d
import numpy as np
from monai.utils import convert_to_dst_type
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CONNECTIVITIES = (6, 18, 26)
RULE_NAMES = ("keep_largest", "min_size", "fill_holes", "connectivity")
ALL = "all"

# The dense path (cc3d on the foreground's bounding box) replaces the run path (the graph of touching runs)
# above this many foreground runs per voxel of the bounding box; see the module docstring for the measurements.
DENSE_RUNS_PER_VOXEL = 0.02
# postprocess_labels reads each label as a mask of the volume (no index array of its voxels) when the foreground
# is above this fraction of the volume and at most DENSE_MASK_RULES labels have a rule: a 512x512x300 map with
# 39% foreground and one keep_largest rule: 7.4 -> 2.7 s (docs/benchmarks.md, "CT inference profile"); with many
# labels a mask per label would cost a pass over the volume each.
DENSE_FOREGROUND = 1 / 8
DENSE_MASK_RULES = 4
_CHUNK = 1 << 20  # voxels per step of a pass over a label volume: cache-sized casts and temporaries

# Neighbouring rows (dx, dy) before a row in raster order, and how far along z (the run axis) a voxel of
# one row may be from a voxel of the other and still touch it, per connectivity. Only "before" rows are
# listed: every touching pair is found once, from its later run.
_ROW_NEIGHBOURS: dict[int, tuple[tuple[int, int, int], ...]] = {
    6: ((-1, 0, 0), (0, -1, 0)),
    18: ((-1, 0, 1), (0, -1, 1), (-1, -1, 0), (-1, 1, 0)),
    26: ((-1, 0, 1), (0, -1, 1), (-1, -1, 1), (-1, 1, 1)),
}


@dataclass(frozen=True)
class LabelRule:
    """What to do with one label (or with the union of all labels, the ``"all"`` rule).

    Applied in this order: remove components smaller than ``min_size``, keep the ``keep_largest`` largest
    of those left, fill the holes of what remains.

    Attributes:
        keep_largest: number of largest components to keep (2 for paired structures); None keeps all.
        min_size: components with fewer voxels are removed; None removes none.
        fill_holes: fill the background enclosed by the label (background connectivity 6).
        connectivity: 6, 18 or 26, for the components of the label.
    """

    keep_largest: int | None = None
    min_size: int | None = None
    fill_holes: bool = False
    connectivity: int = 26


def _is_tensor(x: Any) -> bool:
    # torch is only imported if it is already loaded: an object cannot be a tensor otherwise.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _to_numpy(x: Any, what: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if _is_tensor(x) else np.asarray(x)
    if array.ndim != 3:
        raise ValueError(f"{what} must be a 3D array of shape (X, Y, Z), got shape {tuple(array.shape)}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} must hold booleans or numbers, got dtype {array.dtype}")
    return array


def _like(result: np.ndarray, like: Any) -> Any:
    """``result`` as the type of ``like``: a tensor (MetaTensor metadata included) on its device, or an array."""
    if not _is_tensor(like):
        return result

    return convert_to_dst_type(result, dst=like, dtype=result.dtype if result.dtype == np.bool_ else like.dtype)[0]


def _check_connectivity(connectivity: Any, what: str = "connectivity") -> int:
    if isinstance(connectivity, bool) or connectivity not in CONNECTIVITIES:
        raise ValueError(f"{what} must be one of {CONNECTIVITIES}, got {connectivity!r}")
    return int(connectivity)


def _positive_int(value: Any, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return number


def flat_foreground(array: np.ndarray) -> np.ndarray:
    """Sorted C-order flat indices of the non-zero voxels of ``array``.

    ``np.flatnonzero`` tests byte by byte; testing 8 bytes at a time first skips the zero words that make up
    most of a sparse label map.

    Args:
        array: any shape and numeric dtype.

    Returns:
        int64 indices of shape (N,), ascending, into ``array.ravel()`` (C order, whatever the layout).

    Example:
        >>> flat_foreground(np.array([[0, 3, 0], [0, 0, -1.5]])).tolist()
        [1, 5]
    """
    flat = np.ascontiguousarray(array).reshape(-1)
    per_word = 8 // flat.dtype.itemsize if flat.dtype.itemsize <= 8 and 8 % flat.dtype.itemsize == 0 else 0
    if per_word == 0 or flat.size < 8:
        return np.flatnonzero(flat)
    n_words = flat.size // per_word
    word_view = flat[: n_words * per_word].view(np.uint64)
    if np.count_nonzero(word_view) * per_word > flat.size // 4:
        # dense: the candidates would outnumber the voxels (a 50% bool mask: 8 candidates per voxel, 20x slower)
        return np.flatnonzero(flat if flat.dtype == np.bool_ else flat != 0)
    words = np.flatnonzero(word_view)
    candidates = (words[:, None] * per_word + np.arange(per_word)).reshape(-1)
    # a non-zero word may hold zero elements next to the non-zero one (and -0.0 is a non-zero word)
    found = candidates[flat[candidates] != 0]
    tail = np.flatnonzero(flat[n_words * per_word :]) + n_words * per_word
    return np.concatenate([found, tail]) if tail.size else found


def _runs(idx: np.ndarray, n_z: int) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs along the last axis of the voxels at ``idx`` (sorted flat indices, rows of ``n_z``).

    Returns:
        (flat index of each run's first voxel (R,), run lengths (R,)), in raster order.
    """
    new_run = np.empty(idx.size, dtype=bool)
    new_run[:1] = True
    np.not_equal(idx[1:], idx[:-1] + 1, out=new_run[1:])
    new_run |= idx % n_z == 0  # a run never continues into the next row
    first = np.flatnonzero(new_run)
    return idx[first], np.diff(np.append(first, idx.size))


def _gaps(run_start: np.ndarray, run_length: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The background runs of a volume of ``shape`` whose foreground runs are given (both in raster order).

    The gaps between foreground runs, cut at the row ends: at most (rows + foreground runs + 1) runs, however
    large the background, so the background is labelled without touching a voxel.
    """
    n_z = shape[2]
    ends = run_start + run_length
    gap_start = np.concatenate([[0], ends])
    gap_end = np.concatenate([run_start, [shape[0] * shape[1] * n_z]])
    nonempty = gap_end > gap_start
    gap_start, gap_end = gap_start[nonempty], gap_end[nonempty]
    first_row = gap_start // n_z
    pieces = (gap_end - 1) // n_z - first_row + 1
    row = np.repeat(first_row, pieces) + _ramps(pieces)
    start = np.maximum(np.repeat(gap_start, pieces), row * n_z)
    end = np.minimum(np.repeat(gap_end, pieces), (row + 1) * n_z)
    return start, end - start


def _ramps(counts: np.ndarray) -> np.ndarray:
    """0, 1, ..., count - 1 for each count, concatenated: ``[2, 3] -> [0, 1, 0, 1, 2]``."""
    return np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)


def _expand(run_start: np.ndarray, run_length: np.ndarray) -> np.ndarray:
    """Flat indices of every voxel of the runs, in run order."""
    return np.repeat(run_start, run_length) + _ramps(run_length)


def _label_runs(
    run_start: np.ndarray, run_length: np.ndarray, shape: tuple[int, int, int], connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Connected components of the voxels of the runs: runs touch when a voxel of one neighbours one of the other.

    Returns:
        (component of each run (R,), voxels per component (C,) int64), components numbered in raster order
        of their first voxels: the numbering of scikit-image, scipy and cc3d, which MONAI's tie-break sees.
    """

    n_y, n_z = shape[1], shape[2]
    run_end = run_start + run_length
    row = run_start // n_z
    z0 = run_start - row * n_z
    x, y = np.divmod(row, n_y)
    sources, targets = [], []
    for dx, dy, reach in _ROW_NEIGHBOURS[connectivity]:
        runs = np.flatnonzero((x + dx >= 0) & (y + dy >= 0) & (y + dy < n_y))
        base = (row[runs] + dx * n_y + dy) * n_z
        # the runs of the neighbour row that overlap [z0 - reach, z1 + reach), clipped to that row
        lo = np.searchsorted(run_end, base + np.maximum(z0[runs] - reach, 0), side="right")
        hi = np.searchsorted(run_start, base + np.minimum(z0[runs] + run_length[runs] + reach, n_z), side="left")
        count = np.maximum(hi - lo, 0)
        sources.append(np.repeat(runs, count))
        targets.append(np.repeat(lo, count) + _ramps(count))
    n_runs = run_start.size
    src, dst = np.concatenate(sources), np.concatenate(targets)
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n_runs, n_runs)).tocsr()
    n_components, component = connected_components(graph, directed=False)
    _, first_run = np.unique(component, return_index=True)  # runs are in raster order
    rank = np.empty(n_components, dtype=np.int64)
    rank[np.argsort(first_run, kind="stable")] = np.arange(n_components)
    component = rank[component]
    sizes = np.bincount(component, weights=run_length, minlength=n_components).astype(np.int64)
    return component, sizes


def _kept_voxels(
    idx: np.ndarray,
    shape: tuple[int, int, int],
    connectivity: int,
    min_size: int | None,
    keep_largest: int | None,
    raster: bool = True,
) -> np.ndarray:
    """(N,) bool: which voxels of ``idx`` (sorted flat indices, N > 0) survive ``min_size``, then ``keep_largest``
    (``raster``: as in ``_kept``)."""
    kept = _kept(idx, shape, connectivity, min_size, keep_largest, raster)
    if isinstance(kept, np.ndarray):
        return kept
    kept_box, mask, _ = kept
    # the voxels of the box in C order are the voxels of idx in their order: both are raster order
    return np.compress(mask.reshape(-1), kept_box.reshape(-1))


def _kept(
    idx: np.ndarray,
    shape: tuple[int, int, int],
    connectivity: int,
    min_size: int | None,
    keep_largest: int | None,
    raster: bool = True,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, tuple[slice, slice, slice]]:
    """``_kept_voxels`` as the path that computes it gives it back.

    ``raster`` False: the array is the transpose of the caller's (``postprocess_labels`` on a Fortran-ordered
    map), whose raster order is not this one's; a tie at ``keep_largest``'s cut raises ``_OrderMatters``.

    Returns:
        run path: (N,) bool over ``idx``; dense path: (kept voxels of the box, foreground of the box, box).
    """
    box, runs = _plan(idx, shape)
    if runs is not None:
        run_start, run_length = runs
        component, sizes = _label_runs(run_start, run_length, shape, connectivity)
        if not raster and _ties_matter(sizes, min_size, keep_largest):
            raise _OrderMatters
        return np.repeat(_select(sizes, min_size, keep_largest)[component], run_length)
    mask, box = _box_mask(idx, shape, box)
    return _kept_in_box(mask, connectivity, min_size, keep_largest, raster), mask, box


def _kept_in_box(
    mask: np.ndarray, connectivity: int, min_size: int | None, keep_largest: int | None, raster: bool = True
) -> np.ndarray:
    """Bool array of the shape of ``mask`` (C-contiguous, bool): its components kept by ``min_size`` then
    ``keep_largest``, labelled by cc3d (the dense path). ``raster``: as in ``_kept``."""
    labels, n = _cc3d(mask, connectivity)
    sizes = _label_sizes(labels, n)
    order = np.arange(1, n + 1)  # the label of each component in raster order: cc3d's order, if it matters ...
    if _ties_matter(sizes, min_size, keep_largest):
        if not raster:
            raise _OrderMatters
        order = _raster_order(labels, n)  # ... checked where it does
    chosen = order[_select(sizes[order - 1], min_size, keep_largest)]
    return _members(labels, chosen, n)


class _OrderMatters(Exception):
    """Equal component sizes at ``keep_largest``'s cut, seen on a transposed array: MONAI keeps the one first in
    the caller's raster order, which only the C-ordered array shows."""


def _plan(
    idx: np.ndarray, shape: tuple[int, int, int]
) -> tuple[tuple[slice, slice, slice] | None, tuple[np.ndarray, np.ndarray] | None]:
    """Which path labels the voxels at ``idx`` (sorted flat indices, N > 0): the runs or cc3d on the box.

    The dense path is taken when the foreground has more than ``DENSE_RUNS_PER_VOXEL`` runs per voxel of its
    bounding box. The runs are first estimated from 2**16 evenly spaced pairs of neighbours in ``idx`` (a
    break between them starts a run; row ends are not counted) and compared with an upper bound of the box
    (the planes along x that ``idx`` spans): that decides a clearly dense mask in a few milliseconds. Otherwise
    the runs and their box are computed and decide, and the runs serve the run path.

    Returns:
        (None, (run_start, run_length)) for the run path; (box or None if not yet known, None) for cc3d.
    """
    n_y, n_z = shape[1], shape[2]
    plane = n_y * n_z
    upper_box = (int(idx[-1]) // plane - int(idx[0]) // plane + 1) * plane
    step = max(1, idx.size // 2**16)
    pairs = idx[: idx.size - 1 : step]
    breaks = np.count_nonzero(idx[1::step][: pairs.size] != pairs + 1)
    if 1 + breaks * (idx.size - 1) / max(pairs.size, 1) > DENSE_RUNS_PER_VOXEL * upper_box:
        return None, None
    run_start, run_length = _runs(idx, n_z)
    row = run_start // n_z
    x, y = np.divmod(row, n_y)
    z0 = run_start - row * n_z
    box = (
        slice(int(x[0]), int(x[-1]) + 1),
        slice(int(y.min()), int(y.max()) + 1),
        slice(int(z0.min()), int((z0 + run_length).max())),
    )
    if run_start.size > DENSE_RUNS_PER_VOXEL * int(np.prod([s.stop - s.start for s in box])):
        return box, None
    return None, (run_start, run_length)


def _box_mask(
    idx: np.ndarray, shape: tuple[int, int, int], box: tuple[slice, slice, slice] | None = None
) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """The voxels at ``idx`` (sorted flat indices, N > 0) as a C-contiguous bool array over their bounding box.

    Returns:
        (bool array of the box's shape, the box as slices of the volume); ``box`` is found if not given.
    """
    full = np.zeros(shape, dtype=bool)
    full.reshape(-1)[idx] = True
    if box is None:
        plane = shape[1] * shape[2]
        box = _mask_box(full, (int(idx[0]) // plane, int(idx[-1]) // plane + 1))
    return np.ascontiguousarray(full[box]), box


def _mask_box(mask: np.ndarray, x_range: tuple[int, int] | None = None) -> tuple[slice, slice, slice] | None:
    """The bounding box of a bool volume's True voxels (None: there is none), in two passes over it (one when the
    planes along x that hold them, ``x_range``, are known)."""
    if x_range is None:
        xs = np.flatnonzero(mask.any(axis=(1, 2)))
        if xs.size == 0:
            return None
        x_range = int(xs[0]), int(xs[-1]) + 1
    x0, x1 = x_range
    projection = np.logical_or.reduce(mask[x0:x1], axis=0)
    ys, zs = np.flatnonzero(projection.any(axis=1)), np.flatnonzero(projection.any(axis=0))
    return slice(x0, x1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(zs[0]), int(zs[-1]) + 1)


def _drop_unkept(out: np.ndarray, mask: np.ndarray, rule: LabelRule, raster: bool) -> None:
    """Set to 0 the voxels of ``out`` in the components of ``mask`` that ``rule`` does not keep (the mask path)."""
    box = _mask_box(mask)
    if box is None:
        return
    inside = np.ascontiguousarray(mask[box])
    kept = _kept_in_box(inside, rule.connectivity, rule.min_size, rule.keep_largest, raster)
    out[box][inside & ~kept] = 0


def _cc3d(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Components of a C-contiguous bool array with cc3d: (labels 0 (background), 1..n of its shape, n)."""

    out_dtype = np.uint32 if mask.size < 2**32 else np.uint64
    labels, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True, out_dtype=out_dtype)
    return labels, int(n)


def _chunks(labels: np.ndarray, n: int) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, intp chunk) over the flat labels, in cache-sized chunks no smaller than the n + 1 counters."""
    flat = labels.reshape(-1)
    step = max(_CHUNK, n + 1)
    for start in range(0, flat.size, step):
        yield start, flat[start : start + step].astype(np.intp)


def _label_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) int64: voxels of labels 1..n of a label volume (a chunked bincount: no volume-sized int64 copy)."""
    counts = np.zeros(n + 1, dtype=np.int64)
    for _, chunk in _chunks(labels, n):
        counts += np.bincount(chunk, minlength=n + 1)
    return counts[1:]


def _ties_matter(sizes: np.ndarray, min_size: int | None, keep_largest: int | None) -> bool:
    """Whether ``_select`` depends on the order of the components: equal sizes at the k-th place."""
    if keep_largest is None:
        return False
    survivors = sizes if min_size is None else sizes[sizes >= min_size]
    if survivors.size <= keep_largest:
        return False
    last_kept, first_dropped = np.partition(-survivors, [keep_largest - 1, keep_largest])[
        [keep_largest - 1, keep_largest]
    ]
    return bool(last_kept == first_dropped)


def _raster_order(labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) labels 1..n of a C-contiguous label volume sorted by the raster (C) order of their first voxels.

    cc3d numbers its components in the order its scan meets them, and it scans a C-contiguous array in C
    order, so this is ``1..n``. That is checked, not assumed: the numbering is raster order exactly when the
    running maximum of the labels rises n times (each rise is then the first voxel of the next label).
    Otherwise the first voxel of every label is found and the labels are sorted by it.
    """
    rises, top = 0, 0
    for _, chunk in _chunks(labels, n):
        running = np.maximum.accumulate(chunk)
        np.maximum(running, top, out=running)
        rises += int(running[0] > top) + int(np.count_nonzero(running[1:] > running[:-1]))
        top = int(running[-1])
    if rises == n:
        return np.arange(1, n + 1)
    first = np.full(n + 1, labels.size, dtype=np.int64)
    for start, chunk in _chunks(labels, n):
        values, at = np.unique(chunk, return_index=True)
        first[values] = np.minimum(first[values], at + start)
    return np.argsort(first[1:], kind="stable") + 1


def _members(labels: np.ndarray, chosen: np.ndarray, n: int) -> np.ndarray:
    """Bool array of the shape of ``labels`` (values 0..n): which voxels hold one of the ``chosen`` labels."""
    if chosen.size <= 4:  # a comparison per label beats a lookup (as fast as a gather from a tiny table is slow)
        out = np.zeros(labels.shape, dtype=bool)
        for value in chosen:
            out |= labels == value
        return out
    lookup = np.zeros(n + 1, dtype=bool)
    lookup[chosen] = True
    return lookup[labels]


def _select(sizes: np.ndarray, min_size: int | None, keep_largest: int | None) -> np.ndarray:
    """(C,) bool: the components (sizes in raster order) kept by ``min_size`` then ``keep_largest``."""
    keep = np.ones(sizes.size, dtype=bool) if min_size is None else sizes >= min_size
    if keep_largest is not None:
        survivors = np.flatnonzero(keep)
        if survivors.size > keep_largest:
            # exactly MONAI's ranking: a 0 for the background, then the sizes in raster order, same argsort
            counts = np.zeros(survivors.size + 1, dtype=np.int64)
            counts[1:] = sizes[survivors]
            chosen = np.argsort(counts)[::-1][:keep_largest] - 1
            keep[:] = False
            keep[survivors[chosen]] = True
    return keep


def _holes(idx: np.ndarray, shape: tuple[int, int, int], connectivity: int) -> tuple[np.ndarray, np.ndarray]:
    """Holes of the foreground ``idx`` (sorted flat indices): background components (of ``connectivity``)
    that touch no face of the volume.

    Returns:
        (flat indices of the hole voxels (H,), voxels of the hole each belongs to (H,)).
    """
    if idx.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    box, runs = _plan(idx, shape)
    if runs is None:
        return _holes_in_box(idx, shape, connectivity, box)
    n_x, n_y, n_z = shape
    start, length = _gaps(*runs, shape)
    component, sizes = _label_runs(start, length, shape, connectivity)
    row = start // n_z
    x, y = np.divmod(row, n_y)
    z0 = start - row * n_z
    border = (x == 0) | (x == n_x - 1) | (y == 0) | (y == n_y - 1) | (z0 == 0) | (z0 + length == n_z)
    is_hole = np.ones(sizes.size, dtype=bool)
    is_hole[component[border]] = False
    hole_runs = np.flatnonzero(is_hole[component])
    return _expand(start[hole_runs], length[hole_runs]), np.repeat(sizes[component[hole_runs]], length[hole_runs])


def _holes_in_box(
    idx: np.ndarray, shape: tuple[int, int, int], connectivity: int, box: tuple[slice, slice, slice] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``_holes`` with cc3d on the background of the foreground's bounding box (the dense path).

    The background outside the box touches the volume's faces and every face of the box it borders, so the
    holes of the volume are the background components of the box that touch no face of the box.
    """
    mask, box = _box_mask(idx, shape, box)
    labels, n = _cc3d(np.logical_not(mask, out=mask), connectivity)
    is_hole = np.ones(n + 1, dtype=bool)
    is_hole[0] = False
    for face in (labels[0], labels[-1], labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]):
        is_hole[face.reshape(-1)] = False
    inside = np.flatnonzero(_members(labels, np.flatnonzero(is_hole), n))
    if inside.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    component = labels.reshape(-1)[inside].astype(np.intp)
    sizes = np.bincount(component)[component]  # a hole lies wholly in the box: all its voxels are here
    _, b_y, b_z = mask.shape
    x, rest = np.divmod(inside, b_y * b_z)
    y, z = np.divmod(rest, b_z)
    flat = ((x + box[0].start) * shape[1] + y + box[1].start) * shape[2] + z + box[2].start
    return flat, sizes


def keep_largest(mask: Any, k: int = 1, connectivity: int = 26) -> Any:
    """Keep the ``k`` largest connected components of ``mask``.

    Equals MONAI's ``get_largest_connected_component_mask(mask, c, num_components=k)`` with c = 1, 2, 3 for
    6, 18, 26, ties included (see the module docstring); with ``k`` or fewer components everything is kept.

    Args:
        mask: (X, Y, Z) array or tensor; non-zero is foreground.
        k: number of components to keep.
        connectivity: 6, 18 or 26.

    Returns:
        bool mask of shape (X, Y, Z), an array or a tensor on the device of ``mask``.
    """
    return _filter_components(mask, _check_connectivity(connectivity), None, _positive_int(k, "k"))


def remove_small(mask: Any, min_voxels: int, connectivity: int = 26) -> Any:
    """Remove the connected components of ``mask`` with fewer than ``min_voxels`` voxels.

    Args:
        mask: (X, Y, Z) array or tensor; non-zero is foreground.
        min_voxels: smallest component size kept.
        connectivity: 6, 18 or 26.

    Returns:
        bool mask of shape (X, Y, Z), an array or a tensor on the device of ``mask``.
    """
    return _filter_components(mask, _check_connectivity(connectivity), _positive_int(min_voxels, "min_voxels"), None)


def _filter_components(mask: Any, connectivity: int, min_size: int | None, keep_largest: int | None) -> Any:
    """The components of ``mask`` that ``_kept_voxels`` keeps, as a bool mask of the type of ``mask``."""
    array = _to_numpy(mask, "mask")
    idx = flat_foreground(array)
    out = np.zeros(array.shape, dtype=bool)
    if idx.size:
        kept = _kept(idx, array.shape, connectivity, min_size, keep_largest)
        if isinstance(kept, np.ndarray):
            out.reshape(-1)[idx[kept]] = True
        else:
            out[kept[2]] = kept[0]
    return _like(out, mask)


def fill_holes(mask: Any, connectivity: int = 6) -> Any:
    """Fill the holes of ``mask``: background components (of ``connectivity``) not touching the border.

    Equals ``scipy.ndimage.binary_fill_holes(mask, generate_binary_structure(3, r))`` with r = 1, 2, 3 for
    6, 18, 26; the default 6 is scipy's default structure.

    Args:
        mask: (X, Y, Z) array or tensor; non-zero is foreground.
        connectivity: 6, 18 or 26, of the background.

    Returns:
        bool mask of shape (X, Y, Z), an array or a tensor on the device of ``mask``.
    """
    connectivity = _check_connectivity(connectivity)
    array = _to_numpy(mask, "mask")
    out = array.astype(bool, order="C")
    holes, _ = _holes(flat_foreground(out), out.shape, connectivity)
    out.reshape(-1)[holes] = True
    return _like(out, mask)


def parse_rules(rules: Mapping[Any, Mapping[str, Any] | LabelRule] | None) -> dict[int | str, LabelRule]:
    """Check postprocessing rules and turn them into ``LabelRule``s.

    Args:
        rules: label value (an int, or its string form, as YAML/JSON keys may be) or ``"all"`` -> a mapping
            with any of ``keep_largest: k`` (``true`` means 1), ``min_size: n``, ``fill_holes: true``,
            ``connectivity: 6|18|26`` (default 26), or a ``LabelRule``. ``"all"`` takes no ``fill_holes``:
            a hole of the union has no single label to take.

    Returns:
        label value (int) or ``"all"`` -> rule.

    Raises:
        ValueError: naming the label and the rule that is unknown or has a bad value.
    """
    if rules is None:
        return {}
    if not isinstance(rules, Mapping):
        raise ValueError(f"rules must map a label value or 'all' to a rule mapping, got {type(rules).__name__}")
    parsed: dict[int | str, LabelRule] = {}
    for key, rule in rules.items():
        label: int | str
        if key == ALL:
            label = ALL
        else:
            try:
                label = int(key) if isinstance(key, str) else operator.index(key)
                if isinstance(key, bool):
                    raise TypeError
            except (TypeError, ValueError):
                raise ValueError(f"rule keys must be label values (ints) or 'all', got {key!r}") from None
            if label == 0:
                raise ValueError("label 0 is the background; rules apply to foreground labels or 'all'")
        where = "the 'all' rule" if label == ALL else f"the rule of label {label}"
        if label in parsed:
            raise ValueError(f"{where} is given twice (keys {key!r} and its other form)")
        if isinstance(rule, LabelRule):  # already parsed (a transform parses its rules once)
            rule = {name: getattr(rule, name) for name in RULE_NAMES}
        if not isinstance(rule, Mapping):
            raise ValueError(f"{where} must be a mapping of {RULE_NAMES}, got {rule!r}")
        unknown = sorted(str(name) for name in rule if name not in RULE_NAMES)
        if unknown:
            raise ValueError(f"{where}: unknown rule name(s) {unknown}; expected any of {RULE_NAMES}")
        keep = rule.get("keep_largest")
        if isinstance(keep, bool):
            keep = 1 if keep else None
        elif keep is not None:
            keep = _positive_int(keep, f"{where}: keep_largest (the number of components to keep)")
        min_size = rule.get("min_size")
        if min_size is not None:
            min_size = _positive_int(min_size, f"{where}: min_size (voxels)")
        fill = rule.get("fill_holes", False)
        if not isinstance(fill, bool | np.bool_):
            raise ValueError(f"{where}: fill_holes must be true or false, got {fill!r}")
        if fill and label == ALL:
            raise ValueError(
                "the 'all' rule cannot fill holes (a hole of the union has no single label): give it per label"
            )
        connectivity = _check_connectivity(rule.get("connectivity", 26), f"{where}: connectivity")
        parsed[label] = LabelRule(keep, min_size, bool(fill), connectivity)
    return parsed


def postprocess_labels(labels: Any, rules: Mapping[Any, Mapping[str, Any] | LabelRule] | None) -> Any:
    """Apply per-label connected-component rules to a label map.

    Order: the ``"all"`` rule first, on the union of all non-zero labels (MONAI's
    ``KeepLargestConnectedComponent(applied_labels=None, independent=False)`` for ``keep_largest``, as
    nnU-Net removes stray foreground before its per-class step): voxels of the union outside the kept
    components become 0, whatever their label. Then the per-label rules, independently of one another and
    of their order: each label's ``min_size`` and ``keep_largest`` see only that label's voxels (removed
    voxels become 0); then each label's holes, found on that label alone after its removals, take the label
    only where the voxel is background (0) after all removals -- voxels of other labels inside a hole keep
    their label. Where holes of several labels overlap (a structure inside another), the smallest hole wins
    (the innermost enclosing structure), equal sizes going to the lower label value.

    Args:
        labels: (X, Y, Z) label map, array or tensor (any device), integer values, 0 the background.
        rules: see ``parse_rules``; labels without a rule are left as they are.

    Returns:
        the processed label map: same shape and dtype, an array or a tensor on the device of ``labels``.

    Example:
        >>> import numpy as np
        >>> labels = np.zeros((6, 6, 7), dtype=np.uint8)
        >>> labels[1:4, 1:4, 1:4] = 1  # a cube of 27 voxels ...
        >>> labels[2, 2, 2] = 0  # ... with a hole
        >>> labels[5, 5, 6] = 1  # and a speck
        >>> out = postprocess_labels(labels, {"1": {"keep_largest": 1, "fill_holes": True}})
        >>> int(out.sum()), int(out[2, 2, 2]), int(out[5, 5, 6])
        (27, 1, 0)
    """
    parsed = parse_rules(rules)
    array = _to_numpy(labels, "labels")
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        # Fortran order (NIfTI's, and so the predictor's): the transpose is C-ordered, and components, sizes and
        # holes do not depend on the order of the axes; only equal sizes at keep_largest's cut do (MONAI keeps
        # the one first in C order), and then the C-ordered copy decides. A 512x512x300 uint8 map: the
        # transposing copy alone took 1.8 s (docs/benchmarks.md, "CT inference profile").
        try:
            return _like(_postprocess(np.array(array.T, copy=True), parsed, raster=False).T, labels)
        except _OrderMatters:
            pass
    return _like(_postprocess(np.array(array, order="C", copy=True), parsed, raster=True), labels)


def _postprocess(out: np.ndarray, parsed: Mapping[Any, LabelRule], raster: bool) -> np.ndarray:
    """``postprocess_labels`` on ``out`` (C-contiguous, the function's own copy), in place; returned."""
    flat = out.reshape(-1)
    shape = out.shape
    union = parsed.get(ALL)
    if union is not None and not (union.keep_largest or union.min_size):
        union = None
    active = sorted((k, v) for k, v in parsed.items() if k != ALL and (v.keep_largest or v.min_size or v.fill_holes))
    if not active and union is None:
        return out
    to_fill: dict[int, np.ndarray] = {}  # label -> its voxels after its removals
    selections = len(active) + (union is not None)
    if selections <= DENSE_MASK_RULES and np.count_nonzero(out) > DENSE_FOREGROUND * out.size:
        # a dense map (a large structure, or a network with random weights): each rule reads its label as a
        # mask of the volume, no index array of the foreground (the index path took 2.7x as long at 39%)
        if union is not None:
            _drop_unkept(out, out != 0, union, raster)
        for label, rule in active:
            if rule.keep_largest or rule.min_size:
                _drop_unkept(out, out == label, rule, raster)
            if rule.fill_holes:
                to_fill[label] = np.flatnonzero(flat == label)
    else:
        idx = flat_foreground(out)
        if union is not None and idx.size:
            kept = _kept_voxels(idx, shape, union.connectivity, union.min_size, union.keep_largest, raster)
            flat[idx[~kept]] = 0
            idx = idx[kept]
        values = flat[idx]
        # each label's voxels, and the foreground's dropped: at most the foreground's indices alive while labelling
        owns = {label: idx[values == label] for label, _ in active}
        del idx, values
        for label, rule in active:
            own = owns.pop(label)
            if own.size and (rule.keep_largest or rule.min_size):
                kept = _kept_voxels(own, shape, rule.connectivity, rule.min_size, rule.keep_largest, raster)
                flat[own[~kept]] = 0
                own = own[kept] if rule.fill_holes else own
            if rule.fill_holes:
                to_fill[label] = own
            del own

    found = []
    for label, own in to_fill.items():
        holes, sizes = _holes(own, shape, 6)
        free = flat[holes] == 0
        if free.any():
            found.append((holes[free], sizes[free], np.full(int(free.sum()), label)))
    if len(found) == 1:
        flat[found[0][0]] = found[0][2][0]
    elif found:
        # a voxel in the holes of several labels goes to the smallest hole, then to the lower label
        where, size, value = (np.concatenate(parts) for parts in zip(*found, strict=True))
        order = np.lexsort((value, size, where))
        where, value = where[order], value[order]
        first = np.ones(where.size, dtype=bool)
        first[1:] = where[1:] != where[:-1]
        flat[where[first]] = value[first]
    return out
