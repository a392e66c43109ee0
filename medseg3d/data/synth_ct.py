"""Synthetic chest-abdomen CT phantoms with a contrast-filled aorta and its label.

Each case is an axial CT volume in Hounsfield units: air around an elliptical body (subcutaneous fat around soft
tissue), two lungs in the superior part, a liver in the lower right, a spine (vertebral bodies with lower-density
discs, canal, posterior arch) and a contrast-filled aorta (ascending, arch, descending) whose lumen is the label.

Coordinates are DICOM/ITK LPS millimetres with the volume centred on the origin: +x patient left, +y posterior,
+z superior, so array index ``[i, j, k]`` of an (X, Y, Z) array sits at ``origin + (i*sx, j*sy, k*sz)`` and the
top of the chest is the high-z end. The anatomy is a reference patient (drawn for a 435 mm field of view and a
400 mm scan length) scaled to the actual field of view and scan length, so small test shapes keep every organ,
only coarser. Every structure is drawn slice by slice from analytic 2D shapes on its bounding box (no per-voxel
Python loops, no distance transforms), which keeps a 512 x 512 x ~160 case at about a second on one core.

Determinism: the same seed gives the same arrays, byte-identical NIfTI files and byte-identical DICOM files. GDCM
fills study date/time with the current time when they are missing, so every date/time tag is set to a fixed value
here; the only tool-dependent tags (implementation version, source AE title) name the GDCM/ITK build, which is fixed
for a given SimpleITK install.
"""

from __future__ import annotations

import math
import operator
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg3d.core.io import atomic_path, keep_locale

# Tissue codes of the internal tissue map (see make_ct_tissues); AORTA voxels are exactly the label.
TISSUE_CODES: dict[str, int] = {
    "air": 0, "fat": 1, "soft_tissue": 2, "lung": 3, "liver": 4, "bone": 5, "disc": 6, "canal": 7, "aorta": 8,
}  # fmt: skip
AIR, FAT, SOFT, LUNG, LIVER, BONE, DISC, CANAL, AORTA = range(9)
# (low, high) of the mean HU drawn per case for each tissue, in TISSUE_CODES order.
_HU_RANGES = ((-1000, -1000), (-110, -90), (35, 50), (-870, -830), (55, 70), (400, 700), (70, 110), (5, 20), (260, 340))


@dataclass(frozen=True)
class CtScanner:
    """How a scanner and protocol draw a case's intensities (the anatomy is the seed's whatever the scanner).

    Attributes:
        aorta_scale: (low, high) factor on the aorta's mean HU (another contrast timing or dose).
        tissue_shift: up to this many HU added to soft tissue and liver (organ enhancement).
        noise_scale: factor on the noise sigma (dose, reconstruction kernel).
    """

    aorta_scale: tuple[float, float]
    tissue_shift: float
    noise_scale: float


# "default": the phantoms training data is made of. "shifted": another scanner and protocol, for the held-out
# robustness check (docs/training.md): aorta 0.7-1.3x as bright, soft tissue and liver up to 15 HU apart, twice
# the noise.
CT_SCANNERS: dict[str, CtScanner] = {
    "default": CtScanner(aorta_scale=(1.0, 1.0), tissue_shift=0.0, noise_scale=1.0),
    "shifted": CtScanner(aorta_scale=(0.7, 1.3), tissue_shift=15.0, noise_scale=2.0),
}
HU_MIN, HU_MAX = -1024, 3071  # 12-bit CT range with the usual -1024 offset
MIN_AXIS = 16
UID_ROOT = "1.2.826.0.1.3680043.10.1234."
FIXED_DATE, FIXED_TIME = "20260101", "120000"  # instead of "now", so files do not depend on when they are written
_REF_FOV_MM, _REF_Z_MM = 435.0, 400.0  # field of view and scan length the reference patient is drawn for


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        if isinstance(shape, str | bytes) or len(shape) != 3:
            raise TypeError
        dims = tuple(operator.index(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be three positive integers (X, Y, Z), got {shape!r}") from None
    if any(n <= 0 for n in dims):
        raise ValueError(f"shape must be three positive integers (X, Y, Z), got {shape!r}")
    if any(n < MIN_AXIS for n in dims):
        raise ValueError(f"every axis of shape must be at least {MIN_AXIS} voxels, got {dims}")
    return dims  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"spacing must be three positive finite numbers (mm), got {spacing!r}") from None
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive finite numbers (mm), got {spacing!r}")
    return values  # type: ignore[return-value]


def _check_seed(seed: int) -> int:
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}") from None
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return seed


