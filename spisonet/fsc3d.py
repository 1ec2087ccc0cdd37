"""spIsoNet-flavour 3D FSC: per-voxel phase agreement averaged over same-shell neighbours.

Definition (``ALGORITHM.md`` §2, computed in float64):

1. each half map is z-scored over the whole box, then multiplied by the mask;
2. f(k) = Re(F1 F2*) / sqrt(|F1|² |F2|²), F = fftshift(fftn(masked half)); 0 where a
   Fourier coefficient is exactly 0; f(0) = 1 (the zero frequency of a z-scored map is
   round-off with a random sign: the public tool's default limit then depends on luck);
3. default ``limit_res``: mean f on truncated shells int(|k|) = i, i = 0 … n//2 − 1; at the
   first i whose mean is below 0.143, ``limit_res = 2·(n//2)·voxel/(i+1)``; else 2·voxel;
4. ``limit_r = int(2·voxel/limit_res · n/2 + 1)``;
5. out(centre) = 1; for shells s = 1 … limit_r − 1 (s = round(|k|)) and each voxel p of
   shell s, out(p) = mean of f(q) over the voxels q of shell s with |q − p| ≤ s·2·sin(θ/2);
   0 elsewhere;
6. ``keep_highres``: out = max(out, 1 − S), S(k) = clip((r − round|k|)/6, 0, 1) with
   r = limit_r − 2 (a sphere of radius r whose last 5 shells fall off linearly).

How it is fast. The public tool queries a KD-tree per voxel: O(R⁵θ²) work with a large
constant. Here the neighbourhood sum is a sum over *rows* of the grid: for a fixed (u, v),
the voxels of shell s form at most two contiguous runs along the third axis, and so does the
ball, so each row's contribution is two look-ups in a prefix sum along that axis. For each
voxel we run the rows along the axis most parallel to the shell surface there (the axis
where |p| is smallest), so a row holds many neighbours, and we only visit rows that can
reach the shell. f(−k) = f(k), so the result is centrosymmetric: we compute one half of the
voxels and mirror them, except near the edges of an even box (whose −n/2 planes have no
mirror), which are computed directly. The result equals the definition up to float64
round-off of the prefix sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import njit, prange

from .errors import InvalidValueError
from .fourier import frequency_radius

__all__ = [
    "FSC3DResult",
    "default_limit_res",
    "fsc3d",
    "keep_highres_weight",
    "limit_radius",
    "phase_agreement",
]

Progress = Callable[[float], None]


@dataclass(frozen=True)
class FSC3DResult:
    """Output of :func:`fsc3d`.

    Attributes
    ----------
    volume : (n, n, n) float32, fftshift-ed 3D FSC (centre at n//2).
    voxel_size : Å.
    limit_res : resolution limit used, Å.
    limit_r : first shell not computed (shells 1 … limit_r − 1 are).
    limit_res_is_default : True when limit_res came from the 0.143 rule.
    shell_mean : (n//2,) mean of the per-voxel phase agreement on truncated shells
        int(|k|) (the curve the default limit_res is read from).
    """

    volume: np.ndarray
    voxel_size: float
    limit_res: float
    limit_r: int
    limit_res_is_default: bool
    shell_mean: np.ndarray


def _zscore64(volume: np.ndarray) -> np.ndarray:
    v = np.asarray(volume, dtype=np.float64)
    std = v.std()
    if not np.isfinite(std) or std == 0:
        raise InvalidValueError("a half map is constant (std 0); expected a map with contrast")
    return (v - v.mean()) / std


def phase_agreement(
    half1: np.ndarray, half2: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Per-voxel cosine of the phase difference of two half maps, fftshift-ed, float64.

    Steps 1–2 of the definition: z-score each half over the box, multiply by the mask,
    f = Re(F1 F2*)/sqrt(|F1|²|F2|²) (0 where either coefficient is 0). Uses real FFTs and
    f(−k) = f(k) to fill the other half, so f is exactly centrosymmetric.
    """
    n = half1.shape[0]
    a = _zscore64(half1)
    b = _zscore64(half2)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float64)
        a *= m
        b *= m
    f1 = scipy.fft.rfftn(a, workers=-1)
    f2 = scipy.fft.rfftn(b, workers=-1)
    del a, b
    cross = (f1 * np.conj(f2)).real
    denom = np.sqrt((f1.real**2 + f1.imag**2) * (f2.real**2 + f2.imag**2))
    del f1, f2
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(denom > 0, cross / denom, 0.0)
    del cross, denom
    # unshifted full grid: column l > n//2 is the Friedel mate of column n − l
    full = np.empty((n, n, n), dtype=np.float64)
    m_cols = n // 2 + 1
    full[:, :, :m_cols] = half
    if n - m_cols > 0:
        neg = (-np.arange(n)) % n
        cols = n - np.arange(m_cols, n)
        full[:, :, m_cols:] = half[neg][:, neg][:, :, cols]
    del half
    # The zero frequency of a z-scored map is round-off (~1e-12) whose sign is random, so
    # its phase "agreement" is a coin flip of ±1. It alone forms truncated shell 0, so a −1
    # there would set the default limit_res to the coarsest shell. We define it as 1, as
    # the output's centre is.
    full[0, 0, 0] = 1.0
    return np.fft.fftshift(full)


def default_limit_res(agreement: np.ndarray, voxel_size: float, threshold: float = 0.143) -> float:
    """Default resolution limit (Å) from the shell means of the phase agreement (step 3)."""
    return _default_limit(agreement, voxel_size, threshold)[0]


def _default_limit(
    agreement: np.ndarray, voxel_size: float, threshold: float = 0.143
) -> tuple[float, np.ndarray]:
    n = agreement.shape[0]
    half = n // 2
    shells = np.floor(frequency_radius(n)).astype(np.int64).ravel()
    sums = np.bincount(shells, weights=agreement.ravel(), minlength=half)[:half]
    counts = np.bincount(shells, minlength=half)[:half]
    means = sums / np.maximum(counts, 1)
    below = np.nonzero(means < threshold)[0]
    if below.size:
        return 2.0 * half * voxel_size / (below[0] + 1), means
    return 2.0 * voxel_size, means


def limit_radius(limit_res: float, voxel_size: float, n: int) -> int:
    """``limit_r = int(2·voxel/limit_res · n/2 + 1)`` (step 4): shells below it are computed."""
    return int(2.0 * voxel_size / limit_res * (n / 2.0) + 1)


def keep_highres_weight(limit_r: int, n: int) -> np.ndarray:
    """1 − S for ``keep_highres`` (step 6), fftshift-ed float64 (n, n, n)."""
    rad = limit_r - 2
    shell = np.rint(frequency_radius(n))
    return 1.0 - np.clip((rad - shell) / 6.0, 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# geometry tables


def _ball_halfwidths(d: float, dmax: int) -> np.ndarray:
    """wt[a, b] = largest c ≥ 0 with sqrt(a²+b²+c²) ≤ d, or −1 (for 0 ≤ a, b ≤ dmax)."""
    a = np.arange(dmax + 1, dtype=np.float64)
    ab = a[:, None] ** 2 + a[None, :] ** 2
    c = np.arange(dmax + 1, dtype=np.float64)
    inside = np.sqrt(ab[:, :, None] + c[None, None, :] ** 2) <= d  # same test as the definition
    # inside is monotone in c, so the count of True values minus one is the largest c
    return (inside.sum(axis=2) - 1).astype(np.int32)


def _isqrt_floor(x: np.ndarray) -> np.ndarray:
    r = np.floor(np.sqrt(x.astype(np.float64))).astype(np.int64)
    r -= r * r > x
    r += (r + 1) * (r + 1) <= x
    return r


def _isqrt_ceil(x: np.ndarray) -> np.ndarray:
    r = _isqrt_floor(x)
    return r + (r * r < x)


def _shell_tables(limit_r: int, angle_deg: float):
    """Per-shell tables: ball half-widths and, per row radius² c, the shell's run [A, B]."""
    theta = np.deg2rad(angle_deg)
    n_sh = max(limit_r, 1)
    dmaxs = np.zeros(n_sh, dtype=np.int64)
    wt_off = np.zeros(n_sh, dtype=np.int64)
    ab_off = np.zeros(n_sh, dtype=np.int64)
    wts, As, Bs = [], [], []
    pos_w = 0
    pos_ab = 0
    for s in range(1, n_sh):
        d = s * 2.0 * np.sin(theta / 2.0)
        dmax = int(math.floor(d)) + 1  # safety margin; the table says −1 where outside
        wt = _ball_halfwidths(d, dmax)
        dmaxs[s] = dmax
        wt_off[s] = pos_w
        wts.append(wt.ravel())
        pos_w += wt.size
        cmax = s * s + s
        cmin = s * s - s + 1
        c = np.arange(cmax + 1, dtype=np.int64)
        As.append(_isqrt_ceil(np.maximum(cmin - c, 0)).astype(np.int32))
        Bs.append(_isqrt_floor(cmax - c).astype(np.int32))
        ab_off[s] = pos_ab
        pos_ab += cmax + 1
    def cat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(xs).astype(np.int32) if xs else np.zeros(1, np.int32)

    return dmaxs, wt_off, cat(wts), ab_off, cat(As), cat(Bs)


# ---------------------------------------------------------------------------------------
# kernel


@njit(cache=True, nogil=True, parallel=True)
def _neighbourhood_means(
    prefix, pts, shells, out, n, dmaxs, wt_off, wtab, ab_off, atab, btab, n_tasks
):  # pragma: no cover - compiled; its py_func is tested
    kmin = -(n // 2)
    kmax = n - 1 - n // 2
    off = n // 2
    row_len = n + 1
    flat = prefix.reshape(-1)
    m = pts.shape[0]
    # consecutive voxels share most of their rows: each task takes contiguous blocks (rows
    # stay in cache), dealt round-robin for load balance
    block = 256
    n_blocks = (m + block - 1) // block
    for t in prange(n_tasks):
        for blk in range(t, n_blocks, n_tasks):
            for i in range(blk * block, min(m, (blk + 1) * block)):
                out[i] = _one_voxel(
                    flat,
                    pts[i, 0],
                    pts[i, 1],
                    pts[i, 2],
                    shells[i],
                    n,
                    kmin,
                    kmax,
                    off,
                    row_len,
                    dmaxs,
                    wt_off,
                    wtab,
                    ab_off,
                    atab,
                    btab,
                )


@njit(cache=True, nogil=True, inline="always")
def _one_voxel(
    flat, kz, ky, kx, s, n, kmin, kmax, off, row_len, dmaxs, wt_off, wtab, ab_off, atab, btab
):  # pragma: no cover - compiled; its py_func is tested
    az = abs(kz)
    ay = abs(ky)
    ax = abs(kx)
    # rows along the axis where the shell is flattest (smallest |p| component)
    if ax <= ay and ax <= az:
        ai, pu, pv, pw = 2, kz, ky, kx
    elif ay <= az:
        ai, pu, pv, pw = 1, kz, kx, ky
    else:
        ai, pu, pv, pw = 0, ky, kx, kz
    dm = dmaxs[s]
    wo = wt_off[s]
    st = dm + 1
    abo = ab_off[s]
    cmax = s * s + s
    cmin = s * s - s + 1
    total = 0.0
    cnt = 0
    for du in range(-dm, dm + 1):
        u = pu + du
        if u < kmin or u > kmax:
            continue
        uu = u * u
        if uu > cmax:
            continue
        wrow = wo + abs(du) * st
        wb = wtab[wrow]  # widest half-width of the ball in this plane (dv = 0)
        if wb < 0:
            continue
        # rows that can reach the shell: vmin <= |v| <= vmax
        vmax = btab[abo + uu]
        wfar = abs(pw) + wb
        cfar = uu + wfar * wfar
        vmin = 0 if cfar >= cmin else atab[abo + cfar]
        if vmin > vmax:
            continue
        base_u = (ai * n + u + off) * n
        for side in range(2):
            if side == 0:
                lo_v = -vmax if vmin == 0 else vmin
                hi_v = vmax
            else:
                if vmin == 0:
                    break
                lo_v = -vmax
                hi_v = -vmin
            lo_v = max(lo_v, pv - wb, kmin)
            hi_v = min(hi_v, pv + wb, kmax)
            for v in range(lo_v, hi_v + 1):
                wh = wtab[wrow + abs(v - pv)]
                c = uu + v * v
                lo = atab[abo + c]
                hi = btab[abo + c]
                wl = max(pw - wh, kmin)
                wr = min(pw + wh, kmax)
                row = (base_u + v + off) * row_len + off
                # run w in [lo, hi] and its mirror [-hi, -max(lo, 1)], clipped to the ball;
                # an empty clip gives b = a - 1, which adds nothing (no branches)
                a = max(wl, lo)
                b = max(min(wr, hi), a - 1)
                total += flat[row + b + 1] - flat[row + a]
                cnt += b - a + 1
                a = max(wl, -hi)
                b = max(min(wr, -max(lo, 1)), a - 1)
                total += flat[row + b + 1] - flat[row + a]
                cnt += b - a + 1
    return total / cnt


def _row_prefix_sums(agreement: np.ndarray) -> np.ndarray:
    """(3, n, n, n+1) prefix sums along z, y, x with the row axis moved last.

    prefix[0][y, x] runs along z, prefix[1][z, x] along y, prefix[2][z, y] along x.
    """
    n = agreement.shape[0]
    prefix = np.zeros((3, n, n, n + 1), dtype=np.float64)
    np.cumsum(agreement.transpose(1, 2, 0), axis=2, out=prefix[0, :, :, 1:])
    np.cumsum(agreement.transpose(0, 2, 1), axis=2, out=prefix[1, :, :, 1:])
    np.cumsum(agreement, axis=2, out=prefix[2, :, :, 1:])
    return prefix


@njit(cache=True, nogil=True)
def _classify_voxels(n, limit_r, dmaxs, direct_pts, direct_shells, mirror_pts):
    """Fill the voxels to compute and those to mirror; return their counts."""
    h = n // 2
    even = n % 2 == 0
    nd = 0
    nm = 0
    for iz in range(n):
        kz = iz - h
        for iy in range(n):
            ky = iy - h
            for ix in range(n):
                kx = ix - h
                s = int(np.rint(np.sqrt(kz * kz + ky * ky + kx * kx)))
                if s < 1 or s >= limit_r:
                    continue
                positive = kz > 0 or (kz == 0 and (ky > 0 or (ky == 0 and kx > 0)))
                interior = True
                if even:
                    amax = max(abs(kz), abs(ky), abs(kx))
                    interior = amax + dmaxs[s] < h
                if positive or not interior:
                    direct_pts[nd, 0] = kz
                    direct_pts[nd, 1] = ky
                    direct_pts[nd, 2] = kx
                    direct_shells[nd] = s
                    nd += 1
                else:
                    mirror_pts[nm, 0] = kz
                    mirror_pts[nm, 1] = ky
                    mirror_pts[nm, 2] = kx
                    nm += 1
    return nd, nm


def _work_list(n: int, limit_r: int, dmaxs: np.ndarray):
    """Voxels to compute directly (coordinates, shells) and voxels filled by mirroring.

    f(−k) = f(k), so out(−p) = out(p) whenever the neighbourhoods of p and −p are mirror
    images, i.e. always in an odd box and away from the −n/2 planes in an even one.
    """
    n_max = int(min(n**3, 4.2 * limit_r**3 + 64))
    direct = np.empty((n_max, 3), dtype=np.int32)
    shells = np.empty(n_max, dtype=np.int32)
    mirror = np.empty((n_max, 3), dtype=np.int32)
    nd, nm = _classify_voxels(n, limit_r, dmaxs.astype(np.int64), direct, shells, mirror)
    return direct[:nd].copy(), shells[:nd].copy(), mirror[:nm].copy()


def _neighbourhood_average(
    agreement: np.ndarray,
    limit_r: int,
    angle_deg: float,
    progress: Progress | None = None,
    kernel=None,
) -> np.ndarray:
    n = agreement.shape[0]
    out = np.zeros((n, n, n), dtype=np.float64)
    out[n // 2, n // 2, n // 2] = 1.0
    limit_r = min(limit_r, int(np.ceil(np.sqrt(3) * (n // 2 + 1))) + 1)
    if limit_r <= 1:
        return out
    dmaxs, wt_off, wtab, ab_off, atab, btab = _shell_tables(limit_r, angle_deg)
    pts, shells, mirrored = _work_list(n, limit_r, dmaxs)
    prefix = _row_prefix_sums(agreement)
    kernel = _neighbourhood_means if kernel is None else kernel
    values = np.empty(len(pts), dtype=np.float64)
    # equal-cost batches (cost per voxel grows like its neighbourhood, ~ s²) for progress
    cost = np.cumsum(shells.astype(np.float64) ** 2 + 1.0)
    n_batches = int(min(40, max(1, len(pts) // 20000)))
    bounds = np.searchsorted(cost, np.linspace(0, cost[-1], n_batches + 1)[1:-1])
    edges = [0, *bounds.tolist(), len(pts)]
    for j in range(len(edges) - 1):
        lo, hi = edges[j], edges[j + 1]
        if hi > lo:
            kernel(
                prefix,
                pts[lo:hi],
                shells[lo:hi],
                values[lo:hi],
                n,
                dmaxs,
                wt_off,
                wtab,
                ab_off,
                atab,
                btab,
                64,
            )
        if progress is not None:
            progress((j + 1) / (len(edges) - 1))
    off = n // 2
    out[pts[:, 0] + off, pts[:, 1] + off, pts[:, 2] + off] = values
    mz, my, mx = mirrored[:, 0], mirrored[:, 1], mirrored[:, 2]
    out[mz + off, my + off, mx + off] = out[off - mz, off - my, off - mx]
    return out


def fsc3d(
    half1: np.ndarray,
    half2: np.ndarray,
    voxel_size: float = 1.0,
    mask: np.ndarray | None = None,
    limit_res: float | None = None,
    cone_sampling_angle: float = 10.0,
    keep_highres: bool = False,
    progress: Progress | None = None,
) -> FSC3DResult:
    """spIsoNet-flavour 3D FSC of two half maps (see the module docstring for the definition).

    Parameters
    ----------
    half1, half2 : (n, n, n) half maps, [z, y, x].
    voxel_size : Å per voxel.
    mask : (n, n, n) soft mask applied after z-scoring (None: all ones).
    limit_res : Å; shells finer than this are left at 0 (None: the 0.143 rule).
    cone_sampling_angle : θ in degrees; neighbours within the chord s·2·sin(θ/2).
    keep_highres : set the region beyond the limit to 1 (soft edge), step 6.
    progress : called with the fraction done (0–1) during the neighbourhood averaging.

    Returns
    -------
    FSC3DResult with the (n, n, n) float32 volume, fftshift-ed.
    """
    if half1.shape != half2.shape or half1.ndim != 3 or len(set(half1.shape)) != 1:
        raise InvalidValueError(
            f"fsc3d needs two cubic half maps of equal shape, got {half1.shape} and {half2.shape}"
        )
    if mask is not None and mask.shape != half1.shape:
        raise InvalidValueError(f"mask shape {mask.shape} differs from the maps' {half1.shape}")
    if not 0.0 < cone_sampling_angle <= 180.0:
        raise InvalidValueError(
            f"cone_sampling_angle must be in (0, 180] degrees, got {cone_sampling_angle}"
        )
    if limit_res is not None and not limit_res > 0:
        raise InvalidValueError(f"limit_res must be a positive resolution in Å, got {limit_res}")
    n = half1.shape[0]
    agreement = phase_agreement(half1, half2, mask)
    default_res, shell_mean = _default_limit(agreement, voxel_size)
    is_default = limit_res is None
    if limit_res is None:
        limit_res = default_res
    limit_r = limit_radius(limit_res, voxel_size, n)
    out = _neighbourhood_average(agreement, limit_r, cone_sampling_angle, progress)
    del agreement
    if keep_highres:
        np.maximum(out, keep_highres_weight(limit_r, n), out=out)
    return FSC3DResult(
        volume=out.astype(np.float32),
        voxel_size=float(voxel_size),
        limit_res=float(limit_res),
        limit_r=int(limit_r),
        limit_res_is_default=is_default,
        shell_mean=shell_mean,
    )
