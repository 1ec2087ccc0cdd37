"""Raise a weak fill: the network's content where nothing was measured, brought up to a
floor set by the halves' own signal.

The network fills the missing cone with the right phases at about a tenth of the truth's
amplitude (docs/method.md, "The fill's amplitude"): the gradient through the equivariance
target keeps the fill to what the network can predict, and damps it. For a fill whose
correlation with the truth is ρ, the amplitude that minimises the squared error is ρ times
the truth's; a fill at a tenth is below that wherever ρ > 0.1. Per Fourier shell s, with
m(k) the measured-power gate (1 measured, 0 not), H1, H2 the raw halves' transforms and C̄
the corrected halves' mean transform:

    S(s) = Σ m Re(H1 H2*) / Σ m          the signal's power per voxel where measured
    P(s) = Σ (1 − m) |C̄|² / Σ (1 − m)    the fill's power per voxel
    γ(s) = min(max(1, a·√S / √P), γ_max)

and each corrected half becomes F · (m + (1 − m)·γ): the fill is raised to at least ``a``
of the signal's estimated amplitude, never lowered, the measured region untouched. The
halves' noise is independent, so S estimates the signal alone; the truth's power where
nothing was measured is taken to match that of the measured directions on the same shell
(isotropic on average). γ = 1 on shells where the halves do not agree over the measured
directions (FSC < 0.143: nothing to set a floor by) or where the unmeasured region holds
< 5 % of the shell.

Where the measured band is thin (:mod:`.coverage`), the fill's phases cannot be judged by
anything the data hold and a raised fill is a raised guess: the pipeline leaves it alone.
Pure numerics, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft

from ..errors import InvalidValueError, MapMismatchError
from ..fourier import half_grid, rfft_shells, shell_cross

__all__ = ["MAX_GAIN", "RaisedFill", "raise_fill"]

#: The most a shell's fill is multiplied by (a fill of almost nothing stays almost nothing).
MAX_GAIN = 10.0
#: Shells where the unmeasured region holds less than this share of the voxels keep γ = 1.
MIN_UNMEASURED_SHARE = 0.05


@dataclass(frozen=True)
class RaisedFill:
    """The outcome of :func:`raise_fill`.

    Attributes
    ----------
    maps : the corrected maps with the fill raised, float32, (n, n, n) each.
    gain : (n//2 + 1,) γ per shell as applied (1: unchanged).
    signal_amplitude : (n//2 + 1,) √S per shell (NaN where not estimated).
    fill_amplitude : (n//2 + 1,) √P per shell before the change.
    """

    maps: list[np.ndarray]
    gain: np.ndarray
    signal_amplitude: np.ndarray
    fill_amplitude: np.ndarray


def raise_fill(
    corrected: list[np.ndarray],
    halves: list[np.ndarray],
    presence: np.ndarray,
    target: float,
    max_gain: float = MAX_GAIN,
) -> RaisedFill:
    """Raise the fill of ``corrected`` to at least ``target`` × the halves' signal amplitude.

    Parameters
    ----------
    corrected : the corrected maps (one or two, (n, n, n), the halves' units).
    halves : the two raw half maps, (n, n, n) each, same units.
    presence : (n, n, n) measured-power gate in [0, 1], fftshift-ed
        (:func:`spisonet.weights.power_presence`).
    target : a > 0, the floor as a fraction of the signal's amplitude per voxel.
    max_gain : γ_max, the largest factor applied to a shell.

    Returns
    -------
    RaisedFill
    """
    if not np.isfinite(target) or target <= 0:
        raise InvalidValueError(f"target must be > 0; got {target}")
    if not np.isfinite(max_gain) or max_gain < 1:
        raise InvalidValueError(f"max_gain must be ≥ 1; got {max_gain}")
    if len(halves) != 2:
        raise InvalidValueError("raise_fill needs the two half maps")
    shape = np.shape(presence)
    for v in (*corrected, *halves):
        if np.shape(v) != shape:
            raise MapMismatchError(f"raise_fill: maps {np.shape(v)} and gate {shape} differ")
    n = shape[0]
    m = np.clip(half_grid(presence), 0.0, 1.0)
    u = 1.0 - m
    f1, f2 = (scipy.fft.rfftn(np.asarray(h, np.float64), workers=-1) for h in halves)
    fc = [scipy.fft.rfftn(np.asarray(c, np.float64), workers=-1) for c in corrected]
    mean_c = sum(fc) / len(fc)
    ones = np.ones_like(f1)
    count_m = shell_cross(ones, ones, m, n)
    count_u = shell_cross(ones, ones, u, n)
    count = count_m + count_u
    cross = shell_cross(f1, f2, m, n)
    fsc = cross / np.sqrt(shell_cross(f1, f1, m, n) * shell_cross(f2, f2, m, n) + 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        signal = np.where(count_m > 0, cross / count_m, np.nan)
        fill = np.sqrt(np.where(count_u > 0, shell_cross(mean_c, mean_c, u, n) / count_u, 0.0))
        amplitude = np.sqrt(np.where(signal > 0, signal, np.nan))
        gain = np.where(fill > 0, target * amplitude / fill, max_gain)
    usable = (
        (fsc >= 0.143)
        & np.isfinite(amplitude)
        & (count_u >= MIN_UNMEASURED_SHARE * np.maximum(count, 1))
    )
    usable[0] = False
    gain = np.where(usable, np.clip(np.nan_to_num(gain, nan=1.0), 1.0, max_gain), 1.0)
    shells, _ = rfft_shells(n)
    per_voxel = np.ones(shells.shape)
    inside = shells < gain.size
    per_voxel[inside] = gain[shells[inside]]
    factor = m + u * per_voxel
    maps = [scipy.fft.irfftn(f * factor, s=shape, workers=-1).astype(np.float32) for f in fc]
    return RaisedFill(maps=maps, gain=gain, signal_amplitude=amplitude, fill_amplitude=fill)
