"""The protein-like test molecule: pseudo-atoms on random-walk chains, rendered to a map.

One pseudo-atom per residue along self-avoiding random-walk chains with 3.8 Å steps,
packed at protein density in an irregular, randomly oriented ellipsoid
(:func:`pseudo_atoms`), rendered as Gaussians with a B-factor (:func:`render_atoms`);
:func:`make_molecule` does both. Positions are (x, y, z) in Å relative to the box centre
(voxel n//2); maps are float32 (n, n, n) indexed [z, y, x].
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .._checks import check_box, check_positive
from ..errors import InvalidValueError

__all__ = [
    "CA_STEP",
    "FILL_FRACTION",
    "MIN_CONTACT",
    "RESIDUE_VOLUME",
    "default_bfactor",
    "make_molecule",
    "pseudo_atoms",
    "render_atoms",
]

#: Distance between consecutive pseudo-atoms of a chain (Cα–Cα), Å.
CA_STEP = 3.8
#: Smallest distance between two pseudo-atoms that are not chain neighbours, Å.
MIN_CONTACT = 4.0
#: Volume per residue in a protein, Å³ (density 1.35 g/cm³, 110 Da per residue).
RESIDUE_VOLUME = 135.0
#: Fraction of the ellipsoid volume that the chains fill.
FILL_FRACTION = 0.6


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
    box = check_box(box)
    voxel_size = check_positive(voxel_size, "voxel_size")
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
    box = check_box(box, minimum=1)
    voxel_size = check_positive(voxel_size, "voxel_size")
    if bfactor is None:
        bfactor = default_bfactor(voxel_size)
    bfactor = check_positive(bfactor, "bfactor")
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
