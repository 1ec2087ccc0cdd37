"""The worst-cone finder and the correction score against slow statements of their definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spisonet.correction.evaluate import (
    cone_gains,
    cone_mean,
    hemisphere_directions,
    near_worst_cones,
    score_correction,
    worst_cone,
)
from spisonet.errors import InvalidValueError, MapShapeError


def _slow_cone_means(a: np.ndarray, b: np.ndarray, dirs: np.ndarray, theta_deg: float):
    """For each direction: mean over shells 2 … n/4 of Re ΣF1F2*/sqrt(Σ|F1|²Σ|F2|²) over the
    voxels of shell round(|k|) within θ of ±u, written voxel by voxel."""
    n = a.shape[0]
    f1 = np.fft.fftshift(np.fft.fftn(a.astype(np.float64)))
    f2 = np.fft.fftshift(np.fft.fftn(b.astype(np.float64)))
    c = n // 2
    cos_t = np.cos(np.deg2rad(theta_deg))
    means = []
    for u in dirs:
        u = u / np.linalg.norm(u)
        acc = {}
        for z in range(n):
            for y in range(n):
                for x in range(n):
                    k = np.array([x - c, y - c, z - c], dtype=float)  # (x, y, z)
                    r = np.sqrt(k @ k)
                    s = int(np.rint(r))
                    if s < 2 or s > n // 4:
                        continue
                    if abs(k @ u) < cos_t * r:
                        continue
                    e = acc.setdefault(s, [0.0, 0.0, 0.0])
                    e[0] += (f1[z, y, x] * np.conj(f2[z, y, x])).real
                    e[1] += abs(f1[z, y, x]) ** 2
                    e[2] += abs(f2[z, y, x]) ** 2
        vals = [e[0] / np.sqrt(e[1] * e[2]) for e in acc.values() if e[1] * e[2] > 0]
        means.append(np.mean(vals))
    return np.array(means)


def _missing_cone(volume: np.ndarray, axis_xyz: np.ndarray, half_angle_deg: float) -> np.ndarray:
    """The map with its Fourier content within the cone around ±axis removed."""
    n = volume.shape[0]
    k = np.fft.fftfreq(n) * n
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    u = axis_xyz / np.linalg.norm(axis_xyz)
    dot = np.abs(kx * u[0] + ky * u[1] + kz * u[2])
    inside = dot >= np.cos(np.deg2rad(half_angle_deg)) * r
    inside[0, 0, 0] = False
    return np.fft.ifftn(np.fft.fftn(volume) * ~inside).real.astype(np.float32)


@pytest.fixture(scope="module")
def structured():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    truth = gaussian_filter(rng.standard_normal((24, 24, 24)), 1.0).astype(np.float32)
    return truth


def test_hemisphere_directions_are_unit_and_upper():
    d = hemisphere_directions(50)
    assert d.shape == (50, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    assert np.all(d[:, 2] >= 0)


def _noisy_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random 16³ map and a noisy copy of it (FSC about 0.45)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((16, 16, 16)).astype(np.float32)
    return a, (a + 2 * rng.standard_normal(a.shape)).astype(np.float32)


def test_worst_cone_equals_slow_statement_on_random_data():
    a, b = _noisy_pair(0)
    dirs = hemisphere_directions(12)
    slow = _slow_cone_means(a, b, dirs, 25.0)
    u, value = worst_cone(a, b, None, 25.0, dirs)
    i = int(np.argmin(slow))
    np.testing.assert_allclose(u, dirs[i] / np.linalg.norm(dirs[i]), atol=1e-12)
    assert value == pytest.approx(slow[i], abs=1e-6)


def test_worst_cone_finds_a_cone_missing_along_x(structured):
    raw = _missing_cone(structured, np.array([1.0, 0.0, 0.0]), 30.0)
    u, value = worst_cone(raw, structured, None, 20.0)
    assert abs(u[0]) > 0.9, u  # along x, not z
    slow = _slow_cone_means(raw, structured, np.array([u, [0.0, 0.0, 1.0]]), 20.0)
    assert value == pytest.approx(slow[0], abs=1e-6)
    assert value < 0.2
    assert slow[1] > 0.99  # z was measured


def test_score_correction_gain_and_drop(structured):
    raw = _missing_cone(structured, np.array([0.0, 0.0, 1.0]), 30.0)
    s_perfect = score_correction(structured, raw, structured)
    assert s_perfect.gain > 0.5
    assert s_perfect.cone_corrected == pytest.approx(1.0, abs=1e-6)
    assert s_perfect.max_global_drop <= 1e-9
    s_same = score_correction(structured, raw, raw)
    assert s_same.gain == pytest.approx(0.0, abs=1e-12)
    # a correction that wipes the high frequencies shows as a global drop
    from spisonet.fourier import lowpass

    blurred = lowpass(raw, 6.0, 1.0)
    assert score_correction(structured, raw, blurred).max_global_drop > 0.3


def test_cone_mean_ignores_empty_shells():
    curves = np.array([[1.0, 1.0, 0.2, np.nan, 0.4, 0.9, 0.9]])
    assert cone_mean(curves, 16)[0] == pytest.approx(0.3)


def test_worst_cone_rejects_mismatched_maps():
    with pytest.raises(MapShapeError, match="differ in shape"):
        worst_cone(np.zeros((8, 8, 8)), np.zeros((10, 10, 10)))


def test_near_worst_cones_equal_a_slow_greedy_pick_on_random_data():
    a, b = _noisy_pair(1)
    dirs = hemisphere_directions(14)
    slow = _slow_cone_means(a, b, dirs, 25.0)
    # the definition, step by step: lowest first, skip any within 30° of one taken
    expected = []
    for i in sorted(range(len(dirs)), key=lambda j: slow[j]):
        angles = [np.degrees(np.arccos(min(1.0, abs(dirs[i] @ dirs[j])))) for j in expected]
        if all(t >= 30.0 for t in angles):
            expected.append(i)
    got, means = near_worst_cones(a, b, None, count=5, separation=30.0, cone_angle=25.0,
                                  directions=dirs)  # fmt: skip
    assert len(expected) >= 5
    np.testing.assert_allclose(got, dirs[expected[:5]], atol=1e-12)
    np.testing.assert_allclose(means, slow[expected[:5]], atol=1e-6)
    u, _ = worst_cone(a, b, None, 25.0, dirs)
    np.testing.assert_allclose(got[0], u, atol=1e-12)  # the first is the worst cone


def test_near_worst_cones_keep_their_separation(structured):
    raw = _missing_cone(structured, np.array([0.0, 0.0, 1.0]), 40.0)
    dirs, means = near_worst_cones(raw, structured, None, count=6, separation=20.0)
    assert len(dirs) == 6
    assert np.all(np.diff(means) >= 0)
    cos = np.abs(dirs @ dirs.T)[np.triu_indices(6, 1)]
    assert np.all(cos < np.cos(np.radians(20.0)))
    assert abs(dirs[0][2]) > 0.8  # the worst lies in the missing cone around z


def test_cone_gains_match_score_correction(structured):
    raw = _missing_cone(structured, np.array([0.0, 0.0, 1.0]), 30.0)
    rng = np.random.default_rng(2)
    corrected = (structured + 0.3 * rng.standard_normal(structured.shape)).astype(np.float32)
    s = score_correction(structured, raw, corrected)
    slow_raw = _slow_cone_means(raw, structured, s.direction[None], 20.0)[0]
    slow_cor = _slow_cone_means(corrected, structured, s.direction[None], 20.0)[0]
    g = cone_gains(structured, raw, corrected, np.array([s.direction, [1.0, 0.0, 0.0]]))
    assert g[0] == pytest.approx(s.gain, abs=1e-9)
    assert g[0] == pytest.approx(slow_cor - slow_raw, abs=1e-6)
    assert abs(g[1]) < g[0]  # x was measured: little to gain there


def test_near_worst_cones_reject_bad_arguments():
    a = np.zeros((8, 8, 8), dtype=np.float32)
    with pytest.raises(InvalidValueError, match="count"):
        near_worst_cones(a, a, count=0)
    with pytest.raises(InvalidValueError, match="separation"):
        near_worst_cones(a, a, separation=90.0)
    with pytest.raises(MapShapeError, match="differ in shape"):
        near_worst_cones(a, np.zeros((10, 10, 10)))


@pytest.mark.parametrize(("direction", "angle"), [((0, 0, 1), 20.0), ((0.6, -0.3, 0.74), 30.0)])
def test_cone_figure_noise_is_the_spread_of_the_figure_between_unrelated_maps(direction, angle):
    """The definition, by Monte Carlo: the standard deviation, over many pairs of
    independent white-noise maps, of the cone mean of their cone FSC."""
    from spisonet.anisotropy import conical_fsc
    from spisonet.correction.evaluate import cone_figure_noise

    n, trials = 32, 400
    rng = np.random.default_rng(5)
    u = np.asarray(direction, dtype=float)[None]
    figures = [
        cone_mean(
            conical_fsc(
                rng.standard_normal((n,) * 3), rng.standard_normal((n,) * 3), None, u, angle
            )[0],
            n,
        )
        for _ in range(trials)
    ]
    # the estimate's own relative error is about 1/sqrt(2 · trials) = 3.5 %
    assert cone_figure_noise(n, np.asarray(direction), angle) == pytest.approx(
        np.std(figures), rel=0.12
    )
    assert abs(np.mean(figures)) < 3 * np.std(figures) / np.sqrt(trials)


def test_cone_figure_noise_shrinks_with_the_box_and_widens_with_a_narrow_cone():
    from spisonet.correction.evaluate import cone_figure_noise

    z = np.array([0.0, 0.0, 1.0])
    by_box = [cone_figure_noise(n, z) for n in (32, 48, 64, 128)]
    assert all(a > b for a, b in itertools.pairwise(by_box))
    assert cone_figure_noise(48, z, 10.0) > cone_figure_noise(48, z, 20.0)
    assert cone_figure_noise(8, z, 1.0) == pytest.approx(1 / np.sqrt(2))  # (0, 0, ±2) alone
    assert np.isnan(cone_figure_noise(8, np.array([0.3, 0.5, 0.81]), 1.0))  # no voxel
    with pytest.raises(InvalidValueError):
        cone_figure_noise(48, np.zeros(3))
    with pytest.raises(InvalidValueError):
        cone_figure_noise(48, z, 0.0)


def test_score_correction_reports_the_figure_noise_of_its_cone(structured):
    from spisonet.correction.evaluate import cone_figure_noise

    raw = _missing_cone(structured, np.array([1.0, 0.0, 0.0]), 30.0)
    s = score_correction(structured, raw, structured)
    assert s.figure_noise == cone_figure_noise(structured.shape[0], s.direction)
    assert 0 < s.figure_noise < 0.5
    assert s.to_dict()["figure_noise"] == s.figure_noise
