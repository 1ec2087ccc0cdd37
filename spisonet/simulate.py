"""Synthetic test data with a known ground truth.

Two parts:

* a protein-like test molecule: pseudo-atoms (one per residue) along self-avoiding
  random-walk chains with 3.8 Å steps, packed in an irregular ellipsoid, rendered as
  Gaussians with a B-factor (:func:`pseudo_atoms`, :func:`render_atoms`,
  :func:`make_molecule`);
* two half maps as a reconstruction from particles with a chosen orientation
  distribution would give them (:func:`view_directions`, :func:`sampling_density`,
  :func:`simulate_half_maps`, :func:`simulate_dataset`).

Conventions: maps are float32 (n, n, n) arrays indexed [z, y, x] with the box centre at
voxel n//2; directions and atom positions are (x, y, z); Fourier arrays are fftshift-ed
(zero frequency at n//2). Every random choice comes from ``numpy.random.default_rng``
seeded by the ``seed`` argument, so equal seeds give identical arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .errors import InvalidValueError, MapShapeError, NonFiniteMapError
from .io import Map
from .masks import soft_mask

__all__ = [
    "CA_STEP",
    "DEFAULT_SNR",
    "DISTRIBUTIONS",
    "SimulatedData",
    "default_bfactor",
    "fourier_crop",
    "make_molecule",
    "pseudo_atoms",
    "render_atoms",
    "sampling_density",
    "simulate_dataset",
    "simulate_half_maps",
    "view_directions",
]

#: Distance between consecutive pseudo-atoms of a chain (Cα–Cα), Å.
CA_STEP = 3.8
#: Smallest distance between two pseudo-atoms that are not chain neighbours, Å.
MIN_CONTACT = 4.0
#: Volume per residue in a protein, Å³ (density 1.35 g/cm³, 110 Da per residue).
RESIDUE_VOLUME = 135.0
#: Fraction of the ellipsoid volume that the chains fill.
FILL_FRACTION = 0.6
#: Half-angle (degrees) of the `top` cone and half-width of the `side` band.
NARROW_ANGLE_DEG = 5.0
#: Default per-view spectral signal-to-noise ratio (see :func:`simulate_half_maps`).
DEFAULT_SNR = 0.01
#: Default number of views (particles) of the generated distributions.
DEFAULT_VIEWS = 2000
#: Default Wiener constant: λ = REGULARISATION × mean(W) (see :func:`simulate_half_maps`).
REGULARISATION = 0.02
#: Views are split into this many chunks, each summed into its own buffer in parallel.
DENSITY_CHUNKS = 4
#: Valid ``distribution`` strings of :func:`view_directions`.
DISTRIBUTIONS = ("uniform", "top", "tilt:<deg>", "side", "star", "<any>+uniform:<fraction>")


# --------------------------------------------------------------------------- molecule


@njit(cache=True, nogil=True)
def _grow_chains(
    chain_lengths: np.ndarray,
    metric: np.ndarray,
    extent: float,
    step: float,
    d_min: float,
    turn_min: float,
    turn_max: float,
    tries: np.ndarray,
    starts: np.ndarray,
    start_dirs: np.ndarray,
    max_tries: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Self-avoiding random walks inside the ellipsoid p·metric·p ≤ 1 (Å, xyz).

    A chain that cannot grow after ``max_tries`` candidate steps ends; its remaining
    atoms start a new chain at the next free point of ``starts``. Returns positions
    (m, 3), chain id (m,) and m.
    """
    n_total = 0
    for c in range(chain_lengths.size):
        n_total += chain_lengths[c]
    pos = np.zeros((n_total, 3))
    chain = np.zeros(n_total, dtype=np.int64)
    n_cells = math.ceil(2.0 * extent / d_min) + 2
    head = -np.ones((n_cells, n_cells, n_cells), dtype=np.int64)
    nxt = -np.ones(n_total, dtype=np.int64)
    m = 0
    chain_id = -1
    i_start = 0
    i_try = 0
    n_tries = tries.shape[0]
    cand = np.zeros(3)
    d = np.zeros(3)
    e1 = np.zeros(3)
    e2 = np.zeros(3)
    new = np.zeros(3)
    for c in range(chain_lengths.size):
        remaining = chain_lengths[c]
        while remaining > 0:
            # start a new chain at the next free pool point
            found = False
            while i_start < starts.shape[0]:
                for j in range(3):
                    cand[j] = starts[i_start, j]
                    d[j] = start_dirs[i_start, j]
                i_start += 1
                if _is_free(cand, pos, head, nxt, extent, d_min, -1):
                    found = True
                    break
            if not found:
                return pos[:m], chain[:m], m
            chain_id += 1
            _place(cand, m, pos, chain, chain_id, head, nxt, extent, d_min)
            m += 1
            remaining -= 1
            while remaining > 0:
                # orthonormal frame around the current direction d
                ax = 0
                if abs(d[1]) < abs(d[ax]):
                    ax = 1
                if abs(d[2]) < abs(d[ax]):
                    ax = 2
                # e1 = normalise(d × unit(ax))
                if ax == 0:
                    e1[0], e1[1], e1[2] = 0.0, d[2], -d[1]
                elif ax == 1:
                    e1[0], e1[1], e1[2] = -d[2], 0.0, d[0]
                else:
                    e1[0], e1[1], e1[2] = d[1], -d[0], 0.0
                norm = math.sqrt(e1[0] ** 2 + e1[1] ** 2 + e1[2] ** 2)
                for j in range(3):
                    e1[j] /= norm
                e2[0] = d[1] * e1[2] - d[2] * e1[1]
                e2[1] = d[2] * e1[0] - d[0] * e1[2]
                e2[2] = d[0] * e1[1] - d[1] * e1[0]
                placed = False
                for _ in range(max_tries):
                    u = tries[i_try % n_tries, 0]
                    phi = tries[i_try % n_tries, 1] * 2.0 * math.pi
                    i_try += 1
                    tau = turn_min + (turn_max - turn_min) * u
                    ct, st = math.cos(tau), math.sin(tau)
                    cp, sp = math.cos(phi), math.sin(phi)
                    q = 0.0
                    for j in range(3):
                        new[j] = ct * d[j] + st * (cp * e1[j] + sp * e2[j])
                        cand[j] = pos[m - 1, j] + step * new[j]
                    for j in range(3):
                        for k in range(3):
                            q += cand[j] * metric[j, k] * cand[k]
                    if q > 1.0:
                        continue
                    if not _is_free(cand, pos, head, nxt, extent, d_min, m - 1):
                        continue
                    for j in range(3):
                        d[j] = new[j]
                    placed = True
                    break
                if not placed:
                    break
                _place(cand, m, pos, chain, chain_id, head, nxt, extent, d_min)
                m += 1
                remaining -= 1
    return pos[:m], chain[:m], m


