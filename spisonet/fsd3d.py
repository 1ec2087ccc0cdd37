"""Fourier sampling density (FSD3D) from particle orientations.

Every particle image fills, by the projection-slice theorem, the central plane of the
3D Fourier transform perpendicular to its projection direction. RELION's direction for
Euler angles (rot, tilt, psi) in degrees is

    d = (cos rot · sin tilt, sin rot · sin tilt, cos tilt)      (x, y, z; psi plays no part)

The sampling density of a Fourier voxel k (integer vector (kx, ky, kz), stored at array
index [kz + n//2, ky + n//2, kx + n//2], fftshift-ed) is the number of planes passing
within ``plane_half_width`` voxels of it:

    raw(k) = Σ_views Σ_{R ∈ G} [ |k · R d| ≤ plane_half_width ]

with G the point group (``sym``): every particle counts once per symmetry copy. The
normalised map divides each shell ``round(|k|)`` by its maximum (so every shell peaks
at 1), sets shells coarser than ``low_res`` to 1 and shells finer than ``high_res`` to 0.

Differences from the public spIsoNet ``fsd3d``: every particle is used (not a random
subset of 10 000), the map is computed at the requested box (not on a 64³ grid and
resized), the symmetry is expanded with our own point-group matrices (no RELION), and
shells are normalised to a maximum of exactly 1 (the public tool scales to 1.1 and
clips at 1).

Speed: the planes are rasterised as thin slabs (a few voxels per column, O(n²) per
plane) by a parallel numba kernel. For many views the directions are first
histogrammed on a fine, nearly equal-area grid of the half sphere (a plane and its
opposite direction are the same plane); the bin step (default ``2·plane_half_width/n``
rad, at most 1°) moves a plane by at most ~0.7·``plane_half_width`` voxels at Nyquist,
and the cost is then bounded by the number of occupied bins, whatever the number of
particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .errors import InvalidValueError
from .symmetry import group_order, point_group

__all__ = [
    "DirectionHistogram",
    "direction_histogram",
    "directions_from_angles",
    "fourier_shell_density",
    "scf_curve",
]

#: Up to this many (particle × symmetry) views the planes are rasterised one by one.
EXACT_VIEW_LIMIT = 4096


# --------------------------------------------------------------------------- directions
def _as_angles(angles_deg: np.ndarray) -> np.ndarray:
    a = np.asarray(angles_deg, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] not in (2, 3) or a.shape[0] == 0:
        raise InvalidValueError(
            "angles must be an (N, 3) array of rot, tilt, psi in degrees (or (N, 2) rot, "
            f"tilt) with N ≥ 1, got shape {a.shape}"
        )
    if not np.all(np.isfinite(a)):
        raise InvalidValueError("angles contain NaN or infinite values; expected finite degrees")
    return a


def directions_from_angles(angles_deg: np.ndarray) -> np.ndarray:
    """RELION projection directions (N, 3) (x, y, z unit vectors) of Euler angles.

    ``angles_deg`` is (N, 3) rot, tilt, psi or (N, 2) rot, tilt in degrees;
    d = (cos rot sin tilt, sin rot sin tilt, cos tilt).
    """
    a = _as_angles(angles_deg)
    rot = np.deg2rad(a[:, 0])
    tilt = np.deg2rad(a[:, 1])
    st = np.sin(tilt)
    return np.stack([np.cos(rot) * st, np.sin(rot) * st, np.cos(tilt)], axis=1)


def _expand(directions: np.ndarray, sym: str) -> np.ndarray:
    """Apply every rotation of the point group to every direction: (N·G, 3)."""
    group = point_group(sym)
    if group.shape[0] == 1:
        return directions
    # (G, N, 3): R d for every R
    return np.einsum("gij,nj->gni", group, directions).reshape(-1, 3)


def _bin_directions(directions: np.ndarray, step_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """Histogram directions (folded to z ≥ 0) on a ring grid of the half sphere.

    Rings of equal polar width ``dθ ≈ step_rad``; ring i holds
    ``max(1, round(2π sin θ_i / dθ))`` equal azimuth bins. Returns the occupied bins'
    centre directions (B, 3) and their counts (B,) (float64).
    """
    d = np.where(directions[:, 2:3] < 0, -directions, directions)
    n_rings = max(1, math.ceil((np.pi / 2) / step_rad))
    dtheta = (np.pi / 2) / n_rings
    theta_c = (np.arange(n_rings) + 0.5) * dtheta
    per_ring = np.maximum(1, np.rint(2 * np.pi * np.sin(theta_c) / dtheta)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(per_ring)])
    theta = np.arccos(np.clip(d[:, 2], -1.0, 1.0))
    ring = np.minimum((theta / dtheta).astype(np.int64), n_rings - 1)
    phi = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * np.pi)
    m = per_ring[ring]
    j = np.minimum((phi / (2 * np.pi) * m).astype(np.int64), m - 1)
    counts = np.bincount(offsets[ring] + j, minlength=int(offsets[-1]))
    occupied = np.nonzero(counts)[0]
    ring_of = np.searchsorted(offsets, occupied, side="right") - 1
    j_of = occupied - offsets[ring_of]
    th = theta_c[ring_of]
    ph = (j_of + 0.5) * 2 * np.pi / per_ring[ring_of]
    centres = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], axis=1)
    return centres, counts[occupied].astype(np.float64)


# --------------------------------------------------------------------------- kernels
@njit(cache=True, nogil=True)
def _plane_coefficients(dirs, half_width):  # pragma: no cover - numba
    """Per plane: dominant axis w and (−d_u/d_w, −d_v/d_w, half_width/|d_w|).

    The plane's voxels on the column (u, v) are the integers w with
    |w − (u·a + v·b)| ≤ h, (u, v) the two other axes in (x, y, z) order.
    """
    nb = dirs.shape[0]
    dom = np.empty(nb, np.int64)
    coef = np.empty((nb, 3))
    for i in range(nb):
        ax = abs(dirs[i, 0])
        ay = abs(dirs[i, 1])
        az = abs(dirs[i, 2])
        if az >= ax and az >= ay:
            dom[i] = 2
            u, v, w = dirs[i, 0], dirs[i, 1], dirs[i, 2]
        elif ay >= ax:
            dom[i] = 1
            u, v, w = dirs[i, 0], dirs[i, 2], dirs[i, 1]
        else:
            dom[i] = 0
            u, v, w = dirs[i, 1], dirs[i, 2], dirs[i, 0]
        coef[i, 0] = -u / w
        coef[i, 1] = -v / w
        coef[i, 2] = half_width / abs(w)
    return dom, coef


@njit(cache=True, nogil=True, parallel=True)
def _rasterize_planes(dirs, weights, n, half_width, rmax2, out):  # pragma: no cover - numba
    """Add ``weights[b]`` to every voxel k with |k·dirs[b]| ≤ half_width.

    ``out`` is (n, n, n) float64, indexed [kz + c, ky + c, kx + c] with c = n // 2.
    Only columns whose two other coordinates satisfy u² + v² ≤ rmax2 are walked (voxels
    farther out may be skipped). Each plane is walked along its dominant axis
    (|component| ≥ 1/√3), so a column holds at most ⌊2√3·half_width⌋ + 1 voxels; the
    parallel loop runs over an array axis whose voxels no two threads share.
    """
    c = n // 2
    dom, coef = _plane_coefficients(dirs, half_width)
    bz = np.nonzero(dom == 2)[0]
    by = np.nonzero(dom == 1)[0]
    bx = np.nonzero(dom == 0)[0]
    lo_k = -c
    hi_k = n - 1 - c
    # planes walked along z (columns (x, y)): parallel over y rows
    for iy in prange(n):
        kv = iy - c
        for t in range(bz.size):
            b = bz[t]
            w = weights[b]
            a = coef[b, 0]
            base = kv * coef[b, 1]
            h = coef[b, 2]
            for ix in range(n):
                ku = ix - c
                if ku * ku + kv * kv > rmax2:
                    continue
                centre = ku * a + base
                k0 = max(int(math.ceil(centre - h)), lo_k)
                k1 = min(int(math.floor(centre + h)), hi_k)
                for k in range(k0, k1 + 1):
                    out[k + c, iy, ix] += w
    # planes walked along y (columns (x, z)): parallel over z slices
    for iz in prange(n):
        kv = iz - c
        for t in range(by.size):
            b = by[t]
            w = weights[b]
            a = coef[b, 0]
            base = kv * coef[b, 1]
            h = coef[b, 2]
            for ix in range(n):
                ku = ix - c
                if ku * ku + kv * kv > rmax2:
                    continue
                centre = ku * a + base
                k0 = max(int(math.ceil(centre - h)), lo_k)
                k1 = min(int(math.floor(centre + h)), hi_k)
                for k in range(k0, k1 + 1):
                    out[iz, k + c, ix] += w
    # planes walked along x (columns (y, z)): parallel over z slices
    for iz in prange(n):
        kv = iz - c
        for t in range(bx.size):
            b = bx[t]
            w = weights[b]
            a = coef[b, 0]
            base = kv * coef[b, 1]
            h = coef[b, 2]
            for iy in range(n):
                ku = iy - c
                if ku * ku + kv * kv > rmax2:
                    continue
                centre = ku * a + base
                k0 = max(int(math.ceil(centre - h)), lo_k)
                k1 = min(int(math.floor(centre + h)), hi_k)
                for k in range(k0, k1 + 1):
                    out[iz, iy, k + c] += w
    return out


@njit(cache=True, nogil=True)
def _normalise_shells(raw, s_low, s_high):  # pragma: no cover - numba
    """Per shell round(|k|): divide by the shell maximum; 1 for s ≤ s_low, 0 for s > s_high."""
    n = raw.shape[0]
    c = n // 2
    n_shells = int(math.floor(math.sqrt(3.0) * (n - c) + 0.5)) + 2
    mx = np.zeros(n_shells)
    for iz in range(n):
        for iy in range(n):
            for ix in range(n):
                kz = iz - c
                ky = iy - c
                kx = ix - c
                s = int(math.floor(math.sqrt(kx * kx + ky * ky + kz * kz) + 0.5))
                v = raw[iz, iy, ix]
                if v > mx[s]:
                    mx[s] = v
    out = np.zeros((n, n, n), np.float32)
    for iz in range(n):
        for iy in range(n):
            for ix in range(n):
                kz = iz - c
                ky = iy - c
                kx = ix - c
                s = int(math.floor(math.sqrt(kx * kx + ky * ky + kz * kz) + 0.5))
                if s <= s_low:
                    out[iz, iy, ix] = 1.0
                elif s > s_high:
                    out[iz, iy, ix] = 0.0
                elif mx[s] > 0:
                    out[iz, iy, ix] = raw[iz, iy, ix] / mx[s]
    return out


# --------------------------------------------------------------------------- public API
def fourier_shell_density(
    angles_deg: np.ndarray,
    box: int,
    voxel_size: float = 1.0,
    sym: str = "C1",
    low_res: float | None = None,
    high_res: float | None = None,
    plane_half_width: float = 1.0,
    angular_step_deg: float | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Fourier sampling density of a particle set (fftshift-ed, float32, (box, box, box)).

    Parameters
    ----------
    angles_deg : (N, 3) rot, tilt, psi (or (N, 2) rot, tilt) in degrees, RELION
        convention (e.g. from :func:`spisonet.io.read_star_angles`).
    box : edge of the output map in voxels (the reconstruction's box).
    voxel_size : Å per voxel; converts ``low_res``/``high_res`` to shells.
    sym : point group (``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I``…); every view is
        counted once per group rotation (see :mod:`spisonet.symmetry`).
    low_res : shells coarser than this (s ≤ box·voxel_size/low_res) are set to 1;
        None: only the origin shell (which every plane passes through) is 1.
    high_res : shells finer than this (s > box·voxel_size/high_res) are set to 0;
        None: Nyquist (2·voxel_size), so the corners beyond box/2 are 0.
    plane_half_width : a plane marks the voxels within this many voxels of it
        (|k·d| ≤ plane_half_width); ≥ 0.5 leaves no holes in a plane.
    angular_step_deg : bin size of the direction histogram in degrees; 0 rasterises
        every (particle × symmetry) view exactly; None: exact up to
        ``EXACT_VIEW_LIMIT`` views, otherwise ``min(1°, 2·plane_half_width/box rad)``.
    normalize : False returns the raw count ``raw(k)`` (number of views whose plane
        passes within ``plane_half_width`` of k; no shell scaling, no low/high rules,
        the whole box).

    Returns
    -------
    (box, box, box) float32, zero frequency at index box//2. Normalised: each shell's
    maximum is 1 (a shell no view reaches stays 0).
    """
    group_order(sym)  # parse (and size-check) the point group before any work
    dirs = directions_from_angles(angles_deg)
    box = int(box)
    if box < 2:
        raise InvalidValueError(f"box must be at least 2 voxels, got {box}")
    voxel_size = float(voxel_size)
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise InvalidValueError(f"voxel_size must be a positive number of Å, got {voxel_size}")
    hw = float(plane_half_width)
    if not np.isfinite(hw) or hw <= 0:
        raise InvalidValueError(
            f"plane_half_width must be a positive number of voxels, got {plane_half_width}"
        )
    for name, value in (("low_res", low_res), ("high_res", high_res)):
        if value is not None and (not np.isfinite(value) or value <= 0):
            raise InvalidValueError(f"{name} must be a positive resolution in Å, got {value}")
    if low_res is not None and high_res is not None and high_res >= low_res:
        raise InvalidValueError(
            f"fsd3d needs low_res > high_res (Å), got low_res={low_res} and high_res={high_res}"
        )
    expanded = _expand(dirs, sym)
    if angular_step_deg is None:
        if expanded.shape[0] <= EXACT_VIEW_LIMIT:
            step = 0.0
        else:
            step = min(np.deg2rad(1.0), 2.0 * hw / box)
    else:
        if not np.isfinite(angular_step_deg) or angular_step_deg < 0:
            raise InvalidValueError(
                f"angular_step_deg must be ≥ 0 degrees (0 = exact), got {angular_step_deg}"
            )
        step = float(np.deg2rad(angular_step_deg))
    if step > 0:
        centres, weights = _bin_directions(expanded, step)
    else:
        centres, weights = expanded, np.ones(expanded.shape[0])

    s_low = -1 if low_res is None else int(math.floor(box * voxel_size / low_res))
    hr = 2.0 * voxel_size if high_res is None else float(high_res)
    s_high = int(math.floor(box * voxel_size / hr))
    rmax2 = np.inf if not normalize else (s_high + 0.5) ** 2
    raw = np.zeros((box, box, box), np.float64)
    _rasterize_planes(
        np.ascontiguousarray(centres, dtype=np.float64),
        np.ascontiguousarray(weights, dtype=np.float64),
        box,
        hw,
        float(rmax2),
        raw,
    )
    if not normalize:
        return raw.astype(np.float32)
    return _normalise_shells(raw, max(s_low, 0), s_high)


