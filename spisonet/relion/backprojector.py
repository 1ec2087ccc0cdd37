"""RELION 3.1's ``BackProjector::reconstruct``, ported step for step in float64.

Pure numerics on arrays (no files): :func:`reconstruct_arrays` turns the padded
half-complex Fourier data and weights that ``relion_refine --external_reconstruct`` writes
into the map ``relion_external_reconstruct`` would write (trilinear interpolation, C1,
``minres_map = -1``, ``normalise = 1``), or, with ``minres_map = 5``, the one
``relion_refine`` makes itself when it does not call an external program (its
``--minres_map`` default: no Wiener term below shell 5):

1. ``r_max = min(current_size, ori_size) // 2``, ``R = ROUND(pad * r_max)``; the Fourier
   components with ``|k|² < R²`` are copied from the files (size ``P = ROUND(pad * ori)``)
   onto an odd working grid of ``2 (R + 1) + 1`` voxels.
2. Wiener term (``--no_map`` off), in shells ``ires = ROUND(|k| / pad) >= minres_map``:
   the weight gains ``1 / (pad³ · fudge · tau2[ires])`` where tau2 > 0, and
   ``1000 × weight`` where tau2 < 1e-20.
3. Gridding pre-conditioning (10 iterations, after Pipe & Menon 1999): start from 1
   inside ``R``, multiply by the weight, convolve with the Fourier transform of a
   Kaiser-Bessel blob (radius 3.8, alpha 15, order 0; via real space on the working
   grid, from a 10 000-entry table), divide by the result. ``--skip_gridding`` instead
   divides the data by max(weight, 1/1000 of the shell's mean weight).
4. The data times that weight go into an even grid of ``ROUND(pad * ori)`` (rounded up to
   even) voxels, are inverse transformed, centred, cropped to ``ori`` voxels and divided by
   ``pad³ · ori``.
5. Soft spherical mask (radius ori/2, 3-voxel cosine edge, outside set to the mean of the
   edge), then division by sinc² (trilinear gridding correction).

RELION rounds halves away from zero (``ROUND(x) = (int)(x + 0.5)`` for x > 0); numpy
rounds them to even, so this module uses ``floor(x + 0.5)`` wherever RELION uses ROUND.
RELION is built in double precision (``Precision: BASE=double``): all arithmetic here is
float64 and only the result is float32.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import InvalidValueError, MapShapeError

__all__ = [
    "BLOB_ALPHA",
    "BLOB_ORDER",
    "BLOB_RADIUS",
    "BLOB_TABLE_SIZE",
    "blob_fourier_table",
    "reconstruct_arrays",
    "relion_round",
]

#: Blob RELION's BackProjector uses: radius 1.9 * 2 (fixed since 2017), alpha 15, order 0.
BLOB_RADIUS = 3.8
BLOB_ALPHA = 15.0
BLOB_ORDER = 0
#: Entries of RELION's tabulated blob Fourier transform (sampling 0.5 / entries).
BLOB_TABLE_SIZE = 10000

# Numerical Recipes' polynomial coefficients for I0 (RELION's bessi0), lowest order first.
_I0_SMALL = (1.0, 3.5156229, 3.0899424, 1.2067492, 0.2659732, 0.360768e-1, 0.45813e-2)
_I0_LARGE = (
    0.39894228,
    0.1328592e-1,
    0.225319e-2,
    -0.157565e-2,
    0.916281e-2,
    -0.2057706e-1,
    0.2635537e-1,
    -0.1647633e-1,
    0.392377e-2,
)


def relion_round(x: float) -> int:
    """RELION's ROUND: halves away from zero."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def _horner(coefficients: tuple[float, ...], y: float) -> float:
    """c0 + y·(c1 + y·(c2 + …)), evaluated in RELION's order."""
    acc = coefficients[-1]
    for c in reversed(coefficients[:-1]):
        acc = c + y * acc
    return acc


