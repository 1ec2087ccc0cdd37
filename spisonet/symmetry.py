"""Point-group rotation matrices in RELION's axis conventions (no RELION needed).

Every group is returned as a ``(G, 3, 3)`` float64 stack of proper rotations acting on
column vectors ``(x, y, z)`` (x is the fastest map axis, as in the MRC ``[z, y, x]``
array). The identity is always element 0. The orientations are RELION's defaults
(``src/symmetries.cpp`` lists the generators; we build the closure ourselves):

- ``Cn``: n-fold axis along z.
- ``Dn``: n-fold axis along z and a 2-fold axis along x.
- ``T``: 3-fold along z, 2-fold along (0, √(2/3), √(1/3)).
- ``O``: 4-fold along z, 3-fold along (1, 1, 1)/√3, i.e. the 24 signed permutation
  matrices with determinant +1 (4-folds along x, y and z).
- ``I`` (= RELION's ``I2``, "Crowther 222"): 2-folds along x, y and z; a 5-fold along
  (1, 0, φ)/√(1 + φ²) in the xz plane and a 3-fold along (0, 1/φ, φ)/√3 in the yz plane
  (φ the golden ratio).
- ``I1``: 2-fold along x, 5-fold along (φ, 0, −1)/√(1 + φ²) ("no-Crowther 222").
- ``I3``: 5-fold along z, 2-fold along (−1, 0, φ)/√(1 + φ²) (RELION's "52 setting").
- ``I4``: 2-fold along (1, 0, φ)/√(1 + φ²), 5-fold along (2, 0, 1)/√5.

Which way a generator turns does not matter: the group holds every power of it.
"""

from __future__ import annotations

import re

import numpy as np

from .errors import InvalidValueError

__all__ = [
    "MAX_CYCLIC_ORDER",
    "VALID_SYMMETRIES",
    "group_order",
    "point_group",
    "rotation_about",
]

#: Largest n accepted in Cn and Dn (real particles stay far below; ``C100000`` would
#: multiply every particle 100 000 times).
MAX_CYCLIC_ORDER = 100

#: Human-readable list of the symbols :func:`point_group` accepts.
VALID_SYMMETRIES = "C1, Cn (1 ≤ n ≤ 100), Dn (1 ≤ n ≤ 100), T, O, I (= I2), I1, I2, I3, I4"

_PHI = (1.0 + 5.0**0.5) / 2.0


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


# Generators (fold, axis) of the polyhedral groups in RELION's default orientations.
# RELION also lists a 3-fold for the icosahedral settings; a 5-fold and a 2-fold at
# 31.7° already generate the whole group, so we keep the exactly known axes only
# (RELION's 3-fold axes are printed to ~1e-8; the tests check them).
_GENERATORS: dict[str, list[tuple[int, np.ndarray]]] = {
    "T": [(3, _unit((0.0, 0.0, 1.0))), (2, _unit((0.0, (2.0 / 3.0) ** 0.5, (1.0 / 3.0) ** 0.5)))],
    "O": [(3, _unit((1.0, 1.0, 1.0))), (4, _unit((0.0, 0.0, 1.0)))],
    "I2": [(2, _unit((0.0, 0.0, 1.0))), (5, _unit((1.0, 0.0, _PHI)))],
    "I1": [(2, _unit((1.0, 0.0, 0.0))), (5, _unit((_PHI, 0.0, -1.0)))],
    "I3": [(2, _unit((-1.0, 0.0, _PHI))), (5, _unit((0.0, 0.0, 1.0)))],
    "I4": [(2, _unit((1.0, 0.0, _PHI))), (5, _unit((2.0, 0.0, 1.0)))],
}

_ORDERS = {"T": 12, "O": 24, "I1": 60, "I2": 60, "I3": 60, "I4": 60}