def ct_origin(shape: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float]:
    """LPS origin (mm) of the first voxel that centres a volume of ``shape`` (X, Y, Z) and ``spacing`` on 0."""
    return tuple(-(n - 1) / 2 * s for n, s in zip(shape, spacing, strict=True))  # type: ignore[return-value]


def _geometry(shape, spacing, rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    # Always draw all three so that the anatomy draws that follow do not depend on which arguments were given.
    # Multiples of 1/64 mm are exact in float32 (NIfTI) and as short decimal strings (DICOM), so both agree exactly.
    s_xy = int(rng.integers(45, 65)) / 64  # 0.703 .. 1.0 mm
    s_z = int(rng.integers(96, 193)) / 64  # 1.5 .. 3.0 mm
    length = rng.uniform(360.0, 440.0)  # scan length, mm: chest and abdomen
    spacing = (s_xy, s_xy, s_z) if spacing is None else _check_spacing(spacing)
    shape = (512, 512, max(MIN_AXIS, round(length / spacing[2]))) if shape is None else _check_shape(shape)
    return shape, spacing


def _ellipse(t: np.ndarray, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, ax: float, ay: float, code: int):
    """Paint the axis-aligned ellipse (centre, semi-axes in mm) into slice ``t`` (X, Y), touching only its box."""
    if ax <= 0 or ay <= 0:
        return
    ex, ey = ((xs - cx) / ax) ** 2, ((ys - cy) / ay) ** 2  # separable, so two 1D passes and one 2D sum
    ix, iy = np.flatnonzero(ex <= 1), np.flatnonzero(ey <= 1)
    if ix.size and iy.size:
        bx, by = slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1)
        t[bx, by][ex[bx, None] + ey[None, by] <= 1] = code


def _anatomy(rng: np.random.Generator, shape, spacing) -> dict:
    """Draw one patient (positions and sizes in LPS mm, HU levels) scaled to the field of view of ``shape``."""
    fov_x, fov_y, length = (n * s for n, s in zip(shape, spacing, strict=True))
    kx, ky = fov_x / _REF_FOV_MM, fov_y / _REF_FOV_MM
    kr, kz = math.sqrt(kx * ky), length / _REF_Z_MM  # radii scale with the mean in-plane scale
    z_top = (shape[2] - 1) / 2 * spacing[2]
    u = rng.uniform
    a, b = u(160, 180) * kx, u(110, 130) * ky
    p: dict = {"z_top": z_top, "z_bot": -z_top, "body": (u(-4, 4) * kx, u(-4, 4) * ky, a, b), "fat": u(8, 20) * kr}
    # Spine in the posterior midline: vertebral body, canal behind it, posterior arch and spinous process.
    vx, vy, vrx, vry = u(-2, 2) * kx, b * u(0.15, 0.25), u(20, 25) * kx, u(15, 18) * ky
    canal_r, canal_y = u(7, 9) * kr, vy + vry + u(8, 10) * ky
    p["spine"] = (vx, vy, vrx, vry, canal_y, canal_r)
    p["discs"] = (u(23, 27) * kz, u(0, 25) * kz, u(5, 8) * kz)  # period, phase, thickness
    # Lungs in the superior part (apex at or above the top), their bases domed up by the diaphragm, the right
    # base higher because of the liver.
    z_base = z_top - u(0.45, 0.55) * length
    apex = z_top + u(0.0, 0.08) * length
    lungs = []
    for side in (-1.0, 1.0):  # -1 = right (LPS -x)
        base = z_base + (u(10, 20) * kz if side < 0 else 0.0)
        ellipse = (side * a * u(0.42, 0.5), b * u(-0.05, 0.1), a * u(0.28, 0.33), b * u(0.55, 0.65))
        lungs.append((*ellipse, base, apex, u(40, 60) * kz))
    p["lungs"] = lungs
    liver_hz = u(70, 90) * kz
    liver_top = lungs[0][4] + lungs[0][6] * u(0.8, 1.0)  # fills the right diaphragm dome
    liver_ellipse = (-a * u(0.35, 0.45), -b * u(0.0, 0.15), a * u(0.35, 0.42), b * u(0.5, 0.6))
    p["liver"] = (*liver_ellipse, liver_top - liver_hz, liver_hz)
    # Aorta: descending anterior-left of the vertebral body (clear of it), ascending anterior and slightly right.
    r_min = 1.5 * max(spacing[:2])  # keeps a (thin) lumen on tiny test grids where the scaled one would vanish
    r_asc, r_desc, r_abd = (max(u(lo, hi) * kr, r_min) for lo, hi in ((12, 16), (11, 13), (9, 11)))
    phi = math.radians(u(35, 60))  # from anterior towards the patient's left
    dx, dy = math.sin(phi), -math.cos(phi)
    to_edge = 1 / math.hypot(dx / vrx, dy / vry)  # centre to vertebral body surface along (dx, dy)
    clear = to_edge + r_desc + u(2, 5) * kr
    desc = (vx + dx * clear, vy + dy * clear)
    asc = (-u(5, 20) * kx, -u(40, 55) * ky)
    big_r = math.hypot(desc[0] - asc[0], desc[1] - asc[1]) / 2  # arch radius: half the asc-desc distance
    rz = min(big_r, 0.2 * length)  # a flatter arch only where the scan is too short for a round one
    z_c = z_top - u(0.03, 0.06) * length - (big_r + (r_asc + r_desc) / 2) * rz / big_r
    p["aorta"] = {
        "asc": asc, "desc": desc, "r_asc": r_asc, "r_desc": r_desc, "r_abd": r_abd, "R": big_r, "Rz": rz, "z_c": z_c,
        "z_root": z_c - u(0.12, 0.18) * length, "drift": -u(0, 10) * ky,  # abdominal aorta drifts anteriorly
    }  # fmt: skip
    p["levels"] = np.array([u(lo, hi) for lo, hi in _HU_RANGES], dtype=np.float32)
    p["noise"] = u(10, 20)
    return p


