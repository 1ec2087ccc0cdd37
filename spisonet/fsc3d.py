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

How it is fast. The public tool queries a KD-tree per voxel from a process pool: O(R⁵θ²)
work with a large constant (642 s at 256³ on 2 cores). Here:

* **Rows instead of voxels.** On a grid row (fixed u, v, running along w) the voxels of
  shell s form at most two contiguous runs, and so does the ball around p. We store, per
  shell and axis, each row's runs with their running sums, so a row's contribution to a
  neighbourhood mean is one difference of two stored numbers. For each voxel the rows
  run along the axis where |p| is smallest, i.e. most parallel to the shell surface, so a
  row holds many neighbours; only rows that can reach the shell are visited.
* **Runs of voxels share their rows.** Consecutive voxels of a shell along that axis visit
  exactly the same rows; the ball's window only slides by one voxel. They are processed
  together: each row's data are loaded once for the whole run (4–5 voxels on average).
* **Symmetry.** f(−k) = f(k), so the result is centrosymmetric: one half of the voxels is
  computed and mirrored, except near the −n/2 planes of an even box, which have no mirror
  and are computed directly.
* **Layout.** One shell's rows are stored together in (u, v) order, so a neighbourhood's
  data are close in memory; numba runs the runs in parallel blocks.

The result equals the definition up to float64 round-off of the running sums (the tests
compare it with a brute-force statement to 1e-5; the observed difference is ~3e-8, the
float32 rounding of the output).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import njit, prange

from ._checks import check_contrast, check_limit_res, check_mask_values
from ._compat import renamed_parameter
from .errors import InvalidValueError, MapShapeError
from .fourier import frequency_radius
from .progress import Progress

