"""Shared input checks: one rule per question, used by the API functions and the CLI.

Each check raises a :class:`spisonet.errors.SpisonetError` subclass whose message names the
input (a file name, or e.g. "half map 1" for arrays), what was expected and what was
found, and says how to fix it. They refuse input that would otherwise give confident but
meaningless numbers (a constant map, a mask outside [0, 1], a file that is not a 3D FSC,
a resolution limit outside what the box can hold).
"""

from __future__ import annotations

import numpy as np

from .errors import (
    EmptyMaskError,
    FlatMapError,
    InvalidValueError,
    MapMismatchError,
    MapShapeError,
    NonFiniteMapError,
)

__all__ = [
    "MASK_TOLERANCE",
    "check_box",
    "check_cone_angle",
    "check_contrast",
    "check_cubic_map",
    "check_fsc3d_volume",
    "check_limit_res",
    "check_mask_array",
    "check_mask_values",
    "check_nonnegative",
    "check_positive",
    "check_positive_int",
]

#: Mask values may exceed [0, 1] by this much (round-off of soft-edged masks).
MASK_TOLERANCE = 1e-3

#: A map whose standard deviation is below this fraction of its RMS value is constant
#: up to float32 round-off (float32 carries ~7 digits).
_FLAT_RTOL = 1e-5

#: 3D FSC values may exceed [-1, 1] by this much (round-off, resampling).
_FSC_TOLERANCE = 1e-3


def check_cubic_map(volume: np.ndarray, name: str, dtype: type = np.float32) -> np.ndarray:
    """``volume`` as a ``dtype`` (n, n, n) array of finite real numbers.

    Raises
    ------
    MapShapeError
        Not 3D, not cubic, or not real numbers.
    NonFiniteMapError
        NaN or infinite values (their count is in the message).
    """
    v = np.asarray(volume)
    if v.ndim != 3 or len(set(v.shape)) != 1:
        raise MapShapeError(f"{name}: expected a cubic 3D map (n×n×n); found shape {v.shape}")
    if not np.issubdtype(v.dtype, np.number) or np.iscomplexobj(v):
        raise MapShapeError(f"{name}: expected real numbers; found dtype {v.dtype}")
    v = v.astype(dtype, copy=False)
    finite = np.isfinite(v)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise NonFiniteMapError(f"{name}: contains {bad} NaN or infinite values; expected finite")
    return v


def check_positive(value: float, name: str, unit: str = "") -> float:
    """``value`` as a float, finite and > 0; else :class:`InvalidValueError` naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        of = f" of {unit}" if unit else ""
        raise InvalidValueError(f"{name} must be a positive number{of}, got {value!r}")
    return v


def check_nonnegative(value: float, name: str, unit: str = "") -> float:
    """``value`` as a float, finite and ≥ 0; else :class:`InvalidValueError` naming it."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (np.isfinite(v) and v >= 0):
        of = f" ({unit})" if unit else ""
        raise InvalidValueError(f"{name} must be a finite number ≥ 0{of}, got {value!r}")
    return v