def _bessi0(x: float) -> float:
    """Modified Bessel I0 (Numerical Recipes' polynomial, as RELION; cancels in ratios)."""
    ax = abs(x)
    if ax < 3.75:
        return _horner(_I0_SMALL, (x / 3.75) ** 2)
    return (math.exp(ax) / math.sqrt(ax)) * _horner(_I0_LARGE, 3.75 / ax)


def _kaiser_fourier_value(w: np.ndarray, a: float, alpha: float) -> np.ndarray:
    """3D Fourier transform of an order-0 Kaiser-Bessel blob at frequencies w (1/voxel).

    Valid where 2πaw <= alpha (RELION's table never reaches beyond: w <= 0.5).
    """
    two_pi = 2.0 * math.pi
    sigma = np.sqrt(np.abs(alpha * alpha - (two_pi * a * w) * (two_pi * a * w)))
    i15 = np.sqrt(2.0 / (math.pi * sigma)) * (np.cosh(sigma) - np.sinh(sigma) / sigma)
    return two_pi**1.5 * a**3 * i15 / (_bessi0(alpha) * sigma**1.5)


def blob_fourier_table(size: int = BLOB_TABLE_SIZE) -> np.ndarray:
    """RELION's tabulated blob Fourier transform, normalised to 1 at frequency 0.

    Entry i holds the value at ``i * 0.5 / size`` (1/voxel); RELION looks values up by
    truncation (``int(|w| / sampling)``) and returns 0 beyond the table.
    """
    if size < 2:
        raise InvalidValueError(f"blob table size is {size}, expected >= 2")
    sampling = 0.5 / float(size)
    w = np.arange(size, dtype=np.float64) * sampling
    table = _kaiser_fourier_value(w, BLOB_RADIUS, BLOB_ALPHA)
    return table / table[0]


# --------------------------------------------------------------------------------------
# Index conventions


def _relion_fft_index(n: int, axis_half: int) -> np.ndarray:
    """Logical frequency of each index of an FFTW axis as RELION's loops compute it.

    ``FOR_ALL_ELEMENTS_IN_FFTW_TRANSFORM``: index k maps to k if k < XSIZE (= n//2 + 1)
    else k - n; so an even axis's Nyquist index is +n/2 (numpy says -n/2).
    """
    k = np.arange(n)
    return np.where(k < axis_half, k, k - n)


def _radius2(n: int) -> np.ndarray:
    """|k|² on RELION's (n, n, n//2+1) half-complex grid (int64)."""
    half = n // 2 + 1
    k = _relion_fft_index(n, half)
    j = np.arange(half)
    return k[:, None, None] ** 2 + k[None, :, None] ** 2 + j[None, None, :] ** 2


def _shell_of(r2: np.ndarray, pad: float, *, floor: bool = False) -> np.ndarray:
    """RELION's ROUND(sqrt(r2) / pad) (or FLOOR), int64."""
    x = np.sqrt(r2.astype(np.float64)) / float(pad)
    return (np.floor(x) if floor else np.floor(x + 0.5)).astype(np.int64)


def _centred_radius(n: int) -> np.ndarray:
    """Distance (voxels) of each voxel of an n³ real-space box from its centre n // 2."""
    c = np.arange(n) - n // 2
    return np.sqrt(
        (c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2).astype(float)
    )


# --------------------------------------------------------------------------------------
# The steps