def _arch_box(p: dict, xs: np.ndarray, ys: np.ndarray):
    """Index box of the arch's footprint and the arch-plane coordinates (u along asc->desc, w across) on it."""
    ao = p["aorta"]
    (ax_, ay_), (dx_, dy_) = ao["asc"], ao["desc"]
    r_max = max(ao["r_asc"], ao["r_desc"])
    # The half-torus projects onto the stadium around the asc-desc segment, so this box holds all of it.
    ix = np.flatnonzero((xs >= min(ax_, dx_) - r_max) & (xs <= max(ax_, dx_) + r_max))
    iy = np.flatnonzero((ys >= min(ay_, dy_) - r_max) & (ys <= max(ay_, dy_) + r_max))
    if not ix.size or not iy.size:
        return None
    bx, by = slice(ix[0], ix[-1] + 1), slice(iy[0], iy[-1] + 1)
    ex, ey = (dx_ - ax_) / (2 * ao["R"]), (dy_ - ay_) / (2 * ao["R"])
    px, py = xs[bx, None] - (ax_ + dx_) / 2, ys[None, by] - (ay_ + dy_) / 2
    return bx, by, px * ex + py * ey, -px * ey + py * ex


def _aorta_slice(t: np.ndarray, xs: np.ndarray, ys: np.ndarray, z: float, p: dict, arch) -> None:
    """Paint the aortic lumen of the slice at height ``z`` (mm) into ``t``."""
    ao = p["aorta"]
    z_c = ao["z_c"]
    if z <= z_c:
        frac = (z_c - z) / max(z_c - p["z_bot"], 1e-6)  # 0 at the arch, 1 at the lowest slice
        r = ao["r_desc"] + (ao["r_abd"] - ao["r_desc"]) * frac
        _ellipse(t, xs, ys, ao["desc"][0], ao["desc"][1] + ao["drift"] * frac, r, r, AORTA)
        below_root = ao["z_root"] - z  # the ascending aorta ends in a rounded cap at the aortic root
        r = ao["r_asc"] if below_root <= 0 else math.sqrt(max(ao["r_asc"] ** 2 - below_root**2, 0.0))
        _ellipse(t, xs, ys, ao["asc"][0], ao["asc"][1], r, r, AORTA)
    elif arch is not None:
        # Half-torus in the vertical plane through both centres; the tube radius runs from asc to desc with angle.
        bx, by, uu, ww = arch
        dz = (z - z_c) * ao["R"] / ao["Rz"]
        rho = np.sqrt(uu * uu + np.float32(dz * dz))
        radius = ao["r_desc"] + (ao["r_asc"] - ao["r_desc"]) * np.arctan2(np.float32(dz), uu) / np.float32(math.pi)
        t[bx, by][(rho - np.float32(ao["R"])) ** 2 + ww * ww <= radius * radius] = AORTA


