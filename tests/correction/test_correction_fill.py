"""Raising a weak fill (:func:`spisonet.correction.fill.raise_fill`) against a slow statement
of its definition on the full Fourier grid, and on cases with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.correction.fill import MAX_GAIN, raise_fill
from spisonet.errors import InvalidValueError, MapMismatchError


def _cone_gate(n: int, half_angle: float, soft: float = 8.0) -> np.ndarray:
    """A centrosymmetric gate: 0 within ``half_angle`` of ±z, 1 beyond ``half_angle + soft``,
    linear between (fftshift-ed, centre n//2)."""
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    angle = np.degrees(np.arccos(np.clip(np.abs(kz) / np.where(r > 0, r, 1), 0, 1)))
    g = np.clip((angle - half_angle) / soft, 0.0, 1.0) if soft else 1.0 * (angle > half_angle)
    g[r == 0] = 1.0
    return g.astype(np.float32)


def _slow_raise(corrected, halves, gate, a, max_gain=MAX_GAIN):
    """The definition voxel by voxel on the full (fftshift-ed) grid."""
    n = gate.shape[0]
    ft = [np.fft.fftshift(np.fft.fftn(np.asarray(v, np.float64))) for v in (*halves, *corrected)]
    h1, h2, cs = ft[0], ft[1], ft[2:]
    mean_c = sum(cs) / len(cs)
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    shell = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    m = gate.astype(np.float64)
    gain = np.ones(n // 2 + 1)
    for s in range(1, n // 2 + 1):
        sel = shell == s
        mm, uu = m[sel], 1 - m[sel]
        cross = np.sum(mm * np.real(h1[sel] * np.conj(h2[sel])))
        p1 = np.sum(mm * np.abs(h1[sel]) ** 2)
        p2 = np.sum(mm * np.abs(h2[sel]) ** 2)
        if mm.sum() == 0 or p1 * p2 == 0 or uu.sum() < 0.05 * sel.sum():
            continue
        if cross / np.sqrt(p1 * p2) < 0.143 or cross <= 0:
            continue
        signal = cross / mm.sum()
        fill = np.sum(uu * np.abs(mean_c[sel]) ** 2) / uu.sum()
        g = max_gain if fill == 0 else a * np.sqrt(signal) / np.sqrt(fill)
        gain[s] = min(max(g, 1.0), max_gain)
    per_voxel = np.where(shell <= n // 2, gain[np.minimum(shell, n // 2)], 1.0)
    factor = m + (1 - m) * per_voxel
    maps = [np.real(np.fft.ifftn(np.fft.ifftshift(c * factor))) for c in cs]
    return maps, gain


def _data(n: int = 24, seed: int = 0, fill: float = 0.1, soft: float = 8.0):
    """A smooth signal, two noisy halves with a missing cone (gate 0) along z, and two
    'corrected' halves: the halves plus ``fill`` × the signal's missing-cone content."""
    rng = np.random.default_rng(seed)
    from scipy.ndimage import gaussian_filter

    s = gaussian_filter(rng.standard_normal((n, n, n)), 1.2)
    s /= s.std()
    gate = _cone_gate(n, 40.0, soft)
    w = np.fft.ifftshift(gate)

    def keep(v, weight):
        return np.real(np.fft.ifftn(np.fft.fftn(v) * weight))

    measured = keep(s, w)
    halves = [measured + 0.3 * keep(rng.standard_normal(s.shape), w) for _ in range(2)]
    cone = keep(s, 1 - w)
    corrected = [h + fill * cone for h in halves]
    return s, gate, halves, corrected, cone


def test_raise_fill_matches_the_slow_definition():
    _s, gate, halves, corrected, _ = _data(seed=1)
    rng = np.random.default_rng(2)
    corrected = [c + 0.05 * rng.standard_normal(c.shape) for c in corrected]
    for a in (0.15, 0.5):
        fast = raise_fill(corrected, halves, gate, a)
        slow_maps, slow_gain = _slow_raise(corrected, halves, gate, a)
        np.testing.assert_allclose(fast.gain, slow_gain, rtol=1e-6, atol=1e-9)
        for f, s in zip(fast.maps, slow_maps, strict=True):
            np.testing.assert_allclose(f, s, atol=2e-5 * np.abs(s).max())
        assert fast.gain.max() > 1.0  # something was raised


def test_a_weak_fill_is_raised_by_the_ratio_and_the_measured_part_is_untouched():
    _s, gate, halves, corrected, cone = _data(n=32, seed=3, fill=0.1, soft=0.0)
    out = raise_fill(corrected, halves, gate, 0.3)
    # the fill is 0.1 of the signal where unmeasured: a floor at 0.3 raises it ~3× (the
    # signal's power differs between the cone and the rest of a shell by chance)
    raised = out.gain[3:10]
    assert np.all(raised > 2.0) and np.all(raised < 4.5), raised
    assert 2.6 < np.median(raised) < 3.4
    # measured Fourier content (gate = 1) is unchanged
    w = np.fft.ifftshift(gate) == 1.0
    for before, after in zip(corrected, out.maps, strict=True):
        fb, fa = np.fft.fftn(before), np.fft.fftn(after)
        np.testing.assert_allclose(fa[w], fb[w], atol=1e-3 * np.abs(fb).max())
    # the change is what the gain says: the difference is the cone's content times γ − 1
    diff = out.maps[0] - corrected[0]
    assert np.corrcoef(diff.ravel(), cone.ravel())[0, 1] > 0.9


def test_a_strong_fill_and_nothing_missing_are_left_alone():
    _s, gate, halves, corrected, _ = _data(seed=4, fill=1.0)
    out = raise_fill(corrected, halves, gate, 0.3)  # fill ≈ the signal: above the floor
    assert np.all(out.gain == 1.0)
    for before, after in zip(corrected, out.maps, strict=True):
        np.testing.assert_allclose(after, before, atol=1e-5)
    full = raise_fill(corrected, halves, np.ones_like(gate), 0.3)
    assert np.all(full.gain == 1.0)


def test_no_signal_no_floor():
    rng = np.random.default_rng(5)
    n = 24
    halves = [rng.standard_normal((n, n, n)) for _ in range(2)]  # unrelated: FSC ≈ 0
    out = raise_fill([np.zeros((n, n, n))], halves, _cone_gate(n, 40.0), 0.3)
    assert np.all(out.gain == 1.0)


def test_bad_input():
    _s, gate, halves, corrected, _ = _data()
    with pytest.raises(InvalidValueError, match="target"):
        raise_fill(corrected, halves, gate, 0.0)
    with pytest.raises(InvalidValueError, match="max_gain"):
        raise_fill(corrected, halves, gate, 0.3, max_gain=0.5)
    with pytest.raises(InvalidValueError, match="two half maps"):
        raise_fill(corrected, halves[:1], gate, 0.3)
    with pytest.raises(MapMismatchError):
        raise_fill([c[:20, :20, :20] for c in corrected], halves, gate, 0.3)


@pytest.mark.parametrize("distribution", ["tilt:20", "top"])
def test_reconstruct_raises_the_fill_only_where_the_band_is_not_thin(distribution):
    """``fill_floor`` in the pipeline: on ``tilt:20`` the fill is raised and only the
    region the gate reads unmeasured changes; on ``top`` (a thin band) it is skipped."""
    from spisonet.correction import correct_anisotropy, preset_settings
    from spisonet.simulate import simulate_dataset
    from spisonet.weights import power_presence

    data = simulate_dataset(box=48, distribution=distribution, seed=2)
    args = (data.half1, data.half2, None, data.mask, data.voxel_size)
    base = correct_anisotropy(*args, preset_settings("tiny", predict_crop_size=48))
    raised = correct_anisotropy(
        *args, preset_settings("tiny", predict_crop_size=48, fill_floor=0.3), trust=False
    )
    notes = [x for x in raised.notes if x.startswith("--fill-floor")]
    assert len(notes) == 1
    if distribution == "top":
        assert "skipped" in notes[0] and "thin" in notes[0]
        for a, b in zip(base.corrected, raised.corrected, strict=True):
            np.testing.assert_array_equal(a, b)
        return
    assert "raised ×" in notes[0]
    gate = power_presence(data.half1, data.half2, data.mask, 0.1, also_unmasked=True)
    measured = np.fft.ifftshift(gate) == 1.0
    for a, b in zip(base.corrected, raised.corrected, strict=True):
        fa, fb = np.fft.fftn(a), np.fft.fftn(b)
        assert not np.allclose(a, b)
        np.testing.assert_allclose(fb[measured], fa[measured], atol=1e-3 * np.abs(fa).max())
