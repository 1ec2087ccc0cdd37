"""The trust check against slow statements of its definition, and on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from spisonet._cube import rotate_array, rotate_fourier, rotation_specs
from spisonet.correction.trust import (
    choose_hidden_rotation,
    hidden_weights,
    region_fsc,
    trust_check,
)
from spisonet.errors import MapMismatchError


def _cone_weight(n: int, axis_zyx: tuple[float, float, float], half_angle: float) -> np.ndarray:
    """W = 0 within ``half_angle`` of ±axis (a missing cone), 1 elsewhere; fftshift-ed."""
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    u = np.asarray(axis_zyx, dtype=float)
    dot = np.abs(kz * u[0] + ky * u[1] + kx * u[2])
    w = np.where(dot >= np.cos(np.deg2rad(half_angle)) * r, 0.0, 1.0)
    w[n // 2, n // 2, n // 2] = 1.0
    return w.astype(np.float32)


def _signal_and_halves(n: int = 24, noise: float = 0.5, seed: int = 0):
    rng = np.random.default_rng(seed)
    s = gaussian_filter(rng.standard_normal((n, n, n)), 1.0)
    s = (s / s.std()).astype(np.float32)
    h1 = (s + noise * rng.standard_normal(s.shape)).astype(np.float32)
    h2 = (s + noise * rng.standard_normal(s.shape)).astype(np.float32)
    return s, h1, h2


@pytest.mark.parametrize("n", [8, 9])
def test_rotate_fourier_matches_the_fft_of_a_rotated_map(n):
    rng = np.random.default_rng(n)
    v = rng.standard_normal((n, n, n))
    amp = np.abs(np.fft.fftshift(np.fft.fftn(v)))
    for index in range(24):
        rotated = np.abs(np.fft.fftshift(np.fft.fftn(rotate_array(v, index))))
        np.testing.assert_allclose(rotated, rotate_fourier(amp, index), rtol=1e-9, atol=1e-9)


def test_rotate_fourier_is_the_matrix_acting_on_frequencies():
    n = 7
    grid = np.random.default_rng(1).standard_normal((n, n, n))
    c = n // 2
    for index in (1, 5, 17):
        m = rotation_specs()[index][0]
        out = rotate_fourier(grid, index)
        for k in [(1, 2, -3), (0, -1, 2), (3, 0, 0)]:
            src = m.T @ np.array(k)
            assert out[tuple(np.array(k) + c)] == grid[tuple((src + c) % n)]


def test_hidden_weights_slow_statement():
    n = 8
    rng = np.random.default_rng(2)
    w = rng.uniform(0, 1, (n, n, n)).astype(np.float32)
    c = n // 2
    m = rotation_specs()[7][0]
    h = hidden_weights(w, 7)
    for k in [(0, 1, 2), (-2, 3, 1), (1, -1, -3)]:
        kk = np.array(k)
        src = (m.T @ kk + c) % n
        expect = (1 - w[tuple(kk + c)]) * w[tuple(src)]
        assert h[tuple(kk + c)] == pytest.approx(expect, rel=1e-6)


def test_choose_hidden_rotation_moves_measured_data_into_the_cone():
    n = 16
    w = _cone_weight(n, (1.0, 0.0, 0.0), 30.0)  # missing cone along z
    index, fraction = choose_hidden_rotation(w)
    m = rotation_specs()[index][0]
    # the chosen rotation takes z to another axis (the cone's content came from x or y)
    assert abs(m[0, 0]) == 0
    assert fraction > 0.05
    # no rotation hides more
    lo, hi = 2, n // 4
    k = np.arange(n) - n // 2
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    band = (r >= lo) & (r <= hi)
    masses = [hidden_weights(w, i)[band].sum() for i in range(1, 24)]
    assert hidden_weights(w, index)[band].sum() == pytest.approx(max(masses))


def test_region_fsc_slow_statement():
    n = 10
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((2, n, n, n))
    region = rng.uniform(0, 1, (n, n, n))
    region = 0.5 * (region + np.roll(region[::-1, ::-1, ::-1], 1 - (n % 2), axis=(0, 1, 2)))
    fa = np.fft.fftshift(np.fft.fftn(a))
    fb = np.fft.fftshift(np.fft.fftn(b))
    k = np.arange(n) - n // 2
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    fast = region_fsc(a, b, region)
    for s in (1, 2, 4):
        sel = shell == s
        cross = np.sum(region[sel] * (fa[sel] * np.conj(fb[sel])).real)
        p1 = np.sum(region[sel] * np.abs(fa[sel]) ** 2)
        p2 = np.sum(region[sel] * np.abs(fb[sel]) ** 2)
        assert fast[s] == pytest.approx(cross / np.sqrt(p1 * p2), rel=1e-9, abs=1e-12)


def test_data_fsc_is_the_rotated_halves_fsc_over_the_hidden_region():
    _s, h1, h2 = _signal_and_halves(n=12, noise=1.0, seed=3)
    w = _cone_weight(12, (1.0, 0.0, 0.0), 35.0)
    t = trust_check(h1, h2, w, lambda x: x)
    h = hidden_weights(w, t.rotation)
    fa = np.fft.fftshift(np.fft.fftn(rotate_array(h1, t.rotation).astype(np.float64)))
    fb = np.fft.fftshift(np.fft.fftn(rotate_array(h2, t.rotation).astype(np.float64)))
    k = np.arange(12) - 6
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    checked = 0
    for s in range(1, 7):
        sel = (shell == s) & (h > 0)
        if not sel.any():
            continue
        cross = np.sum(h[sel] * (fa[sel] * np.conj(fb[sel])).real)
        p = np.sqrt(np.sum(h[sel] * np.abs(fa[sel]) ** 2) * np.sum(h[sel] * np.abs(fb[sel]) ** 2))
        assert t.data_fsc[s] == pytest.approx(cross / p, rel=1e-6, abs=1e-9)
        checked += 1
    assert checked >= 3


def test_identity_network_recovers_nothing():
    _s, h1, h2 = _signal_and_halves()
    w = _cone_weight(24, (1.0, 0.0, 0.0), 35.0)
    t = trust_check(h1, h2, w, lambda x: x)
    assert t.score == pytest.approx(0.0, abs=1e-6)
    assert t.verdict == "low"


def test_a_network_returning_the_signal_recovers_all_of_it():
    s, h1, h2 = _signal_and_halves(noise=0.5)
    w = _cone_weight(24, (1.0, 0.0, 0.0), 35.0)
    index, _ = choose_hidden_rotation(w)
    t = trust_check(h1, h2, w, lambda x: rotate_array(s, index))
    assert t.score == pytest.approx(1.0, abs=0.1)
    assert t.verdict == "good"
    assert len(t.shells_scored) >= 3
    # half the signal back: about half recovered
    t_half = trust_check(h1, h2, w, lambda x: x + 0.5 * (rotate_array(s, index) - x))
    assert 0.3 < t_half.score < 0.7


def test_nothing_missing_is_not_applicable():
    _s, h1, h2 = _signal_and_halves()
    t = trust_check(h1, h2, np.ones((24, 24, 24), np.float32), lambda x: x)
    assert t.score is None
    assert t.verdict == "not applicable"
    assert "no missing cone" in t.message


def test_single_map_and_mismatch():
    _s, h1, _ = _signal_and_halves()
    w = _cone_weight(24, (1.0, 0.0, 0.0), 35.0)
    t = trust_check(h1, None, w, lambda x: x)
    assert t.data_fsc is None and t.score == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(MapMismatchError, match="differ"):
        trust_check(h1, None, w[:20, :20, :20], lambda x: x)


def test_phase_recovery_slow_statement():
    """The amplitude-blind figure against a voxel-sum statement of its definition."""
    n = 12
    rng = np.random.default_rng(7)
    _s, h1, h2 = _signal_and_halves(n=n, noise=0.7, seed=3)
    w = rng.uniform(0, 1, (n, n, n))
    w = (0.5 * (w + np.roll(w[::-1, ::-1, ::-1], 1, axis=(0, 1, 2)))).astype(np.float32)
    index = 5
    t = trust_check(h1, h2, w, lambda x: x + 0.3 * gaussian_filter(x, 1.0), rotation=index)
    # slow: every quantity on the full fftshift-ed grid, shell by shell
    c = np.fft.fftshift
    y1, y2 = rotate_array(h1, index), rotate_array(h2, index)
    f1, f2 = c(np.fft.fftn(y1)), c(np.fft.fftn(y2))
    degraded = np.fft.ifftn(np.fft.ifftshift(f1 * w)).real.astype(np.float32)
    out = c(np.fft.fftn(degraded + 0.3 * gaussian_filter(degraded, 1.0)))
    a = out - w * f1
    b1, b2 = (1 - w) * f1, (1 - w) * f2
    h = hidden_weights(w, index)
    k = np.arange(n) - n // 2
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))

    def sums(sel):
        dot = lambda x, y: np.sum(h[sel] * (x[sel] * np.conj(y[sel])).real)  # noqa: E731
        return dot(a, b2), dot(a, a), dot(b2, b2), dot(b1, b2), dot(b1, b1)

    def figure(ab, aa, bb, b1b, b1b1):
        return (ab / np.sqrt(aa * bb)) / np.sqrt(b1b / np.sqrt(b1b1 * bb))

    for shell_number in (2, 3, 4):
        expect = figure(*sums(shell == shell_number))
        assert t.phase_recovery[shell_number] == pytest.approx(expect, rel=1e-6)
    pooled = figure(*sums(np.isin(shell, t.shells_scored)))
    assert t.phase_score == pytest.approx(pooled, rel=1e-6)


def test_phase_score_is_blind_to_amplitude_and_to_unrelated_additions():
    s, h1, h2 = _signal_and_halves(noise=0.5)
    w = _cone_weight(24, (1.0, 0.0, 0.0), 35.0)
    index, _ = choose_hidden_rotation(w)
    full = trust_check(h1, h2, w, lambda x: rotate_array(s, index))
    damped = trust_check(h1, h2, w, lambda x: x + 0.4 * (rotate_array(s, index) - x))
    assert full.phase_score == pytest.approx(1.0, abs=0.1)
    assert damped.phase_score == pytest.approx(1.0, abs=0.1)  # right content, 40 % amplitude
    assert damped.score < 0.6  # the power score counts it as mostly missing
    other = _signal_and_halves(noise=0.5, seed=11)[0]
    unrelated = trust_check(h1, h2, w, lambda x: x + other)
    assert abs(unrelated.phase_score) < 0.15
    nothing = trust_check(h1, h2, w, lambda x: x)
    assert nothing.phase_score == pytest.approx(0.0, abs=1e-9)
    assert "phase_score" in nothing.to_dict()
