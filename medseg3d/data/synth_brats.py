"""Synthetic BraTS-like cases: four co-registered MRI sequences and a nested glioma segmentation.

A phantom is a skull-stripped brain (smoothly deformed ellipsoid) with a grey matter shell, white matter,
lateral ventricles and sulcal CSF, and a glioma made of a necrotic core inside an enhancing rim inside a
larger, irregular edema. Every shape comes from smooth random fields drawn on a coarse grid and upsampled
separably, so a full 240x240x155 case takes about a second on one core. ``write_brats_tree`` writes raw
trees in each edition's own layout so that the data preparation can be tested without the real data.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from medseg3d.core.constants import EDITIONS, MODALITIES, NIFTI_EXTENSIONS
from medseg3d.core.io import save_nifti, write_text

GRADES: tuple[str, ...] = ("HGG", "LGG")
TISSUES: dict[str, int] = {"background": 0, "CSF": 1, "GM": 2, "WM": 3}
MIN_SIZE = 16
NAME_MAPPING_HEADER = (
    "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,BraTS_2019_subject_ID,BraTS_2020_subject_ID"
)

# Mean intensity of each class relative to white matter of the same sequence, in MODALITIES order
# (t1, t1ce, t2, flair). "NET" is the non-enhancing core of LGG cases, which takes the NCR label.
_CONTRAST: dict[str, tuple[float, float, float, float]] = {
    "CSF": (0.35, 0.36, 2.90, 0.25),
    "GM": (0.75, 0.78, 1.35, 1.25),
    "WM": (1.00, 1.00, 1.00, 1.00),
    "NCR": (0.45, 0.42, 2.70, 1.30),
    "NET": (0.62, 0.64, 2.50, 1.90),
    "ED": (0.72, 0.74, 2.30, 2.20),
    "ET": (0.75, 2.00, 1.80, 1.60),
}
# White matter level of each sequence (low, high): raw BraTS scans sit in the hundreds to a few thousand.
_WM_LEVEL: dict[str, tuple[float, float]] = {
    "t1": (600.0, 1000.0),
    "t1ce": (600.0, 1000.0),
    "t2": (450.0, 800.0),
    "flair": (350.0, 650.0),
}
# Largest relative deformation of the brain surface and of each tumour boundary; placement relies on them.
_BRAIN_AMP = (0.06, 0.025)


@dataclass(frozen=True)
class Scanner:
    """How a scanner draws the intensities of a phantom: each class's contrast relative to white matter is
    multiplied by ``1 + U(-contrast_jitter, contrast_jitter)`` per sequence, the coil bias field's log-amplitude
    is drawn from ``bias`` and the Rician noise's sigma, relative to white matter, from ``noise``."""

    contrast_jitter: float
    bias: tuple[float, float]
    noise: tuple[float, float]


# "default": the phantoms training data is made of. "shifted": another scanner, for the held-out robustness check
# (docs/training.md): contrasts up to 15% apart, a coil bias twice as strong, twice the noise.
SCANNERS: dict[str, Scanner] = {
    "default": Scanner(contrast_jitter=0.0, bias=(0.08, 0.2), noise=(0.02, 0.04)),
    "shifted": Scanner(contrast_jitter=0.15, bias=(0.25, 0.4), noise=(0.05, 0.08)),
}
_ED_AMP, _TC_AMP, _NCR_AMP = 0.3, 0.2, 0.25
_MIN_NCR, _MIN_RIM, _MIN_ED = 1.5, 1.3, 1.3  # voxels, so that tiny shapes keep every sub-region
_LGG_MAX_ET = 0.3  # largest enhancing share of an LGG's shell around its non-enhancing core


@dataclass(frozen=True)
class BratsPhantom:
    """One synthetic case.

    Attributes:
        images: each of ``MODALITIES`` to an int16 array of shape (X, Y, Z), zero outside the brain.
        seg: uint8 array (X, Y, Z) with values in ``{0, *label_values}``.
        affine: 4x4 voxel-to-world matrix (LPS orientation, 1 mm).
        tissue: uint8 array (X, Y, Z) of the dominant healthy tissue (``TISSUES``), under the tumour too.
        grade: ``"HGG"`` or ``"LGG"``.
    """

    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    tissue: np.ndarray
    grade: str