def _tissue_slices(shape, spacing, p: dict) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(k, tissues)`` for every slice: ``tissues`` uint8 (X, Y) of TISSUE_CODES, reused between slices."""
    origin = ct_origin(shape, spacing)
    xs = (origin[0] + np.arange(shape[0]) * spacing[0]).astype(np.float32)
    ys = (origin[1] + np.arange(shape[1]) * spacing[1]).astype(np.float32)
    arch = _arch_box(p, xs, ys)
    bcx, bcy, a, b = p["body"]
    vx, vy, vrx, vry, canal_y, canal_r = p["spine"]
    period, phase, disc_h = p["discs"]
    t = np.empty(shape[:2], dtype=np.uint8, order="F")
    length = p["z_top"] - p["z_bot"]
    for k in range(shape[2]):
        z = origin[2] + k * spacing[2]
        up = (z - p["z_bot"]) / max(length, 1e-6)  # 0 at the lowest slice, 1 at the top
        t.fill(AIR)
        grow = 0.96 + 0.06 * up  # chest slightly wider than abdomen, abdomen with more subcutaneous fat
        fat = p["fat"] * (1.3 - 0.5 * up)
        _ellipse(t, xs, ys, bcx, bcy, a * grow, b * grow, FAT)
        _ellipse(t, xs, ys, bcx, bcy, a * grow - fat, b * grow - fat, SOFT)
        for lx, ly, lax, lay, base, apex, dome in p["lungs"]:
            if base < z < apex:
                mid = (base + apex) / 2  # full width below, narrowing to the apex above
                shrink = math.sqrt(1 - ((z - mid) / (apex - mid)) ** 2) if z > mid else 1.0
                _ellipse(t, xs, ys, lx, ly, lax * shrink, lay * shrink, LUNG)
                if z < base + dome:  # the diaphragm dome: lung only around it, deepest at the rim
                    inner = math.sqrt(1 - (z - base) / dome)
                    _ellipse(t, xs, ys, lx, ly, lax * inner, lay * inner, SOFT)
        lcx, lcy, lax, lay, lcz, lhz = p["liver"]
        if abs(z - lcz) < lhz:
            shrink = math.sqrt(1 - ((z - lcz) / lhz) ** 2)
            _ellipse(t, xs, ys, lcx, lcy, lax * shrink, lay * shrink, LIVER)
        _ellipse(t, xs, ys, vx, canal_y + canal_r + 0.6 * vry, 0.2 * vrx, 0.9 * vry, BONE)  # spinous process
        _ellipse(t, xs, ys, vx, canal_y, canal_r + 0.3 * vrx, canal_r + 0.3 * vry, BONE)  # posterior arch
        _ellipse(t, xs, ys, vx, canal_y, canal_r, canal_r, CANAL)
        in_disc = (z - phase) % period < disc_h
        bulge = 1.05 if in_disc else 1.0
        _ellipse(t, xs, ys, vx, vy, vrx * bulge, vry * bulge, DISC if in_disc else BONE)
        _aorta_slice(t, xs, ys, z, p, arch)
        yield k, t


def _draw(
    shape, spacing, seed, scanner: str = "default"
) -> tuple[tuple[int, int, int], tuple[float, float, float], dict, np.random.Generator]:
    if scanner not in CT_SCANNERS:
        raise ValueError(f"scanner must be one of {', '.join(CT_SCANNERS)}, got {scanner!r}")
    # the scanner's draws come from a stream of their own: the anatomy and the noise pattern stay the seed's
    anatomy_seq, noise_seq, scanner_seq = np.random.SeedSequence(_check_seed(seed)).spawn(3)
    rng = np.random.default_rng(anatomy_seq)
    shape, spacing = _geometry(shape, spacing, rng)
    p = _anatomy(rng, shape, spacing)
    profile, draw = CT_SCANNERS[scanner], np.random.default_rng(scanner_seq)
    if scanner != "default":
        p["levels"][AORTA] *= draw.uniform(*profile.aorta_scale)
        p["levels"][[SOFT, LIVER]] += draw.uniform(-profile.tissue_shift, profile.tissue_shift, 2)
        p["noise"] *= profile.noise_scale
    return shape, spacing, p, np.random.default_rng(noise_seq)


def make_ct_tissues(shape=None, spacing=None, seed=0) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The noise-free tissue map behind :func:`make_ct_case` for the same arguments.

    Returns:
        ``(tissues, levels, spacing)``: uint8 (X, Y, Z) of :data:`TISSUE_CODES`, float32 (9,) mean HU per code (the
        case's ``hu`` is ``levels[tissues]`` plus noise, rounded and clipped), and the spacing in mm.
    """
    shape, spacing, p, _ = _draw(shape, spacing, seed)
    tissues = np.empty(shape, dtype=np.uint8, order="F")
    for k, t in _tissue_slices(shape, spacing, p):
        tissues[:, :, k] = t
    return tissues, p["levels"], spacing