def _check_inputs(data: np.ndarray, weight: np.ndarray) -> int:
    """P of (P, P, P//2+1) data and weight arrays of the same shape."""
    if data.ndim != 3 or weight.ndim != 3:
        raise MapShapeError(
            f"Fourier data and weight must be 3D, found {data.shape} and {weight.shape}"
        )
    if data.shape != weight.shape:
        raise MapShapeError(
            f"Fourier data shape {data.shape} differs from weight shape {weight.shape}"
        )
    p = data.shape[0]
    if data.shape != (p, p, p // 2 + 1):
        raise MapShapeError(
            f"Fourier data has shape {data.shape}; expected half-complex (P, P, P//2+1)"
        )
    return p


def _to_working_grid(
    data: np.ndarray, weight: np.ndarray, n: int, max_r2: int
) -> tuple[np.ndarray, np.ndarray]:
    """Step 1: the components with |k|² < max_r2 of the file grid on the n³ working grid."""
    p = data.shape[0]
    kfile = _relion_fft_index(p, p // 2 + 1)
    jfile = np.arange(p // 2 + 1)
    r2_file = kfile[:, None, None] ** 2 + kfile[None, :, None] ** 2 + jfile[None, None, :] ** 2
    sel = np.nonzero(r2_file < max_r2)
    kz = kfile[sel[0]] % n
    ky = kfile[sel[1]] % n
    kx = jfile[sel[2]]
    fdata = np.zeros((n, n, n // 2 + 1), dtype=np.complex128)
    fweight = np.zeros((n, n, n // 2 + 1), dtype=np.float64)
    fdata[kz, ky, kx] = np.asarray(data, dtype=np.complex128)[sel]
    fweight[kz, ky, kx] = np.asarray(weight, dtype=np.float64)[sel]
    return fdata, fweight


def _add_wiener_term(
    fweight: np.ndarray,
    r2: np.ndarray,
    inside: np.ndarray,
    tau2: np.ndarray,
    pad: float,
    fudge: float,
    minres_map: int = -1,
) -> None:
    """Step 2, in place: 1 / (pad³·fudge·tau2) per shell; 1000 × weight where tau2 is 0;
    only in shells >= ``minres_map``."""
    tau2 = np.asarray(tau2, dtype=np.float64)
    ires = _shell_of(r2[inside], pad)
    known = (ires < tau2.size) & (ires >= minres_map)
    t = np.zeros(ires.shape)
    t[known] = tau2[ires[known]]
    w = fweight[inside]
    oversampling = pad * pad * pad
    inv = np.zeros_like(w)
    positive = t > 0
    inv[positive] = 1.0 / (oversampling * fudge * t[positive])
    tiny = (~positive) & (t < 1e-20) & (w > 1e-20) & known
    inv[tiny] = 1.0 / (0.001 * w[tiny])
    fweight[inside] = w + inv


def _divide_by_shell_floor(
    fdata: np.ndarray, fweight: np.ndarray, r2: np.ndarray, r_max: int, pad: float
) -> np.ndarray:
    """Step 3b (``--skip_gridding``), in place on ``fdata``: divide by max(weight, 1/1000
    of the shell's mean weight)."""
    round_max_r2 = relion_round(r_max * pad * r_max * pad)
    ires_floor = _shell_of(r2, pad, floor=True)
    counted = r2 < round_max_r2
    radavg = np.bincount(ires_floor[counted], weights=fweight[counted], minlength=r_max)
    counter = np.bincount(ires_floor[counted], minlength=r_max).astype(np.float64)
    radavg = radavg[:r_max] / (1000.0 * counter[:r_max])
    floor_w = radavg[np.minimum(ires_floor, r_max - 1)]
    divisor = np.maximum(fweight, floor_w)
    nonzero = divisor != 0
    fdata[nonzero] /= divisor[nonzero]
    return fdata


def _convolve_blob(values: np.ndarray, n: int, multiplier: np.ndarray, workers: int) -> np.ndarray:
    """RELION's convoluteBlobRealSpace: inverse FFT, multiply by the blob's FT, forward FFT.

    RELION's inverse is unnormalised and its forward divides by n³, so the net scaling
    equals numpy's normalised irfftn / unnormalised rfftn pair.
    """
    import scipy.fft

    real = scipy.fft.irfftn(values, s=(n, n, n), workers=workers)
    real *= multiplier
    return scipy.fft.rfftn(real, workers=workers)


def _blob_multiplier(n: int, ori_size: int, pad: float) -> np.ndarray:
    """Real-space blob FT factors on the n³ working grid, with RELION's index convention.

    RELION maps index k to k if k < n//2 else k - n (so for odd n the index n//2 counts
    as -(n//2) - 1), takes r = sqrt(kx²+ky²+kz²) / (ori * pad) and looks the table up.
    """
    table = blob_fourier_table()
    sampling = 0.5 / float(BLOB_TABLE_SIZE)
    k = np.arange(n)
    k = np.where(k < n // 2, k, k - n)
    r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    rval = np.sqrt(r2.astype(np.float64)) / float(ori_size * pad)
    idx = (np.abs(rval) / sampling).astype(np.int64)
    out = np.zeros(idx.shape, dtype=np.float64)
    inside = idx < table.size
    out[inside] = table[idx[inside]]
    return out


def _gridding_preconditioned(
    fdata: np.ndarray,
    fweight: np.ndarray,
    inside: np.ndarray,
    ori_size: int,
    pad: float,
    iterations: int,
    workers: int,
) -> np.ndarray:
    """Step 3a: the data times the iterated gridding weight (Pipe & Menon 1999)."""
    n = fdata.shape[0]
    newweight = inside.astype(np.float64)
    multiplier = _blob_multiplier(n, ori_size, pad)
    for _ in range(iterations):
        conv = _convolve_blob(newweight * fweight, n, multiplier, workers)
        w = np.maximum(1e-6, np.abs(conv[inside]))
        newweight[inside] /= w
    return fdata * newweight


def _to_real_space(fconv: np.ndarray, ori_size: int, pad: float, workers: int) -> np.ndarray:
    """Step 4: window to the even padded size, centre, inverse FFT, crop, normalise."""
    import scipy.fft

    n = fconv.shape[0]
    big_n = relion_round(pad * ori_size)
    big_n += big_n % 2
    half_in = n // 2 + 1
    half_out = big_n // 2 + 1
    out = np.zeros((big_n, big_n, half_out), dtype=np.complex128)
    if half_out > half_in:
        kin = _relion_fft_index(n, half_in)
        keep = np.nonzero(_radius2(n) <= (half_in - 1) ** 2)
        out[kin[keep[0]] % big_n, kin[keep[1]] % big_n, keep[2]] = fconv[keep]
    else:
        kout = _relion_fft_index(big_n, half_out)
        zz = kout % n
        out[:, :, :] = fconv[
            zz[:, None, None], zz[None, :, None], np.arange(half_out)[None, None, :]
        ]
    parity = np.arange(big_n)
    sign = (-1.0) ** ((parity[:, None, None] + parity[None, :, None] + np.arange(half_out)) % 2)
    out *= sign  # puts the origin at the box centre
    real = scipy.fft.irfftn(out, s=(big_n, big_n, big_n), workers=workers)
    real *= float(big_n) ** 3  # RELION's inverse FFT is unnormalised
    start = big_n // 2 - ori_size // 2
    vol = real[start : start + ori_size, start : start + ori_size, start : start + ori_size]
    return vol / float(pad * pad * pad * ori_size)


def _soft_mask_outside(vol: np.ndarray) -> np.ndarray:
    """Step 5a, RELION's softMaskOutsideMap(vol) with defaults: radius n/2, 3-voxel cosine
    edge. Voxels beyond the edge become the (edge-weighted) mean of everything outside the
    radius; voxels in the edge blend towards it."""
    r = _centred_radius(vol.shape[0])
    radius = vol.shape[0] / 2.0
    width = 3.0
    radius_p = radius + width
    outside = r >= radius
    beyond = r > radius_p
    raised = 0.5 + 0.5 * np.cos(math.pi * (radius_p - r) / width)
    w = np.where(beyond, 1.0, np.where(outside, raised, 0.0))
    total = float(w.sum())
    mean_bg = float((w * vol).sum()) / total if total > 0 else 0.0
    out = vol.copy()
    band = outside & ~beyond
    out[beyond] = mean_bg
    out[band] = (1.0 - raised[band]) * vol[band] + raised[band] * mean_bg
    return out


def _gridding_correct(vol: np.ndarray, ori_size: int, pad: float) -> np.ndarray:
    """Step 5b: divide by sinc²(r / (ori * pad)) (trilinear interpolation's transform)."""
    r = _centred_radius(vol.shape[0])
    rval = r / float(ori_size * pad)
    with np.errstate(divide="ignore", invalid="ignore"):
        sinc = np.sin(math.pi * rval) / (math.pi * rval)
    sinc[r == 0] = 1.0
    return vol / (sinc * sinc)


def reconstruct_arrays(
    data: np.ndarray,
    weight: np.ndarray,
    *,
    ori_size: int,
    current_size: int,
    padding_factor: float,
    tau2: np.ndarray | None,
    tau2_fudge: float = 1.0,
    wiener: bool = True,
    skip_gridding: bool = False,
    iterations: int = 10,
    workers: int | None = None,
    minres_map: int = -1,
) -> np.ndarray:
    """RELION's reconstruction of a map from padded half-complex Fourier data and weights.

    Parameters
    ----------
    data : (P, P, P//2+1) complex array, un-centred (numpy ``rfftn`` layout), P = ROUND(
        padding_factor * ori_size); the back-projected sum RELION writes.
    weight : (P, P, P//2+1) real array: the back-projected weights.
    ori_size : box of the output map in voxels.
    current_size : RELION's current image size (2 × the Fourier radius in use).
    padding_factor : RELION's ``--pad``.
    tau2 : tau2 per shell (index = shell); None or empty to skip the Wiener term.
    tau2_fudge : RELION's tau2 fudge factor (T).
    wiener : add the Wiener (MAP) term to the weights (RELION: unless ``--no_map``).
    skip_gridding : RELION's ``--skip_gridding``.
    iterations : gridding pre-conditioning iterations (RELION: 10); <= 0 behaves like
        ``skip_gridding``, as in RELION.
    workers : FFT threads (default: all cores).
    minres_map : the Wiener term only from this shell on (-1: everywhere, as
        ``relion_external_reconstruct``; 5: as ``relion_refine``'s own reconstruction).

    Returns
    -------
    (ori_size, ori_size, ori_size) float32 map, [z, y, x], centre at ori_size // 2.
    """
    _check_inputs(data, weight)
    if padding_factor < 1:
        raise InvalidValueError(f"padding_factor is {padding_factor}, expected >= 1")
    if ori_size < 2 or current_size < 2:
        raise InvalidValueError(f"ori_size {ori_size} and current_size {current_size} must be >= 2")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    pad = float(padding_factor)
    r_max = min(current_size // 2, ori_size // 2)
    big_r = relion_round(r_max * pad)
    max_r2 = big_r * big_r
    n = 2 * (big_r + 1) + 1  # RELION's pad_size: odd working grid

    fdata, fweight = _to_working_grid(data, weight, n, max_r2)
    r2 = _radius2(n)
    inside = r2 < max_r2
    if wiener and tau2 is not None and len(tau2) > 0:
        _add_wiener_term(fweight, r2, inside, tau2, pad, tau2_fudge, minres_map)
    if skip_gridding or iterations <= 0:
        fconv = _divide_by_shell_floor(fdata, fweight, r2, r_max, pad)
    else:
        fconv = _gridding_preconditioned(fdata, fweight, inside, ori_size, pad, iterations, workers)
    vol = _to_real_space(fconv, ori_size, pad, workers)
    vol = _gridding_correct(_soft_mask_outside(vol), ori_size, pad)
    result = vol.astype(np.float32)
    if result.shape != (ori_size,) * 3:  # never hand RELION a wrong size
        raise MapShapeError(f"internal error: reconstruction has shape {result.shape}")
    return result
