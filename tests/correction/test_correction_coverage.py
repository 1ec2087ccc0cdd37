"""The measured band (largest unmeasured cone) against a slow statement of its definition,
on geometries with a known answer and on simulated half maps."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.correction.coverage import (
    GATE_BLUR_VOXELS,
    THIN_BAND_DEG,
    MeasuredBand,
    measured_band,
)
from spisonet.correction.trust import trust_check
from spisonet.errors import InvalidValueError, MapShapeError
from spisonet.simulate import simulate_dataset
from spisonet.weights import power_presence


def _band_gate(n: int, axis_xyz, half_width: float) -> np.ndarray:
    """1 where the direction of k lies within ``half_width``° of the plane ⊥ axis, else 0."""
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    u = np.asarray(axis_xyz, float) / np.linalg.norm(axis_xyz)
    dot = np.abs(kx * u[0] + ky * u[1] + kz * u[2])
    return np.where(dot <= np.sin(np.radians(half_width)) * r, 1.0, 0.0).astype(np.float32)


def _trilinear(g: np.ndarray, z: float, y: float, x: float) -> float:
    """g at a fractional voxel position, the eight corners weighted by hand (edges clamped)."""
    n = g.shape[0]
    z0, y0, x0 = int(np.floor(z)), int(np.floor(y)), int(np.floor(x))
    total = 0.0
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                wz = (z - z0) if dz else (1 - (z - z0))
                wy = (y - y0) if dy else (1 - (y - y0))
                wx = (x - x0) if dx else (1 - (x - x0))
                zi, yi, xi = (min(max(v, 0), n - 1) for v in (z0 + dz, y0 + dy, x0 + dx))
                total += wz * wy * wx * float(g[zi, yi, xi])
    return total


def _slow_largest_cone(gate: np.ndarray, lo: int, hi: int, directions: np.ndarray) -> float:
    """The definition, one direction and one radius at a time: a direction is measured where
    the gate's mean along it over radii lo … hi is ≥ ½; the cone is the largest angle from
    any grid direction to its nearest measured one (u ≡ −u)."""
    c = gate.shape[0] // 2
    measured = []
    for d in directions:
        values = [
            _trilinear(gate, c + r * d[2], c + r * d[1], c + r * d[0]) for r in range(lo, hi + 1)
        ]
        if np.mean(values) >= 0.5:
            measured.append(d)
    best = 0.0
    for v in directions:
        nearest = max(abs(float(v @ d)) for d in measured)
        best = max(best, float(np.degrees(np.arccos(min(1.0, nearest)))))
    return best


@pytest.mark.parametrize(
    ("axis", "half_width"), [((0, 0, 1), 20.0), ((1, 0, 0), 30.0), ((0.6, 0.0, 0.8), 12.0)]
)
def test_a_sharp_band_reads_its_own_width_and_axis(axis, half_width):
    n = 48
    band = measured_band(_band_gate(n, axis, half_width), blur_voxels=0.0)
    assert band.cone == pytest.approx(90.0 - half_width, abs=3.5)
    assert band.band == pytest.approx(half_width, abs=3.5)
    u = np.asarray(axis, float) / np.linalg.norm(axis)
    assert abs(float(np.dot(band.axis, u))) > np.cos(np.radians(4.0))
    assert band.blur == 0.0 and band.readable


def test_the_reading_agrees_with_the_voxel_by_voxel_definition():
    n = 32
    rng = np.random.default_rng(3)
    gate = _band_gate(n, (0.3, -0.2, 0.9), 25.0)
    gate[rng.random(gate.shape) < 0.02] = 1.0  # a few stray measured voxels
    candidates = rng.standard_normal((150, 3))
    candidates /= np.linalg.norm(candidates, axis=1, keepdims=True)
    slow = _slow_largest_cone(gate, 4, 8, candidates)
    fast = measured_band(gate, shells=(4, 8), directions=candidates, blur_voxels=0.0)
    assert fast.cone == pytest.approx(slow, abs=1e-6)
    assert 50 < slow < 80  # the band's cone (65°) read through the stray voxels


def test_every_direction_measured_and_none_measured():
    n = 64
    full = measured_band(np.ones((n, n, n), np.float32))
    assert full.cone == 0.0 and full.band == 90.0 and full.measured_fraction == 1.0
    assert not full.thin
    assert "no unmeasured cone" in full.describe()
    empty = measured_band(np.zeros((n, n, n), np.float32))
    assert empty.cone == 90.0 and empty.band == 0.0 and empty.measured_fraction == 0.0


def test_blur_correction_and_readability():
    n = 64
    sharp = measured_band(_band_gate(n, (0, 0, 1), 20.0), blur_voxels=0.0)
    blurred = measured_band(_band_gate(n, (0, 0, 1), 20.0))
    r_mean = (8 + 16) / 2
    expected = np.degrees(np.arcsin(GATE_BLUR_VOXELS / r_mean))
    assert blurred.blur == pytest.approx(expected)
    assert blurred.cone == pytest.approx(sharp.cone + expected)
    small = measured_band(_band_gate(24, (0, 0, 1), 2.0))
    assert not small.readable and not small.thin  # blur at r̄ = 4.5 is ~32°
    assert "too small" in small.describe()


def test_thin_is_a_band_within_the_threshold():
    n = 64
    thin = measured_band(_band_gate(n, (0, 0, 1), 4.0), blur_voxels=0.0)
    wide = measured_band(_band_gate(n, (0, 0, 1), 20.0), blur_voxels=0.0)
    assert thin.band <= THIN_BAND_DEG and thin.thin
    assert not wide.thin
    assert "one projection" in thin.describe()
    assert "one projection" not in wide.describe()
    d = thin.to_dict()
    assert d["thin"] is True and d["measured_band_deg"] == pytest.approx(thin.band, abs=0.01)


def test_bad_input():
    with pytest.raises(MapShapeError):
        measured_band(np.ones((8, 8, 9), np.float32))
    with pytest.raises(InvalidValueError, match="shells"):
        measured_band(np.ones((16, 16, 16), np.float32), shells=(2, 12))
    with pytest.raises(InvalidValueError, match="blur"):
        measured_band(np.ones((16, 16, 16), np.float32), blur_voxels=-1)


@pytest.mark.parametrize(("distribution", "spread"), [("top", 5.0), ("tilt:20", 20.0)])
def test_simulated_halves_read_the_views_spread(distribution, spread):
    """The gate of simulated half maps, views within 5° / 20° of z: the band reads the
    views' spread (the blur constant was fitted on the evaluation matrix's inputs)."""
    data = simulate_dataset(box=48, distribution=distribution, seed=1)
    gate = power_presence(data.half1, data.half2, data.mask, 0.1, also_unmasked=True)
    band = measured_band(gate)
    assert band.band == pytest.approx(spread, abs=4.0)
    assert abs(band.axis[2]) > np.cos(np.radians(5.0))
    assert band.thin == (spread < THIN_BAND_DEG)


def test_trust_verdict_on_a_thin_band():
    rng = np.random.default_rng(0)
    n = 24
    h1 = rng.standard_normal((n, n, n)).astype(np.float32)
    h2 = h1 + 0.3 * rng.standard_normal((n, n, n)).astype(np.float32)
    w = _band_gate(n, (0, 0, 1), 40.0)
    w[n // 2, n // 2, n // 2] = 1.0
    thin = MeasuredBand((0.0, 0.0, 1.0), 85.0, 5.0, 0.1, 0.0, True)
    wide = MeasuredBand((0.0, 0.0, 1.0), 50.0, 40.0, 0.6, 0.0, True)
    predict = lambda x: x  # noqa: E731
    t_thin = trust_check(h1, h2, w, predict, band=thin)
    t_wide = trust_check(h1, h2, w, predict, band=wide)
    assert t_thin.score == pytest.approx(t_wide.score)  # the score itself is unchanged
    assert t_thin.verdict == "thin band" and "cannot vouch" in t_thin.message
    assert t_thin.vouched == 0.0
    assert t_wide.verdict == "low" and t_wide.vouched == pytest.approx(t_wide.score)
    assert t_thin.to_dict()["measured_band"]["thin"] is True


@pytest.mark.parametrize("distribution", ["top", "tilt:20"])
def test_reconstruct_reads_the_band_and_the_trust_check_uses_it(distribution):
    """The pipeline reads the band from its own gate, says it in the notes, and the trust
    check's verdict follows it: *thin band* for views within 5° of z, not for 20°."""
    from spisonet.correction import correct_anisotropy, preset_settings

    data = simulate_dataset(box=48, distribution=distribution, seed=2)
    settings = preset_settings("tiny", predict_crop_size=48)
    result = correct_anisotropy(data.half1, data.half2, None, data.mask, data.voxel_size, settings)
    notes = [x for x in result.notes if x.startswith("measured directions")]
    assert len(notes) == 1
    band = result.trust.band
    assert band is not None and band.readable
    thin = distribution == "top"
    assert band.thin == thin
    assert ("one projection" in notes[0]) == thin
    assert (result.trust.verdict == "thin band") == thin
    if thin:
        assert result.trust.vouched == 0.0 and result.trust.score is not None
    else:
        assert result.trust.vouched == result.trust.score
