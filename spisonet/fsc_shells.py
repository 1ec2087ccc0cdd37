"""Global Fourier shell correlation and resolution.

FSC(s) = Re Σ F1 F2* / sqrt(Σ|F1|² Σ|F2|²) over the voxels of shell s = round(|k|),
after multiplying both half maps by the (soft) mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from .errors import InvalidValueError
from .fourier import rfft_shells

__all__ = ["FSCResult", "fsc", "fsc_curve", "resolution_at"]


@dataclass(frozen=True)
class FSCResult:
    """A global FSC curve with its frequency axis.

    Attributes
    ----------
    shells : (m,) int, shell index s = 0 … n//2.
    frequency : (m,) float, spatial frequency s / (n · voxel_size) in 1/Å.
    resolution : (m,) float, n · voxel_size / s in Å (inf at s = 0).
    fsc : (m,) float, the correlation per shell.
    n_voxels : (m,) int, number of Fourier voxels in each shell.
    resolution_0143 : Å where the FSC first falls below 0.143 (Nyquist if never).
    resolution_05 : Å where the FSC first falls below 0.5 (Nyquist if never).
    """

    shells: np.ndarray
    frequency: np.ndarray
    resolution: np.ndarray
    fsc: np.ndarray
    n_voxels: np.ndarray
    resolution_0143: float
    resolution_05: float


def _shell_sums(values: np.ndarray, shells: np.ndarray, n_shells: int) -> np.ndarray:
    return np.bincount(shells.ravel(), weights=values.ravel(), minlength=n_shells)[:n_shells]


def fsc_curve(
    map1: np.ndarray, map2: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """FSC per shell s = 0 … n//2 of two (n, n, n) maps (float64), and voxel counts.

    Uses real FFTs (a half space is enough: Friedel pairs contribute equal terms).
    """
    if map1.shape != map2.shape or map1.ndim != 3 or len(set(map1.shape)) != 1:
        raise InvalidValueError(
            f"fsc needs two cubic maps of equal shape, got {map1.shape} and {map2.shape}"
        )
    n = map1.shape[0]
    a = np.asarray(map1, dtype=np.float64)
    b = np.asarray(map2, dtype=np.float64)
    if mask is not None:
        a = a * mask
        b = b * mask
    f1 = scipy.fft.rfftn(a, workers=-1)
    f2 = scipy.fft.rfftn(b, workers=-1)
    shells, w = rfft_shells(n)  # w: each rfft voxel also stands for its Friedel mate
    m = n // 2 + 1
    cross = _shell_sums(w * np.real(f1 * np.conj(f2)), shells, m)
    p1 = _shell_sums(w * np.abs(f1) ** 2, shells, m)
    p2 = _shell_sums(w * np.abs(f2) ** 2, shells, m)
    count = _shell_sums(w, shells, m).round().astype(np.int64)
    denom = np.sqrt(p1 * p2)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(denom > 0, cross / denom, 0.0)
    return curve, count


def resolution_at(
    curve: np.ndarray, threshold: float, n: int, voxel_size: float, start: int = 1
) -> float:
    """Resolution (Å) of the first shell ≥ ``start`` whose FSC falls below ``threshold``.

    When the curve never falls below the threshold, the Nyquist resolution
    ``2 · voxel_size`` is returned.
    """
    below = np.nonzero(curve[start:] < threshold)[0]
    if below.size == 0:
        return 2.0 * voxel_size
    s = int(below[0]) + start
    return float(n * voxel_size / s)


def fsc(
    map1: np.ndarray,
    map2: np.ndarray,
    voxel_size: float = 1.0,
    mask: np.ndarray | None = None,
) -> FSCResult:
    """Masked global FSC of two (n, n, n) maps and the 0.143 / 0.5 resolutions (Å)."""
    curve, count = fsc_curve(map1, map2, mask)
    n = map1.shape[0]
    shells = np.arange(curve.size)
    with np.errstate(divide="ignore"):
        res = np.where(shells > 0, n * voxel_size / np.maximum(shells, 1), np.inf)
    return FSCResult(
        shells=shells,
        frequency=shells / (n * voxel_size),
        resolution=res,
        fsc=curve,
        n_voxels=count,
        resolution_0143=resolution_at(curve, 0.143, n, voxel_size),
        resolution_05=resolution_at(curve, 0.5, n, voxel_size),
    )