def make_ct_case(
    shape=None, spacing=None, seed=0, scanner: str = "default"
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """One synthetic contrast CT of chest and abdomen with its aorta label.

    Args:
        shape: (X, Y, Z) voxels, each at least 16; default 512 x 512 and enough slices for a 360-440 mm scan.
        spacing: (sx, sy, sz) in mm; default drawn from the seed: in-plane 0.7-1.0 mm, slices 1.5-3.0 mm, both
            multiples of 1/64 mm so that NIfTI and DICOM store them exactly.
        seed: non-negative integer; the same seed gives the same arrays.
        scanner: one of ``CT_SCANNERS``: how the intensities are drawn (the anatomy is the seed's either way).

    Returns:
        ``(hu, aorta, spacing)``: hu int16 (X, Y, Z) in Hounsfield units clipped to [-1024, 3071] with Gaussian noise
        (sigma 10-20 HU); aorta uint8 (X, Y, Z), 1 exactly on the contrast-filled lumen; spacing (sx, sy, sz) in mm.
        Both arrays are Fortran-ordered, so slices ``[:, :, k]`` are contiguous and ``array.T`` is the (Z, Y, X)
        C-order array SimpleITK expects, without a copy. Geometry: LPS, identity direction, :func:`ct_origin`.
    """
    shape, spacing, p, noise_rng = _draw(shape, spacing, seed, scanner)
    hu = np.empty(shape, dtype=np.int16, order="F")
    aorta = np.empty(shape, dtype=np.uint8, order="F")
    levels, sigma = p["levels"], np.float32(p["noise"])
    buf = np.empty(shape[:2], dtype=np.float32, order="F")
    for k, t in _tissue_slices(shape, spacing, p):
        noise = noise_rng.standard_normal(shape[:2], dtype=np.float32)
        np.multiply(noise, sigma, out=buf)
        buf += levels[t]
        np.rint(buf, out=buf)
        np.clip(buf, HU_MIN, HU_MAX, out=buf)
        hu[:, :, k] = buf
        aorta[:, :, k] = t == AORTA
    return hu, aorta, spacing


def _to_sitk(array: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    """SimpleITK image of an (X, Y, Z) array, centred LPS geometry with identity direction."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.T))  # SimpleITK reads arrays as (Z, Y, X)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(ct_origin(array.shape, spacing))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return image


def _ds(*values: float) -> str:
    """DICOM decimal string(s); 10 significant digits stay within DS's 16 characters and are exact for 1/128 mm."""
    return "\\".join(f"{v:.10g}" for v in values)


def _uid(seed: int, index: int, *parts: int) -> str:
    uid = UID_ROOT + ".".join(str(n) for n in (seed, index, *parts))
    if len(uid) >= 64:
        raise ValueError(f"seed {seed} and case {index} make a DICOM UID of {len(uid)} characters (limit 64)")
    return uid


def _write_dicom_series(image: sitk.Image, folder: Path, case_id: str, seed: int, index: int) -> Path:
    """Write one .dcm per slice into a hidden sibling folder, then move the whole folder onto ``folder``."""
    with keep_locale():  # GDCM's writer leaves the process in the "C" locale (ASCII text I/O) otherwise
        return _write_dicom_slices(image, folder, case_id, seed, index)


def _write_dicom_slices(image: sitk.Image, folder: Path, case_id: str, seed: int, index: int) -> Path:
    sz = image.GetSpacing()[2]
    depth = image.GetDepth()
    _uid(seed, index, 4, depth)  # the longest UID written: fail before writing anything
    series_tags = [
        ("0008|0008", "DERIVED\\SECONDARY\\AXIAL"), ("0008|0060", "CT"), ("0008|0070", "medseg3d"),
        ("0008|103e", "Synthetic CT phantom"), ("0010|0010", "SYNTH^CT"), ("0010|0020", case_id),
        ("0010|0030", FIXED_DATE), ("0010|0040", "O"), ("0020|0010", "1"), ("0020|0011", "1"),
        ("0020|000d", _uid(seed, index, 1)), ("0020|000e", _uid(seed, index, 2)), ("0020|0052", _uid(seed, index, 3)),
        ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0018|0050", _ds(sz)), ("0018|0088", _ds(sz)),
        ("0028|1050", "40"), ("0028|1051", "400"),  # soft tissue window
        ("0028|1052", "0"), ("0028|1053", "1"), ("0028|1054", "HU"),  # int16 pixels are HU as stored
    ]  # fmt: skip
    # Study, series, acquisition, content and instance creation date/time: GDCM stamps "now" where they are missing.
    series_tags += [(f"0008|002{d}", FIXED_DATE) for d in "0123"] + [(f"0008|003{d}", FIXED_TIME) for d in "0123"]
    series_tags += [("0008|0012", FIXED_DATE), ("0008|0013", FIXED_TIME)]
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0o700 would otherwise stay on the final folder
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()  # otherwise GDCM makes fresh (time-based) UIDs
        for k in range(depth):
            slice_ = image[:, :, k]
            for tag, value in series_tags:
                slice_.SetMetaData(tag, value)
            position = image.TransformIndexToPhysicalPoint((0, 0, k))
            slice_.SetMetaData("0008|0018", _uid(seed, index, 4, k + 1))
            slice_.SetMetaData("0020|0013", str(k + 1))
            slice_.SetMetaData("0020|0032", _ds(*position))  # a 2D slice has no z in its own origin
            slice_.SetMetaData("0020|1041", _ds(position[2]))
            writer.SetFileName(str(tmp / f"{k + 1:04d}.dcm"))
            writer.Execute(slice_)
        if folder.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside (never half-written) first.
            aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, aside)
            os.replace(tmp, folder)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_ct_cases(out_dir, cases=2, dicom=False, seed=0, shape=None, scanner: str = "default") -> list[Path]:
    """Write cases ``ct_000``, ``ct_001``, ... with their aorta labels.

    Images go to ``out_dir/imagesTr/ct_000.nii.gz`` or, with ``dicom=True``, to a DICOM series folder
    ``out_dir/imagesTr/ct_000/`` (one ``0001.dcm``... per slice, CT, int16 HU with slope 1 / intercept 0,
    deterministic UIDs under :data:`UID_ROOT`); labels always to ``out_dir/labelsTr/ct_000.nii.gz`` (uint8) with
    the same geometry. The image of the other format left by an earlier run for the same case is removed. Case
    ``i`` uses the seed drawn from ``(seed, i)``, so different seeds give unrelated datasets.

    Args:
        out_dir: dataset root.
        cases: number of cases, at least 1.
        dicom: write images as DICOM series instead of NIfTI.
        seed: non-negative integer; the same arguments give byte-identical files.
        shape: (X, Y, Z) of every case, default as in :func:`make_ct_case`.
        scanner: one of ``CT_SCANNERS`` (same anatomy, other intensities: the robustness check's held-out cases).

    Returns:
        The image paths written (files for NIfTI, folders for DICOM), in case order.
    """
    try:
        n_cases = operator.index(cases)
    except TypeError:
        raise ValueError(f"cases must be an integer >= 1, got {cases!r}") from None
    if n_cases < 1:
        raise ValueError(f"cases must be an integer >= 1, got {cases}")
    seed = _check_seed(seed)
    if shape is not None:
        shape = _check_shape(shape)
    if scanner not in CT_SCANNERS:
        raise ValueError(f"scanner must be one of {', '.join(CT_SCANNERS)}, got {scanner!r}")
    out = Path(out_dir)
    images: list[Path] = []
    for index in range(n_cases):
        case_id = f"ct_{index:03d}"
        case_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
        hu, aorta, spacing = make_ct_case(shape=shape, seed=case_seed, scanner=scanner)
        image = _to_sitk(hu, spacing)
        label = _to_sitk(aorta, spacing)
        nifti, folder = out / "imagesTr" / f"{case_id}.nii.gz", out / "imagesTr" / case_id
        if dicom:
            images.append(_write_dicom_series(image, folder, case_id, seed, index))
            nifti.unlink(missing_ok=True)
        else:
            with atomic_path(nifti) as tmp:
                sitk.WriteImage(image, str(tmp))
            images.append(nifti)
            if folder.is_dir():
                shutil.rmtree(folder)
        with atomic_path(out / "labelsTr" / f"{case_id}.nii.gz") as tmp:
            sitk.WriteImage(label, str(tmp))
    return images
