"""Conical FSC and the anisotropy diagnostics built on it.

The conical flavour of the 3D FSC (Tan et al. 2017, the "3DFSC" program): for a
direction u and a cone half-angle θ, the cone FSC of shell s is

    Re Σ F1 F2* / sqrt(Σ|F1|² Σ|F2|²)

over the Fourier voxels k of shell s = round(|k|) whose direction lies within θ of +u
or −u, i.e. ``|k·u| >= |k| cos θ`` (the maps are multiplied by the mask first). The
voxels are those of the fftshift-ed (n, n, n) grid, k = index − n//2; the zero
frequency belongs to every cone. From the cone FSCs of a Fibonacci set of directions
this module derives the directional resolution, the 3DFSC volume, its sphericity and a
cFAR-style area ratio (:func:`analyse_anisotropy`).

Speed: the sums run over the half space of a real FFT in a numba kernel; for each
voxel only the directions listed for its cell of a coarse (polar, azimuth) grid are
tested (lists built with a safety margin, so the result is exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.fft
from numba import njit, prange
from scipy import ndimage

from ._checks import check_cone_angle, check_contrast, check_mask_array
from ._compat import renamed_parameter
from .errors import (
    InvalidValueError,
    MapMismatchError,
    MapShapeError,
    NonFiniteMapError,
)
from .fsc_shells import FSCResult, fsc
from .progress import Progress

__all__ = [
    "SPHERICITY_THRESHOLD",
    "AnisotropyReport",
    "analyse_anisotropy",
    "area_ratio",
    "conical_fsc",
    "conical_fsc_volume",
    "direction_to_relion",
    "directional_resolution",
    "fibonacci_directions",
    "sphericity",
]

#: Level at which the 3DFSC volume is binarised for the sphericity (as the 3DFSC program).
SPHERICITY_THRESHOLD = 0.5

# Lookup grid over the half sphere: polar angle in [0, 90°], azimuth in [-180°, 180°).
_N_ALPHA = 45
_N_PHI = 180
_MARGIN = 1e-9  # radians, covers rounding in the cell assignment


# --------------------------------------------------------------------------- directions
def fibonacci_directions(n: int = 500) -> np.ndarray:
    """Nearly uniform unit vectors on the upper half sphere (z > 0), a Fibonacci lattice.

    Friedel symmetry makes a direction and its opposite equivalent, so the half sphere
    covers every direction once. Point i has ``z = 1 − (i + 0.5)/n`` (equal area per
    point) and azimuth ``i`` times the golden angle.

    Parameters
    ----------
    n : number of directions (≥ 1).

    Returns
    -------
    (n, 3) float64 array of unit vectors as (x, y, z).
    """
    if int(n) != n or n < 1:
        raise InvalidValueError(f"the number of directions must be an integer ≥ 1, got {n!r}")
    n = int(n)
    i = np.arange(n, dtype=np.float64)
    z = 1.0 - (i + 0.5) / n
    rho = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([rho * np.cos(phi), rho * np.sin(phi), z], axis=1)


def direction_to_relion(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RELION angles of viewing directions: tilt = acos(z), rot = atan2(y, x), in degrees.

    Parameters
    ----------
    directions : (m, 3) or (3,) unit vectors (x, y, z).

    Returns
    -------
    tilt, rot : arrays of shape (m,) (or scalars' 0-d arrays), degrees; tilt in [0, 180],
    rot in (−180, 180].
    """
    d = np.asarray(directions, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    tilt = np.degrees(np.arccos(np.clip(d[..., 2], -1.0, 1.0)))
    rot = np.degrees(np.arctan2(d[..., 1], d[..., 0]))
    return tilt, rot


def _check_directions(directions: np.ndarray | None) -> np.ndarray:
    if directions is None:
        return fibonacci_directions(500)
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim == 1 and d.size == 3:
        d = d[None, :]
    if d.ndim != 2 or d.shape[1] != 3 or d.shape[0] == 0:
        raise InvalidValueError(f"directions must be an (m, 3) array of (x, y, z), got {d.shape}")
    norm = np.linalg.norm(d, axis=1)
    if not np.all(np.isfinite(norm)) or np.any(norm == 0):
        raise InvalidValueError("directions must be finite, non-zero vectors")
    return np.ascontiguousarray(d / norm[:, None])


def _lookup_grid(directions: np.ndarray, cone_angle: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Candidate lists per (polar, azimuth) cell of the half sphere, as CSR arrays.

    With ``cone_angle`` (radians): every direction u with ±u within ``cone_angle`` of some
    point of the cell. Without: every direction that can be the nearest (±u) to a point of
    the cell. Lists are in increasing direction index.
    """
    d_alpha = 0.5 * math.pi / _N_ALPHA
    d_phi = 2.0 * math.pi / _N_PHI
    alpha = (np.arange(_N_ALPHA) + 0.5) * d_alpha
    phi = -math.pi + (np.arange(_N_PHI) + 0.5) * d_phi
    a, p = np.meshgrid(alpha, phi, indexing="ij")
    centres = np.stack([np.sin(a) * np.cos(p), np.sin(a) * np.sin(p), np.cos(a)], axis=-1).reshape(
        -1, 3
    )
    # a point of the cell is at most this far (great-circle) from the cell's centre
    alpha_hi = (np.arange(_N_ALPHA) + 1.0) * d_alpha
    radius = 0.5 * d_alpha + np.sin(np.minimum(alpha_hi, 0.5 * math.pi)) * 0.5 * d_phi
    radius = np.repeat(radius, _N_PHI)[:, None]
    ang = np.arccos(np.clip(np.abs(centres @ directions.T), 0.0, 1.0))
    if cone_angle is not None:
        keep = ang <= cone_angle + radius + _MARGIN
    else:
        keep = ang <= ang.min(axis=1, keepdims=True) + 2.0 * radius + _MARGIN
    counts = keep.sum(axis=1)
    start = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    index = np.nonzero(keep)[1].astype(np.int64)
    return start, index


@njit(cache=True, nogil=True)
def _cell_of(gx: float, gy: float, gz: float, r: float) -> int:
    """Lookup-grid cell of the direction ±(gx, gy, gz)/r (flipped to z ≥ 0)."""
    dx = gx / r
    dy = gy / r
    dz = gz / r
    if dz < 0.0:
        dx = -dx
        dy = -dy
        dz = -dz
    if dz > 1.0:
        dz = 1.0
    alpha = math.acos(dz)
    phi = math.atan2(dy, dx)
    ia = int(alpha / (0.5 * math.pi / _N_ALPHA))
    if ia >= _N_ALPHA:
        ia = _N_ALPHA - 1
    ip = int((phi + math.pi) / (2.0 * math.pi / _N_PHI))
    if ip >= _N_PHI:
        ip = _N_PHI - 1
    if ip < 0:
        ip = 0
    return ia * _N_PHI + ip


@njit(cache=True, nogil=True)
def _add_to_cones(acc, s, gx, gy, gz, r, w, cr, p1, p2, dirs, cos_t, start, index):
    """Add one Fourier voxel (grid vector g, weight w) to every cone that contains it."""
    cell = _cell_of(gx, gy, gz, r)
    for m in range(start[cell], start[cell + 1]):
        j = index[m]
        c = abs(gx * dirs[j, 0] + gy * dirs[j, 1] + gz * dirs[j, 2]) / r
        if c >= cos_t:
            acc[s, j, 0] += w * cr
            acc[s, j, 1] += w * p1
            acc[s, j, 2] += w * p2
            acc[s, j, 3] += w


@njit(cache=True, nogil=True, parallel=True)
def _cone_sums(f1, f2, n, dirs, cos_t, start, index, n_threads):
    """Cone sums (n_shells, n_dir, 4): Re F1F2*, |F1|², |F2|², voxel count (no DC).

    ``f1``, ``f2`` are ``rfftn`` outputs (n, n, n//2+1). Each half-space voxel stands for
    itself and its Friedel mate on the full fftshift-ed grid; the mate's grid vector is
    −k except on the −n/2 planes of an even box, where it wraps.
    """
    half = n // 2
    n_shells = half + 1
    n_dir = dirs.shape[0]
    even = n % 2 == 0
    limit2 = (half + 0.5) ** 2
    nxr = f1.shape[2]
    acc = np.zeros((n_threads, n_shells, n_dir, 4))
    for t in prange(n_threads):
        a = acc[t]
        for iz in range(t, n, n_threads):
            kz = iz if iz <= (n - 1) // 2 else iz - n
            for iy in range(n):
                ky = iy if iy <= (n - 1) // 2 else iy - n
                ryz = kz * kz + ky * ky
                if ryz > limit2:
                    continue
                for ix in range(nxr):
                    r2 = ryz + ix * ix
                    if r2 == 0:
                        continue
                    r = math.sqrt(r2)
                    s = int(r + 0.5)
                    if s > half:
                        break
                    u = f1[iz, iy, ix]
                    v = f2[iz, iy, ix]
                    cr = u.real * v.real + u.imag * v.imag
                    p1 = u.real * u.real + u.imag * u.imag
                    p2 = v.real * v.real + v.imag * v.imag
                    if ix == 0:
                        _add_to_cones(
                            a, s, 0, ky, kz, r, 1.0, cr, p1, p2, dirs, cos_t, start, index
                        )
                    elif even and ix == half:
                        # the rfft column n/2 is the grid column −n/2
                        _add_to_cones(
                            a, s, -half, ky, kz, r, 1.0, cr, p1, p2, dirs, cos_t, start, index
                        )
                    elif even and (kz == -half or ky == -half):
                        _add_to_cones(
                            a, s, ix, ky, kz, r, 1.0, cr, p1, p2, dirs, cos_t, start, index
                        )
                        my = -ky if ky != -half else -half
                        mz = -kz if kz != -half else -half
                        _add_to_cones(
                            a, s, -ix, my, mz, r, 1.0, cr, p1, p2, dirs, cos_t, start, index
                        )
                    else:
                        _add_to_cones(
                            a, s, ix, ky, kz, r, 2.0, cr, p1, p2, dirs, cos_t, start, index
                        )
    total = np.zeros((n_shells, n_dir, 4))
    for t in range(n_threads):
        total += acc[t]
    return total


# --------------------------------------------------------------------------- conical FSC
def _as_cubic_pair(
    half1: np.ndarray, half2: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(half1)
    b = np.asarray(half2)
    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise MapShapeError(f"half map 1 must be a cubic 3D array (n, n, n), got shape {a.shape}")
    if b.shape != a.shape:
        raise MapMismatchError(
            f"the half maps must have the same shape, got {a.shape} and {b.shape}"
        )
    if a.shape[0] < 2:
        raise MapShapeError(f"the box must be at least 2 voxels, got {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise NonFiniteMapError("the half maps contain NaN or infinite values")
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    if mask is not None:
        m = check_mask_array(mask, a.shape)
        a *= m
        b *= m
    return a, b


def _cos_cone(theta: float) -> float:
    """cos θ, exactly 0 for a 90° cone (which then holds every voxel)."""
    return 0.0 if theta >= 0.5 * math.pi else math.cos(theta)


def _cone_fsc_from_sums(total: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cross, p1, p2, count = (total[..., i].T for i in range(4))
    denom = np.sqrt(p1 * p2)
    out = np.zeros_like(cross)
    np.divide(cross, denom, out=out, where=denom > 0)
    out[count == 0] = np.nan
    return out, np.rint(count).astype(np.int64)


@renamed_parameter("cone_angle_deg", "cone_angle")
def conical_fsc(
    half1: np.ndarray,
    half2: np.ndarray,
    mask: np.ndarray | None = None,
    directions: np.ndarray | None = None,
    cone_angle: float = 20.0,
) -> np.ndarray:
    """Cone FSC of every direction and shell.

    Parameters
    ----------
    half1, half2 : (n, n, n) half maps.
    mask : optional (n, n, n) mask; both maps are multiplied by it first.
    directions : (m, 3) vectors (x, y, z), normalised here; default
        ``fibonacci_directions(500)``.
    cone_angle : cone half-angle θ in degrees, (0, 90]; a 90° cone holds every
        voxel (its curve is the global FSC).

    Returns
    -------
    (m, n//2 + 1) float64: Re Σ F1F2* / sqrt(Σ|F1|²Σ|F2|²) over the voxels of shell
    s = round(|k|) within θ of ±u. NaN where a cone holds no voxel of the shell (narrow
    cones at the lowest shells); 0 where it holds voxels without power.
    """
    a, b = _as_cubic_pair(half1, half2, mask)
    dirs = _check_directions(directions)
    theta = check_cone_angle(cone_angle)
    return _conical_fsc(a, b, dirs, theta)[0]


def _conical_fsc(
    a: np.ndarray, b: np.ndarray, dirs: np.ndarray, theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """Cone FSC (m, n//2+1) with NaN for empty cones, and the voxel count of each cone."""
    n = a.shape[0]
    f1 = scipy.fft.rfftn(a, workers=-1)
    f2 = scipy.fft.rfftn(b, workers=-1)
    start, index = _lookup_grid(dirs, theta)
    total = _cone_sums(
        f1, f2, n, dirs, _cos_cone(theta), start, index, int(numba.get_num_threads())
    )
    # the zero frequency lies in every cone
    u, v = f1[0, 0, 0], f2[0, 0, 0]
    total[0, :, 0] += u.real * v.real + u.imag * v.imag
    total[0, :, 1] += abs(u) ** 2
    total[0, :, 2] += abs(v) ** 2
    total[0, :, 3] += 1.0
    return _cone_fsc_from_sums(total)


# --------------------------------------------------------------------------- derived figures
def directional_resolution(
    cone_fsc: np.ndarray, threshold: float, voxel_size: float, box: int
) -> np.ndarray:
    """Resolution (Å) per direction: first shell s ≥ 1 where the cone FSC < ``threshold``.

    The resolution of shell s is ``box · voxel_size / s``; a direction whose curve never
    falls below the threshold gets Nyquist, ``2 · voxel_size`` (as :func:`spisonet.fsc_shells.fsc`).
    NaN entries (empty cones) never count as a crossing.

    Parameters
    ----------
    cone_fsc : (m, n_shells) cone FSC curves.
    threshold : e.g. 0.143 or 0.5.
    voxel_size : Å per voxel.
    box : edge length n of the box in voxels.

    Returns
    -------
    (m,) float64, Å.
    """
    c = np.asarray(cone_fsc, dtype=np.float64)
    below = np.zeros(c.shape, dtype=bool)
    np.less(c, threshold, out=below, where=~np.isnan(c))
    below[:, 0] = False
    has = below.any(axis=1)
    first = np.argmax(below, axis=1)
    res = np.full(c.shape[0], 2.0 * voxel_size)
    res[has] = box * voxel_size / first[has]
    return res


def _fill_sparse(
    cone_fsc: np.ndarray, counts: np.ndarray, global_curve: np.ndarray, min_voxels: int
) -> np.ndarray:
    """Replace empty cones and cones of fewer than ``min_voxels`` voxels by the global FSC."""
    sparse = np.isnan(cone_fsc) | (counts < min_voxels)
    return np.where(sparse, global_curve[None, :], cone_fsc)


def _areas(curves: np.ndarray) -> np.ndarray:
    """Area under max(curve, 0) over shells 0 … n//2 (trapezoid rule, unit spacing)."""
    y = np.clip(curves, 0.0, None)
    return 0.5 * (y[:, 1:] + y[:, :-1]).sum(axis=1)


def area_ratio(cone_fsc: np.ndarray) -> float:
    """cFAR-style conical-FSC area ratio: smallest area over largest, up to Nyquist.

    The area of a direction is the integral of max(cone FSC, 0) over spatial frequency
    from 0 to Nyquist (trapezoid rule on the shells); the ratio is the worst direction's
    area over the best's, in [0, 1] (1 = isotropic; below ~0.5 suggests preferred
    orientation). NaN entries must have been filled (e.g. with the global FSC).

    Parameters
    ----------
    cone_fsc : (m, n_shells) cone FSC curves without NaN.
    """
    areas = _areas(np.asarray(cone_fsc, dtype=np.float64))
    if np.isnan(areas).any():
        raise InvalidValueError("area_ratio needs cone FSC curves without NaN (fill them first)")
    top = areas.max()
    return float(areas.min() / top) if top > 0 else 0.0


@njit(cache=True, nogil=True, parallel=True)
def _volume_kernel(values, n, dirs, start, index, out):
    """Every voxel takes values[nearest ±direction, shell]; 0 beyond shell n//2."""
    half = n // 2
    for iz in prange(n):
        kz = iz - half
        for iy in range(n):
            ky = iy - half
            for ix in range(n):
                kx = ix - half
                r2 = kx * kx + ky * ky + kz * kz
                if r2 == 0:
                    out[iz, iy, ix] = values[0, 0]
                    continue
                r = math.sqrt(r2)
                s = int(r + 0.5)
                if s > half:
                    out[iz, iy, ix] = 0.0
                    continue
                cell = _cell_of(kx, ky, kz, r)
                best = -1
                best_c = -1.0
                for m in range(start[cell], start[cell + 1]):
                    j = index[m]
                    c = abs(kx * dirs[j, 0] + ky * dirs[j, 1] + kz * dirs[j, 2]) / r
                    if c > best_c:
                        best_c = c
                        best = j
                out[iz, iy, ix] = values[best, s]


def conical_fsc_volume(cone_fsc: np.ndarray, directions: np.ndarray, box: int) -> np.ndarray:
    """The 3DFSC volume: every Fourier voxel takes the cone FSC of its direction and shell.

    A voxel k (fftshift-ed grid, k = index − n//2) of shell s = round(|k|) ≤ n//2 takes
    ``cone_fsc[j, s]`` with j the direction nearest to ±k (largest |k̂·u|, lowest index on
    ties); the zero frequency takes ``cone_fsc[0, 0]``; voxels beyond shell n//2 are 0.

    Parameters
    ----------
    cone_fsc : (m, n//2 + 1) cone FSC curves, NaN-free.
    directions : (m, 3) unit vectors (x, y, z).
    box : n.

    Returns
    -------
    (n, n, n) float32, fftshift-ed, indexed [z, y, x].
    """
    dirs = _check_directions(directions)
    values = np.ascontiguousarray(cone_fsc, dtype=np.float64)
    if values.shape != (dirs.shape[0], box // 2 + 1):
        raise InvalidValueError(
            f"cone_fsc must have shape ({dirs.shape[0]}, {box // 2 + 1}) for {dirs.shape[0]} "
            f"directions and a {box}-voxel box, got {values.shape}"
        )
    start, index = _lookup_grid(dirs, None)
    out = np.empty((box, box, box), dtype=np.float32)
    _volume_kernel(values, box, dirs, start, index, out)
    return out


def sphericity(
    volume: np.ndarray, threshold: float = SPHERICITY_THRESHOLD, max_shell: float | None = None
) -> float:
    """Sphericity of a 3DFSC volume, as the 3DFSC program defines it.

    1. binarise: voxels with value ≥ ``threshold`` (0.5 by default), limited to
       |k| ≤ ``max_shell`` (the shell of the global 0.143 resolution) when given, keeping
       only the region connected (faces) to the centre voxel;
    2. blur with a Gaussian of σ = 1 voxel;
    3. marching cubes at level 0.5 gives the surface area A (voxel² units); V = number of
       blurred voxels ≥ 0.5;
    4. sphericity = π^(1/3) (6V)^(2/3) / A (1 for a sphere, less for any other shape).

    Parameters
    ----------
    volume : (n, n, n) fftshift-ed 3DFSC volume (centre at n//2).
    threshold : binarisation level.
    max_shell : optional radius limit in voxels of frequency.

    Returns
    -------
    float; NaN when the centre voxel is below the threshold (no region).
    """
    from skimage.measure import marching_cubes, mesh_surface_area

    v = np.asarray(volume)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise MapShapeError(f"the 3DFSC volume must be cubic (n, n, n), got shape {v.shape}")
    n = v.shape[0]
    c = n // 2
    binary = v >= threshold
    if max_shell is not None:
        k = np.arange(n) - c
        r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
        binary &= r2 <= max_shell**2
    if not binary[c, c, c]:
        return float("nan")
    labels, _ = ndimage.label(binary)
    region = labels == labels[c, c, c]
    # crop to the region with room for the blur and a closed surface
    pad = 5
    idx = np.nonzero(region)
    lo = [int(i.min()) for i in idx]
    hi = [int(i.max()) + 1 for i in idx]
    crop = region[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    crop = np.pad(crop.astype(np.float32), pad)
    blurred = ndimage.gaussian_filter(crop, sigma=1.0, mode="constant")
    n_voxels = int(np.count_nonzero(blurred >= 0.5))
    if n_voxels == 0:
        return float("nan")
    verts, faces, _, _ = marching_cubes(blurred, level=0.5)
    area = float(mesh_surface_area(verts, faces))
    return float(math.pi ** (1.0 / 3.0) * (6.0 * n_voxels) ** (2.0 / 3.0) / area)


# --------------------------------------------------------------------------- report
def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class AnisotropyReport:
    """Anisotropy diagnostics of a pair of half maps (see :func:`analyse_anisotropy`).

    Resolutions are in Å, frequencies in 1/Å, angles in degrees. Arrays:
    ``directions`` (m, 3) unit vectors (x, y, z) on the upper half sphere;
    ``cone_fsc`` (m, n//2+1) cone FSC curves, where cones with fewer than
    ``min_cone_voxels`` voxels (lowest shells only) hold the global FSC of the shell;
    ``resolution_0143``/``resolution_05`` (m,) directional resolutions; ``fsc3d`` the
    (n, n, n) float32 fftshift-ed 3DFSC volume.
    """

    voxel_size: float
    box: int
    cone_angle: float
    min_cone_voxels: int
    global_fsc: FSCResult = field(repr=False)
    directions: np.ndarray = field(repr=False)
    cone_fsc: np.ndarray = field(repr=False)
    resolution_0143: np.ndarray = field(repr=False)
    resolution_05: np.ndarray = field(repr=False)
    worst_index: int
    best_index: int
    sphericity: float
    sphericity_threshold: float
    area_ratio: float
    fsc3d: np.ndarray = field(repr=False)
    version: str

    @property
    def n_directions(self) -> int:
        """Number of directions m."""
        return int(self.directions.shape[0])

    @property
    def frequency(self) -> np.ndarray:
        """(n//2+1,) spatial frequency of the shells, 1/Å."""
        return self.global_fsc.frequency

    @property
    def worst_direction(self) -> np.ndarray:
        """(3,) unit vector (x, y, z) of the worst direction (see :func:`analyse_anisotropy`)."""
        return self.directions[self.worst_index]

    @property
    def best_direction(self) -> np.ndarray:
        """(3,) unit vector (x, y, z) of the best direction (see :func:`analyse_anisotropy`)."""
        return self.directions[self.best_index]

    @property
    def directions_distinguishable(self) -> bool:
        """False when the sampling cannot tell directions apart.

        Directional resolutions sit on Fourier shells (``box · voxel_size / s``). When the
        0.143 resolutions of all directions lie within one shell of each other (e.g. every
        direction at Nyquist), their differences are below what the sampling resolves:
        there is then no meaningful worst or best direction to name.
        """
        shells = self.box * self.voxel_size / np.asarray(self.resolution_0143, dtype=np.float64)
        return bool(shells.max() - shells.min() > 1.0 + 1e-6)

    def distinguishability_note(self) -> str:
        """One sentence for reports when :attr:`directions_distinguishable` is False."""
        st = self.stats("0.143")
        where = (
            "every direction is at Nyquist"
            if st["max"] <= 2.0 * self.voxel_size * (1 + 1e-6)
            else "every direction lies within one Fourier shell"
        )
        return (
            f"cannot tell directions apart: {where} ({st['min']:.2f}–{st['max']:.2f} Å "
            "at 0.143), below what the sampling resolves"
        )

    def stats(self, threshold: str = "0.143") -> dict[str, float]:
        """min / max / mean / std (Å) of the directional resolution at "0.143" or "0.5"."""
        res = {"0.143": self.resolution_0143, "0.5": self.resolution_05}[threshold]
        return {
            "min": float(res.min()),
            "max": float(res.max()),
            "mean": float(res.mean()),
            "std": float(res.std()),
        }

    def to_dict(self) -> dict:
        """JSON-ready summary: every figure, resolutions in Å, angles in degrees.

        Non-finite numbers (e.g. an undefined sphericity) become ``None``.
        """

        def direction(i: int) -> dict:
            tilt, rot = direction_to_relion(self.directions[i])
            return {
                "vector_xyz": [float(x) for x in self.directions[i]],
                "tilt_deg": float(tilt),
                "rot_deg": float(rot),
                "resolution_0143_A": float(self.resolution_0143[i]),
                "resolution_05_A": float(self.resolution_05[i]),
            }

        tilt, rot = direction_to_relion(self.directions)
        filled = self.cone_fsc
        return {
            "program": "spisonet",
            "version": self.version,
            "voxel_size_A": float(self.voxel_size),
            "box": int(self.box),
            "cone_angle_deg": float(self.cone_angle),
            "n_directions": self.n_directions,
            "min_cone_voxels": int(self.min_cone_voxels),
            "global_resolution_0143_A": float(self.global_fsc.resolution_0143),
            "global_resolution_05_A": float(self.global_fsc.resolution_05),
            "directional_resolution_0143_A": self.stats("0.143"),
            "directional_resolution_05_A": self.stats("0.5"),
            # None when the sampling cannot tell directions apart (see the note)
            "directions_distinguishable": self.directions_distinguishable,
            "directions_note": None
            if self.directions_distinguishable
            else self.distinguishability_note(),
            "worst_direction": direction(self.worst_index)
            if self.directions_distinguishable
            else None,
            "best_direction": direction(self.best_index)
            if self.directions_distinguishable
            else None,
            "sphericity": _finite(self.sphericity),
            "sphericity_threshold": float(self.sphericity_threshold),
            "area_ratio": _finite(self.area_ratio),
            "curves": {
                "frequency_per_A": [float(x) for x in self.frequency],
                "global_fsc": [float(x) for x in self.global_fsc.fsc],
                "cone_fsc_mean": [float(x) for x in filled.mean(axis=0)],
                "cone_fsc_std": [float(x) for x in filled.std(axis=0)],
                "cone_fsc_min": [float(x) for x in filled.min(axis=0)],
                "cone_fsc_max": [float(x) for x in filled.max(axis=0)],
            },
            "directions": {
                "tilt_deg": [round(float(x), 3) for x in tilt],
                "rot_deg": [round(float(x), 3) for x in rot],
                "resolution_0143_A": [float(x) for x in self.resolution_0143],
                "resolution_05_A": [float(x) for x in self.resolution_05],
            },
        }


def _smoothed_areas(cone_fsc: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Area under each cone FSC, smoothed over the sphere with the kernel (u·v)⁴.

    The kernel (half-width at half-maximum ≈ 33°, even in u·v so that ±v count alike)
    averages the noise of neighbouring cones, so that the extreme of the smoothed area
    sits at the centre of the worst (or best) region rather than on a noisy outlier.
    """
    areas = _areas(cone_fsc)
    kernel = (dirs @ dirs.T) ** 4
    return (kernel @ areas) / kernel.sum(axis=1)


def _rank(smoothed_areas: np.ndarray) -> tuple[int, int]:
    """Worst (smallest neighbourhood area) and best (largest) direction indices."""
    return int(np.argmin(smoothed_areas)), int(np.argmax(smoothed_areas))


@renamed_parameter("cone_angle_deg", "cone_angle")
def analyse_anisotropy(
    half1: np.ndarray,
    half2: np.ndarray,
    voxel_size: float,
    mask: np.ndarray | None = None,
    n_directions: int = 500,
    cone_angle: float = 20.0,
    progress: Progress | None = None,
    min_cone_voxels: int = 10,
) -> AnisotropyReport:
    """Conical FSC diagnostics of two half maps.

    Computes the global FSC, the cone FSC of ``n_directions`` Fibonacci directions
    (upper half sphere), the directional resolution at 0.143 and 0.5, the worst and best
    directions, the 3DFSC volume, its sphericity (binarised at
    :data:`SPHERICITY_THRESHOLD` = 0.5, limited to the global 0.143 resolution) and the
    area ratio.

    The worst direction is the centre of the worst region: the direction whose cone
    FSC area (max(FSC, 0) integrated to Nyquist), smoothed over the sphere with the
    kernel (u·v)⁴ (half-width ≈ 33°), is smallest; the best has the largest. (Picking
    the single coarsest directional resolution instead lets noise choose among the
    many directions that share the same shell, and often an isolated noisy cone.) The
    resolution reported for the worst (best) direction is that direction's own
    directional resolution, which need not be the coarsest (finest) single-cone value;
    reports label those as the single-cone range. When every direction lies within one
    Fourier shell, :attr:`AnisotropyReport.directions_distinguishable` is False and
    reports name no worst or best direction.

    Parameters
    ----------
    half1, half2 : (n, n, n) half maps.
    voxel_size : Å per voxel (> 0).
    mask : optional (n, n, n) mask applied to both maps.
    n_directions : number of directions (≥ 1).
    cone_angle : cone half-angle in degrees.
    progress : optional :class:`spisonet.progress.Progress`; called as
        ``(stage, percent done, 100)`` as the steps go.
    min_cone_voxels : a cone holding fewer Fourier voxels of a shell than this (only
        at the lowest shells: a 20° cone holds ≈ 0.76 s² voxels of shell s) takes the
        global FSC of the shell instead, so that a correlation of one or two voxels
        cannot set a direction's resolution. 1 keeps every non-empty cone.

    Returns
    -------
    AnisotropyReport
    """
    if not (np.isfinite(voxel_size) and voxel_size > 0):
        raise InvalidValueError(
            f"the voxel size must be a positive number of Å, got {voxel_size!r}"
        )
    if int(min_cone_voxels) != min_cone_voxels or min_cone_voxels < 1:
        raise InvalidValueError(f"min_cone_voxels must be an integer ≥ 1, got {min_cone_voxels!r}")

    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, round(100 * fraction), 100)

    a, b = _as_cubic_pair(half1, half2, mask)
    # a flat map (inside the mask) would give confident, meaningless figures
    check_contrast(half1, "half map 1", mask)
    check_contrast(half2, "half map 2", mask)
    dirs = fibonacci_directions(n_directions)
    theta = check_cone_angle(cone_angle)
    n = a.shape[0]
    report("global FSC", 0.0)
    glob = fsc(a, b, voxel_size)
    report("conical FSC", 0.1)
    raw, counts = _conical_fsc(a, b, dirs, theta)
    del a, b
    cone = _fill_sparse(raw, counts, glob.fsc, min_cone_voxels)
    report("directional resolution", 0.5)
    res0143 = directional_resolution(cone, 0.143, voxel_size, n)
    res05 = directional_resolution(cone, 0.5, voxel_size, n)
    worst, best = _rank(_smoothed_areas(cone, dirs))
    report("3DFSC volume", 0.6)
    volume = conical_fsc_volume(cone, dirs, n)
    report("sphericity", 0.8)
    max_shell = n * voxel_size / glob.resolution_0143
    sph = sphericity(volume, SPHERICITY_THRESHOLD, max_shell)
    from ._version import __version__

    rep = AnisotropyReport(
        voxel_size=float(voxel_size),
        box=int(n),
        cone_angle=float(cone_angle),
        min_cone_voxels=int(min_cone_voxels),
        global_fsc=glob,
        directions=dirs,
        cone_fsc=cone,
        resolution_0143=res0143,
        resolution_05=res05,
        worst_index=worst,
        best_index=best,
        sphericity=sph,
        sphericity_threshold=SPHERICITY_THRESHOLD,
        area_ratio=area_ratio(cone),
        fsc3d=volume,
        version=__version__,
    )
    report("done", 1.0)
    return rep