def rotation_about(axis: np.ndarray | tuple[float, float, float], angle_rad: float) -> np.ndarray:
    """Right-handed rotation matrix (3, 3) by ``angle_rad`` about ``axis`` (x, y, z).

    Rodrigues' formula; ``axis`` need not be normalised but must be non-zero.
    """
    u = np.asarray(axis, dtype=np.float64)
    norm = float(np.linalg.norm(u))
    if u.shape != (3,) or not np.isfinite(norm) or norm == 0.0:
        raise InvalidValueError(f"rotation axis must be a non-zero 3-vector, got {axis!r}")
    u = u / norm
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.eye(3) + s * k + (1.0 - c) * (k @ k)


def _cyclic(n: int) -> np.ndarray:
    return np.stack([rotation_about((0.0, 0.0, 1.0), 2.0 * np.pi * j / n) for j in range(n)])


def _closure(generators: list[np.ndarray], expected: int, tol: float = 1e-6) -> np.ndarray:
    """All products of the generators (breadth first from the identity), deduplicated."""
    elements = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                b = g @ a
                if not any(np.max(np.abs(b - e)) < tol for e in elements):
                    elements.append(b)
                    new.append(b)
        frontier = new
        if len(elements) > expected:  # pragma: no cover - would mean a wrong generator
            raise RuntimeError(f"group closure exceeded the expected order {expected}")
    out = np.stack(elements)
    # polish: project every element back onto SO(3) (removes accumulated rounding)
    u, _, vt = np.linalg.svd(out)
    return u @ vt


def _parse(symbol: str) -> tuple[str, int]:
    if not isinstance(symbol, str):
        raise InvalidValueError(
            f"symmetry must be a string such as 'C1'; got {symbol!r}. Valid: {VALID_SYMMETRIES}"
        )
    s = symbol.strip().upper()
    m = re.fullmatch(r"([CD])(\d+)", s)
    if m:
        digits = m.group(2).lstrip("0") or "0"
        n = int(digits) if len(digits) <= 9 else MAX_CYCLIC_ORDER + 1  # no huge int parse
        if n > MAX_CYCLIC_ORDER:
            raise InvalidValueError(
                f"symmetry {symbol!r}: {m.group(1)}n with n = {digits} is beyond the largest "
                f"supported n = {MAX_CYCLIC_ORDER} (each particle counts once per symmetry "
                "copy, so the work grows with n; the point groups of real particles stay "
                f"far below). Valid: {VALID_SYMMETRIES}"
            )
        if n >= 1:
            return m.group(1), n
    elif s in ("T", "O"):
        return s, 0
    elif s in ("I", "I1", "I2", "I3", "I4"):
        return ("I2" if s == "I" else s), 0
    raise InvalidValueError(
        f"unknown point-group symmetry {symbol!r}; expected one of {VALID_SYMMETRIES} "
        "(case-insensitive; mirror groups such as Cnv or Dnh are not used for particles)"
    )


def group_order(symbol: str) -> int:
    """Number of rotations in the point group ``symbol`` (C1 → 1, Dn → 2n, I → 60)."""
    kind, n = _parse(symbol)
    if kind == "C":
        return n
    if kind == "D":
        return 2 * n
    return _ORDERS[kind]


def point_group(symbol: str) -> np.ndarray:
    """Rotation matrices of a point group in RELION's default orientation.

    Parameters
    ----------
    symbol : ``C1``, ``Cn``, ``Dn``, ``T``, ``O``, ``I`` (= ``I2``), ``I1`` … ``I4``,
        case-insensitive. See the module docstring for the axis conventions.

    Returns
    -------
    (G, 3, 3) float64 array of proper rotations (det +1) acting on column vectors
    (x, y, z); element 0 is the identity. G = 1, n, 2n, 12, 24, 60.

    Raises
    ------
    InvalidValueError for an unknown symbol (the message lists the valid forms).
    """
    kind, n = _parse(symbol)
    if kind == "C":
        return _cyclic(n)
    if kind == "D":
        c = _cyclic(n)
        flip = np.diag([1.0, -1.0, -1.0])  # 2-fold about x
        return np.concatenate([c, flip[None] @ c], axis=0)
    gens = [rotation_about(axis, 2.0 * np.pi / fold) for fold, axis in _GENERATORS[kind]]
    return _closure(gens, _ORDERS[kind])