def check_positive_int(value: object, name: str) -> int:
    """``value`` as an int ≥ 1 (bools and floats refused); else :class:`InvalidValueError`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise InvalidValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def check_nonnegative_int(
    value: object, name: str, below: int | None = None, bound: str = "≥ 0"
) -> int:
    """``value`` as an int ≥ 0 and, if given, < ``below`` (bools and floats refused); else
    :class:`InvalidValueError` saying "``name`` must be an integer, ``bound``"."""
    integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
    if not integer or value < 0 or (below is not None and value >= below):
        raise InvalidValueError(f"{name} must be an integer, {bound}; got {value!r}")
    return int(value)


def check_box(box: object, name: str = "box", minimum: int = 8) -> int:
    """A box edge: an integer ≥ ``minimum`` voxels; else :class:`InvalidValueError`."""
    ok = not isinstance(box, bool) and isinstance(box, int | float | np.integer | np.floating)
    if not ok or int(box) != box or box < minimum:
        raise InvalidValueError(f"{name} must be an integer ≥ {minimum} voxels, got {box!r}")
    return int(box)


def check_cone_angle(angle: float, name: str = "the cone half-angle") -> float:
    """A cone half-angle in degrees, in (0, 90]; returned in radians."""
    if not (np.isfinite(angle) and 0.0 < angle <= 90.0):
        raise InvalidValueError(f"{name} must be in (0, 90] degrees, got {angle!r}")
    return float(np.radians(float(angle)))


def _weighted_moments(data: np.ndarray, weights: np.ndarray | None) -> tuple[float, float, float]:
    """Mean, standard deviation and RMS of ``data`` (weighted by ``weights`` ≥ 0), float64."""
    v = np.asarray(data, dtype=np.float64)
    if weights is None:
        mean = float(v.mean())
        rms = float(np.sqrt(np.mean(v * v)))
        return mean, float(v.std()), rms
    w = np.clip(np.asarray(weights, dtype=np.float64), 0.0, None)
    total = float(w.sum())
    if total <= 0:
        return 0.0, 0.0, 0.0
    mean = float((w * v).sum() / total)
    var = float((w * (v - mean) ** 2).sum() / total)
    ms = float((w * v * v).sum() / total)
    return mean, float(np.sqrt(var)), float(np.sqrt(ms))


def check_contrast(data: np.ndarray, name: str, mask: np.ndarray | None = None) -> None:
    """Refuse a map with (near-)zero variance (inside ``mask`` when one is given).

    A constant or all-zero map has no signal: its FSC, 3D FSC and anisotropy figures
    would be meaningless (an all-zero pair reports "area ratio 1.000"). The variance is
    weighted by the mask's values (the maps are multiplied by the mask before any FSC);
    "near zero" is a standard deviation below 1e-5 of the map's RMS value (float32
    round-off on a constant).

    Raises
    ------
    FlatMapError
    """
    mean, std, rms = _weighted_moments(data, mask)
    if std > _FLAT_RTOL * rms and std > 0:
        return
    where = " inside the mask" if mask is not None else ""
    what = "constant (0 everywhere)" if rms == 0 else f"constant ({mean:.6g})"
    raise FlatMapError(
        f"{name}: the map is {what}{where} (standard deviation {std:.3g}); expected a map "
        "with contrast. Check that the right file was given: an empty or constant map "
        "gives meaningless FSC and anisotropy figures"
    )


def check_mask_array(mask: np.ndarray, shape: tuple[int, ...], name: str = "the mask"):
    """A mask for maps of ``shape``: same shape, finite, not all zero, values in [0, 1].

    Returns it as an array. Raises :class:`MapMismatchError`, :class:`NonFiniteMapError`,
    :class:`EmptyMaskError` or :class:`InvalidValueError` naming ``name``.
    """
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise MapMismatchError(
            f"{name} must have the half maps' shape {tuple(shape)}, got {m.shape}"
        )
    if not np.all(np.isfinite(m)):
        raise NonFiniteMapError(f"{name} contains NaN or infinite values")
    if not np.any(m > 0):
        raise EmptyMaskError(f"{name} is zero everywhere; expected a non-empty mask")
    check_mask_values(m, name)
    return m


def check_mask_values(mask: np.ndarray, name: str) -> None:
    """Refuse a mask with values below 0 or above 1 (beyond a 1e-3 round-off tolerance).

    The maps are multiplied by the mask, so values outside [0, 1] reweight the map
    (negative ones flip its sign) and every FSC figure computed through it is off.

    Raises
    ------
    InvalidValueError
    """
    m = np.asarray(mask)
    lo, hi = float(m.min()), float(m.max())
    if lo >= -MASK_TOLERANCE and hi <= 1.0 + MASK_TOLERANCE:
        return
    raise InvalidValueError(
        f"{name}: mask values must lie in [0, 1]; found min {lo:.4g}, max {hi:.4g}. "
        "Rescale the mask to [0, 1] (e.g. divide it by its maximum) or binarise it "
        "(e.g. relion_mask_create with a soft edge)"
    )


def check_fsc3d_volume(volume: np.ndarray, name: str) -> None:
    """Refuse a volume that cannot be a 3D FSC (values outside [-1, 1], or constant).

    A 3D FSC (``FSC3D.mrc``, or a sampling density from ``spisonet fsd3d``) holds
    correlations in [-1, 1]: 1 at the centre voxel (zero frequency), falling with
    resolution and lower along poorly sampled directions.

    Raises
    ------
    InvalidValueError, FlatMapError
    """
    v = np.asarray(volume)
    lo, hi = float(v.min()), float(v.max())
    how = (
        "A 3D FSC holds correlations in [-1, 1], 1 at the centre and falling with "
        "resolution; make one from the two half maps with `spisonet fsc3d HALF1 HALF2 "
        "--mask MASK -o FSC3D.mrc` (or leave --aniso-file out to compute it here)"
    )
    if lo < -1.0 - _FSC_TOLERANCE or hi > 1.0 + _FSC_TOLERANCE:
        raise InvalidValueError(
            f"{name}: not a 3D FSC: values range from {lo:.4g} to {hi:.4g}, expected [-1, 1]. {how}"
        )
    if hi - lo <= _FSC_TOLERANCE:
        raise FlatMapError(
            f"{name}: not a 3D FSC: every voxel is {lo:.4g} (a constant volume). {how}"
        )


def check_limit_res(
    limit_res: float, voxel_size: float, box: int, name: str = "limit_res"
) -> float:
    """Refuse a resolution limit outside 2·voxel ≤ limit_res ≤ n·voxel (Å).

    Finer than Nyquist (2·voxel) there is no Fourier shell to keep; coarser than the box
    (n·voxel, shell 1) nothing but the zero frequency would be kept. A relative
    tolerance of 1e-3 absorbs the float32 rounding of voxel sizes read from MRC headers.

    Returns
    -------
    ``limit_res`` as a float.

    Raises
    ------
    InvalidValueError
    """
    value = float(limit_res)
    nyquist = 2.0 * float(voxel_size)
    coarsest = int(box) * float(voxel_size)
    valid = f"choose a value between {nyquist:.4g} and {coarsest:.4g} Å"
    if not (np.isfinite(value) and value > 0):
        raise InvalidValueError(f"{name} must be a positive resolution in Å, got {limit_res}")
    if value < nyquist * (1.0 - 1e-3):
        raise InvalidValueError(
            f"{name} {value} Å is finer than Nyquist (2 × {voxel_size:.4g} = "
            f"{nyquist:.4g} Å) for this map; {valid}"
        )
    if value > coarsest * (1.0 + 1e-3):
        raise InvalidValueError(
            f"{name} {value} Å is coarser than the box ({int(box)} × {voxel_size:.4g} = "
            f"{coarsest:.4g} Å) for this map: nothing but the zero frequency would be "
            f"kept; {valid}"
        )
    return value
