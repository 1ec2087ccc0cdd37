"""Soft masks: from a map (threshold, dilate, cosine edge) and spherical.

Masks are float32 arrays in [0, 1] with the map's shape, indexed [z, y, x]. A soft edge
(a raised-cosine fall-off from 1 to 0) avoids the ringing a hard mask causes in Fourier
space.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._checks import check_nonnegative
from .errors import InvalidValueError, MapShapeError, NonFiniteMapError

__all__ = ["DEFAULT_THRESHOLD_FRACTION", "soft_mask", "spherical_mask"]

#: Default binarisation threshold of :func:`soft_mask`, as a fraction of the maximum of
#: the smoothed map.
DEFAULT_THRESHOLD_FRACTION = 0.1


def _cosine_edge(distance: np.ndarray, dilate: float, soft_edge: float) -> np.ndarray:
    """1 for distance ≤ dilate, raised cosine down to 0 at dilate + soft_edge, then 0."""
    if soft_edge <= 0:
        return (distance <= dilate).astype(np.float32)
    t = np.clip((distance - dilate) / soft_edge, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def soft_mask(
    volume: np.ndarray,
    threshold: float | None = None,
    dilate_voxels: float = 3.0,
    soft_edge_voxels: float = 5.0,
    lowpass_voxels: float = 1.5,
) -> np.ndarray:
    """Soft mask of the density in a 3D map.

    The map is smoothed with a Gaussian of standard deviation ``lowpass_voxels`` (0: no
    smoothing), binarised at ``threshold`` (voxels > threshold), the binary region is
    grown by ``dilate_voxels`` (Euclidean distance) and given a raised-cosine edge of
    width ``soft_edge_voxels``: ``0.5 · (1 + cos(π (d − dilate) / soft_edge))`` at
    distance ``d`` from the region, 0 beyond ``dilate + soft_edge``.

    Parameters
    ----------
    volume : (nz, ny, nx) real map.
    threshold : binarisation level in the units of the smoothed map. Default:
        ``DEFAULT_THRESHOLD_FRACTION`` (0.1) × the maximum of the smoothed map.
    dilate_voxels : growth of the binary region, voxels (≥ 0).
    soft_edge_voxels : width of the cosine edge, voxels (≥ 0; 0 gives a hard mask).
    lowpass_voxels : Gaussian smoothing sigma before binarising, voxels (≥ 0).

    Returns
    -------
    (nz, ny, nx) float32 mask with values in [0, 1].

    Raises
    ------
    MapShapeError : the map is not 3D.
    NonFiniteMapError : the map holds NaN or infinite values.
    InvalidValueError : a negative width, or a threshold that leaves no voxel (at or
        above the maximum of the smoothed map).
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise MapShapeError(f"soft_mask needs a 3D map, got an array of shape {vol.shape}")
    if not np.all(np.isfinite(vol)):
        raise NonFiniteMapError("soft_mask: the map contains NaN or infinite values")
    dilate = check_nonnegative(dilate_voxels, "dilate_voxels", "voxels")
    edge = check_nonnegative(soft_edge_voxels, "soft_edge_voxels", "voxels")
    sigma = check_nonnegative(lowpass_voxels, "lowpass_voxels", "voxels")

    smooth = vol.astype(np.float32)
    if sigma > 0:
        smooth = ndimage.gaussian_filter(smooth, sigma=sigma, mode="constant")
    vmax = float(smooth.max())
    if threshold is None:
        if vmax <= 0:
            raise InvalidValueError(
                "soft_mask: the smoothed map has no positive density (max "
                f"{vmax:.4g}); give an explicit threshold"
            )
        threshold = DEFAULT_THRESHOLD_FRACTION * vmax
    threshold = float(threshold)
    if not np.isfinite(threshold) or threshold >= vmax:
        raise InvalidValueError(
            f"soft_mask: threshold {threshold:.4g} leaves an empty mask; it must be below "
            f"the maximum of the smoothed map ({vmax:.4g})"
        )
    binary = smooth > threshold
    # distance of every voxel outside the region to its nearest region voxel
    distance = ndimage.distance_transform_edt(~binary)
    return _cosine_edge(distance, dilate, edge)


def spherical_mask(n: int, radius: float, soft_edge_voxels: float = 5.0) -> np.ndarray:
    """Soft sphere in real space, centred on voxel (n//2, n//2, n//2).

    1 for ``r ≤ radius`` (r the distance to the centre in voxels), a raised-cosine
    fall-off ``0.5 · (1 + cos(π (r − radius) / soft_edge_voxels))`` out to
    ``radius + soft_edge_voxels``, 0 beyond.

    Parameters
    ----------
    n : box edge, voxels (≥ 1).
    radius : radius of the flat part, voxels (> 0).
    soft_edge_voxels : width of the cosine edge, voxels (≥ 0; 0 gives a hard sphere).

    Returns
    -------
    (n, n, n) float32 mask in [0, 1].
    """
    if int(n) != n or n < 1:
        raise InvalidValueError(f"spherical_mask: box n must be a positive integer, got {n}")
    radius = float(radius)
    if not np.isfinite(radius) or radius <= 0:
        raise InvalidValueError(f"spherical_mask: radius must be > 0 voxels, got {radius}")
    edge = check_nonnegative(soft_edge_voxels, "soft_edge_voxels", "voxels")
    n = int(n)
    k = (np.arange(n) - n // 2).astype(np.float32)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    return _cosine_edge(r, radius, edge)
