"""Two half maps of a ground truth, as a reconstruction from oriented particles gives them.

:func:`simulate_half_maps` splits the views into two halves and applies the noise model
(each half's sampling density W weights the signal, noise variance ≈ σ²/W, Wiener
regularised); :func:`simulate_dataset` goes from a test molecule or a given map (binned
by :func:`fourier_crop` when asked for a smaller box) to :class:`SimulatedData`: the
half maps with their ground truth, mask, densities and views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._checks import check_box, check_cubic_map, check_positive
from ..errors import InvalidValueError
from ..fourier import fourier_crop
from ..io import Map
from ..masks import soft_mask
from .molecules import make_molecule
from .views import draw_view_directions, sampling_density

__all__ = [
    "DEFAULT_SNR",
    "REGULARISATION",
    "SimulatedData",
    "fourier_crop",
    "simulate_dataset",
    "simulate_half_maps",
]

#: Default per-view spectral signal-to-noise ratio (see :func:`simulate_half_maps`).
DEFAULT_SNR = 0.01
#: Default Wiener constant: λ = REGULARISATION × mean(W) (see :func:`simulate_half_maps`).
REGULARISATION = 0.02


@dataclass(frozen=True)
class SimulatedData:
    """Simulated half maps with their ground truth.

    Attributes
    ----------
    gt : (n, n, n) float32 ground truth.
    half1, half2 : (n, n, n) float32 half maps.
    mask : (n, n, n) float32 soft mask of the ground truth (:func:`soft_mask`).
    density1, density2 : (n, n, n) float32 sampling densities W of each half,
        fftshift-ed.
    voxel_size : Å per voxel.
    directions : (n_views, 3) projection directions (x, y, z) of all views.
    half_of_view : (n_views,) int8, 1 or 2: the half each view went to.
    noise_sigma : σ, the per-view Fourier noise standard deviation (numpy FFT units).
    """

    gt: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    mask: np.ndarray
    density1: np.ndarray
    density2: np.ndarray
    voxel_size: float
    directions: np.ndarray
    half_of_view: np.ndarray
    noise_sigma: float


def _hermitian(w: np.ndarray) -> np.ndarray:
    """(w(k) + w(−k)) / 2 on an unshifted FFT grid (−k taken modulo n).

    W(k) = W(−k) everywhere except on the Nyquist planes of an even box, where −k
    aliases to another stored frequency; averaging there keeps the half maps real.
    """
    return 0.5 * (w + np.roll(w[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)))


def simulate_half_maps(
    ground_truth: np.ndarray,
    voxel_size: float = 1.0,
    distribution: str = "top",
    n_views: int | None = None,
    snr: float = DEFAULT_SNR,
    seed: int = 0,
    angles: np.ndarray | None = None,
    *,
    regularisation: float = REGULARISATION,
) -> SimulatedData:
    """Two half maps of a ground truth as a reconstruction from particles would give.

    Noise model. The views (:func:`draw_view_directions`) are split at random into two
    halves. Each view measures its central section of G = FFT(ground truth) plus
    Fourier noise of standard deviation σ per voxel, so after back-projection a half
    holds ``B(k) = W(k)·G(k) + sqrt(W(k))·σ·ν(k)`` with W its sampling density
    (:func:`sampling_density`) and ν unit-variance Hermitian noise (the FFT of real
    white noise, scaled), independent between the halves. The half map is the
    Wiener-regularised reconstruction ``B / (W + λ)`` with ``λ = regularisation ×
    mean(W)`` over the box (per half); on the Nyquist planes of an even box, where k
    and −k alias, W is averaged over the pair so that the half maps are real. Signal
    is thus weighted by W/(W+λ) (≈ 1 where sampled, 0 where W = 0) and the noise
    variance is ≈ σ²/W where W ≫ λ.

    σ is set from ``snr``, the per-view spectral SNR averaged over all non-zero
    frequencies: ``σ² = mean_{k≠0} |G(k)|² / snr = n³ · var(ground truth) / snr``
    (numpy's unnormalised FFT). A shell's own SNR scales with its share of the power,
    so high frequencies of a pseudo-atomic map are much noisier than this mean.

    Parameters
    ----------
    ground_truth : (n, n, n) real map.
    voxel_size : Å per voxel (carried into the result).
    distribution, n_views, angles : see :func:`draw_view_directions` (need ≥ 2 views).
    snr : per-view SNR (> 0).
    seed : random seed (views, the split and the noise).
    regularisation : λ relative to mean(W) (> 0).

    Returns
    -------
    SimulatedData with float32 half maps of the ground truth's shape and a soft mask
    of the ground truth.
    """
    gt = check_cubic_map(ground_truth, "ground_truth")
    voxel_size = check_positive(voxel_size, "voxel_size")
    snr = check_positive(snr, "snr")
    regularisation = check_positive(regularisation, "regularisation")
    n = gt.shape[0]
    dirs = draw_view_directions(distribution, n_views, seed=seed, angles=angles)
    if dirs.shape[0] < 2:
        raise InvalidValueError(f"need at least 2 views to make two halves, got {dirs.shape[0]}")
    split_seq, noise1_seq, noise2_seq = np.random.SeedSequence(seed).spawn(3)
    order = np.random.default_rng(split_seq).permutation(dirs.shape[0])
    half_of_view = np.full(dirs.shape[0], 2, dtype=np.int8)
    half_of_view[order[: dirs.shape[0] // 2]] = 1

    g = np.fft.rfftn(gt.astype(np.float64))
    power = float(n**3 * np.var(gt, dtype=np.float64))
    if power <= 0:
        raise InvalidValueError("ground_truth is constant: there is no signal to simulate")
    sigma = math.sqrt(power / snr)
    halves = []
    densities = []
    for h, seq in ((1, noise1_seq), (2, noise2_seq)):
        w_shift = sampling_density(n, dirs[half_of_view == h])
        w = _hermitian(np.fft.ifftshift(w_shift).astype(np.float64))[:, :, : n // 2 + 1]
        lam = regularisation * float(w_shift.mean(dtype=np.float64))
        white = np.random.default_rng(seq).standard_normal((n, n, n))
        nu = np.fft.rfftn(white) / n**1.5
        rec = (w * g + np.sqrt(w) * sigma * nu) / (w + lam)
        halves.append(np.fft.irfftn(rec, s=gt.shape, axes=(0, 1, 2)).astype(np.float32))
        densities.append(w_shift)
    return SimulatedData(
        gt=gt,
        half1=halves[0],
        half2=halves[1],
        mask=soft_mask(gt),
        density1=densities[0],
        density2=densities[1],
        voxel_size=voxel_size,
        directions=dirs,
        half_of_view=half_of_view,
        noise_sigma=sigma,
    )


def simulate_dataset(
    box: int | None = None,
    voxel_size: float | None = None,
    distribution: str = "top",
    n_views: int | None = None,
    snr: float = DEFAULT_SNR,
    seed: int = 0,
    from_map: np.ndarray | Map | None = None,
    angles: np.ndarray | None = None,
) -> SimulatedData:
    """Ground truth → :class:`SimulatedData` in one call.

    Without ``from_map`` the ground truth is :func:`make_molecule` (box default 64,
    voxel size default 2.0 Å). With ``from_map`` (an array, or a :class:`~spisonet.io.Map`
    whose voxel size is used) that map is the ground truth; when ``box`` is smaller
    than the map it is binned by :func:`fourier_crop` and the voxel size scaled by
    n / box (e.g. the 128³ CFTR map at 1.3 Å → 64³ at 2.6 Å).

    Parameters
    ----------
    box : box edge of the result, voxels.
    voxel_size : Å per voxel of the molecule, or of an array ``from_map`` (default 1.0
        there); ignored for a Map, which carries its own.
    distribution, n_views, snr, seed, angles : see :func:`simulate_half_maps`.
    from_map : ground-truth map to use instead of a molecule.
    """
    if from_map is None:
        box = 64 if box is None else check_box(box)
        voxel = 2.0 if voxel_size is None else voxel_size
        gt = make_molecule(box, voxel, seed)
    else:
        if isinstance(from_map, Map):
            data, voxel = from_map.data, from_map.voxel_size
        else:
            data, voxel = from_map, (1.0 if voxel_size is None else voxel_size)
        voxel = check_positive(voxel, "voxel_size")
        gt = check_cubic_map(data, "from_map")
        n = gt.shape[0]
        if box is not None and box != n:
            if box > n:
                raise InvalidValueError(
                    f"box {box} is larger than the {n}³ map given; only binning (a "
                    "smaller box) is supported"
                )
            gt = fourier_crop(gt, box)
            voxel = voxel * n / box
    return simulate_half_maps(gt, voxel, distribution, n_views, snr, seed, angles)
