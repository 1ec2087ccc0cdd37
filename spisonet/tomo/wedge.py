"""The missing wedge of a tilt series as the sampling weight W (issue 12, step 1).

A tilt image taken with the specimen tilted by θ about the tilt axis measures, by the
projection-slice theorem, the central Fourier plane perpendicular to its beam direction.
A tilt series over θ ∈ [θ_min, θ_max] measures the union of those planes; the rest — a
wedge around the beam axis z for the usual ±60° — is missing. W is 1 on that union and 0
in the wedge (optionally with a linear soft edge), on an fftshift-ed cube, so it drops into
the correction's losses exactly where the 3D FSC goes for single particles.

Geometry, in (z, y, x) voxel order as everywhere in spisonet: z is the beam direction at
zero tilt; the tilt axis lies in the xy plane at ``axis_angle`` degrees from y towards x,
a = (0, cos ψ, sin ψ), and b = (0, −sin ψ, cos ψ) completes it in that plane (b = x for the
default y axis). Tilting by θ turns the beam direction from z towards b:
d(θ) = cos θ·z + sin θ·b. A Fourier voxel k with components k_z and k_b = k·b lies in
the plane of tilt θ when k·d(θ) = k_z cos θ + k_b sin θ = 0, i.e. at
θ(k) = atan(−k_z / k_b) folded into (−90°, 90°]; voxels on the tilt axis (k_z = k_b = 0)
lie in every plane. The positive tilt direction matters only for asymmetric ranges.
"""

from __future__ import annotations

import numpy as np

from .._checks import check_positive_int
from ..errors import InvalidValueError
from ..fourier import frequency_axis

__all__ = ["tilt_of_voxels", "wedge_weight"]


def _check_range(tilt_min: float, tilt_max: float) -> tuple[float, float]:
    try:
        lo, hi = float(tilt_min), float(tilt_max)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"the tilt range must be two numbers in degrees; got {tilt_min!r}, {tilt_max!r}"
        ) from exc
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise InvalidValueError(f"the tilt range must be finite; got {lo}, {hi}")
    if not -90.0 <= lo < hi <= 90.0:
        raise InvalidValueError(
            f"the tilt range must satisfy −90 ≤ min < max ≤ 90 degrees; got {lo:g} … {hi:g}"
        )
    return lo, hi


def tilt_of_voxels(size: int, axis_angle: float = 0.0) -> np.ndarray:
    """The tilt θ(k) (degrees, in (−90, 90]) whose plane holds each voxel of a cube.

    ``size``: edge of the fftshift-ed (size, size, size) grid (centre at size // 2).
    Voxels on the tilt axis (in every plane) get NaN. Returns float64 (size, size, size).
    """
    n = check_positive_int(size, "size")
    psi = np.radians(float(axis_angle))
    k = frequency_axis(n).astype(np.float64)
    kz = k[:, None, None]
    kb = -np.sin(psi) * k[None, :, None] + np.cos(psi) * k[None, None, :]
    kz, kb = np.broadcast_arrays(kz, kb)
    theta = np.degrees(np.arctan2(-kz, kb))
    theta = np.where(theta > 90.0, theta - 180.0, theta)
    theta = np.where(theta <= -90.0, theta + 180.0, theta)
    on_axis = (np.abs(kz) < 1e-9) & (np.abs(kb) < 1e-9)
    return np.where(on_axis, np.nan, theta)


def wedge_weight(
    size: int,
    tilt_min: float = -60.0,
    tilt_max: float = 60.0,
    axis_angle: float = 0.0,
    soft_edge: float = 0.0,
) -> np.ndarray:
    """W of a tilt series: 1 on the measured planes' union, 0 in the missing wedge.

    Parameters
    ----------
    size : edge of the fftshift-ed cube (e.g. the training cube, 64).
    tilt_min, tilt_max : the tilt range in degrees, −90 ≤ min < max ≤ 90.
    axis_angle : in-plane angle of the tilt axis, degrees from y towards x (0: y).
    soft_edge : width in degrees of a linear fall-off outside the range (0: a hard edge):
        W = 1 − (degrees outside the range) / soft_edge, clipped to [0, 1].

    Returns
    -------
    (size, size, size) float32, fftshift-ed; 1 at the zero frequency and on the tilt axis.
    """
    lo, hi = _check_range(tilt_min, tilt_max)
    soft = float(soft_edge)
    if not soft >= 0.0:
        raise InvalidValueError(f"soft_edge must be ≥ 0 degrees; got {soft_edge!r}")
    theta = tilt_of_voxels(size, axis_angle)
    # planes repeat every 180° of tilt: the distance to the range is taken on that circle
    shifted = [theta + t for t in (-180.0, 0.0, 180.0)]
    outside = np.min([np.maximum(lo - a, 0.0) + np.maximum(a - hi, 0.0) for a in shifted], axis=0)
    # 1e-7°: round-off of the angle (a plane exactly at the edge of the range is measured)
    outside = np.where(outside < 1e-7, 0.0, outside)
    w = (outside == 0.0).astype(np.float64) if soft == 0.0 else np.clip(1.0 - outside / soft, 0, 1)
    return np.where(np.isnan(theta), 1.0, w).astype(np.float32)
