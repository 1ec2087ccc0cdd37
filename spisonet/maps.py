"""Map tools: normalisation, whitening, low/high-frequency combination, FSC weighting.

All functions take cubic (n, n, n) real maps indexed [z, y, x], compute in float64 and
return float32 maps of the same shape. Fourier filters are radial: a voxel's shell is
``round(|k|)`` (the convention of :mod:`spisonet.fourier`); shell s has resolution
``n * voxel_size / s`` Å. Radial filters are applied with real FFTs; the per-shell mean
amplitudes are exact full-grid means (Friedel mates are counted through weights).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from ._checks import check_cubic_map, check_positive
from .errors import InvalidValueError, MapMismatchError, NonFiniteMapError
from .fourier import rfft_shells

__all__ = [
    "combine_map",
    "fsc_weight",
    "match_mean_std",
    "radial_amplitude",
    "whiten",
    "zscore",
]


# --------------------------------------------------------------------------- checks
def _as_volume(volume: np.ndarray, name: str = "map") -> np.ndarray:
    """``volume`` as float64 after checking it is a finite cube."""
    return check_cubic_map(volume, name, np.float64)


def _as_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != shape:
        raise MapMismatchError(f"mask shape {m.shape} differs from the map's {shape}")
    m = m.astype(np.float64, copy=False)
    if not np.all(np.isfinite(m)):
        raise NonFiniteMapError("mask: contains NaN or infinite values; expected finite")
    return m


# --------------------------------------------------------------------------- Fourier helpers
def _shell_mean_amplitude(f: np.ndarray, shells: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean |F| per shell over the full grid, from a real-FFT half grid (float64)."""
    m = int(shells.max()) + 1
    total = np.bincount(shells.ravel(), weights=(weights * np.abs(f)).ravel(), minlength=m)
    count = np.bincount(shells.ravel(), weights=weights.ravel(), minlength=m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1.0), 0.0)


def _apply_radial(f: np.ndarray, per_shell: np.ndarray, shells: np.ndarray, n: int) -> np.ndarray:
    """Inverse real FFT of ``f`` multiplied by ``per_shell[shell]`` (float64 map)."""
    return np.fft.irfftn(f * per_shell[shells], s=(n, n, n), axes=(0, 1, 2))