def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """The affine BraTS files carry: diag(-1, -1, 1) at 1 mm, origin at voxel (0, Y - 1, 0); shape (4, 4)."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = float(shape[1] - 1)
    return affine


def make_brats_case(
    shape: Sequence[int] = (240, 240, 155),
    seed: int | Sequence[int] = 0,
    grade: str = "HGG",
    label_values: Sequence[int] = (1, 2, 4),
    scanner: str = "default",
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Return ``(images, seg, affine)`` of one synthetic case.

    Args:
        shape: (X, Y, Z), each at least ``MIN_SIZE``; the arrays have exactly this shape.
        seed: seed (or entropy sequence) of ``np.random.default_rng``.
        grade: ``"HGG"`` (all three sub-regions) or ``"LGG"`` (enhancing part small or absent).
        label_values: source label values of (NCR, ED, ET).
        scanner: one of ``SCANNERS``: how the intensities are drawn (the anatomy is the seed's either way).

    Returns:
        images: each of ``MODALITIES`` to an int16 array (X, Y, Z); seg: uint8 (X, Y, Z) with values in
        ``{0, *label_values}``; affine: (4, 4) LPS affine, diag(-1, -1, 1), 1 mm.
    """
    phantom = make_brats_phantom(shape, seed, grade, label_values, scanner)
    return phantom.images, phantom.seg, phantom.affine


