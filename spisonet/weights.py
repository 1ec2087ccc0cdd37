"""The sampling weight's numerics: where Fourier space holds measured power.

Pure functions on arrays (no files, no torch). :func:`power_presence` gates the 3D FSC
by measured amplitude (ALGORITHM.md §3, our fix of the published W);
:func:`shell_percentile` is the per-shell reference both gates divide by;
:func:`unmeasured_agreement` measures how much of what the halves agree on lies where the
gate reads unmeasured (a reconstruction's interpolation there, not the specimen's);
:func:`measured_weight` is the blend weight of the RELION correction step (keep the
measured data, take the network only where nothing was measured);
:func:`directional_weight` carries a weight's mid-resolution directional pattern to every
shell.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_cubic_map
from .errors import InvalidValueError
from .fourier import frequency_radius, shell_index

__all__ = [
    "directional_weight",
    "measured_weight",
    "power_presence",
    "ray_radii",
    "shell_percentile",
    "unmeasured_agreement",
]


def power_presence(
    half1: np.ndarray,
    half2: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    threshold: float = 0.1,
    percentile: float = 90.0,
    also_unmasked: bool = False,
) -> np.ndarray:
    """Where Fourier space holds measured power: a gate in [0, 1] for the sampling weight W.

    The per-voxel phase agreement behind the 3D FSC is blind to amplitude. Where no view
    sampled a frequency, both masked half maps hold only what the mask leaks there from
    sampled neighbours, and that leak is the same signal in both halves, so the 3D FSC
    reads high (≈ 0.7 inside a simulated 20° missing cone) although nothing was measured.
    This gate looks at the amplitude instead: P(k) = |F1(k)|·|F2(k)| (|F1|² for a single
    map) of the z-scored, masked maps, averaged over the 3×3×3 Fourier neighbourhood, is
    divided by the ``percentile``-th percentile of P on its shell (round(|k|)), and the
    ratio is ramped linearly to 1 at ``threshold``. Measured regions give 1 (also for
    isotropic data); unmeasured ones, whose leaked power is 10⁻² … 10⁻⁴ of the shell's,
    give ≈ 0.

    Parameters
    ----------
    half1, half2 : (n, n, n) maps (half2 optional).
    mask : (n, n, n) soft mask applied after z-scoring, as for the 3D FSC (None: none).
    threshold : ratio to the shell's reference power at which the gate reaches 1, (0, 1].
    percentile : which percentile of the shell's power is the reference, (0, 100].
    also_unmasked : with a mask, return the smaller of this gate and the same gate of the
        unmasked maps. The mask spreads every measured frequency's power into its
        neighbours, unsampled ones included (at the lowest shells, where a cone holds few
        voxels, that leak reaches the threshold); the unmasked maps hold no such leak but
        can hold content in the solvent (a reconstruction's padding and interpolation),
        which the mask removes. A region counts as measured only where both see power.

    Returns
    -------
    (n, n, n) float32, fftshift-ed like the 3D FSC.
    """
    import scipy.fft
    from scipy.ndimage import uniform_filter

    h1 = check_cubic_map(half1, "half map 1")
    n = h1.shape[0]
    if not 0 < threshold <= 1:
        raise InvalidValueError(f"threshold must be in (0, 1]; got {threshold}")
    if not 0 < percentile <= 100:
        raise InvalidValueError(f"percentile must be in (0, 100]; got {percentile}")
    m = None if mask is None else np.asarray(mask, dtype=np.float32)

    def amplitude(v: np.ndarray) -> np.ndarray:
        z = v.astype(np.float32)
        sd = float(z.std())
        z = (z - z.mean()) / (sd if sd > 0 else 1.0)
        if m is not None:
            z = z * m
        return np.abs(scipy.fft.rfftn(z, workers=-1)).astype(np.float32)

    p = amplitude(h1)
    p = p * (amplitude(check_cubic_map(half2, "half map 2")) if half2 is not None else p)
    # Friedel-expand the half spectrum to the full grid (fft order), then smooth and shift
    neg = p[np.r_[0, n - 1 : 0 : -1]][:, np.r_[0, n - 1 : 0 : -1]]
    full = np.empty((n, n, n), dtype=np.float32)
    full[:, :, : p.shape[2]] = p
    full[:, :, n // 2 + 1 :] = neg[:, :, n - n // 2 - 1 : 0 : -1]
    del p, neg
    full = np.fft.fftshift(uniform_filter(full, size=3, mode="wrap"))
    gate = shell_percentile(full, percentile)
    gate *= threshold
    np.divide(full, gate, out=gate)
    gate = np.clip(gate, 0.0, 1.0, out=gate)
    if also_unmasked and m is not None:
        np.minimum(gate, power_presence(h1, half2, None, threshold, percentile), out=gate)
    return gate


def unmeasured_agreement(
    half1: np.ndarray, half2: np.ndarray, gate: np.ndarray, max_shell: int | None = None
) -> float:
    """The share of the halves' agreed power that lies where ``gate`` reads unmeasured.

    S = Σ (1 − g(k)) · Re(F1(k) F2*(k)) / Σ Re(F1(k) F2*(k)), summed over the shells
    2 … ``max_shell`` (round(|k|); default n/4), F the Fourier transforms of the unmasked
    halves. Independent noise averages out of both sums, so S is the share of the
    *signal* the two halves have in common that sits in directions no view sampled. A
    simulation that leaves nothing there gives S ≈ 0; a real reconstruction
    (``relion_reconstruct``) leaves its interpolation of the sampled neighbours there, the
    same in both halves, and gives S ≈ 1 % (benchmarks/RESULTS.md, session 24).

    Parameters
    ----------
    half1, half2 : (n, n, n) unmasked half maps.
    gate : (n, n, n) measured-power gate in [0, 1] (:func:`power_presence`), fftshift-ed.
    max_shell : the highest shell summed (voxels of Fourier radius), ≥ 2.

    Returns
    -------
    S as a fraction (not a percentage); 0 when the halves agree on nothing.
    """
    import scipy.fft

    h1 = check_cubic_map(half1, "half map 1")
    h2 = check_cubic_map(half2, "half map 2")
    n = h1.shape[0]
    g = np.asarray(gate, dtype=np.float32)
    if h2.shape != h1.shape or g.shape != h1.shape:
        raise InvalidValueError(
            f"half maps and gate must share one shape; got {h1.shape}, {h2.shape}, {g.shape}"
        )
    top = n // 4 if max_shell is None else int(max_shell)
    if top < 2:
        raise InvalidValueError(f"max_shell must be at least 2; got {max_shell}")
    f1 = scipy.fft.fftn(h1.astype(np.float32), workers=-1)
    f2 = scipy.fft.fftn(h2.astype(np.float32), workers=-1)
    cross = np.fft.fftshift(f1.real * f2.real + f1.imag * f2.imag)
    del f1, f2
    shell = shell_index(n)
    band = (shell >= 2) & (shell <= top)
    agreed = float(np.sum(cross[band], dtype=np.float64))
    if agreed <= 0:
        return 0.0
    unmeasured = float(np.sum((1.0 - g[band]) * cross[band], dtype=np.float64))
    return unmeasured / agreed


def shell_percentile(volume: np.ndarray, percentile: float) -> np.ndarray:
    """The ``percentile``-th percentile of ``volume`` over each Fourier shell, per voxel.

    ``volume`` is an fftshift-ed (n, n, n) grid; shells are round(|k|). Returns an
    (n, n, n) float32 grid whose every voxel holds its shell's percentile (computed in
    float64), floored at the smallest positive float32 so it can divide.
    """
    n = volume.shape[0]
    # int16 shells (|k| < 32768 for any box we accept) keep a 512³ grid's labels at 0.25 GiB
    shell = np.rint(frequency_radius(n, np.float32)).astype(np.int16).ravel()
    order = np.argsort(shell, kind="stable")
    counts = np.bincount(shell)
    ref = np.empty(counts.size, dtype=np.float64)
    flat = np.asarray(volume).ravel()[order]
    del order
    start = 0
    for i, c in enumerate(counts):
        ref[i] = np.percentile(flat[start : start + c], percentile) if c else 1.0
        start += c
    del flat
    ref = np.maximum(ref, np.finfo(np.float32).tiny).astype(np.float32)
    return ref[shell].reshape(volume.shape)


def measured_weight(
    fsc3d_volume: np.ndarray,
    half1: np.ndarray,
    half2: np.ndarray,
    mask: np.ndarray | None,
    percentile: float = 95.0,
    presence: np.ndarray | None = None,
) -> np.ndarray:
    """Where Fourier space was measured, relative to the best directions of each shell.

    ``clip(g / P95_shell(g), 0, 1)`` with ``g = clip(3D FSC, 0, 1) ·`` the measured-power
    gate of :func:`power_presence`: 1 along the shell's well-measured
    directions, falling towards 0 in the missing cone. (n, n, n) float32, fftshift-ed.
    ``presence``: that gate (``power_presence(half1, half2, mask, 0.1)``) when the caller
    already has it; None: computed here.
    """
    g = np.clip(np.asarray(fsc3d_volume, dtype=np.float64), 0.0, 1.0)
    if presence is None:
        presence = power_presence(half1, half2, mask, 0.1)
    g = g * presence
    return np.clip(g / shell_percentile(g, percentile), 0.0, 1.0).astype(np.float32)


def ray_radii(n: int, shells: tuple[float, float] | None = None) -> np.ndarray:
    """The radii (voxels) a weight is read at along a direction: every whole radius in
    ``shells`` = (lo, hi), default (n/8, n/4), inside the 3D FSC's usual support; ``[lo]``
    when no whole radius lies between. float64."""
    lo, hi = (n / 8, n / 4) if shells is None else (float(shells[0]), float(shells[1]))
    if not 0 < lo <= hi <= n / 2 - 1:
        raise InvalidValueError(f"shells must satisfy 0 < lo ≤ hi ≤ n/2 − 1; got ({lo}, {hi})")
    return np.arange(np.ceil(lo), np.floor(hi) + 1) if np.ceil(lo) <= hi else np.array([lo])


def directional_weight(weight: np.ndarray, shells: tuple[float, float] | None = None) -> np.ndarray:
    """A Fourier weight's directional pattern, read where it is reliable, at every shell.

    Which directions the views sampled does not depend on resolution, but a 3D FSC says so
    reliably only where the signal is strong: at high shells its per-direction values are
    mostly noise. Each voxel k ≠ 0 gets the mean of ``weight`` along its own direction
    k/|k| at radii ``shells[0] … shells[1]`` (every whole voxel radius in between, linear
    interpolation); default n/8 … n/4, inside the 3D FSC's usual support.

    ``weight``: (n, n, n) fftshift-ed, centre n//2. Returns (n, n, n) float32; the centre
    keeps its own value.
    """
    from scipy.ndimage import map_coordinates

    w = np.asarray(check_cubic_map(weight, "weight"), dtype=np.float64)
    n = w.shape[0]
    radii = ray_radii(n, shells)
    c = n // 2
    k = np.indices(w.shape, dtype=np.float64) - c
    radius = np.sqrt((k**2).sum(axis=0))
    unit = k / np.where(radius > 0, radius, 1.0)
    total = np.zeros_like(w)
    for r in radii:
        total += map_coordinates(w, [c + r * unit[i] for i in range(3)], order=1, mode="nearest")
    out = total / len(radii)
    out[c, c, c] = w[c, c, c]
    return out.astype(np.float32)
