"""Rigid alignment of a refined map onto the ground truth, for fair map figures.

A refinement is free to turn and shift its map as a whole (the particles' poses turn with
it), so an FSC with the truth taken as the map stands mixes two things: how good the map
is, and how far the run drifted. ``align_to_truth`` removes the drift: it starts from the
candidate rotations it is given (e.g. the run's global pose offset and its inverse, whose
sense depends on conventions), keeps the one that correlates best, refines it locally
(Nelder-Mead on a rotation vector; the shift from the peak of the cross-correlation at
each trial), and returns the map rotated (cubic spline) and shifted (Fourier phase ramp).

Used by ``benchmarks/bench_relion.py``; tested in ``tests/relion/test_relion_oracle.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, optimize
from scipy.spatial.transform import Rotation


@dataclass(frozen=True)
class Alignment:
    """The rotation and shift that bring a map onto the reference."""

    rotation: Rotation  # applied to the map's content about the box centre
    shift: np.ndarray  # voxels (z, y, x), applied after the rotation
    correlation: float  # of the low-passed maps after alignment

    @property
    def angle_deg(self) -> float:
        return float(np.degrees(self.rotation.magnitude()))


def rotate_map(volume: np.ndarray, rotation: Rotation, order: int = 3) -> np.ndarray:
    """``volume`` with its content turned by ``rotation`` about the box centre.

    Axes are (z, y, x) indices; the rotation acts on (z, y, x) vectors. Voxels that come
    from outside the box are 0.
    """
    n = np.array(volume.shape, dtype=np.float64)
    centre = n // 2
    inv = rotation.inv().as_matrix()  # output(x) = input(R⁻¹ (x − c) + c)
    return ndimage.affine_transform(
        volume, inv, offset=centre - inv @ centre, order=order, mode="constant", cval=0.0
    )


def shift_map(volume: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``volume`` moved by ``shift`` voxels (z, y, x), periodically, by a phase ramp."""
    ft = np.fft.fftn(volume)
    k = np.meshgrid(*(np.fft.fftfreq(s) for s in volume.shape), indexing="ij")
    phase = sum(ki * si for ki, si in zip(k, shift, strict=True))
    return np.fft.ifftn(ft * np.exp(-2j * np.pi * phase)).real


def _lowpass(volume: np.ndarray, shells: float) -> np.ndarray:
    ft = np.fft.fftn(volume)
    k = np.meshgrid(*(np.fft.fftfreq(s) * s for s in volume.shape), indexing="ij")
    r = np.sqrt(sum(ki**2 for ki in k))
    return np.fft.ifftn(ft * np.exp(-0.5 * (r / shells) ** 2)).real


def _best_shift(moving: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Shift (voxels) that maximises the circular cross-correlation; parabolic sub-voxel."""
    cc = np.fft.ifftn(np.fft.fftn(reference) * np.conj(np.fft.fftn(moving))).real
    peak = np.array(np.unravel_index(int(np.argmax(cc)), cc.shape))
    shift = peak.astype(np.float64)
    for axis, size in enumerate(cc.shape):
        idx = [int(p) for p in peak]
        values = []
        for d in (-1, 0, 1):
            idx[axis] = (peak[axis] + d) % size
            values.append(cc[tuple(idx)])
        denom = values[0] - 2 * values[1] + values[2]
        if denom < 0:
            shift[axis] += 0.5 * (values[0] - values[2]) / denom
    size = np.array(cc.shape)
    return np.where(shift > size / 2, shift - size, shift)


def _correlation(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> float:
    a = (a - a.mean()) * weight
    b = (b - b.mean()) * weight
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-30))


def align_to_truth(
    volume: np.ndarray,
    truth: np.ndarray,
    candidates: list[Rotation] | None = None,
    mask: np.ndarray | None = None,
    lowpass_shells: float | None = None,
) -> tuple[np.ndarray, Alignment]:
    """Rotate and shift ``volume`` (n³) onto ``truth`` (n³); return it and the alignment.

    ``candidates``: starting rotations (identity always included); ``mask``: real-space
    weight of the correlation (default all ones); ``lowpass_shells``: Gaussian low-pass
    (1/e² radius in shells) applied to both maps while searching (default n/8), so the
    search sees the shape rather than noise.
    """
    n = volume.shape[0]
    shells = float(lowpass_shells or n / 8)
    weight = np.ones_like(truth) if mask is None else mask
    ref = _lowpass(truth, shells)
    low = _lowpass(volume, shells)

    def trial(rotvec: np.ndarray) -> tuple[float, np.ndarray]:
        turned = rotate_map(low, Rotation.from_rotvec(rotvec), order=1)
        shift = _best_shift(turned, ref)
        return _correlation(shift_map(turned, shift), ref, weight), shift

    starts = [Rotation.identity(), *(candidates or [])]
    scored = [(trial(r.as_rotvec())[0], r.as_rotvec()) for r in starts]
    best_start = max(scored, key=lambda s: s[0])[1]
    step = np.radians(3.0)
    simplex = np.vstack([best_start, best_start + step * np.eye(3)])
    fit = optimize.minimize(
        lambda v: -trial(v)[0],
        best_start,
        method="Nelder-Mead",
        options={"initial_simplex": simplex, "xatol": np.radians(0.05), "fatol": 1e-6},
    )
    rotation = Rotation.from_rotvec(fit.x)
    shift = trial(fit.x)[1]
    aligned = shift_map(rotate_map(volume, rotation, order=3), shift)
    return aligned, Alignment(rotation, shift, float(-fit.fun))