@dataclass(frozen=True)
class DirectionHistogram:
    """How the projection directions sample the half sphere.

    Attributes
    ----------
    directions : (M, 3) Fibonacci unit vectors (x, y, z) on the half sphere z ≥ 0;
        a direction and its opposite give the same central plane.
    tilt_deg, rot_deg : (M,) the same directions as RELION tilt/rot angles.
    counts : (M,) number of views (× symmetry copies, divided by the group order so
        the total is the particle count) nearest to each direction.
    fraction : (M,) counts / total.
    n_particles : number of particles.
    group_order : number of symmetry copies per particle.
    """

    directions: np.ndarray
    tilt_deg: np.ndarray
    rot_deg: np.ndarray
    counts: np.ndarray
    fraction: np.ndarray
    n_particles: int
    group_order: int

    @property
    def empty_fraction(self) -> float:
        """Fraction of the half-sphere directions that no view is nearest to."""
        return float(np.mean(self.counts == 0))

    @property
    def max_over_mean(self) -> float:
        """Peak-to-mean ratio of the counts (1 for perfectly uniform sampling)."""
        return float(self.counts.max() / self.counts.mean())


def _fibonacci_half_sphere(m: int) -> np.ndarray:
    i = np.arange(m, dtype=np.float64)
    z = (i + 0.5) / m  # equal-area bands of the half sphere
    phi = i * np.pi * (3.0 - 5.0**0.5)
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def direction_histogram(
    angles_deg: np.ndarray, sym: str = "C1", n_directions: int = 500
) -> DirectionHistogram:
    """Histogram of projection directions over a Fibonacci set of the half sphere.

    Each (particle × symmetry copy) direction, folded to z ≥ 0, is counted at its
    nearest direction (by angle, ± equivalent). The views are first binned on a 0.25°
    grid, so the cost does not grow with the number of particles beyond that binning.
    """
    from scipy.spatial import cKDTree

    if int(n_directions) < 1:
        raise InvalidValueError(f"n_directions must be ≥ 1, got {n_directions}")
    m = int(n_directions)
    dirs = directions_from_angles(angles_deg)
    group = point_group(sym)
    centres, weights = _bin_directions(_expand(dirs, sym), np.deg2rad(0.25))
    fib = _fibonacci_half_sphere(m)
    tree = cKDTree(np.concatenate([fib, -fib]))
    _, idx = tree.query(centres)
    counts = np.bincount(np.asarray(idx) % m, weights=weights, minlength=m) / group.shape[0]
    tilt = np.rad2deg(np.arccos(np.clip(fib[:, 2], -1.0, 1.0)))
    rot = np.rad2deg(np.arctan2(fib[:, 1], fib[:, 0]))
    return DirectionHistogram(
        directions=fib,
        tilt_deg=tilt,
        rot_deg=rot,
        counts=counts,
        fraction=counts / counts.sum(),
        n_particles=int(dirs.shape[0]),
        group_order=int(group.shape[0]),
    )


