"""Where to train in a tomogram: a mask without empty ice, carbon and gold (issue 12).

Sub-tomograms for training should hold specimen, not empty ice (flat, weak local
contrast), nor gold beads and carbon edges (values far beyond the specimen's). On the
tomogram smoothed by a Gaussian, with local statistics over cubes of edge ``patch_size``:

- density: the ``density_percentage`` % of voxels whose local mean lies farthest from the
  median local mean, |m − median(m)| — sign-agnostic, so protein may be dark (real data)
  or bright (simulations);
- structure: the ``std_percentage`` % of voxels with the largest local standard deviation;
- outliers: voxels whose value (unsmoothed) deviates from the median by more than 8
  robust standard deviations (1.4826·MAD) are gold or carbon; they are removed dilated by
  ``patch_size`` voxels;
- ``z_crop``: a fraction of the Z planes removed at the top and at the bottom each.

The mask is the logical and of all four. No file access here: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import EmptyMaskError, InvalidValueError
from .deconv import as_tomogram

__all__ = ["tomogram_mask"]

#: Robust standard deviations (1.4826·MAD) beyond which a voxel is gold/carbon.
OUTLIER_MADS = 8.0


def _percentage(value: object, name: str) -> float:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        v = float("nan")
    if not (np.isfinite(v) and 0.0 < v <= 100.0):
        raise InvalidValueError(f"{name} must be a percentage in (0, 100], got {value!r}")
    return v


def _local_deviation(sm: np.ndarray, p: int, median: np.float32, out: np.ndarray) -> None:
    """|local mean − median| over cubes of edge ``p``, written into ``out`` (float32)."""
    ndimage.uniform_filter(sm, size=p, output=out)
    out -= median
    np.abs(out, out=out)


def _cut(scratch: np.ndarray, percentage: float) -> float:
    """``np.percentile(scratch, 100 − percentage)`` (linear); reorders ``scratch``."""
    return float(np.percentile(scratch, 100.0 - percentage, overwrite_input=True))


def tomogram_mask(
    tomogram: np.ndarray,
    density_percentage: float = 50.0,
    std_percentage: float = 50.0,
    patch_size: int = 4,
    z_crop: float = 0.0,
    smooth: float = 2.0,
) -> np.ndarray:
    """The training mask of a tomogram: 1 on specimen, 0 on empty ice, gold and carbon.

    See the module docstring for the criteria. Local mean and standard deviation are
    ``scipy.ndimage.uniform_filter`` over cubes of edge ``patch_size`` (mode "reflect") of
    the tomogram smoothed by a Gaussian of sigma ``smooth`` voxels (0: no smoothing), in
    float32. ``z_crop`` removes ⌊z_crop·Z⌋ planes at each end. Memory: two float32 volumes
    and three boolean ones (≈ 2.75× the float32 tomogram) besides the input.

    Parameters
    ----------
    tomogram
        (Z, Y, X) array of finite real numbers.
    density_percentage, std_percentage
        Percent of voxels each criterion keeps, in (0, 100]; 100 keeps all.
    patch_size
        Edge of the local cube in voxels (integer ≥ 1); also the outliers' dilation.
    z_crop
        Fraction of Z removed at the top and at the bottom each, in [0, 0.5).
    smooth
        Gaussian sigma in voxels (≥ 0).

    Returns
    -------
    (Z, Y, X) uint8 array of 0 and 1.

    Raises
    ------
    EmptyMaskError
        No voxel is left; the message names the criterion that removed the last ones.
    InvalidValueError, MapShapeError, NonFiniteMapError
        Bad parameters or input.
    """
    dens_pct = _percentage(density_percentage, "density_percentage")
    std_pct = _percentage(std_percentage, "std_percentage")
    if (
        isinstance(patch_size, bool)
        or not isinstance(patch_size, int | np.integer)
        or patch_size < 1
    ):
        raise InvalidValueError(f"patch_size must be an integer ≥ 1 voxels, got {patch_size!r}")
    p = int(patch_size)
    try:
        crop = float(z_crop)
        sigma = float(smooth)
    except (TypeError, ValueError) as exc:
        raise InvalidValueError(
            f"z_crop and smooth must be numbers, got {z_crop!r} and {smooth!r}"
        ) from exc
    if not (np.isfinite(crop) and 0.0 <= crop < 0.5):
        raise InvalidValueError(f"z_crop must be a fraction of Z in [0, 0.5), got {z_crop!r}")
    if not (np.isfinite(sigma) and sigma >= 0.0):
        raise InvalidValueError(f"smooth must be a Gaussian sigma ≥ 0 voxels, got {smooth!r}")
    t = as_tomogram(tomogram)
    shape = t.shape
    borrowed = isinstance(tomogram, np.ndarray) and np.may_share_memory(t, tomogram)

    # gold / carbon: robust outliers of the UNSMOOTHED values, dilated by patch_size voxels.
    # Smoothing shrinks the noise ~10× but not dense specimen, so in a mostly empty
    # tomogram a cluster of proteins would pass 8 robust SDs of the smoothed values; in the
    # raw values noise keeps the spread wide and only gold and carbon stand out.
    centre = np.float32(np.median(t))
    dev = np.abs(t - centre)
    mad = float(np.median(dev, overwrite_input=True))  # reorders dev: recomputed below
    del dev
    keep = np.ones(shape, dtype=bool)
    if mad > 0:  # MAD 0: more than half the voxels equal, no spread to judge outliers by
        outliers = (np.abs(t - centre) > OUTLIER_MADS * 1.4826 * mad).view(np.uint8)
        if outliers.any():
            keep = ndimage.maximum_filter(outliers, size=2 * p + 1) == 0
        del outliers

    # smoothed and centred on its median (keeps E[x²] − E[x]² accurate in float32)
    if sigma > 0:
        sm = ndimage.gaussian_filter(t, sigma, output=np.float32)
    else:
        sm = t.copy() if borrowed else t  # never write into the caller's array
    del t
    sm -= np.float32(np.median(sm))

    # The criteria, in two float32 volumes (sm and buf): a percentile reorders the volume
    # it is computed on, so the local statistic is recomputed (uniform filters are cheap)
    # rather than copied.
    both = np.ones(shape, dtype=bool)
    buf = np.empty(shape, dtype=np.float32)
    if dens_pct < 100.0:  # |local mean − its median|, the dens_pct % largest
        ndimage.uniform_filter(sm, size=p, output=buf)
        median_mean = np.float32(np.median(buf, overwrite_input=True))
        _local_deviation(sm, p, median_mean, buf)
        cut = _cut(buf, dens_pct)
        _local_deviation(sm, p, median_mean, buf)
        both &= buf >= cut
    if std_pct < 100.0:  # local standard deviation, the std_pct % largest
        ndimage.uniform_filter(sm, size=p, output=buf)  # local mean
        np.multiply(sm, sm, out=sm)
        ndimage.uniform_filter(sm, size=p, output=sm)  # local mean of squares
        for z in range(shape[0]):  # variance → standard deviation, one plane at a time
            plane = sm[z]
            plane -= buf[z] * buf[z]
            np.maximum(plane, 0.0, out=plane)
            np.sqrt(plane, out=plane)
        np.copyto(buf, sm)
        cut = _cut(buf, std_pct)
        both &= sm >= cut
    del buf, sm

    if not both.any():
        raise EmptyMaskError(
            f"the tomogram mask is empty: the density ({dens_pct:g} %) and std "
            f"({std_pct:g} %) criteria keep no voxel in common; raise density_percentage "
            "or std_percentage"
        )
    both &= keep
    if not both.any():
        raise EmptyMaskError(
            f"the tomogram mask is empty: excluding gold/carbon (voxels beyond {OUTLIER_MADS:g} "
            f"robust standard deviations, dilated by patch_size={p}) removed every voxel the "
            "density and std criteria kept; raise density_percentage or std_percentage, or "
            "lower patch_size"
        )
    n_crop = int(np.floor(crop * shape[0]))
    if n_crop:
        both[:n_crop] = False
        both[shape[0] - n_crop :] = False
        if not both.any():
            raise EmptyMaskError(
                f"the tomogram mask is empty: z_crop={crop:g} removed the {n_crop} top and "
                "bottom planes that held every kept voxel; lower z_crop or raise "
                "density_percentage or std_percentage"
            )
    return both.view(np.uint8)
