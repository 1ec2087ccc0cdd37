"""The 24 proper rotations of the cube, in numpy (shared by ``nn.operators`` and ``trust``).

A rotation is an axis permutation plus axis flips of a (…, D, D, D) array, i.e. a rotation
about the grid's geometric centre ``(D - 1) / 2``: exact, no interpolation. Its matrix
``R`` moves the value at centred coordinates ``c = (z, y, x) − (D − 1)/2`` to ``R @ c``.
The Fourier magnitudes of a rotated map are those of the map rotated the same way about
the zero frequency (:func:`rotate_fourier`).
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from .errors import InvalidValueError


@lru_cache(maxsize=1)
def rotation_specs() -> tuple[tuple[np.ndarray, tuple[int, ...], tuple[int, ...]], ...]:
    """(matrix, axis permutation, flipped axes) of the 24 rotations; identity first."""
    specs = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), dtype=np.int64)
            for i in range(3):
                m[i, perm[i]] = signs[i]
            if round(np.linalg.det(m)) == 1:
                flips = tuple(i for i in range(3) if signs[i] < 0)
                specs.append((m, tuple(perm), flips))
    return tuple(specs)


def check_rotation_index(index: int) -> None:
    """Raise :class:`InvalidValueError` unless ``index`` is an integer in 0 … 23."""
    if isinstance(index, bool) or not isinstance(index, int | np.integer) or not 0 <= index < 24:
        raise InvalidValueError(f"rotation index must be an integer in 0..23; got {index!r}")


def rotate_array(x: np.ndarray, index: int) -> np.ndarray:
    """Rotate the last three axes of ``x`` by cube rotation ``index`` (a copy)."""
    check_rotation_index(index)
    _, perm, flips = rotation_specs()[int(index)]
    lead = x.ndim - 3
    out = np.transpose(x, (*range(lead), *(lead + p for p in perm)))
    if flips:
        out = np.flip(out, axis=tuple(lead + f for f in flips))
    return np.ascontiguousarray(out)


def rotate_fourier(grid: np.ndarray, index: int) -> np.ndarray:
    """Rotate an fftshift-ed (n, n, n) Fourier grid about the zero frequency (index n//2).

    ``out[k] = grid[R⁻¹ k]`` for every frequency vector k, taken modulo n (on an even box
    −n/2 is its own alias), so ``|FFT(rotate_array(v))| = rotate_fourier(|FFT(v)|)``.
    """
    check_rotation_index(index)
    m = rotation_specs()[int(index)][0]
    n = grid.shape[0]
    c = n // 2
    k = np.indices(grid.shape).reshape(3, -1) - c
    src = (m.T @ k + c) % n
    return grid[src[0], src[1], src[2]].reshape(grid.shape)
