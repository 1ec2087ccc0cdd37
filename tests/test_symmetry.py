"""Point groups: group axioms, orders, RELION's axis conventions, bad symbols."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.errors import InvalidValueError
from spisonet.symmetry import group_order, point_group, rotation_about

PHI = (1 + 5**0.5) / 2

ORDERS = [
    ("C1", 1),
    ("c2", 2),
    ("C7", 7),
    ("C12", 12),
    ("D1", 2),
    ("D2", 4),
    ("d6", 12),
    ("T", 12),
    ("O", 24),
    ("o", 24),
    ("I", 60),
    ("I1", 60),
    ("I2", 60),
    ("I3", 60),
    ("i4", 60),
]


def _index_of(g: np.ndarray, elements: np.ndarray, tol: float = 1e-9) -> int:
    diff = np.abs(elements - g[None]).max(axis=(1, 2))
    hits = np.nonzero(diff < tol)[0]
    return int(hits[0]) if hits.size == 1 else -1


@pytest.mark.parametrize(("symbol", "order"), ORDERS)
def test_group_axioms_and_order(symbol: str, order: int) -> None:
    g = point_group(symbol)
    assert g.shape == (order, 3, 3)
    assert g.dtype == np.float64
    assert group_order(symbol) == order
    # proper rotations
    np.testing.assert_allclose(np.linalg.det(g), 1.0, atol=1e-12)
    np.testing.assert_allclose(
        g @ np.transpose(g, (0, 2, 1)), np.broadcast_to(np.eye(3), g.shape), atol=1e-12
    )
    # identity first
    np.testing.assert_array_equal(g[0], np.eye(3))
    # distinct elements
    d = np.abs(g[:, None] - g[None, :]).max(axis=(2, 3))
    assert np.all(d[~np.eye(order, dtype=bool)] > 1e-3)
    # closure and inverses
    for a in g:
        assert _index_of(a.T, g) >= 0
        for b in g:
            assert _index_of(a @ b, g) >= 0


def _has_axis(g: np.ndarray, axis: np.ndarray, fold: int, tol: float = 1e-9) -> bool:
    """True when g holds the rotation by 360°/fold about ``axis`` (both senses)."""
    r = rotation_about(axis, 2 * np.pi / fold)
    return _index_of(r, g, tol) >= 0 and _index_of(r.T, g, tol) >= 0


def test_cyclic_axis_is_z() -> None:
    g = point_group("C5")
    np.testing.assert_allclose(g @ np.array([0, 0, 1.0]), np.tile([0, 0, 1.0], (5, 1)), atol=1e-12)
    assert _has_axis(g, np.array([0, 0, 1.0]), 5)


def test_dihedral_has_twofold_along_x() -> None:
    g = point_group("D3")
    assert _has_axis(g, np.array([0, 0, 1.0]), 3)
    assert _index_of(np.diag([1.0, -1.0, -1.0]), g) >= 0


def test_octahedral_is_signed_permutations() -> None:
    g = point_group("O")
    assert np.allclose(np.abs(g).sum(axis=1), 1.0)
    assert np.all(np.isclose(g, 0) | np.isclose(np.abs(g), 1))
    for ax in np.eye(3):
        assert _has_axis(g, ax, 4)
    assert _has_axis(g, np.ones(3), 3)


def test_tetrahedral_relion_orientation() -> None:
    g = point_group("T")
    assert _has_axis(g, np.array([0, 0, 1.0]), 3)
    assert _has_axis(g, np.array([0, np.sqrt(2 / 3), np.sqrt(1 / 3)]), 2)
    assert _has_axis(g, np.array([0, 0.816496, 0.577350]), 2, tol=1e-5)  # RELION's decimals
    # T is a subgroup of nothing bigger here, but every element has order 1, 2 or 3
    traces = np.trace(g, axis1=1, axis2=2)
    assert set(np.round(traces).astype(int)) <= {3, -1, 0}


def test_icosahedral_default_is_relion_i2() -> None:
    g = point_group("I")
    np.testing.assert_allclose(g, point_group("I2"), atol=1e-12)
    # 2-folds along x, y and z; 5-fold in the xz plane; 3-fold in the yz plane
    for ax in np.eye(3):
        assert _has_axis(g, ax, 2)
    assert _has_axis(g, np.array([1, 0, PHI]), 5)
    assert _has_axis(g, np.array([0, 1 / PHI, PHI]), 3)
    # RELION's printed generators (9 decimals)
    assert _has_axis(g, np.array([0.525731114, 0, 0.850650807]), 5, tol=1e-7)
    assert _has_axis(g, np.array([0, 0.356822076, 0.934172364]), 3, tol=1e-7)
    # element orders of the icosahedral rotation group: 1, 2, 3, 5 (traces 3, -1, 0, 1±2cos72°)
    traces = np.trace(g, axis1=1, axis2=2)
    allowed = np.array([3, -1, 0, 1 + 2 * np.cos(2 * np.pi / 5), 1 + 2 * np.cos(4 * np.pi / 5)])
    assert np.all(np.min(np.abs(traces[:, None] - allowed[None]), axis=1) < 1e-9)
    # counts: 15 two-folds, 20 three-folds (×2 senses), 6 five-fold axes (×4 rotations)
    assert np.sum(np.isclose(traces, -1)) == 15
    assert np.sum(np.isclose(traces, 0)) == 20


def test_other_icosahedral_settings() -> None:
    assert _has_axis(point_group("I1"), np.array([1.0, 0, 0]), 2)
    assert _has_axis(point_group("I1"), np.array([PHI, 0, -1.0]), 5)
    assert _has_axis(point_group("I1"), np.array([PHI, 1 / PHI, 0]), 3)
    assert _has_axis(point_group("I3"), np.array([0, 0, 1.0]), 5)
    assert _has_axis(point_group("I3"), np.array([-1, 0, PHI]), 2)
    assert _has_axis(point_group("I4"), np.array([2.0, 0, 1.0]), 5)
    assert _has_axis(point_group("I4"), np.array([1, 0, PHI]), 2)
    # RELION's 3-fold axes for I3 and I4 (given to ~1e-8)
    assert _has_axis(
        point_group("I3"),
        np.array([-0.4911234778630044, 0.3568220764705179, 0.7946544753759428]),
        3,
        tol=1e-6,
    )
    assert _has_axis(
        point_group("I4"),
        np.array([0.4911234778630044, 0.3568220764705179, 0.7946544753759428]),
        3,
        tol=1e-6,
    )
    # all settings are conjugate: same multiset of traces
    ref = np.sort(np.trace(point_group("I"), axis1=1, axis2=2))
    for s in ("I1", "I3", "I4"):
        np.testing.assert_allclose(
            np.sort(np.trace(point_group(s), axis1=1, axis2=2)), ref, atol=1e-9
        )


def test_rotation_about_matches_rodrigues_statement() -> None:
    rng = np.random.default_rng(3)
    axis = rng.normal(size=3)
    angle = 0.7
    r = rotation_about(axis, angle)
    u = axis / np.linalg.norm(axis)
    v = rng.normal(size=3)
    # Rodrigues: v cosθ + (u×v) sinθ + u (u·v)(1 − cosθ)
    expected = (
        v * np.cos(angle) + np.cross(u, v) * np.sin(angle) + u * (u @ v) * (1 - np.cos(angle))
    )
    np.testing.assert_allclose(r @ v, expected, atol=1e-12)


@pytest.mark.parametrize("bad", ["C0", "X5", "D", "", "I5", "C2v", "D0", "Oh", "c-2"])
def test_bad_symbol_names_valid_forms(bad: str) -> None:
    with pytest.raises(
        InvalidValueError, match=r"unknown point-group symmetry .*expected one of C1, Cn"
    ):
        point_group(bad)


def test_non_string_symbol() -> None:
    with pytest.raises(InvalidValueError, match=r"symmetry must be a string"):
        point_group(4)  # type: ignore[arg-type]


def test_bad_rotation_axis() -> None:
    with pytest.raises(InvalidValueError, match=r"rotation axis must be a non-zero 3-vector"):
        rotation_about((0.0, 0.0, 0.0), 1.0)