@njit(cache=True, nogil=True)
def _cell(x: float, extent: float, d_min: float, n_cells: int) -> int:
    c = math.floor((x + extent) / d_min) + 1
    return min(max(c, 0), n_cells - 1)


@njit(cache=True, nogil=True)
def _is_free(cand, pos, head, nxt, extent, d_min, skip) -> bool:
    """True when no placed atom other than ``skip`` lies within d_min of cand."""
    n_cells = head.shape[0]
    cx = _cell(cand[0], extent, d_min, n_cells)
    cy = _cell(cand[1], extent, d_min, n_cells)
    cz = _cell(cand[2], extent, d_min, n_cells)
    d2min = d_min * d_min
    for a in range(max(cx - 1, 0), min(cx + 2, n_cells)):
        for b in range(max(cy - 1, 0), min(cy + 2, n_cells)):
            for c in range(max(cz - 1, 0), min(cz + 2, n_cells)):
                i = head[a, b, c]
                while i >= 0:
                    if i != skip:
                        r2 = (
                            (pos[i, 0] - cand[0]) ** 2
                            + (pos[i, 1] - cand[1]) ** 2
                            + (pos[i, 2] - cand[2]) ** 2
                        )
                        if r2 < d2min:
                            return False
                    i = nxt[i]
    return True


