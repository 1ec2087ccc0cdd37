"""Training cubes, kept in memory (ALGORITHM.md §3, "Preparation").

Cube centres are drawn uniformly among the mask voxels ≠ 0 where a whole cube fits in
the map; the SAME centres cut both half maps. :class:`CubePairs` then serves seeded,
shuffled batches with a per-sample random swap of the two halves and a per-sample
rotation index for the equivariance loss.

A cube of edge ``D`` centred at voxel ``c`` covers ``c - D//2 … c - D//2 + D - 1`` on
each axis.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_positive_int
from ..errors import (
    EmptyMaskError,
    InvalidValueError,
    MapMismatchError,
    MapShapeError,
    NonFiniteMapError,
)

__all__ = ["CubeBatch", "CubePairs", "extract_cubes", "sample_cube_centres"]

RngLike = np.random.Generator | int | None


def _check_cube_fits(shape: tuple[int, ...], cube_size: int) -> None:
    if cube_size > min(shape):
        raise InvalidValueError(
            f"cube_size {cube_size} is larger than the map {shape}; choose a cube_size of "
            f"at most {min(shape)}"
        )


def sample_cube_centres(
    mask: np.ndarray, n: int, cube_size: int, rng: RngLike = None
) -> np.ndarray:
    """Draw ``n`` cube centres uniformly among mask voxels ≠ 0 where a whole cube fits.

    Parameters
    ----------
    mask : (Z, Y, X) array
        Any real array; voxels ≠ 0 are candidate centres.
    n : int
        Number of centres (``n_subvolume``).
    cube_size : int
        Cube edge in voxels.
    rng : numpy Generator, int seed or None

    Returns
    -------
    (n, 3) int64 array of (z, y, x) centres. Without replacement when there are at
    least ``n`` candidate positions; otherwise every candidate is used
    ``⌊n / count⌋`` or ``⌈n / count⌉`` times (balanced, in random order).

    Raises
    ------
    MapShapeError
        ``mask`` is not 3D.
    NonFiniteMapError
        ``mask`` contains NaN or infinity.
    InvalidValueError
        ``n`` or ``cube_size`` is not a positive integer, or the cube is larger than the map.
    EmptyMaskError
        The mask is zero everywhere, or no mask voxel lies where a whole cube fits.
    """
    m = np.asarray(mask)
    if m.ndim != 3:
        raise MapShapeError(f"the mask must be a 3D array; found shape {m.shape}")
    n = check_positive_int(n, "n_subvolume")
    d = check_positive_int(cube_size, "cube_size")
    _check_cube_fits(m.shape, d)
    if not np.all(np.isfinite(m)):
        raise NonFiniteMapError("the mask contains NaN or infinite values")
    if not np.any(m):
        raise EmptyMaskError("the mask is zero everywhere; no training cube can be cut")
    lo = d // 2
    region = m[tuple(slice(lo, s - d + lo + 1) for s in m.shape)]
    flat = np.flatnonzero(region)
    if flat.size == 0:
        raise EmptyMaskError(
            f"no mask voxel lies where a whole {d}³ cube fits in the {m.shape} map "
            f"(centres must be {lo} … {min(m.shape) - d + lo} on each axis); "
            "use a smaller cube_size or a mask away from the box edge"
        )
    gen = np.random.default_rng(rng)
    if flat.size >= n:
        chosen = flat[gen.choice(flat.size, size=n, replace=False)]
    else:
        reps = -(-n // flat.size)
        chosen = np.concatenate([gen.permutation(flat) for _ in range(reps)])[:n]
        chosen = chosen[gen.permutation(n)]
    centres = np.stack(np.unravel_index(chosen, region.shape), axis=1).astype(np.int64)
    return centres + lo


def extract_cubes(volume: np.ndarray, centres: np.ndarray, cube_size: int) -> np.ndarray:
    """Cut cubes of edge ``cube_size`` centred at ``centres`` out of ``volume``.

    Parameters
    ----------
    volume : (Z, Y, X) array
    centres : (N, 3) integer array of (z, y, x) centres
    cube_size : int

    Returns
    -------
    (N, D, D, D) float32 array (a copy).

    Raises
    ------
    MapShapeError
        ``volume`` is not 3D or ``centres`` is not (N, 3).
    InvalidValueError
        A cube would extend outside the map.
    """
    v = np.asarray(volume)
    if v.ndim != 3:
        raise MapShapeError(f"the map must be a 3D array; found shape {v.shape}")
    d = check_positive_int(cube_size, "cube_size")
    _check_cube_fits(v.shape, d)
    c = np.asarray(centres)
    if c.ndim != 2 or c.shape[1] != 3 or not np.issubdtype(c.dtype, np.integer):
        raise MapShapeError(f"centres must be an (N, 3) integer array; found {c.shape} {c.dtype}")
    starts = c - d // 2
    bad = np.any((starts < 0) | (starts + d > np.asarray(v.shape)), axis=1)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise InvalidValueError(
            f"the {d}³ cube centred at {c[i].tolist()} does not fit in the {v.shape} map"
        )
    out = np.empty((len(c), d, d, d), dtype=np.float32)
    for i, (z, y, x) in enumerate(starts):
        out[i] = v[z : z + d, y : y + d, x : x + d]
    return out


@dataclass(frozen=True)
class CubeBatch:
    """One batch of paired training cubes.

    Attributes
    ----------
    x1, x2 : (B, 1, D, D, D) float32 tensors (``x2`` is None for a single map)
        After the per-sample random swap.
    rotations : (B,) int64 array
        Rotation index (0 … 23) of each sample for the equivariance loss.
    indices : (B,) int64 array
        Which stored cubes these are.
    swapped : (B,) bool array
        Whether x1/x2 were swapped for each sample.
    """

    x1: torch.Tensor
    x2: torch.Tensor | None
    rotations: np.ndarray
    indices: np.ndarray
    swapped: np.ndarray

    def __len__(self) -> int:
        return int(self.x1.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CubeBatch:
        """The same batch with its tensors on ``device``."""
        return CubeBatch(
            self.x1.to(device, non_blocking=non_blocking),
            None if self.x2 is None else self.x2.to(device, non_blocking=non_blocking),
            self.rotations,
            self.indices,
            self.swapped,
        )

    def select(self, part: slice) -> CubeBatch:
        """The samples ``part`` of this batch (e.g. one rank's share of a global batch)."""
        return CubeBatch(
            self.x1[part],
            None if self.x2 is None else self.x2[part],
            self.rotations[part],
            self.indices[part],
            self.swapped[part],
        )

    def split(self, parts: int) -> list[CubeBatch]:
        """Split into ``parts`` micro-batches (for gradient accumulation), sizes differing by ≤ 1.

        Empty parts (more parts than samples) are left out.
        """
        parts = check_positive_int(parts, "acc_batches")
        bounds = np.linspace(0, len(self), parts + 1).round().astype(int)
        return [self.select(slice(a, b)) for a, b in itertools.pairwise(bounds) if b > a]


class CubePairs:
    """In-memory paired training cubes that serve seeded, shuffled batches.

    Parameters
    ----------
    cubes1 : (N, D, D, D) array
        Cubes of half map 1 (or of the single map).
    cubes2 : (N, D, D, D) array or None
        Cubes of half map 2 at the SAME centres; None for a single map.
    seed : int
        Every random choice (order, swaps, rotations) of epoch ``e`` depends only on
        ``(seed, e)``, so an interrupted run can resume an epoch exactly.
    swap : bool
        Randomly swap x1 and x2 per sample (default True; ignored without ``cubes2``).
    rotation_weights : (24,) array ≥ 0, optional
        Draw the equivariance rotation of each sample with these relative weights (e.g.
        :func:`~spisonet.nn.rotation_information`); None or all zero: uniformly.
    """

    def __init__(
        self,
        cubes1: np.ndarray,
        cubes2: np.ndarray | None = None,
        seed: int = 0,
        swap: bool = True,
        rotation_weights: np.ndarray | None = None,
    ) -> None:
        c1 = np.asarray(cubes1)
        if c1.ndim != 4 or len(set(c1.shape[1:])) != 1 or c1.shape[0] < 1:
            raise MapShapeError(f"cubes must be an (N, D, D, D) array; found shape {c1.shape}")
        if cubes2 is not None and np.shape(cubes2) != c1.shape:
            raise MapMismatchError(
                f"the two halves' cubes differ in shape: {c1.shape} and {np.shape(cubes2)}"
            )
        self._c1 = torch.from_numpy(np.ascontiguousarray(c1, dtype=np.float32))
        self._c2 = (
            None
            if cubes2 is None
            else torch.from_numpy(np.ascontiguousarray(cubes2, dtype=np.float32))
        )
        self.seed = int(seed)
        self.swap = bool(swap) and cubes2 is not None
        self.rotation_p = _rotation_probabilities(rotation_weights)

    def __len__(self) -> int:
        return int(self._c1.shape[0])

    @property
    def cube_size(self) -> int:
        """Cube edge D in voxels."""
        return int(self._c1.shape[-1])

    @property
    def paired(self) -> bool:
        """Whether there is a second half."""
        return self._c2 is not None

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        """Number of batches in one epoch."""
        b = check_positive_int(batch_size, "batch_size")
        return len(self) // b if drop_last else -(-len(self) // b)

    def batches(
        self, epoch: int, batch_size: int, drop_last: bool = False, start: int = 0
    ) -> Iterator[CubeBatch]:
        """Iterate over one epoch: every cube once, shuffled, in batches.

        Parameters
        ----------
        epoch : int
            Epoch number (seeds this epoch's order, swaps and rotations).
        batch_size : int
        drop_last : bool
            Leave out a last, smaller batch.
        start : int
            First batch to yield (to resume inside an epoch; earlier batches are skipped
            without changing the later ones).

        Yields
        ------
        CubeBatch, tensors on the CPU (move them with :meth:`CubeBatch.to`).
        """
        b = check_positive_int(batch_size, "batch_size")
        n = len(self)
        gen = np.random.default_rng([self.seed, int(epoch)])
        order = gen.permutation(n)
        swaps = gen.random(n) < 0.5 if self.swap else np.zeros(n, dtype=bool)
        if self.rotation_p is None:
            rots = gen.integers(0, 24, size=n)
        else:
            rots = gen.choice(24, size=n, p=self.rotation_p)
        for k in range(int(start), self.n_batches(b, drop_last)):
            sel = order[k * b : (k + 1) * b]
            sw = swaps[k * b : (k + 1) * b]
            idx = torch.from_numpy(sel)
            a = self._c1.index_select(0, idx).unsqueeze(1)
            x2 = None
            if self._c2 is not None:
                c = self._c2.index_select(0, idx).unsqueeze(1)
                m = torch.from_numpy(sw).view(-1, 1, 1, 1, 1)
                a, x2 = torch.where(m, c, a), torch.where(m, a, c)
            yield CubeBatch(a, x2, rots[k * b : (k + 1) * b].astype(np.int64), sel, sw)


def _rotation_probabilities(weights: np.ndarray | None) -> np.ndarray | None:
    """Normalised rotation probabilities, or None (uniform) for None or all-zero weights."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (24,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidValueError(
            f"rotation_weights must be 24 finite values ≥ 0; got shape {w.shape}"
        )
    total = w.sum()
    return None if total <= 0 else w / total
