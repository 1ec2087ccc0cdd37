"""Tests of spisonet.simulate.views: the view distributions and the sampling density
(against a slow statement of its definition, kernel ``py_func`` too)."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet import simulate as S
from spisonet.errors import InvalidValueError
from spisonet.simulate.views import _density_kernel

# ----------------------------------------------------------------------------- helpers


def _k_grid(n: int) -> np.ndarray:
    """(3, n, n, n) integer frequencies (kx, ky, kz) of an fftshift-ed [z, y, x] grid."""
    kz, ky, kx = np.indices((n, n, n)) - n // 2
    return np.stack([kx, ky, kz]).astype(np.float64)


def _slow_density(n: int, directions: np.ndarray) -> np.ndarray:
    """W(k) = Σ_views max(0, 1 − |k·d|), straight from the definition."""
    k = _k_grid(n)
    w = np.zeros((n, n, n))
    for d in directions:
        d = d / np.linalg.norm(d)
        w += np.maximum(0.0, 1.0 - np.abs(np.tensordot(d, k, axes=1)))
    return w


# ----------------------------------------------------------------------------- views


def _angle_to_z(d: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))


def test_draw_view_directions_distributions() -> None:
    n = 4000
    for dist in ("uniform", "top", "side", "tilt:30"):
        d = S.draw_view_directions(dist, n, seed=1)
        assert d.shape == (n, 3)
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    u = S.draw_view_directions("uniform", n, seed=1)
    np.testing.assert_allclose((u**2).mean(0), 1 / 3, atol=0.03)
    np.testing.assert_allclose(u.mean(0), 0.0, atol=0.05)
    top = _angle_to_z(S.draw_view_directions("top", n, seed=1))
    assert top.max() <= 5.0 + 1e-9 and top.max() > 4.5
    tilt = _angle_to_z(S.draw_view_directions("Tilt: 30", n, seed=1))
    assert tilt.max() <= 30.0 + 1e-9 and tilt.max() > 29.0
    # uniform within the cap: P(angle ≤ 15°) = (1 − cos 15°) / (1 − cos 30°)
    frac = (1 - np.cos(np.radians(15))) / (1 - np.cos(np.radians(30)))
    assert (tilt <= 15).mean() == pytest.approx(frac, abs=0.03)
    side = _angle_to_z(S.draw_view_directions("side", n, seed=1))
    assert np.all(np.abs(side - 90) <= 5.0 + 1e-9)


def test_draw_view_directions_deterministic() -> None:
    a = S.draw_view_directions("tilt:20", 50, seed=7)
    np.testing.assert_array_equal(a, S.draw_view_directions("tilt:20", 50, seed=7))
    assert not np.allclose(a, S.draw_view_directions("tilt:20", 50, seed=8))


def test_draw_view_directions_from_relion_angles() -> None:
    angles = np.array([[0, 90, 10], [90, 90, 0], [30, 0, 5], [45, 60, 0], [200, 120, 33]])
    d = S.draw_view_directions("star", angles=angles)
    rot, tilt = np.radians(angles[:, 0]), np.radians(angles[:, 1])
    want = np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], 1)
    np.testing.assert_allclose(d, want, atol=1e-12)
    np.testing.assert_allclose(d[:3], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], atol=1e-12)
    sub = S.draw_view_directions("star", 3, seed=0, angles=angles)
    assert sub.shape == (3, 3)
    assert all(any(np.allclose(s, w) for w in want) for s in sub)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "random"}, r"unknown distribution 'random'; valid: uniform, top"),
        ({"distribution": "tilt:abc"}, r"needs a cone half-angle in degrees, e.g. 'tilt:20'"),
        ({"distribution": "tilt"}, r"write 'tilt:<deg>'"),
        ({"distribution": "tilt:0"}, r"must be in \(0, 180\] degrees, found 0.0"),
        ({"distribution": "star"}, r"'star' needs angles"),
        ({"distribution": "top", "angles": np.zeros((3, 3))}, r"only used with distribution"),
        ({"distribution": "top", "n_views": 0}, r"n_views must be a positive integer"),
        ({"distribution": "star", "n_views": 9, "angles": np.zeros((3, 3))}, r"exceeds the 3"),
        ({"distribution": "star", "angles": np.zeros(3)}, r"must be an \(N, 3\) array"),
        ({"distribution": 5}, r"distribution must be a string"),
    ],
)
def test_draw_view_directions_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        S.draw_view_directions(**kwargs)


# ----------------------------------------------------------------------------- density


@pytest.mark.parametrize("n", [16, 17])
def test_sampling_density_matches_definition(n: int) -> None:
    rng = np.random.default_rng(n)
    views = np.concatenate(
        [
            rng.standard_normal((5, 3)),
            [[0, 0, 1], [1, 0, 0], [0, -1, 0], [1, 1, 1], [1, -1, 0], [0.2, 0.0, -3.0]],
        ]
    )
    got = S.sampling_density(n, views)
    assert got.dtype == np.float32 and got.shape == (n, n, n)
    np.testing.assert_allclose(got, _slow_density(n, views), atol=2e-5)


def test_sampling_density_kernel_py_func() -> None:
    n = 8
    views = np.array([[0.3, -0.5, 0.8], [0.9, 0.1, 0.2], [0.0, 0.6, -0.8]])
    views /= np.linalg.norm(views, axis=1, keepdims=True)
    out = np.zeros((2, n**3), dtype=np.float32)
    _density_kernel.py_func(n, views, np.array([0, 1, 3]), out)
    np.testing.assert_allclose(out.sum(0).reshape(n, n, n), _slow_density(n, views), atol=1e-5)


def test_sampling_density_of_top_views_misses_the_z_axis() -> None:
    w = S.sampling_density(32, S.draw_view_directions("top", 300, seed=0))
    c = 16
    assert w[c, c, c + 10] > 100  # kx axis: on every plane
    assert w[c + 10, c, c] == 0.0  # kz axis: no plane within one voxel


def test_sampling_density_errors() -> None:
    with pytest.raises(InvalidValueError, match=r"must be an \(n_views, 3\) array"):
        S.sampling_density(16, np.zeros((4, 2)))
    with pytest.raises(InvalidValueError, match="finite, non-zero vectors"):
        S.sampling_density(16, np.zeros((4, 3)))


def test_old_name_of_draw_view_directions_still_works() -> None:
    with pytest.warns(DeprecationWarning, match="use draw_view_directions"):
        from spisonet.simulate import view_directions

    assert view_directions is S.draw_view_directions
    assert "view_directions" not in S.__all__