def radial_amplitude(volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean Fourier amplitude |F| of ``volume`` (times ``mask``) per shell round(|k|).

    Parameters
    ----------
    volume : (n, n, n) real map.
    mask : optional (n, n, n) mask multiplied in before the FFT.

    Returns
    -------
    (m,) float64, m = largest shell + 1 (the corners of the box included).
    """
    a = _as_volume(volume)
    m = _as_mask(mask, a.shape)
    if m is not None:
        a = a * m
    shells, weights = rfft_shells(a.shape[0])
    return _shell_mean_amplitude(np.fft.rfftn(a), shells, weights)


# --------------------------------------------------------------------------- normalisation
def zscore(volume: np.ndarray) -> np.ndarray:
    """Normalise a map to mean 0 and standard deviation 1 over the whole box.

    Statistics in float64 (population std, ddof = 0); returns float32 of the same shape.

    Raises
    ------
    InvalidValueError when the map is constant (standard deviation 0).
    """
    a = np.asarray(volume).astype(np.float64, copy=False)
    if a.size == 0:
        raise InvalidValueError("cannot z-score an empty map")
    if not np.all(np.isfinite(a)):
        raise NonFiniteMapError("map contains NaN or infinite values; expected finite")
    mean = a.mean()
    std = a.std()
    if not std > 0:
        raise InvalidValueError(
            f"cannot z-score a constant map (every voxel is {mean:.6g}, standard deviation 0)"
        )
    return ((a - mean) / std).astype(np.float32)


def match_mean_std(volume: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rescale ``volume`` linearly to the mean and standard deviation of ``reference``.

    ``zscore(volume) * std(reference) + mean(reference)``; returns float32.
    """
    ref = np.asarray(reference).astype(np.float64, copy=False)
    if not np.all(np.isfinite(ref)):
        raise NonFiniteMapError("reference contains NaN or infinite values; expected finite")
    z = zscore(volume).astype(np.float64)
    return (z * ref.std() + ref.mean()).astype(np.float32)


# --------------------------------------------------------------------------- whitening
def whiten(
    volume: np.ndarray,
    voxel_size: float,
    mask: np.ndarray | None = None,
    low_res: float = 10.0,
    high_res: float = 3.0,
    eps: float = 1e-4,
) -> np.ndarray:
    """Flatten the radial Fourier amplitude of a map between two resolutions.

    A(s) is the mean |F| of ``volume * mask`` on shell s (mask optional). With
    ``r_low = int(voxel_size * n / low_res)`` and ``r_high = int(voxel_size * n / high_res)``,
    the FFT of the *unmasked* map is multiplied by ``A(r_low) / (A(s) + eps)`` on the
    shells ``r_low < s < r_high`` and by 1 on every other shell (as the public
    spIsoNet ``whitening`` command; ``eps`` is absolute, in the map's amplitude units).

    Parameters
    ----------
    volume : (n, n, n) real map.
    voxel_size : Å per voxel.
    mask : optional (n, n, n) mask used for the amplitude spectrum only.
    low_res, high_res : band limits in Å, ``low_res > high_res > 0``.
    eps : added to A(s) in the denominator.

    Returns
    -------
    (n, n, n) float32 whitened map.
    """
    a = _as_volume(volume)
    m = _as_mask(mask, a.shape)
    voxel_size = check_positive(voxel_size, "voxel_size")
    low_res = check_positive(low_res, "low_res")
    high_res = check_positive(high_res, "high_res")
    if high_res >= low_res:
        raise InvalidValueError(
            f"whitening needs low_res > high_res (Å), got low_res={low_res} and high_res={high_res}"
        )
    n = a.shape[0]
    r_low = int(voxel_size * n / low_res)
    r_high = int(voxel_size * n / high_res)
    if r_low > n // 2:
        raise InvalidValueError(
            f"low_res={low_res} Å is finer than Nyquist ({2 * voxel_size:.4g} Å) for this map"
        )
    shells, weights = rfft_shells(n)
    f = np.fft.rfftn(a)
    fm = f if m is None else np.fft.rfftn(a * m)
    amp = _shell_mean_amplitude(fm, shells, weights)
    filt = np.ones(amp.size)
    band = np.arange(amp.size)
    inside = (band > r_low) & (band < r_high)
    filt[inside] = amp[r_low] / (amp[inside] + eps)
    return _apply_radial(f, filt, shells, n).astype(np.float32)


# --------------------------------------------------------------------------- combine
def _falloff_sphere_per_shell(radius: float, n_shells: int, smooth: int = 5) -> np.ndarray:
    """Per-shell sphere value: 1 below radius − smooth, (radius − s)/(smooth + 1) up to radius."""
    s = np.arange(n_shells, dtype=np.float64)
    out = np.zeros(n_shells)
    out[s < radius - smooth] = 1.0
    edge = (s >= radius - smooth) & (s < radius)
    out[edge] = (radius - s[edge]) / (smooth + 1.0)
    return out


def combine_map(
    low: np.ndarray,
    high: np.ndarray,
    threshold_res: float,
    voxel_size: float,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Take the frequencies below ``threshold_res`` from ``low`` and the rest from ``high``.

    Steps (the public spIsoNet ``combine_map``, with shells round(|k|)):

    1. ratio(s) = A_high(s) / max(A_low(s), 1e-7), A the mean |F| per shell of the map
       times ``mask`` (all ones when absent); the FFT of ``low`` is scaled by ratio(s);
    2. S(s): a sphere of radius ``rad = n * voxel_size / threshold_res`` shells with a
       5-shell linear fall-off: 1 for s < rad − 5, (rad − s)/6 for rad − 5 ≤ s < rad,
       0 beyond;
    3. the low map's part through S is rescaled to the mean/std of ``high``'s part
       through S; ``high`` through (1 − S) is added;
    4. the sum is rescaled to ``high``'s mean and standard deviation.

    Parameters
    ----------
    low, high : (n, n, n) real maps (e.g. the network output and the original map).
    threshold_res : resolution in Å where the hand-over happens.
    voxel_size : Å per voxel.
    mask : optional (n, n, n) mask used for the amplitude spectra only.

    Returns
    -------
    (n, n, n) float32 combined map.
    """
    lo = _as_volume(low, "low map")
    hi = _as_volume(high, "high map")
    if lo.shape != hi.shape:
        raise MapMismatchError(f"low map shape {lo.shape} differs from high map shape {hi.shape}")
    m = _as_mask(mask, lo.shape)
    threshold_res = check_positive(threshold_res, "threshold_res")
    voxel_size = check_positive(voxel_size, "voxel_size")
    n = lo.shape[0]
    rad = n * voxel_size / threshold_res
    if rad < 1.0:
        raise InvalidValueError(
            f"threshold_res={threshold_res} Å is coarser than the box ({n * voxel_size:.4g} Å): "
            "nothing would be taken from the low map"
        )
    shells, weights = rfft_shells(n)
    f_lo = np.fft.rfftn(lo)
    f_hi = np.fft.rfftn(hi)
    if m is None:
        a_lo = _shell_mean_amplitude(f_lo, shells, weights)
        a_hi = _shell_mean_amplitude(f_hi, shells, weights)
    else:
        a_lo = _shell_mean_amplitude(np.fft.rfftn(lo * m), shells, weights)
        a_hi = _shell_mean_amplitude(np.fft.rfftn(hi * m), shells, weights)
    ratio = a_hi / np.maximum(a_lo, 1e-7)
    sphere = _falloff_sphere_per_shell(rad, ratio.size)
    out_low = _apply_radial(f_lo, ratio * sphere, shells, n)
    hi_low = _apply_radial(f_hi, sphere, shells, n)
    out_high = _apply_radial(f_hi, 1.0 - sphere, shells, n)
    std_low = out_low.std()
    if not std_low > 0:
        raise InvalidValueError(
            f"the low map has no content below {threshold_res} Å (after spectrum matching); "
            "cannot rescale it"
        )
    out_low = (out_low - out_low.mean()) / std_low * hi_low.std() + hi_low.mean()
    out = out_low + out_high
    std_out = out.std()
    if not std_out > 0:
        raise InvalidValueError("the combined map is constant; check the input maps")
    return ((out - out.mean()) / std_out * hi.std() + hi.mean()).astype(np.float32)


# --------------------------------------------------------------------------- FSC weighting
def fsc_weight(
    volume: np.ndarray,
    fsc_curve: np.ndarray,
    mode: Literal["relion", "rosenthal"] = "relion",
) -> np.ndarray:
    """Weight each Fourier shell of a map by a function of its FSC.

    Shell s = round(|k|) of the map's FFT is multiplied by

    - ``mode='relion'``: max(FSC(s), 0);
    - ``mode='rosenthal'``: sqrt(2·FSC/(1 + FSC)) with FSC clipped to [0, 1]
      (Rosenthal & Henderson 2003, the expected correlation with the true map).

    Shells beyond the end of the curve get weight 0.

    Parameters
    ----------
    volume : (n, n, n) real map.
    fsc_curve : (m,) FSC indexed by shell (as :func:`spisonet.fsc_shells.fsc_curve` returns).
    mode : ``'relion'`` or ``'rosenthal'``.

    Returns
    -------
    (n, n, n) float32 weighted map.
    """
    a = _as_volume(volume)
    c = np.asarray(fsc_curve, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise InvalidValueError(
            f"fsc_curve must be a non-empty 1-D array indexed by shell, got shape {c.shape}"
        )
    if not np.all(np.isfinite(c)):
        raise InvalidValueError("fsc_curve contains NaN or infinite values; expected finite")
    if mode == "relion":
        w = np.maximum(c, 0.0)
    elif mode == "rosenthal":
        cc = np.clip(c, 0.0, 1.0)
        w = np.sqrt(2.0 * cc / (1.0 + cc))
    else:
        raise InvalidValueError(
            f"unknown FSC weighting mode {mode!r}; expected 'relion' (max(FSC, 0)) or "
            "'rosenthal' (sqrt(2FSC/(1+FSC)))"
        )
    n = a.shape[0]
    shells, _ = rfft_shells(n)
    per_shell = np.zeros(int(shells.max()) + 1)
    k = min(per_shell.size, w.size)
    per_shell[:k] = w[:k]
    return _apply_radial(np.fft.rfftn(a), per_shell, shells, n).astype(np.float32)
