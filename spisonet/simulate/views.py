"""Projection directions of simulated particles and the Fourier sampling they give.

:func:`draw_view_directions` draws unit vectors (x, y, z) from a named orientation
distribution (``uniform``, ``top``, ``tilt:<deg>``, ``side``, ``star`` from RELION
angles, and mixtures with uniform views); :func:`sampling_density` turns directions into
the Fourier sampling density W(k) of a reconstruction from those views (fftshift-ed,
indexed [kz, ky, kx]), with a parallel numba kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .._checks import check_box, check_positive_int
from ..errors import InvalidValueError

__all__ = [
    "DEFAULT_VIEWS",
    "DENSITY_CHUNKS",
    "DISTRIBUTIONS",
    "NARROW_ANGLE_DEG",
    "draw_view_directions",
    "sampling_density",
]

#: Half-angle (degrees) of the `top` cone and half-width of the `side` band.
NARROW_ANGLE_DEG = 5.0
#: Default number of views (particles) of the generated distributions.
DEFAULT_VIEWS = 2000
#: Views are split into this many chunks, each summed into its own buffer in parallel.
DENSITY_CHUNKS = 4
#: Valid ``distribution`` strings of :func:`draw_view_directions`.
DISTRIBUTIONS = ("uniform", "top", "tilt:<deg>", "side", "star", "<any>+uniform:<fraction>")


def _cap(rng: np.random.Generator, n: int, cos_lo: float, cos_hi: float) -> np.ndarray:
    """n unit vectors (x, y, z), uniform on the sphere where cos_lo ≤ z ≤ cos_hi."""
    z = rng.uniform(cos_lo, cos_hi, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    s = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


def _parse_tilt(distribution: str) -> float:
    text = distribution.split(":", 1)[1].strip()
    try:
        deg = float(text)
    except ValueError:
        raise InvalidValueError(
            f"distribution {distribution!r}: 'tilt:<deg>' needs a cone half-angle in "
            f"degrees, e.g. 'tilt:20'; found {text!r}"
        ) from None
    if not np.isfinite(deg) or not 0 < deg <= 180:
        raise InvalidValueError(
            f"distribution {distribution!r}: the cone half-angle must be in (0, 180] "
            f"degrees, found {deg}"
        )
    return deg


def _mixture(dist: str, n_views: int | None, seed: int, angles: np.ndarray | None) -> np.ndarray:
    """``<base>+uniform:<fraction>``: the base distribution with a fraction of uniform views.

    Real preferred-orientation data sets are dominated by a few views but still hold some
    particles in every orientation, so no region of Fourier space is exactly empty.
    """
    base, _, frac_text = dist.partition("+uniform:")
    try:
        fraction = float(frac_text)
    except ValueError:
        fraction = -1.0
    if not 0.0 <= fraction <= 1.0:
        raise InvalidValueError(
            f"distribution {dist!r}: '+uniform:<fraction>' needs a fraction in [0, 1], "
            f"e.g. 'top+uniform:0.1'"
        )
    if base == "star":
        main = draw_view_directions(base, n_views, seed=seed, angles=angles)
        n_total = main.shape[0]
    else:
        n_total = DEFAULT_VIEWS if n_views is None else check_positive_int(n_views, "n_views")
        main = draw_view_directions(base, n_total, seed=seed)
    n_uniform = int(round(fraction * n_total))
    extra = _cap(np.random.default_rng([seed, 1]), n_uniform, -1.0, 1.0)
    return np.concatenate([main[: n_total - n_uniform], extra], axis=0)


def draw_view_directions(
    distribution: str,
    n_views: int | None = None,
    seed: int = 0,
    angles: np.ndarray | None = None,
) -> np.ndarray:
    """Projection directions of simulated particles, unit vectors (x, y, z).

    Parameters
    ----------
    distribution : one of
        ``uniform`` — uniform on the sphere;
        ``top`` — uniform within ``NARROW_ANGLE_DEG`` (5°) of the z axis;
        ``tilt:<deg>`` — uniform within a cone of half-angle <deg> around z;
        ``side`` — perpendicular to z within ±5° (uniform in that band);
        ``<any>+uniform:<fraction>`` — that distribution with a fraction of its views
        replaced by uniform ones (e.g. ``top+uniform:0.1``, a realistic top-dominated set);
        ``star`` — from RELION angles ``angles`` (rot, tilt, psi in degrees, e.g. from
        :func:`spisonet.io.read_star_angles`): (cos rot sin tilt, sin rot sin tilt,
        cos tilt).
    n_views : number of views (default 2000; for ``star`` all the angles, or a random
        subset of n_views of them).
    seed : random seed.
    angles : (N, 3) RELION angles in degrees, for ``star`` only.

    Returns
    -------
    (n_views, 3) float64 unit vectors.
    """
    if not isinstance(distribution, str):
        raise InvalidValueError(
            f"distribution must be a string, one of {', '.join(DISTRIBUTIONS)}; "
            f"got {distribution!r}"
        )
    dist = distribution.strip().lower()
    rng = np.random.default_rng(seed)
    if "+uniform:" in dist:
        return _mixture(dist, n_views, seed, angles)
    if dist == "star":
        if angles is None:
            raise InvalidValueError(
                "distribution 'star' needs angles: an (N, 3) array of RELION rot, tilt, "
                "psi in degrees (spisonet.io.read_star_angles)"
            )
        ang = np.asarray(angles, dtype=np.float64)
        if ang.ndim != 2 or ang.shape[1] < 2 or ang.shape[0] < 1:
            raise InvalidValueError(
                f"angles must be an (N, 3) array of rot, tilt, psi in degrees, "
                f"got shape {ang.shape}"
            )
        if not np.all(np.isfinite(ang[:, :2])):
            raise InvalidValueError("angles contain NaN or infinite values")
        if n_views is not None:
            n_views = check_positive_int(n_views, "n_views")
            if n_views > ang.shape[0]:
                raise InvalidValueError(
                    f"n_views {n_views} exceeds the {ang.shape[0]} angles given"
                )
            ang = ang[np.sort(rng.choice(ang.shape[0], n_views, replace=False))]
        rot = np.deg2rad(ang[:, 0])
        tilt = np.deg2rad(ang[:, 1])
        return np.stack(
            [np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], axis=1
        )
    if angles is not None:
        raise InvalidValueError(
            f"angles are only used with distribution 'star', got distribution {distribution!r}"
        )
    n = DEFAULT_VIEWS if n_views is None else check_positive_int(n_views, "n_views")
    narrow = np.deg2rad(NARROW_ANGLE_DEG)
    if dist == "uniform":
        return _cap(rng, n, -1.0, 1.0)
    if dist == "top":
        return _cap(rng, n, np.cos(narrow), 1.0)
    if dist == "side":
        return _cap(rng, n, -np.sin(narrow), np.sin(narrow))
    if dist.startswith("tilt:"):
        return _cap(rng, n, np.cos(np.deg2rad(_parse_tilt(dist))), 1.0)
    if dist == "tilt":
        raise InvalidValueError(
            "distribution 'tilt' needs a cone half-angle in degrees: write 'tilt:<deg>', "
            "e.g. 'tilt:20'"
        )
    raise InvalidValueError(
        f"unknown distribution {distribution!r}; valid: {', '.join(DISTRIBUTIONS)}"
    )


@njit(cache=True, nogil=True, parallel=True)
def _density_kernel(n: int, dirs: np.ndarray, bounds: np.ndarray, out: np.ndarray) -> None:
    """Accumulate Σ tent(k·d) for views dirs[bounds[c]:bounds[c+1]] into out[c].

    out : (chunks, n³) float32, flattened fftshift-ed [z, y, x] grids. For each view the
    axis where |d| is largest is the column axis; along each column only the ≤ 4 voxels
    within distance 1 of the plane get a contribution 1 − |k·d|.
    """
    h = n // 2
    strides = np.array([1, n, n * n])  # x, y, z
    for c in prange(bounds.size - 1):
        buf = out[c]
        for v in range(bounds[c], bounds[c + 1]):
            d0, d1, d2 = dirs[v, 0], dirs[v, 1], dirs[v, 2]
            ac = 0
            if abs(d1) > abs(d0):
                ac = 1
            if abs(d2) > abs(dirs[v, ac]):
                ac = 2
            aa = (ac + 1) % 3
            ab = (ac + 2) % 3
            if aa < ab:  # outer loop over the larger stride, for memory locality
                aa, ab = ab, aa
            da, db, dc = dirs[v, aa], dirs[v, ab], dirs[v, ac]
            sa, sb, sc = strides[aa], strides[ab], strides[ac]
            half_width = 1.0 / abs(dc)
            for ia in range(n):
                ka = ia - h
                for ib in range(n):
                    kb = ib - h
                    t = ka * da + kb * db
                    k0 = -t / dc
                    lo = max(math.ceil(k0 - half_width), -h)
                    hi = min(math.floor(k0 + half_width), n - 1 - h)
                    base = ia * sa + ib * sb
                    for kc in range(lo, hi + 1):
                        w = 1.0 - abs(t + kc * dc)
                        if w > 0.0:
                            buf[base + (kc + h) * sc] += w


def sampling_density(box: int, directions: np.ndarray) -> np.ndarray:
    """Fourier sampling density W(k) of views with the given projection directions.

    Each view samples the central plane perpendicular to its direction d, so
    ``W(k) = Σ_views max(0, 1 − |k·d|)``: a one-voxel linear tent in the distance of the
    integer frequency k to the plane. Exact (no binning of directions); each view
    touches only the ≤ 4 voxels per column that lie within distance 1 of its plane,
    parallel over views.

    Parameters
    ----------
    box : box edge n, voxels.
    directions : (n_views, 3) projection directions (x, y, z); normalised here.

    Returns
    -------
    (n, n, n) float32, fftshift-ed (zero frequency at n//2), indexed [kz, ky, kx].
    """
    n = check_box(box, minimum=1)
    d = np.asarray(directions, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != 3 or d.shape[0] < 1:
        raise InvalidValueError(
            f"directions must be an (n_views, 3) array of (x, y, z), got shape {d.shape}"
        )
    norm = np.linalg.norm(d, axis=1)
    if not np.all(np.isfinite(norm)) or np.any(norm == 0):
        raise InvalidValueError("directions must be finite, non-zero vectors")
    d = np.ascontiguousarray(d / norm[:, None])
    # a fixed number of chunks (not the thread count) keeps the float32 sums, and so
    # the result, identical on every machine
    chunks = max(1, min(DENSITY_CHUNKS, d.shape[0]))
    bounds = np.linspace(0, d.shape[0], chunks + 1).round().astype(np.int64)
    out = np.zeros((chunks, n * n * n), dtype=np.float32)
    _density_kernel(n, d, bounds, out)
    total = out[0]
    for c in range(1, chunks):
        total += out[c]
    return total.reshape(n, n, n)