def scf_curve(raw_density: np.ndarray) -> np.ndarray:
    """Sampling-compensation-factor-like figure per shell from a raw density map.

    For the voxels of shell s (round(|k|)) with raw counts S: 1 / (mean(S) · mean(1/S)),
    which is 1 for uniform sampling and falls towards 0 as the sampling gets uneven
    (Baldwin & Lyumkis 2020 define the SCF through the mean of 1/S); 0 when any voxel
    of the shell is unsampled. Shell 0 is 1. Use ``fourier_shell_density(...,
    normalize=False)`` as input; with few particles, high shells of thin planes leave
    voxels unsampled by chance, so read the curve at shells well sampled.

    Returns
    -------
    (box//2 + 1,) float64 for shells 0 … box//2.
    """
    raw = np.asarray(raw_density, dtype=np.float64)
    if raw.ndim != 3 or len(set(raw.shape)) != 1:
        raise InvalidValueError(f"raw_density must be a cubic 3D map, got shape {raw.shape}")
    n = raw.shape[0]
    from .fourier import shell_index

    shells = shell_index(n).ravel()
    m = n // 2 + 1
    keep = shells < m
    s = shells[keep]
    v = raw.ravel()[keep]
    count = np.bincount(s, minlength=m).astype(np.float64)
    total = np.bincount(s, weights=v, minlength=m)
    zeros = np.bincount(s, weights=(v <= 0).astype(np.float64), minlength=m)
    inv = np.bincount(s, weights=np.where(v > 0, 1.0 / np.where(v > 0, v, 1.0), 0.0), minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        scf = np.where(
            (zeros == 0) & (total > 0), count * count / np.maximum(total * inv, 1e-300), 0.0
        )
    scf[0] = 1.0
    return scf