def make_brats_phantom(
    shape: Sequence[int] = (240, 240, 155),
    seed: int | Sequence[int] = 0,
    grade: str = "HGG",
    label_values: Sequence[int] = (1, 2, 4),
    scanner: str = "default",
) -> BratsPhantom:
    """Like ``make_brats_case`` but also return the healthy tissue map and the grade."""
    shape = _check_shape(shape)
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {', '.join(GRADES)}, got {grade!r}")
    if scanner not in SCANNERS:
        raise ValueError(f"scanner must be one of {', '.join(SCANNERS)}, got {scanner!r}")
    profile = SCANNERS[scanner]
    labels = tuple(int(v) for v in label_values)
    if len(labels) != 3 or len(set(labels)) != 3 or not all(1 <= v <= 255 for v in labels):
        raise ValueError(f"label_values must be 3 distinct integers in 1..255 (NCR, ED, ET), got {label_values!r}")
    rng = np.random.default_rng(seed)
    size = np.asarray(shape, dtype=np.float64)

    # Brain: an ellipsoid filling about a fifth of the field of view (BraTS: ~1.5 of 8.9 million voxels).
    centre = (size - 1) / 2 + rng.uniform(-0.02, 0.02, 3) * size
    semi = np.array([0.58, 0.70, 0.80]) * size / 2 * rng.uniform(0.94, 1.04, 3)
    reach = semi * (1 + sum(_BRAIN_AMP))
    lo = np.clip(np.floor(centre - reach).astype(int) - 1, 0, None)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 2, shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    axes = [np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi, strict=True)]
    ux, uy, uz = (
        _along(((ax - c) / s).astype(np.float32), i)
        for i, (ax, c, s) in enumerate(zip(axes, centre, semi, strict=True))
    )
    surface = (
        1 + _BRAIN_AMP[0] * _field(rng, (5, 5, 4), box_shape) + _BRAIN_AMP[1] * _field(rng, (11, 11, 8), box_shape)
    )
    depth = np.sqrt(ux * ux + uy * uy + uz * uz) / surface  # 0 at the centre, 1 on the brain surface
    brain = depth < 1
    voxel = np.float32(1 / semi.min())  # one voxel in normalised units: the width of partial-volume ramps

    # Tissues as soft fractions (partial volume): GM shell of varying thickness, ventricles, sulci, fissure.
    thickness = 0.14 * (1 + 0.6 * _field(rng, (22, 22, 16), box_shape))  # gyri: folds every ~7 mm
    gm = _ramp(depth - (1 - thickness), 1.5 * voxel)
    for side in (-1, 1):  # deep grey matter (thalami) beside the ventricles
        gm = np.maximum(gm, _blob(ux, uy, uz, (side * 0.2, 0.05, -0.08), (0.11, 0.14, 0.1), semi, 0.0, voxel))
    ventricle_deform = 0.15 * _field(rng, (6, 6, 5), box_shape)
    ventricle_size = rng.uniform(0.8, 1.3)
    csf = np.zeros(box_shape, np.float32)
    for side in (-1, 1):
        radii = (0.085 * ventricle_size, 0.34, 0.13 * ventricle_size)
        csf = np.maximum(csf, _blob(ux, uy, uz, (side * 0.12, 0.02, 0.12), radii, semi, ventricle_deform, voxel))
    sulci = _ramp(_field(rng, (22, 22, 16), box_shape) - 0.35, 0.25) * _ramp(depth - (1 - 0.7 * thickness), voxel)
    fissure = _ramp(0.6 - np.abs(ux) / voxel, 0.6) * _ramp(depth - 0.6, voxel) * (uz > 0)  # between hemispheres
    csf = np.maximum(np.maximum(csf, sulci), fissure)
    gm *= 1 - csf
    wm = np.clip(1 - csf - gm, 0, 1)
    tissue = np.where(brain, np.argmax(np.stack([csf, gm, wm]), axis=0) + 1, 0).astype(np.uint8)

    seg_box, t_box, label_names = _tumour(rng, grade, semi, centre, lo, box_shape, brain, wm)
    seg_local = np.array((0, *labels), np.uint8)[seg_box]  # 1, 2, 3 -> NCR, ED, ET source values

    # Intensities: healthy mix with a faint texture; tumour fractions blurred slightly so edges are not hard.
    texture = 1 + 0.03 * _field(rng, tuple(max(2, n // 6) for n in box_shape), box_shape)
    blurred = {k: ndimage.gaussian_filter((seg_box == k).astype(np.float32), 0.45) for k in (1, 2, 3)}
    healthy = 1 - sum(blurred.values())
    t_texture = 1 + 0.1 * _field(rng, tuple(max(2, n // 4) for n in seg_box.shape), seg_box.shape)
    images: dict[str, np.ndarray] = {}
    for index, modality in enumerate(MODALITIES):
        level = rng.uniform(*_WM_LEVEL[modality])
        mean = {k: np.float32(level * v[index]) for k, v in _CONTRAST.items()}
        if profile.contrast_jitter:  # drawn only then, so the default scanner's phantoms stay byte for byte
            jitter = profile.contrast_jitter
            mean = {
                k: np.float32(v * (1 if k == "WM" else rng.uniform(1 - jitter, 1 + jitter))) for k, v in mean.items()
            }
        signal = (csf * mean["CSF"] + gm * mean["GM"] + wm * mean["WM"]) * texture
        tumour = sum(blurred[k] * mean[n] for k, n in zip((1, 2, 3), label_names, strict=True))
        signal[t_box] = signal[t_box] * healthy + tumour * t_texture
        signal *= np.exp(rng.uniform(*profile.bias) * _field(rng, (3, 3, 3), box_shape))  # coil bias field
        sigma = np.float32(rng.uniform(*profile.noise) * level)
        noise_re = rng.standard_normal(box_shape, dtype=np.float32)
        noise_im = rng.standard_normal(box_shape, dtype=np.float32)
        magnitude = np.sqrt((signal + sigma * noise_re) ** 2 + (sigma * noise_im) ** 2)  # Rician
        image = np.zeros(shape, np.int16)
        image[box] = np.where(brain, np.clip(np.rint(magnitude), 1, 32767), 0).astype(np.int16)
        images[modality] = image

    seg = np.zeros(shape, np.uint8)
    seg[box][t_box] = seg_local
    full_tissue = np.zeros(shape, np.uint8)
    full_tissue[box] = tissue
    return BratsPhantom(images, seg, brats_affine(shape), full_tissue, grade)


def _tumour(
    rng: np.random.Generator,
    grade: str,
    semi: np.ndarray,
    centre: np.ndarray,
    lo: np.ndarray,
    box_shape: tuple[int, ...],
    brain: np.ndarray,
    wm: np.ndarray,
) -> tuple[np.ndarray, tuple[slice, ...], tuple[str, str, str]]:
    """Draw the glioma inside the brain box.

    Returns:
        seg: uint8 (x, y, z) over the tumour box, 1 NCR (or NET), 2 ED, 3 ET; box: the tumour box as slices
        of the brain box; names: the ``_CONTRAST`` class of labels 1, 2 and 3.
    """
    small = semi.min()
    # Real HGG: whole tumour ~100 cm3, core ~40 cm3, necrosis ~15 cm3; LGG cores are relatively smaller.
    r_ed = small * rng.uniform(0.38, 0.52)
    r_tc = r_ed * (rng.uniform(0.55, 0.72) if grade == "HGG" else rng.uniform(0.45, 0.65))
    # Lower bounds in voxels (tumour frame): a necrotic core and a closed enhancing rim at any shape.
    r_tc = max(r_tc, (_MIN_NCR * (1 + _NCR_AMP) + _MIN_RIM) / (1 - _TC_AMP))
    rim = max(_MIN_RIM, 0.15 * r_tc)
    r_ncr = max(_MIN_NCR, min(rng.uniform(0.5, 0.75) * r_tc, (r_tc * (1 - _TC_AMP) - rim) / (1 + _NCR_AMP)))
    r_ed = max(r_ed, 1.5 * r_tc)
    scale = rng.uniform(0.85, 1.15, 3)
    extent = max(r_ed * (1 + _ED_AMP), r_tc * (1 + _TC_AMP) + _MIN_ED) * scale.max() + 1
    core_extent = (r_tc * (1 + _TC_AMP) + _MIN_ED) * scale.max() + 1

    # Centre: anywhere the core and its edema band stay inside the smallest brain the surface deformation
    # allows; the rest of the edema may reach the surface and is cut there, as edema stops at the cortex.
    room = 1 - sum(_BRAIN_AMP) - core_extent / small - 0.03
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    offset = direction * max(room, 0.0) * rng.uniform(0.3, 1.0)
    where = centre + offset * semi - lo  # tumour centre in brain-box voxels
    t_lo = np.clip(np.floor(where - extent).astype(int), 0, None)
    t_hi = np.minimum(np.ceil(where + extent).astype(int) + 1, box_shape)
    t_box = tuple(slice(a, b) for a, b in zip(t_lo, t_hi, strict=True))
    t_shape = tuple(int(b - a) for a, b in zip(t_lo, t_hi, strict=True))

    # Tumour frame: random rotation and per-axis stretch, built from 1-D offsets by broadcasting.
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    offsets = [
        _along(np.arange(a, b, dtype=np.float32) - np.float32(w), i)
        for i, (a, b, w) in enumerate(zip(t_lo, t_hi, where, strict=True))
    ]
    frame = [sum(np.float32(rotation[i, k] / scale[k]) * offsets[i] for i in range(3)) for k in range(3)]
    radius = np.sqrt(frame[0] ** 2 + frame[1] ** 2 + frame[2] ** 2)

    d_ed = _ED_AMP * (0.65 * _field(rng, (4, 4, 4), t_shape) + 0.35 * _field(rng, (9, 9, 9), t_shape))
    tc = radius < r_tc * (1 + _TC_AMP * _field(rng, (6, 6, 6), t_shape))
    core = radius < r_ncr * (1 + _NCR_AMP * _field(rng, (6, 6, 6), t_shape))
    # Edema follows white matter tracts and always wraps the core by at least a voxel.
    ed = (radius < r_ed * (1 + d_ed) * (0.75 + 0.25 * wm[t_box])) | (radius < r_tc * (1 + _TC_AMP) + _MIN_ED)
    inside = brain[t_box]
    if grade == "HGG":
        et = tc & ~core
        names = ("NCR", "ED", "ET")
    else:
        # LGG: mostly non-enhancing core; patchy enhancement in some cases only, on at most _LGG_MAX_ET of the
        # shell around the core (the field's highest voxels there): a smooth field over a small tumour can pass
        # its threshold almost everywhere, and an LGG whose core enhances all round looks like an HGG's rim,
        # which real LGG do not. The cap draws nothing, so LGG cases under it are what they always were.
        patches = _field(rng, (4, 4, 4), t_shape)
        threshold = rng.uniform(0.2, 0.5)
        et = tc & ~core & inside & (patches > threshold) if rng.uniform() < 0.4 else np.zeros(t_shape, bool)
        limit = int(_LGG_MAX_ET * np.count_nonzero(tc & ~core & inside))
        if np.count_nonzero(et) > limit:
            highest = np.argsort(np.where(et, patches, -np.inf), axis=None, kind="stable")[::-1][:limit]
            et = np.zeros(t_shape, bool)
            et.flat[highest] = True
        names = ("NET", "ED", "ET")
    seg = np.zeros(t_shape, np.uint8)
    seg[(ed | tc) & inside] = 2
    seg[tc & inside] = 1
    seg[et & inside] = 3
    return seg, t_box, names


def _blob(
    ux: np.ndarray,
    uy: np.ndarray,
    uz: np.ndarray,
    at: Sequence[float],
    radii: Sequence[float],
    semi: np.ndarray,
    deform: np.ndarray | float,
    voxel: float,
) -> np.ndarray:
    """Soft fraction (float32, box shape) of a deformed ellipsoid.

    Args:
        ux, uy, uz: normalised brain coordinates, shapes (x, 1, 1), (1, y, 1) and (1, 1, z).
        at, radii: centre and semi-axes in normalised units; semi: brain semi-axes in voxels (3,).
        deform: relative radius change, scalar or (x, y, z); voxel: one voxel in normalised units.
    """
    radii = np.maximum(np.asarray(radii), 1.5 / semi)  # at least 1.5 voxels, so tiny shapes keep it
    r = np.sqrt(((ux - at[0]) / radii[0]) ** 2 + ((uy - at[1]) / radii[1]) ** 2 + ((uz - at[2]) / radii[2]) ** 2)
    return _ramp(1 + deform - r, voxel / radii.min())


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Linear step from 0 to 1 over ``width`` centred on x = 0 (float32, shape of x)."""
    return np.clip(x / np.float32(width) + np.float32(0.5), 0, 1).astype(np.float32, copy=False)


def _along(values: np.ndarray, axis: int) -> np.ndarray:
    """1-D ``values`` shaped to broadcast along ``axis`` of a 3-D array."""
    shape = [1, 1, 1]
    shape[axis] = values.size
    return values.reshape(shape)


@functools.lru_cache(maxsize=128)
def _upsampler(n_coarse: int, n_out: int) -> np.ndarray:
    """Cubic-spline interpolation weights (n_out, n_coarse): ``scipy.ndimage.zoom`` of the identity."""
    weights = ndimage.zoom(np.eye(n_coarse), (n_out / n_coarse, 1.0), order=3, mode="nearest").astype(np.float32)
    weights.setflags(write=False)
    return weights


def _field(rng: np.random.Generator, coarse: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Smooth random field of ``shape`` (float32, values in [-1, 1]) from uniform noise on a ``coarse`` grid.

    The upsampling is separable (three small matrix products), far cheaper than a 3-D zoom of the volume.
    """
    coarse = tuple(max(2, min(int(c), int(n))) for c, n in zip(coarse, shape, strict=True))
    grid = rng.uniform(-1, 1, coarse).astype(np.float32)
    wx, wy, wz = (_upsampler(c, int(n)) for c, n in zip(coarse, shape, strict=True))
    field = grid @ wz.T  # (cx, cy, Z)
    field = np.matmul(wy, field)  # (cx, Y, Z)
    field = (wx @ field.reshape(coarse[0], -1)).reshape(tuple(int(n) for n in shape))
    return np.clip(field, -1, 1, out=field)


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """``shape`` as three ints, each at least ``MIN_SIZE``, or a ``ValueError``."""
    try:
        values = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be 3 positive integers, got {shape!r}") from None
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"shape must be 3 positive integers, got {shape!r}")
    if min(values) < MIN_SIZE:
        raise ValueError(f"shape must be at least {MIN_SIZE} on every axis, got {tuple(int(v) for v in values)}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


@dataclass(frozen=True)
class _Layout:
    """Folder and case-ID naming of one edition; IDs are ``fmt.format(first + index)``."""

    train_dir: str
    val_dir: str
    train_fmt: str
    val_fmt: str
    first: int
    val_after_train: bool  # validation IDs continue the training numbering


_LAYOUTS: dict[str, _Layout] = {
    "2019": _Layout(
        "MICCAI_BraTS_2019_Data_Training",
        "MICCAI_BraTS_2019_Data_Validation",
        "BraTS19_SYN_{:04d}_1",
        "BraTS19_SYN_V{:03d}_1",
        1,
        False,
    ),
    "2020": _Layout(
        "MICCAI_BraTS2020_TrainingData",
        "MICCAI_BraTS2020_ValidationData",
        "BraTS20_Training_{:03d}",
        "BraTS20_Validation_{:03d}",
        1,
        False,
    ),
    "2021": _Layout(
        "RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021",
        "RSNA_ASNR_MICCAI_BraTS2021_ValidationData",
        "BraTS2021_{:05d}",
        "BraTS2021_{:05d}",
        0,
        True,
    ),
    "2023": _Layout(
        "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData",
        "ASNR-MICCAI-BraTS2023-GLI-Challenge-ValidationData",
        "BraTS-GLI-{:05d}-000",
        "BraTS-GLI-{:05d}-000",
        0,
        True,
    ),
}


def _grades(count: int, seed: int, split: int) -> list[str]:
    """Deterministic grade mix: about 2/3 HGG, at least one of each when ``count >= 2``."""
    if count < 2:
        return ["HGG"] * count
    n_lgg = min(count - 1, max(1, round(count / 3)))
    lgg = set(np.random.default_rng([seed, 2, split]).choice(count, n_lgg, replace=False).tolist())
    return ["LGG" if i in lgg else "HGG" for i in range(count)]


def write_brats_tree(
    out_dir: str | os.PathLike,
    cases: int = 4,
    edition: str = "2021",
    shape: Sequence[int] = (240, 240, 155),
    seed: int = 0,
    validation_cases: int = 0,
    extension: str = ".nii.gz",
    scanner: str = "default",
) -> list[Path]:
    """Write a raw BraTS tree in ``edition``'s exact layout and naming under ``out_dir``.

    Editions that record the grade (2019, 2020) mix HGG and LGG cases; the others get HGG-like cases, so
    every training case of a 2021 or 2023 tree has all three sub-regions. Validation cases have no seg.
    Training case ``i`` draws from ``default_rng([seed, 0, i])``, validation case ``j`` from
    ``default_rng([seed, 1, j])``, so the same arguments give the same bytes. ``scanner`` (one of ``SCANNERS``)
    draws the same anatomy with another scanner's contrasts, bias field and noise.

    Returns:
        The case folders written: training cases first, then validation cases.
    """
    if edition not in _LAYOUTS:
        raise ValueError(f"unknown BraTS edition {edition!r}; expected one of {', '.join(_LAYOUTS)}")
    for name, value, least in (("cases", cases, 1), ("validation_cases", validation_cases, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if extension not in NIFTI_EXTENSIONS:
        raise ValueError(f"extension must be one of {', '.join(NIFTI_EXTENSIONS)}, got {extension!r}")
    shape = _check_shape(shape)
    spec, layout, out = EDITIONS[edition], _LAYOUTS[edition], Path(out_dir)
    labels = tuple(spec.label_values[name] for name in ("NCR", "ED", "ET"))
    folders: list[Path] = []
    rows: list[str] = []
    val_first = layout.first + (cases if layout.val_after_train else 0)
    splits = (
        (layout.train_dir, layout.train_fmt, layout.first, cases),
        (layout.val_dir, layout.val_fmt, val_first, validation_cases),
    )
    for split, (top, fmt, first, count) in enumerate(splits):  # split 0: training, 1: validation
        grades = _grades(count, seed, split) if spec.has_grade else ["HGG"] * count
        for index, grade in enumerate(grades):
            case_id = fmt.format(first + index)
            folder = out / top / grade / case_id if edition == "2019" and split == 0 else out / top / case_id
            images, seg, affine = make_brats_case(shape, (seed, split, index), grade, labels, scanner)
            for key in MODALITIES:
                save_nifti(images[key], affine, folder / spec.file_name(case_id, key, extension))
            if split == 0:
                save_nifti(seg, affine, folder / spec.file_name(case_id, "seg", extension))
                rows.append(f"{grade},NA,NA,NA,NA,{case_id}")
            folders.append(folder)
    if edition == "2020":
        write_text("\n".join([NAME_MAPPING_HEADER, *rows]) + "\n", out / layout.train_dir / "name_mapping.csv")
    return folders