@njit(cache=True, nogil=True)
def _place(cand, m, pos, chain, chain_id, head, nxt, extent, d_min) -> None:
    n_cells = head.shape[0]
    for j in range(3):
        pos[m, j] = cand[j]
    chain[m] = chain_id
    cx = _cell(cand[0], extent, d_min, n_cells)
    cy = _cell(cand[1], extent, d_min, n_cells)
    cz = _cell(cand[2], extent, d_min, n_cells)
    nxt[m] = head[cx, cy, cz]
    head[cx, cy, cz] = m


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3×3 rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))[None, :]
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _check_box(box: int, name: str = "box", minimum: int = 8) -> int:
    if isinstance(box, bool) or int(box) != box or box < minimum:
        raise InvalidValueError(f"{name} must be an integer ≥ {minimum} voxels, got {box!r}")
    return int(box)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise InvalidValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def pseudo_atoms(
    box: int,
    voxel_size: float = 1.0,
    seed: int = 0,
    *,
    n_chains: int | None = None,
    radius_fraction: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo-atom positions of the test molecule (one per residue).

    Chains are self-avoiding random walks with steps of ``CA_STEP`` (3.8 Å) and
    turning angles of 60°–95° between consecutive steps (Cα virtual bond angles of
    85°–120°); atoms that are not chain neighbours stay ≥ ``MIN_CONTACT`` (4 Å)
    apart. They fill ``FILL_FRACTION`` of a randomly oriented ellipsoid centred on the
    box centre with semi-axes ``radius_fraction · box · voxel_size · (1, 0.8, 0.65)`` Å
    at protein density (one residue per 135 Å³). A chain that gets stuck ends and the
    next one starts at a random free point, so there may be more chains than
    ``n_chains``.

    Parameters
    ----------
    box : box edge, voxels (≥ 8).
    voxel_size : Å per voxel; steps are in Å, so it sets how many atoms fit.
    seed : random seed.
    n_chains : number of chains to grow (default: one per ~150 residues).
    radius_fraction : longest semi-axis as a fraction of the box edge, (0, 0.45].

    Returns
    -------
    positions : (m, 3) float64, Å, (x, y, z) relative to the box centre (voxel n//2).
    chain : (m,) int64 chain id; atoms i and i+1 are bonded (3.8 Å apart) when
        ``chain[i] == chain[i + 1]``.
    """
    box = _check_box(box)
    voxel_size = _check_positive("voxel_size", voxel_size)
    radius_fraction = float(radius_fraction)
    if not 0 < radius_fraction <= 0.45:
        raise InvalidValueError(f"radius_fraction must be in (0, 0.45], got {radius_fraction}")
    rng = np.random.default_rng(seed)
    semi = radius_fraction * box * voxel_size * np.array([1.0, 0.8, 0.65])
    rot = _random_rotation(rng)
    metric = rot @ np.diag(1.0 / semi**2) @ rot.T
    volume = 4.0 / 3.0 * np.pi * np.prod(semi)
    n_atoms = max(1, round(FILL_FRACTION * volume / RESIDUE_VOLUME))
    if n_chains is None:
        n_chains = max(1, round(n_atoms / 150))
    if isinstance(n_chains, bool) or int(n_chains) != n_chains or n_chains < 1:
        raise InvalidValueError(f"n_chains must be a positive integer, got {n_chains!r}")
    n_chains = min(int(n_chains), n_atoms)
    lengths = np.full(n_chains, n_atoms // n_chains, dtype=np.int64)
    lengths[: n_atoms % n_chains] += 1
    max_tries = 24
    tries = rng.random((n_atoms * 4, 2))
    # pool of chain starts: uniform points in the ellipsoid, random initial directions
    n_pool = n_atoms + 64
    ball = rng.standard_normal((n_pool, 3))
    ball *= (rng.random(n_pool) ** (1.0 / 3.0) / np.linalg.norm(ball, axis=1))[:, None]
    starts = (ball * semi[None, :]) @ rot.T
    start_dirs = rng.standard_normal((n_pool, 3))
    start_dirs /= np.linalg.norm(start_dirs, axis=1, keepdims=True)
    pos, chain, _ = _grow_chains(
        lengths,
        metric,
        float(semi.max()),
        CA_STEP,
        MIN_CONTACT,
        np.deg2rad(60.0),
        np.deg2rad(95.0),
        tries,
        starts,
        start_dirs,
        max_tries,
    )
    return pos, chain


@njit(cache=True, nogil=True)
def _splat_gaussians(pos: np.ndarray, sigma: float, radius: int, out: np.ndarray) -> None:
    """Add an unnormalised Gaussian exp(-r²/2σ²) at each (z, y, x) voxel position."""
    n0, n1, n2 = out.shape
    w = 2 * radius + 1
    gz = np.empty(w)
    gy = np.empty(w)
    gx = np.empty(w)
    inv = 0.5 / (sigma * sigma)
    for a in range(pos.shape[0]):
        cz = math.floor(pos[a, 0] + 0.5)
        cy = math.floor(pos[a, 1] + 0.5)
        cx = math.floor(pos[a, 2] + 0.5)
        for j in range(w):
            gz[j] = math.exp(-inv * (cz - radius + j - pos[a, 0]) ** 2)
            gy[j] = math.exp(-inv * (cy - radius + j - pos[a, 1]) ** 2)
            gx[j] = math.exp(-inv * (cx - radius + j - pos[a, 2]) ** 2)
        for i in range(w):
            z = cz - radius + i
            if z < 0 or z >= n0:
                continue
            for j in range(w):
                y = cy - radius + j
                if y < 0 or y >= n1:
                    continue
                vzy = gz[i] * gy[j]
                for k in range(w):
                    x = cx - radius + k
                    if x < 0 or x >= n2:
                        continue
                    out[z, y, x] += vzy * gx[k]


def default_bfactor(voxel_size: float) -> float:
    """Default B-factor (Å²) for a voxel size: 8π² (0.7 · voxel_size)².

    The pseudo-atoms are then Gaussians of standard deviation 0.7 voxel; their
    amplitude falls to 0.34 at 3 voxels, 0.21 at 2.5 voxels and 0.09 at Nyquist
    (2 voxels), so the map keeps detail to 2–3 voxels.
    """
    return float(8.0 * np.pi**2 * (0.7 * voxel_size) ** 2)


def render_atoms(
    positions: np.ndarray, box: int, voxel_size: float = 1.0, bfactor: float | None = None
) -> np.ndarray:
    """Render pseudo-atoms as Gaussians with a B-factor on an (box, box, box) grid.

    Each atom is exp(-r² / 2σ²) with σ² = B / (8π²) (Å), whose Fourier amplitude falls
    as exp(-B s² / 4) with s the spatial frequency in 1/Å. Splatted in real space
    within 4σ of the atom (at least 2 voxels). The map is scaled to a maximum of 1.

    Parameters
    ----------
    positions : (m, 3) Å, (x, y, z) relative to the box centre (voxel n//2).
    box : box edge, voxels.
    voxel_size : Å per voxel.
    bfactor : B in Å² (default :func:`default_bfactor`).

    Returns
    -------
    (box, box, box) float32 map indexed [z, y, x].
    """
    box = _check_box(box, minimum=1)
    voxel_size = _check_positive("voxel_size", voxel_size)
    if bfactor is None:
        bfactor = default_bfactor(voxel_size)
    bfactor = _check_positive("bfactor", bfactor)
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InvalidValueError(f"positions must be an (m, 3) array, got shape {positions.shape}")
    sigma = math.sqrt(bfactor / (8.0 * np.pi**2)) / voxel_size
    radius = max(2, math.ceil(4.0 * sigma))
    zyx = np.ascontiguousarray(positions[:, ::-1] / voxel_size + box // 2)
    out = np.zeros((box, box, box), dtype=np.float64)
    _splat_gaussians(zyx, sigma, radius, out)
    peak = out.max()
    if peak > 0:
        out /= peak
    return out.astype(np.float32)


def make_molecule(
    box: int,
    voxel_size: float = 1.0,
    seed: int = 0,
    *,
    n_chains: int | None = None,
    bfactor: float | None = None,
    radius_fraction: float = 0.3,
) -> np.ndarray:
    """A protein-like, asymmetric test molecule (float32 (box, box, box), [z, y, x]).

    :func:`pseudo_atoms` rendered by :func:`render_atoms`: random-walk chains of
    pseudo-atoms 3.8 Å apart in a randomly oriented ellipsoid whose longest semi-axis is
    ``radius_fraction`` of the box, Gaussians with B-factor ``bfactor`` Å² (default
    :func:`default_bfactor`: detail to 2–3 voxels), maximum 1.
    """
    pos, _ = pseudo_atoms(box, voxel_size, seed, n_chains=n_chains, radius_fraction=radius_fraction)
    return render_atoms(pos, box, voxel_size, bfactor)


# --------------------------------------------------------------------------- views


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
        main = view_directions(base, n_views, seed=seed, angles=angles)
        n_total = main.shape[0]
    else:
        n_total = DEFAULT_VIEWS if n_views is None else _check_n_views(n_views)
        main = view_directions(base, n_total, seed=seed)
    n_uniform = int(round(fraction * n_total))
    extra = _cap(np.random.default_rng([seed, 1]), n_uniform, -1.0, 1.0)
    return np.concatenate([main[: n_total - n_uniform], extra], axis=0)


def view_directions(
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
            n_views = _check_n_views(n_views)
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
    n = DEFAULT_VIEWS if n_views is None else _check_n_views(n_views)
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


def _check_n_views(n_views: int) -> int:
    if isinstance(n_views, bool) or int(n_views) != n_views or n_views < 1:
        raise InvalidValueError(f"n_views must be a positive integer, got {n_views!r}")
    return int(n_views)


# --------------------------------------------------------------------------- sampling


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
    n = _check_box(box, minimum=1)
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


# --------------------------------------------------------------------------- half maps


@dataclass(frozen=True)
class SimulatedData:
    """Simulated half maps with their ground truth.

    Attributes
    ----------
    gt : (n, n, n) float32 ground truth.
    half1, half2 : (n, n, n) float32 half maps.
    mask : (n, n, n) float32 soft mask of the ground truth (:func:`soft_mask`).
    density1, density2 : (n, n, n) float32 sampling densities W of each half,
        fftshift-ed.
    voxel_size : Å per voxel.
    directions : (n_views, 3) projection directions (x, y, z) of all views.
    half_of_view : (n_views,) int8, 1 or 2: the half each view went to.
    noise_sigma : σ, the per-view Fourier noise standard deviation (numpy FFT units).
    """

    gt: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    mask: np.ndarray
    density1: np.ndarray
    density2: np.ndarray
    voxel_size: float
    directions: np.ndarray
    half_of_view: np.ndarray
    noise_sigma: float


def _check_map(volume: np.ndarray, name: str) -> np.ndarray:
    vol = np.asarray(volume)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise MapShapeError(f"{name}: expected a cubic 3D map (n×n×n), found shape {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise NonFiniteMapError(f"{name}: the map contains NaN or infinite values")
    return vol.astype(np.float32)


def _hermitian(w: np.ndarray) -> np.ndarray:
    """(w(k) + w(−k)) / 2 on an unshifted FFT grid (−k taken modulo n).

    W(k) = W(−k) everywhere except on the Nyquist planes of an even box, where −k
    aliases to another stored frequency; averaging there keeps the half maps real.
    """
    return 0.5 * (w + np.roll(w[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)))


def simulate_half_maps(
    ground_truth: np.ndarray,
    voxel_size: float = 1.0,
    distribution: str = "top",
    n_views: int | None = None,
    snr: float = DEFAULT_SNR,
    seed: int = 0,
    angles: np.ndarray | None = None,
    *,
    regularisation: float = REGULARISATION,
) -> SimulatedData:
    """Two half maps of a ground truth as a reconstruction from particles would give.

    Noise model. The views (:func:`view_directions`) are split at random into two
    halves. Each view measures its central section of G = FFT(ground truth) plus
    Fourier noise of standard deviation σ per voxel, so after back-projection a half
    holds ``B(k) = W(k)·G(k) + sqrt(W(k))·σ·ν(k)`` with W its sampling density
    (:func:`sampling_density`) and ν unit-variance Hermitian noise (the FFT of real
    white noise, scaled), independent between the halves. The half map is the
    Wiener-regularised reconstruction ``B / (W + λ)`` with ``λ = regularisation ×
    mean(W)`` over the box (per half); on the Nyquist planes of an even box, where k
    and −k alias, W is averaged over the pair so that the half maps are real. Signal
    is thus weighted by W/(W+λ) (≈ 1 where sampled, 0 where W = 0) and the noise
    variance is ≈ σ²/W where W ≫ λ.

    σ is set from ``snr``, the per-view spectral SNR averaged over all non-zero
    frequencies: ``σ² = mean_{k≠0} |G(k)|² / snr = n³ · var(ground truth) / snr``
    (numpy's unnormalised FFT). A shell's own SNR scales with its share of the power,
    so high frequencies of a pseudo-atomic map are much noisier than this mean.

    Parameters
    ----------
    ground_truth : (n, n, n) real map.
    voxel_size : Å per voxel (carried into the result).
    distribution, n_views, angles : see :func:`view_directions` (need ≥ 2 views).
    snr : per-view SNR (> 0).
    seed : random seed (views, the split and the noise).
    regularisation : λ relative to mean(W) (> 0).

    Returns
    -------
    SimulatedData with float32 half maps of the ground truth's shape and a soft mask
    of the ground truth.
    """
    gt = _check_map(ground_truth, "ground_truth")
    voxel_size = _check_positive("voxel_size", voxel_size)
    snr = _check_positive("snr", snr)
    regularisation = _check_positive("regularisation", regularisation)
    n = gt.shape[0]
    dirs = view_directions(distribution, n_views, seed=seed, angles=angles)
    if dirs.shape[0] < 2:
        raise InvalidValueError(f"need at least 2 views to make two halves, got {dirs.shape[0]}")
    split_seq, noise1_seq, noise2_seq = np.random.SeedSequence(seed).spawn(3)
    order = np.random.default_rng(split_seq).permutation(dirs.shape[0])
    half_of_view = np.full(dirs.shape[0], 2, dtype=np.int8)
    half_of_view[order[: dirs.shape[0] // 2]] = 1

    g = np.fft.rfftn(gt.astype(np.float64))
    power = float(n**3 * np.var(gt, dtype=np.float64))
    if power <= 0:
        raise InvalidValueError("ground_truth is constant: there is no signal to simulate")
    sigma = math.sqrt(power / snr)
    halves = []
    densities = []
    for h, seq in ((1, noise1_seq), (2, noise2_seq)):
        w_shift = sampling_density(n, dirs[half_of_view == h])
        w = _hermitian(np.fft.ifftshift(w_shift).astype(np.float64))[:, :, : n // 2 + 1]
        lam = regularisation * float(w_shift.mean(dtype=np.float64))
        white = np.random.default_rng(seq).standard_normal((n, n, n))
        nu = np.fft.rfftn(white) / n**1.5
        rec = (w * g + np.sqrt(w) * sigma * nu) / (w + lam)
        halves.append(np.fft.irfftn(rec, s=gt.shape, axes=(0, 1, 2)).astype(np.float32))
        densities.append(w_shift)
    return SimulatedData(
        gt=gt,
        half1=halves[0],
        half2=halves[1],
        mask=soft_mask(gt),
        density1=densities[0],
        density2=densities[1],
        voxel_size=voxel_size,
        directions=dirs,
        half_of_view=half_of_view,
        noise_sigma=sigma,
    )


def fourier_crop(volume: np.ndarray, new_box: int) -> np.ndarray:
    """Bin a cubic map to a smaller box by cropping its Fourier transform.

    The centred (new_box)³ block of the fftshift-ed FFT is kept, so frequencies up to
    the new Nyquist survive unchanged; the voxel size grows by n / new_box. Values are
    scaled by (new_box / n)³ so the mean density is kept.

    Parameters
    ----------
    volume : (n, n, n) real map.
    new_box : new edge, 2 ≤ new_box ≤ n.

    Returns
    -------
    (new_box, new_box, new_box) float32.
    """
    vol = _check_map(volume, "fourier_crop input")
    n = vol.shape[0]
    if isinstance(new_box, bool) or int(new_box) != new_box or not 2 <= new_box <= n:
        raise InvalidValueError(
            f"fourier_crop: new_box must be an integer in [2, {n}] for a {n}³ map, got {new_box!r}"
        )
    m = int(new_box)
    if m == n:
        return vol.copy()
    f = np.fft.fftshift(np.fft.fftn(vol.astype(np.float64)))
    lo = n // 2 - m // 2
    crop = f[lo : lo + m, lo : lo + m, lo : lo + m]
    out = np.fft.ifftn(np.fft.ifftshift(crop)).real * (m / n) ** 3
    return out.astype(np.float32)


def simulate_dataset(
    box: int | None = None,
    voxel_size: float | None = None,
    distribution: str = "top",
    n_views: int | None = None,
    snr: float = DEFAULT_SNR,
    seed: int = 0,
    from_map: np.ndarray | Map | None = None,
    angles: np.ndarray | None = None,
) -> SimulatedData:
    """Ground truth → :class:`SimulatedData` in one call.

    Without ``from_map`` the ground truth is :func:`make_molecule` (box default 64,
    voxel size default 2.0 Å). With ``from_map`` (an array, or a :class:`~spisonet.io.Map`
    whose voxel size is used) that map is the ground truth; when ``box`` is smaller
    than the map it is binned by :func:`fourier_crop` and the voxel size scaled by
    n / box (e.g. the 128³ CFTR map at 1.3 Å → 64³ at 2.6 Å).

    Parameters
    ----------
    box : box edge of the result, voxels.
    voxel_size : Å per voxel of the molecule, or of an array ``from_map`` (default 1.0
        there); ignored for a Map, which carries its own.
    distribution, n_views, snr, seed, angles : see :func:`simulate_half_maps`.
    from_map : ground-truth map to use instead of a molecule.
    """
    if from_map is None:
        box = 64 if box is None else _check_box(box)
        voxel = 2.0 if voxel_size is None else voxel_size
        gt = make_molecule(box, voxel, seed)
    else:
        if isinstance(from_map, Map):
            data, voxel = from_map.data, from_map.voxel_size
        else:
            data, voxel = from_map, (1.0 if voxel_size is None else voxel_size)
        voxel = _check_positive("voxel_size", voxel)
        gt = _check_map(data, "from_map")
        n = gt.shape[0]
        if box is not None and box != n:
            if box > n:
                raise InvalidValueError(
                    f"box {box} is larger than the {n}³ map given; only binning (a "
                    "smaller box) is supported"
                )
            gt = fourier_crop(gt, box)
            voxel = voxel * n / box
    return simulate_half_maps(gt, voxel, distribution, n_views, snr, seed, angles)
