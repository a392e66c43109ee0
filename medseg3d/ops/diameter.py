"""Measurements on predicted masks: the maximum diameter of a vessel in mm (the maximum aortic diameter).

**What is measured.** ``max_diameter_mm`` is the diameter of the largest ball inscribed in the mask. It stands for
the clinical "slice-wise maximal inscribed circle along the centreline": in a tube (a vessel of circular
cross-section whose centreline bends with a radius larger than the vessel's, and longer than it is wide), the
largest ball that fits at a centreline point has its centre on the centreline and touches the wall all round the
cross-section through that point, so its diameter is the maximal inscribed circle of the cross-section
*perpendicular to the centreline*, whatever the tube's orientation in the scan and without extracting a centreline.
The largest ball over the whole mask is therefore the largest such circle along the vessel: the maximum diameter.

**Limits** (where the ball and the clinical diameter part ways):

- An elliptic cross-section gives its minor axis (the inscribed circle's diameter), not the major axis.
- A saccular aneurysm (a sac bulging to one side) gives the largest ball in the lumen and sac together,
  which is smaller than the outer-to-outer width of the widest cross-section.
- At a bifurcation, or where the label touches another structure of the same label (the aortic root and the
  heart in one label), the largest ball sits in the junction and can exceed each vessel's diameter.
- A wall or a flat structure (a ring of thrombus, a slab) touches the largest ball at two opposite points
  only; its thickness is then measured up to one voxel high (the 1D digitisation bias below, which the tube
  correction of step 3 does not remove).
- The scan's border counts as background: a vessel whose widest part lies within one radius of the edge of
  the field of view is under-measured (a ball does not fit there).
- The voxel axes are taken as orthogonal with sizes ``spacing`` (a sheared grid is measured as if it were not).
- The maximum is taken over the whole mask, every connected component included (not only the largest one):
  a large false-positive blob is measured too.

**How.** The mask is cropped to its bounding box padded by one background voxel, and split into its
26-connected components, each measured on its own padded bounding box (exact: the voxel nearest to a component
outside it is always background, never another component), largest first, skipping those whose box is too
small to beat the best so far. Memory is bounded by the structure, not the scan: component labels and boolean
copies of the mask's bounding box (about 16 bytes per voxel of it, measured on a blob filling half its box),
and scipy's distance transform (about 40 bytes per voxel it covers) for at most a slab of a component's box
along its last axis (``EDT_SLAB_VOXELS``), never for the whole volume, even for a blob over half the scan.

1. ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)`` gives each voxel's distance in mm to the
   nearest background voxel centre; its maximum is the largest ball centred *on a voxel centre*. A box of more
   than ``EDT_SLAB_VOXELS`` voxels is transformed in slabs of whole slices with margins on both sides: a
   distance found in a slab is exact where it is at most the margin (the nearest background then lies inside
   the slab), and a slab whose maximum exceeds its margin is done again with the margin doubled, so the maximum
   and the voxel it is found at are those of the whole box.
2. The ball's centre is then moved continuously (grid search over +-1.5 voxels around the deepest voxel, then
   a pattern search down to 1/10000 voxel) to maximise the distance to the nearest background voxel centre
   (a k-d tree of the background voxels next to the mask). Without this, a vessel whose axis runs between
   voxel centres (the usual case for vessels along a voxel axis) is under-measured by twice the distance from
   the axis to the nearest voxel centre: 0.3 to 0.7 voxel on average for tubes along a voxel axis, up to 1.3
   voxels, and about one voxel for a ball, in simulations.
3. A ball free of background centres can bulge slightly between them: for a tube of radius r, a Poisson model
   of the background centres just outside its wall (density 1 / V, V the voxel volume) predicts a diameter
   excess proportional to V^(2/3) / r; simulations of tubes of radius 2 to 12 mm, along the axes and oblique,
   at spacings (1, 1, 1), (0.8, 0.8, 2.5), (0.7, 0.7, 1.5) and (0.6, 0.9, 1.2) mm, fit a constant of 1.0 to
   1.2. So ``diameter = 2 rho - V^(2/3) / rho`` (``rho`` the ball's radius), the subtraction capped at the
   smallest voxel size. The correction is 0.05 mm for a 24 mm aorta at 0.8 mm voxels and matters only for
   vessels a few voxels wide.

The classical half-voxel corrections do not apply here: taking the boundary half-way between the last foreground
and the first background centre (``EDT - s / 2``), or subtracting one voxel from ``2 x max EDT``, holds for a
segment of voxels in 1D (and for walls, see the limits), but a ball in a tube touches the background where a
background centre lies closest to its surface, and among the many centres around its circle of contact the closest
lies much nearer than half a voxel; ``2 x max EDT`` is already biased *low* (step 2), and both corrections would
make it worse by one voxel. On the 24 straight tubes of the tests (radius 4, 7.5 and 12 mm; along z, along x,
oblique at 35 and 45 degrees; spacings (1, 1, 1) and (0.8, 0.8, 2.5) mm) the error is -0.12 to +0.24 voxel of the
cross-section (mean absolute 0.04), where ``2 x max EDT`` gives -0.86 to +0.25 and ``2 x max EDT - 1 voxel`` -1.86
to -0.75; a torus arc (the aortic arch) and a bulging tube are within 0.05 mm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from medseg3d.ops.boxes import bounding_box

__all__ = ["label_diameters", "max_diameter_mm"]

# Fitted constant of the bulge correction ``C x V^(2/3) / rho`` (see the module docstring).
BULGE_CONSTANT = 1.0
_SEARCH_HALF_WIDTH = 1.5  # voxels around the deepest voxel where the ball's centre is searched
_COARSE_POINTS = 13  # grid points per axis over that width (step 1/4 voxel)
_STARTS = 8  # best grid points refined by the pattern search
_HALVINGS = 12  # pattern-search step halvings (1/8 voxel down to 1/16384 voxel)
EDT_SLAB_VOXELS = 1 << 24  # larger boxes get their distance transform in slabs (about 40 bytes a voxel: 670 MB)


def max_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float | None:
    """Diameter in mm of the largest ball inscribed in ``mask`` (non-zero voxels), None when it is empty.

    Args:
        mask: (X, Y, Z) array, non-zero inside the structure (bool, integer or float; not copied whole).
        spacing: voxel size in mm along X, Y, Z.

    Returns:
        The maximum diameter in mm (see the module docstring for the method and its limits), or None.

    Raises:
        ValueError: ``mask`` is not 3D, or ``spacing`` is not 3 positive finite sizes.

    >>> x, y = np.mgrid[-10:11, -10:11]
    >>> tube = np.repeat((x**2 + y**2 <= 6**2)[:, :, None], 40, axis=2)  # radius 6 voxels, along Z
    >>> round(max_diameter_mm(tube, (0.5, 0.5, 1.0)), 1)  # 2 x 6 x 0.5 mm
    6.0
    >>> max_diameter_mm(np.zeros((4, 4, 4)), (1, 1, 1)) is None
    True
    """
    mask = _check_mask(mask)
    sizes = _check_spacing(spacing)
    box = bounding_box(mask)  # reductions only: no copy of the volume
    if box is None:
        return None
    return _diameter(mask[box] != 0, sizes)


def label_diameters(labels: np.ndarray, spacing: Sequence[float], names: Mapping[str, int]) -> dict[str, float | None]:
    """``max_diameter_mm`` of each named label value of ``labels`` (X, Y, Z), each measured on its own.

    Bounding boxes come from one pass over ``labels`` (``scipy.ndimage.find_objects``), so no full-size
    mask is made per label. An absent label gives None.

    >>> labels = np.zeros((9, 9, 12), np.uint8)
    >>> labels[1:4, 1:4, :] = 1  # 3 x 3 voxels across
    >>> labels[4:9, 4:9, :] = 2  # 5 x 5 voxels across
    >>> found = label_diameters(labels, (1, 1, 1), {"a": 1, "b": 2, "c": 3})
    >>> {name: None if mm is None else round(mm, 1) for name, mm in found.items()}
    {'a': 3.6, 'b': 5.8, 'c': None}
    """
    labels = _check_mask(labels, "labels")
    sizes = _check_spacing(spacing)
    values = {name: int(value) for name, value in names.items()}
    wanted = [v for v in values.values() if v > 0]
    boxes: dict[int, tuple[slice, ...] | None] = {}
    if np.issubdtype(labels.dtype, np.integer) and wanted:
        found = ndimage.find_objects(labels, max_label=max(wanted))
        boxes = {v: found[v - 1] for v in wanted}
    out: dict[str, float | None] = {}
    for name, value in values.items():
        if value in boxes:
            box = boxes[value]
            out[name] = None if box is None else _diameter(labels[box] == value, sizes)
        else:  # float labels, or a value find_objects does not handle (0, negative)
            out[name] = max_diameter_mm(labels == value, sizes)
    return out


# -- checks ------------------------------------------------------------------------------------------------
def _check_mask(mask: np.ndarray, what: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise ValueError(f"expected a 3D {what} (X, Y, Z), got shape {mask.shape}")
    return mask


def _check_spacing(spacing: Sequence[float]) -> np.ndarray:
    try:
        sizes = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        sizes = np.array([])
    if sizes.size != 3 or not np.all(np.isfinite(sizes)) or not np.all(sizes > 0):
        raise ValueError(f"expected 3 positive voxel sizes in mm (X, Y, Z), got spacing {spacing!r}")
    return sizes


# -- the measurement ---------------------------------------------------------------------------------------
def _diameter(crop: np.ndarray, sizes: np.ndarray) -> float | None:
    """Corrected diameter of the largest ball in the boolean ``crop`` (any box holding the whole structure)."""

    if not crop.any():
        return None
    components, count = ndimage.label(crop, structure=np.ones((3, 3, 3), bool))
    if count == 1:
        del components
        return _corrected(_inscribed_radius(np.pad(crop, 1), sizes), sizes)
    boxes = ndimage.find_objects(components)
    # A ball in a component of box extents n_i fits in (n_i + 1) voxels, plus what step 2 can gain.
    slack = 2 * float(np.linalg.norm(sizes)) * _SEARCH_HALF_WIDTH
    bounds = [min((b.stop - b.start + 1) * s for b, s in zip(box, sizes, strict=True)) + slack for box in boxes]
    best = 0.0
    for k in sorted(range(count), key=lambda i: -bounds[i]):
        if bounds[k] <= 2 * best:
            break
        part = np.pad(components[boxes[k]] == k + 1, 1)
        best = max(best, _inscribed_radius(part, sizes))
    return _corrected(best, sizes)


def _corrected(radius: float, sizes: np.ndarray) -> float:
    """``2 rho - C V^(2/3) / rho``, the subtraction capped at the smallest voxel size."""
    excess = BULGE_CONSTANT * float(np.prod(sizes)) ** (2.0 / 3.0) / radius
    return 2.0 * radius - min(excess, float(sizes.min()))


def _inscribed_radius(padded: np.ndarray, sizes: np.ndarray) -> float:
    """Radius in mm of the largest ball, centred anywhere, holding no background voxel centre of ``padded``.

    ``padded`` is boolean with a background border; its voxel (i, j, k) is centred at (i, j, k) x sizes.
    """

    top, deepest = _deepest_voxel(padded, sizes)

    # Background centres a ball near ``deepest`` can reach: those next to the structure (the nearest
    # background centre to a point inside a foreground voxel always has a foreground 6-neighbour, else one
    # step towards the point gives a nearer one), plus every one within 3 voxels (a centre that strays into a
    # background voxel is nearest to that voxel's own centre).
    diagonal = float(np.linalg.norm(sizes))
    reach = np.ceil((top + 2 * diagonal * _SEARCH_HALF_WIDTH) / sizes).astype(int) + 1
    lo = np.maximum(deepest - reach, 0)
    hi = np.minimum(deepest + reach + 1, padded.shape)
    window = padded[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    ring = ndimage.binary_dilation(window, ndimage.generate_binary_structure(3, 1)) & ~window
    near = np.zeros_like(window)
    n_lo = np.maximum(deepest - lo - 3, 0)
    near[tuple(slice(a, b + 4) for a, b in zip(n_lo, deepest - lo, strict=True))] = True
    points = (np.argwhere(ring | (near & ~window)) + lo) * sizes
    tree = cKDTree(points)

    axis = np.linspace(-_SEARCH_HALF_WIDTH, _SEARCH_HALF_WIDTH, _COARSE_POINTS)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    candidates = (deepest + grid) * sizes
    distance, _ = tree.query(candidates)
    order = np.argsort(-distance, kind="stable")[:_STARTS]
    centres, values = candidates[order], distance[order]
    unit = np.array([-1.0, 0.0, 1.0])
    moves = np.stack(np.meshgrid(unit, unit, unit, indexing="ij"), -1).reshape(-1, 3)
    step = sizes * (axis[1] - axis[0]) / 2
    rows = np.arange(len(centres))
    for _ in range(_HALVINGS):
        trial = centres[:, None, :] + moves[None] * step
        found, _ = tree.query(trial.reshape(-1, 3))
        found = found.reshape(len(centres), -1)
        best = found.argmax(axis=1)
        better = found[rows, best] > values
        centres[better] = trial[rows, best][better]
        values[better] = found[rows, best][better]
        step = step / 2
    return max(top, float(values.max()))


def _deepest_voxel(padded: np.ndarray, sizes: np.ndarray, slab_voxels: int | None = None) -> tuple[float, np.ndarray]:
    """The maximum of the distance transform of ``padded`` (mm) and the voxel where it is (the middle of its ties
    in C order), the transform held for a slab of about ``slab_voxels`` voxels at a time (default
    ``EDT_SLAB_VOXELS``: a core of whole slices and a margin as deep on either side; more where a margin has
    to double); the same result as on the whole box (module docstring, step 1).

    >>> tube = np.zeros((9, 9, 40), bool)
    >>> tube[2:7, 2:7, 1:-1] = True
    >>> whole, sliced = _deepest_voxel(tube, np.ones(3), 10**9), _deepest_voxel(tube, np.ones(3), 81 * 3 * 2)
    >>> whole[0] == sliced[0] == 3.0 and whole[1].tolist() == sliced[1].tolist()
    True
    """

    limit = EDT_SLAB_VOXELS if slab_voxels is None else int(slab_voxels)
    depth = padded.shape[2]
    # one slab, the whole box, when it fits; else a core of whole slices and a margin as deep either side
    core = depth if padded.size <= limit else max(1, limit // (3 * padded.shape[0] * padded.shape[1]))
    margin = core
    top, ties = 0.0, []
    for start in range(0, depth, core):
        stop = min(start + core, depth)
        while True:
            lo, hi = max(0, start - margin), min(depth, stop + margin)
            edt = ndimage.distance_transform_edt(padded[:, :, lo:hi], sampling=sizes)[:, :, start - lo : stop - lo]
            best = float(edt.max())
            # beyond the slab lies background >= margin + 1 slices away: a distance up to margin slices is exact
            if (lo == 0 and hi == depth) or best <= margin * sizes[2]:
                break
            margin *= 2
        if best > 0 and best >= top:
            if best > top:
                top, ties = best, []
            i, j, k = np.nonzero(edt == best)
            ties.append(np.ravel_multi_index((i, j, k + start), padded.shape))
        del edt
    flat = np.sort(np.concatenate(ties))
    return top, np.array(np.unravel_index(int(flat[len(flat) // 2]), padded.shape))  # middle of a run of ties