__all__ = [
    "FSC3DResult",
    "default_limit_res",
    "fsc3d",
    "keep_highres_weight",
    "limit_radius",
    "phase_agreement",
    "support_limit",
]


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
    m = None if mask is None else np.asarray(mask, dtype=np.float64)

    def spectrum(half: np.ndarray) -> np.ndarray:
        v = _zscore64(half)
        if m is not None:
            v *= m
        return scipy.fft.rfftn(v, workers=-1, overwrite_x=True)

    # one half at a time, and the ratio in place: peak ~3 n³ doubles instead of ~7
    f1 = spectrum(half1)
    f2 = spectrum(half2)
    half = np.empty(f1.shape, dtype=np.float64)
    _phase_cosine(f1, f2, half)
    del f1, f2
    full = np.empty((n, n, n), dtype=np.float64)
    _expand_friedel(half, full)
    del half
    # The zero frequency of a z-scored map is round-off (~1e-12) whose sign is random, so
    # its phase "agreement" is a coin flip of ±1. It alone forms truncated shell 0, so a −1
    # there would set the default limit_res to the coarsest shell. We define it as 1, as
    # the output's centre is.
    full[n // 2, n // 2, n // 2] = 1.0
    return full


@njit(cache=True, nogil=True, parallel=True)
def _phase_cosine(f1, f2, out):  # pragma: no cover - compiled
    """out = Re(f1 f2*) / sqrt(|f1|²|f2|²), 0 where the denominator is 0."""
    nz, ny, nx = f1.shape
    for iz in prange(nz):
        for iy in range(ny):
            for ix in range(nx):
                a = f1[iz, iy, ix]
                b = f2[iz, iy, ix]
                den = np.sqrt(
                    (a.real * a.real + a.imag * a.imag) * (b.real * b.real + b.imag * b.imag)
                )
                num = a.real * b.real + a.imag * b.imag
                out[iz, iy, ix] = num / den if den > 0 else 0.0


@njit(cache=True, nogil=True, parallel=True)
def _expand_friedel(half, full):  # pragma: no cover - compiled
    """fftshift-ed full grid from an rfftn-layout half grid of a centrosymmetric function."""
    n = full.shape[0]
    h = n // 2
    m = half.shape[2]
    for iz in prange(n):
        fz = (iz - h) % n
        gz = (-(iz - h)) % n
        for iy in range(n):
            fy = (iy - h) % n
            gy = (-(iy - h)) % n
            for ix in range(n):
                kx = ix - h
                if 0 <= kx < m:
                    full[iz, iy, ix] = half[fz, fy, kx]
                else:
                    full[iz, iy, ix] = half[gz, gy, (-kx) % n]


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


def support_limit(volume: np.ndarray, voxel_size: float) -> float | None:
    """The resolution (Å) of the outermost shell where a 3D FSC volume holds data.

    ``volume``: (m, m, m) fftshift-ed 3D FSC (centre at m//2) with ``voxel_size`` Å per
    voxel. Its *support* is the set of voxels with a non-zero value; with ``r`` the largest
    distance of one from the centre, the limit is ``m · voxel_size / floor(r)``. For
    :func:`fsc3d`'s volumes this is its ``limit_res``. None when nothing beyond the
    centre voxel is non-zero (no resolution to speak of).
    """
    v = np.asarray(volume)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise MapShapeError(f"the 3D FSC must be a cubic 3D array; found shape {v.shape}")
    m = v.shape[0]
    radius = frequency_radius(m)
    inside = np.abs(v) > 1e-6
    if not inside.any():
        return None
    r = int(np.floor(radius[inside].max() + 1e-9))
    return None if r < 1 else m * float(voxel_size) / r


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


@njit(cache=True, nogil=True, inline="always")
def _row_run(side, c, cmax, abo, atab, btab, kmin, kmax):  # pragma: no cover - compiled
    """First and last w of the run of shell s on the row at u² + v² = c, inside the box.

    ``side`` 0 is the run w ≥ 0 (w in [lo, hi]), side 1 its mirror w < 0 (w in
    [−hi, −max(lo, 1)]); lo/hi come from the shell's tables. Empty: last < first.
    """
    if c > cmax:
        return 1, 0
    lo = atab[abo + c]
    hi = btab[abo + c]
    if side == 0:
        return max(lo, kmin), min(hi, kmax)
    return max(-hi, kmin), min(-max(lo, 1), kmax)


@njit(cache=True, nogil=True, parallel=True)
def _build_rows(f, limit_r, ab_off, atab, btab, row_base, starts, rows, values, sizes, fill):
    """Per shell and row axis, the shell's runs along each grid row with their prefix sums.

    For axis ``ai`` the row coordinates are (u, v) and the run runs along w:
    ai = 0: (u, v, w) = (y, x, z); ai = 1: (z, x, y); ai = 2: (z, y, x). The row of (u, v)
    of shell s is ``row_base[s] + (u + s)(2s + 1) + (v + s)``; its runs (:func:`_row_run`)
    are the w with round(|(u, v, w)|) = s inside the box. ``rows`` holds one int32 per
    row: where its data start in ``values``, which holds, for each non-empty run, 0
    followed by the running sums of f along it (the w < 0 run right after the w ≥ 0 one),
    so a run's slice sum is a difference of two neighbouring-in-memory numbers. A run's
    bounds are recomputed from the tables when it is read, not stored: 4 bytes per row
    instead of 24 (1.3 GiB less at 512³). One shell's rows are stored together, in (u, v)
    order, which keeps a voxel's neighbourhood in cache. With ``fill`` False only
    ``sizes[ai, s]`` (the values each axis and shell needs) is set.
    """
    n = f.shape[0]
    off = n // 2
    kmin = -off
    kmax = n - 1 - off
    n_rows = row_base[limit_r]
    for ai in range(3):
        for s in prange(1, limit_r):
            cmax = s * s + s
            abo = ab_off[s]
            width = 2 * s + 1
            pos = starts[ai, s]
            size = 0
            for u in range(-s, s + 1):
                for v in range(-s, s + 1):
                    r = ai * n_rows + row_base[s] + (u + s) * width + (v + s)
                    inside = kmin <= u <= kmax and kmin <= v <= kmax
                    if fill:
                        rows[r] = pos
                    if not inside:
                        continue
                    c = u * u + v * v
                    for side in range(2):
                        w0, w1 = _row_run(side, c, cmax, abo, atab, btab, kmin, kmax)
                        if w1 < w0:
                            continue
                        size += w1 - w0 + 2
                        if not fill:
                            continue
                        acc = 0.0
                        values[pos] = 0.0
                        for w in range(w0, w1 + 1):
                            if ai == 0:
                                acc += f[w + off, u + off, v + off]
                            elif ai == 1:
                                acc += f[u + off, w + off, v + off]
                            else:
                                acc += f[u + off, v + off, w + off]
                            pos += 1
                            values[pos] = acc
                        pos += 1
            sizes[ai, s] = size


#: Longest run of voxels processed together (bounds the per-run accumulators).
_MAX_RUN = 64


@njit(cache=True, nogil=True, parallel=True)
def _neighbourhood_means(
    rows, values, row_base, runs, out, n, dmaxs, wt_off, wtab, ab_off, atab, btab, n_tasks
):  # pragma: no cover - compiled; its py_func is tested
    """out[p] for every voxel p of every run (ai, u, v, w_first, length, s).

    The voxels of a run lie on one grid row along the axis ``ai`` and in one shell, so they
    visit exactly the same rows of the shell: each row's run data are loaded once and
    serve all of them; only the ball's window slides by one voxel from one to the next.
    """
    m = runs.shape[0]
    n_rows = row_base[len(row_base) - 1]
    off = n // 2
    block = 16
    n_blocks = (m + block - 1) // block
    for t in prange(n_tasks):
        total = np.empty(_MAX_RUN, dtype=np.float64)
        cnt = np.empty(_MAX_RUN, dtype=np.int64)
        for blk in range(t, n_blocks, n_tasks):
            for i in range(blk * block, min(m, (blk + 1) * block)):
                ai = runs[i, 0]
                pu = runs[i, 1]
                pv = runs[i, 2]
                pw0 = runs[i, 3]
                length = runs[i, 4]
                s = runs[i, 5]
                _run_sums(
                    rows,
                    values,
                    row_base,
                    n_rows,
                    ai,
                    pu,
                    pv,
                    pw0,
                    length,
                    s,
                    n,
                    dmaxs,
                    wt_off,
                    wtab,
                    ab_off,
                    atab,
                    btab,
                    total,
                    cnt,
                )
                for j in range(length):
                    w = pw0 + j + off
                    mean = total[j] / cnt[j]
                    if ai == 2:
                        out[pu + off, pv + off, w] = mean
                    elif ai == 1:
                        out[pu + off, w, pv + off] = mean
                    else:
                        out[w, pu + off, pv + off] = mean


@njit(cache=True, nogil=True)
def _run_sums(
    rows,
    values,
    row_base,
    n_rows,
    ai,
    pu,
    pv,
    pw0,
    length,
    s,
    n,
    dmaxs,
    wt_off,
    wtab,
    ab_off,
    atab,
    btab,
    total,
    cnt,
):  # pragma: no cover - compiled; its py_func is tested
    kmin = -(n // 2)
    kmax = n - 1 - n // 2
    dm = dmaxs[s]
    wo = wt_off[s]
    st = dm + 1
    abo = ab_off[s]
    cmax = s * s + s
    cmin = s * s - s + 1
    width = 2 * s + 1
    shell_rows = ai * n_rows + row_base[s] + s
    pw1 = pw0 + length - 1
    wnear_abs = max(abs(pw0), abs(pw1))  # farthest |w| of the run, for the row bound
    for j in range(length):
        total[j] = 0.0
        cnt[j] = 0
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
        # rows that can reach the shell from some voxel of the run: vmin <= |v| <= vmax
        vmax = btab[abo + uu]
        wfar = wnear_abs + wb
        cfar = uu + wfar * wfar
        vmin = 0 if cfar >= cmin else atab[abo + cfar]
        if vmin > vmax:
            continue
        plane = shell_rows + (u + s) * width
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
                start = rows[plane + v]
                c = uu + v * v
                for side in range(2):
                    w0, w1 = _row_run(side, c, cmax, abo, atab, btab, kmin, kmax)
                    if w1 < w0:
                        continue
                    base = start - w0
                    start += w1 - w0 + 2  # the w < 0 run follows this one's data
                    if w1 < pw0 - wh or w0 > pw1 + wh:
                        continue  # this run is out of reach of every voxel
                    # the ball's window [pw - wh, pw + wh] slides with pw; clip it to the
                    # run; an empty clip gives b = a − 1, which adds nothing
                    for j in range(length):
                        pw = pw0 + j
                        a = min(max(pw - wh, w0), w1 + 1)
                        b = max(min(pw + wh, w1), a - 1)
                        total[j] += values[base + b + 1] - values[base + a]
                        cnt[j] += b - a + 1


def _row_layout(agreement: np.ndarray, limit_r: int, ab_off, atab, btab):
    """Build the per-row runs of every shell along each axis: (rows, values, row_base)."""
    widths = (2 * np.arange(limit_r, dtype=np.int64) + 1) ** 2
    widths[0] = 0
    row_base = np.zeros(limit_r + 1, dtype=np.int64)
    row_base[1:] = np.cumsum(widths)
    n_rows = int(row_base[-1])
    rows = np.zeros(3 * n_rows, dtype=np.int32)
    sizes = np.zeros((3, limit_r), dtype=np.int64)
    empty = np.zeros(1, dtype=np.float64)
    # first pass: how many values each (axis, shell) needs (its voxels + one 0 per run)
    _build_rows(agreement, limit_r, ab_off, atab, btab, row_base, sizes, rows, empty, sizes, False)
    ends = np.cumsum(sizes.ravel())
    starts = np.concatenate([[0], ends[:-1]]).reshape(3, limit_r)
    if ends[-1] >= 2**31:
        raise InvalidValueError(f"box {agreement.shape[0]} is too large for the 3D FSC layout")
    values = np.empty(max(int(ends[-1]), 1), dtype=np.float64)
    values[0] = 0.0
    _build_rows(agreement, limit_r, ab_off, atab, btab, row_base, starts, rows, values, sizes, True)
    return rows, values, row_base


@njit(cache=True, nogil=True)
def _row_axis(kz, ky, kx):  # pragma: no cover - compiled
    """Axis of the rows used for voxel k: the one where |k| is smallest (z=0, y=1, x=2)."""
    az = abs(kz)
    ay = abs(ky)
    ax = abs(kx)
    if ax <= ay and ax <= az:
        return 2
    if ay <= az:
        return 1
    return 0


@njit(cache=True, nogil=True)
def _classify_voxels(n, limit_r, dmaxs, runs):  # pragma: no cover - compiled
    """Group the voxels to compute directly into runs along their row axis.

    Returns the number of runs.
    """
    h = n // 2
    even = n % 2 == 0
    kmin = -h
    kmax = n - 1 - h
    nr = 0
    r2max = (limit_r + 0.5) ** 2
    for ai in range(3):
        for u in range(kmin, kmax + 1):
            for v in range(kmin, kmax + 1):
                rest = r2max - u * u - v * v
                if rest < 0:
                    continue
                wlim = int(np.sqrt(rest)) + 1
                run_open = False
                for w in range(max(kmin, -wlim), min(kmax, wlim) + 1):
                    if ai == 2:
                        kz, ky, kx = u, v, w
                    elif ai == 1:
                        kz, ky, kx = u, w, v
                    else:
                        kz, ky, kx = w, u, v
                    s = int(np.rint(np.sqrt(kz * kz + ky * ky + kx * kx)))
                    take = 1 <= s < limit_r and _row_axis(kz, ky, kx) == ai
                    if take and _mirrored(kz, ky, kx, s, h, even, dmaxs):
                        take = False
                    if not take:
                        run_open = False
                        continue
                    if run_open and runs[nr - 1, 5] == s and runs[nr - 1, 4] < _MAX_RUN:
                        runs[nr - 1, 4] += 1
                    else:
                        runs[nr, 0] = ai
                        runs[nr, 1] = u
                        runs[nr, 2] = v
                        runs[nr, 3] = w
                        runs[nr, 4] = 1
                        runs[nr, 5] = s
                        nr += 1
                        run_open = True
    return nr


@njit(cache=True, nogil=True, inline="always")
def _mirrored(kz, ky, kx, s, h, even, dmaxs):  # pragma: no cover - compiled
    """True when voxel k takes its value from −k instead of being computed.

    f(−k) = f(k), so out(−p) = out(p) whenever the neighbourhoods of p and −p are mirror
    images: always in an odd box, and away from the −n/2 planes in an even one. Of each
    such pair the voxel in the "negative" half (first non-zero of z, y, x below 0) mirrors.
    """
    positive = kz > 0 or (kz == 0 and (ky > 0 or (ky == 0 and kx > 0)))
    if positive:
        return False
    if even:
        return max(abs(kz), abs(ky), abs(kx)) + dmaxs[s] < h
    return True


@njit(cache=True, nogil=True, parallel=True)
def _fill_mirrored(out, limit_r, dmaxs):  # pragma: no cover - compiled
    """out[k] = out[−k] for every voxel that :func:`_mirrored` says is a mirror."""
    n = out.shape[0]
    h = n // 2
    even = n % 2 == 0
    for iz in prange(n):
        kz = iz - h
        for iy in range(n):
            ky = iy - h
            for ix in range(n):
                kx = ix - h
                s = int(np.rint(np.sqrt(kz * kz + ky * ky + kx * kx)))
                if 1 <= s < limit_r and _mirrored(kz, ky, kx, s, h, even, dmaxs):
                    out[iz, iy, ix] = out[h - kz, h - ky, h - kx]


def _work_list(n: int, limit_r: int, dmaxs: np.ndarray) -> np.ndarray:
    """Runs (axis, u, v, first w, length, shell) of voxels to compute directly (int16)."""
    if n > 32000:
        raise InvalidValueError(f"box {n} is too large for the 3D FSC (at most 32000)")
    n_max = int(min(n**3, 4.2 * limit_r**3 + 64))
    # pages of the oversized buffer that are never written cost no memory
    runs = np.empty((n_max, 6), dtype=np.int16)
    nr = _classify_voxels(n, limit_r, dmaxs.astype(np.int64), runs)
    return runs[:nr].copy()


@dataclass
class _Layout:
    """Everything the kernel needs; built from the phase agreement, which can then go."""

    n: int
    limit_r: int
    tables: tuple
    runs: np.ndarray
    rows: np.ndarray
    values: np.ndarray
    row_base: np.ndarray


def _prepare(agreement: np.ndarray, limit_r: int, angle_deg: float) -> _Layout:
    n = agreement.shape[0]
    # shells beyond the box corners are empty
    limit_r = max(1, min(limit_r, int(np.ceil(np.sqrt(3) * (n // 2 + 1))) + 1))
    tables = _shell_tables(limit_r, angle_deg)
    if limit_r <= 1:
        empty = np.zeros((0, 6), dtype=np.int16)
        return _Layout(n, limit_r, tables, empty, empty, empty, empty)
    dmaxs, _, _, ab_off, atab, btab = tables
    runs = _work_list(n, limit_r, dmaxs)
    rows, values, row_base = _row_layout(agreement, limit_r, ab_off, atab, btab)
    return _Layout(n, limit_r, tables, runs, rows, values, row_base)


def _average(layout: _Layout, progress: Progress | None = None, kernel=None) -> np.ndarray:
    """Run the kernel over the layout: the (n, n, n) float32 neighbourhood means."""
    n = layout.n
    out = np.zeros((n, n, n), dtype=np.float32)
    out[n // 2, n // 2, n // 2] = 1.0
    runs = layout.runs
    if len(runs):
        kernel = _neighbourhood_means if kernel is None else kernel
        # equal-cost batches for progress (a run's cost grows like its shell's neighbourhood)
        cost = np.cumsum(runs[:, 5].astype(np.float64) ** 2 * (1.0 + 0.3 * runs[:, 4]))
        n_batches = int(min(40, max(1, len(runs) // 5000)))
        bounds = np.searchsorted(cost, np.linspace(0, cost[-1], n_batches + 1)[1:-1])
        edges = [0, *bounds.tolist(), len(runs)]
        for j in range(len(edges) - 1):
            lo, hi = edges[j], edges[j + 1]
            if hi > lo:
                kernel(
                    layout.rows,
                    layout.values,
                    layout.row_base,
                    runs[lo:hi],
                    out,
                    n,
                    *layout.tables,
                    64,
                )
            if progress is not None:
                progress("fsc3d", j + 1, len(edges) - 1)
    if layout.limit_r > 1:
        _fill_mirrored(out, layout.limit_r, layout.tables[0].astype(np.int64))
    if progress is not None:
        progress("fsc3d", 1, 1)
    return out


def _neighbourhood_average(
    agreement: np.ndarray,
    limit_r: int,
    angle_deg: float,
    progress: Progress | None = None,
    kernel=None,
) -> np.ndarray:
    """Steps 5 of the definition on a phase-agreement volume (float32 result)."""
    return _average(_prepare(agreement, limit_r, angle_deg), progress, kernel)


@renamed_parameter("cone_sampling_angle", "cone_angle")
def fsc3d(
    half1: np.ndarray,
    half2: np.ndarray,
    voxel_size: float = 1.0,
    mask: np.ndarray | None = None,
    limit_res: float | None = None,
    cone_angle: float = 10.0,
    keep_highres: bool = False,
    progress: Progress | None = None,
) -> FSC3DResult:
    """spIsoNet-flavour 3D FSC of two half maps (see the module docstring for the definition).

    Parameters
    ----------
    half1, half2 : (n, n, n) half maps, [z, y, x].
    voxel_size : Å per voxel.
    mask : (n, n, n) soft mask applied after z-scoring (None: all ones).
    limit_res : Å; shells finer than this are left at 0 (None: the 0.143 rule); from
        Nyquist (2·voxel_size) to the box (n·voxel_size), else InvalidValueError.
    cone_angle : θ, the cone half-angle in degrees (the public tool's
        ``cone_sampling_angle``); neighbours within the chord s·2·sin(θ/2).
    keep_highres : set the region beyond the limit to 1 (soft edge), step 6.
    progress : :class:`spisonet.progress.Progress`, called as ``("fsc3d", done, total)``
        during the neighbourhood averaging.

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
    if not 0.0 < cone_angle <= 180.0:
        raise InvalidValueError(f"cone_angle must be in (0, 180] degrees, got {cone_angle}")
    n = half1.shape[0]
    if limit_res is not None:  # the same rule as reconstruct: 2·voxel ≤ limit_res ≤ n·voxel
        limit_res = check_limit_res(limit_res, voxel_size, n)
    if mask is not None:
        check_mask_values(mask, "the mask")
    check_contrast(half1, "half map 1", mask)
    check_contrast(half2, "half map 2", mask)
    agreement = phase_agreement(half1, half2, mask)
    default_res, shell_mean = _default_limit(agreement, voxel_size)
    is_default = limit_res is None
    if limit_res is None:
        limit_res = default_res
    limit_r = limit_radius(limit_res, voxel_size, n)
    layout = _prepare(agreement, limit_r, cone_angle)
    del agreement  # the layout holds what the kernel needs; free ~n³ doubles before it runs
    out = _average(layout, progress)
    del layout
    if keep_highres:
        np.maximum(out, keep_highres_weight(limit_r, n), out=out)
    return FSC3DResult(
        volume=out,
        voxel_size=float(voxel_size),
        limit_res=float(limit_res),
        limit_r=int(limit_r),
        limit_res_is_default=is_default,
        shell_mean=shell_mean,
    )
