"""The coarse pass (spisonet.correction.coarse) against slow statements of its pieces."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import blobs, soft_sphere_mask

from spisonet.correction import correct_anisotropy, preset_settings
from spisonet.correction.coarse import (
    blend_coarse,
    coarse_applies,
    coarse_box,
    coarse_weight,
)
from spisonet.errors import InvalidValueError


def test_coarse_box_is_half_the_box_in_multiples_of_the_unet_step() -> None:
    cpu, tiny = preset_settings("cpu"), preset_settings("tiny")  # 4 and 3 levels
    assert [coarse_box(n, cpu) for n in (48, 64, 40, 12)] == [24, 32, 16, 8]
    assert [coarse_box(n, tiny) for n in (24, 26, 30)] == [12, 12, 12]
    # never larger than the training cube (32³ for cpu, 16³ for tiny): big boxes bin further
    assert [coarse_box(n, cpu) for n in (72, 96, 256)] == [32, 32, 32]
    assert [coarse_box(n, tiny) for n in (40, 64)] == [16, 16]


def test_coarse_weight_by_its_definition() -> None:
    n = 36
    got = coarse_weight(n)
    lo, hi = n / 12, n / 6
    for idx in [(18, 18, 18), (18, 18, 20), (18, 21, 18), (18, 18, 24), (23, 22, 18), (0, 5, 30)]:
        k = np.array(idx) - n // 2
        r = float(np.sqrt((k**2).sum()))
        want = 1.0 if r <= lo else 0.0 if r >= hi else (hi - r) / (hi - lo)
        assert got[idx] == pytest.approx(want, abs=1e-6)
    # centrosymmetric (the blend reads only half of it)
    assert np.array_equal(got[1:, 1:, 1:], got[1:, 1:, 1:][::-1, ::-1, ::-1])
    # a coarser grid (the box binned by 3, 12³) hands over at grid/6 … grid/3 = 2 … 4
    got = coarse_weight(n, 12)
    for idx in [(18, 18, 18), (18, 18, 20), (18, 21, 18), (18, 18, 22), (20, 21, 18)]:
        r = float(np.sqrt(((np.array(idx) - n // 2) ** 2).sum()))
        want = 1.0 if r <= 2 else 0.0 if r >= 4 else (4 - r) / 2
        assert got[idx] == pytest.approx(want, abs=1e-6)


def test_blend_coarse_takes_the_low_shells_from_the_coarse_map() -> None:
    n = 24
    rng = np.random.default_rng(5)
    fine, coarse = rng.normal(size=(2, n, n, n)).astype(np.float32)
    (out,) = blend_coarse([fine], [coarse])
    f = [np.fft.fftshift(np.fft.fftn(v.astype(np.float64))) for v in (out, fine, coarse)]
    r = np.sqrt(((np.indices((n,) * 3) - n // 2) ** 2).sum(0))
    low, high = r <= n / 12, (r >= n / 6) & (np.indices((n,) * 3).min(0) > 0)
    np.testing.assert_allclose(f[0][low], f[2][low], atol=1e-3)
    np.testing.assert_allclose(f[0][high], f[1][high], atol=1e-3)
    mid = (r > n / 12 + 0.3) & (r < n / 6 - 0.3)
    w = (n / 6 - r[mid]) / (n / 12)
    np.testing.assert_allclose(f[0][mid], (1 - w) * f[1][mid] + w * f[2][mid], atol=1e-3)


def _centrosymmetric(a: np.ndarray) -> np.ndarray:
    """a made even about the centre n//2 of an fftshift-ed grid: (a(k) + a(−k)) / 2."""
    mirrored = a[::-1, ::-1, ::-1]
    for axis in range(3):
        mirrored = np.roll(mirrored, 1, axis=axis)
    return 0.5 * (a + mirrored)


def test_blend_coarse_stands_only_where_the_data_did_not_measure() -> None:
    """With a measured weight m the coarse map's share is coarse_weight · (1 − m), by the
    definition on the full complex FFT; m = 1 everywhere gives the fine map back and m = 0
    the blend over every direction."""
    n = 24
    rng = np.random.default_rng(6)
    fine, coarse = rng.normal(size=(2, n, n, n))
    m = _centrosymmetric(rng.random((n, n, n))).astype(np.float32)
    (out,) = blend_coarse([fine], [coarse], None, m)
    w = coarse_weight(n).astype(np.float64) * (1.0 - m)
    spec = [np.fft.fftshift(np.fft.fftn(v)) for v in (fine, coarse)]
    want = np.fft.ifftn(np.fft.ifftshift((1 - w) * spec[0] + w * spec[1])).real
    np.testing.assert_allclose(out, want, atol=1e-4)
    (same,) = blend_coarse([fine], [coarse], None, np.ones((n, n, n)))
    np.testing.assert_allclose(same, fine, atol=1e-4)
    (everywhere,) = blend_coarse([fine], [coarse], None, np.zeros((n, n, n)))
    np.testing.assert_allclose(everywhere, blend_coarse([fine], [coarse])[0], atol=1e-6)
    with pytest.raises(InvalidValueError, match="does not match"):
        blend_coarse([fine], [coarse], None, np.ones((n - 2,) * 3))


def test_coarse_applies_only_when_asked_with_two_halves_and_training() -> None:
    cpu = preset_settings("cpu")
    assert cpu.coarse_pass is False and coarse_applies(cpu, True, False) == (False, "")
    asked = preset_settings("cpu", coarse_pass=True)
    assert coarse_applies(asked, True, False) == (True, "")
    for two, pre, s, word in [
        (False, False, asked, "one map"),
        (True, True, asked, "pretrained"),
        (True, False, preset_settings("cpu", coarse_pass=True, independent=True), "independent"),
    ]:
        on, why = coarse_applies(s, two, pre)
        assert not on and word in why and why.startswith("--coarse-pass ignored")


def _shell_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    fa, fb = (np.fft.fftshift(np.fft.fftn(v.astype(np.float64))) for v in (a, b))
    shell = np.rint(np.sqrt(((np.indices((n,) * 3) - n // 2) ** 2).sum(0))).astype(int)
    out = []
    for s in range(n // 2):
        m = shell == s
        num = np.real(np.sum(fa[m] * np.conj(fb[m])))
        out.append(num / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2)))
    return np.array(out)


def test_the_coarse_pass_changes_only_the_low_shells_of_the_run(monkeypatch) -> None:
    import spisonet.correction.pipeline as pipeline

    n = 24
    rng = np.random.default_rng(0)
    signal = blobs(n, 0) * 3
    h1, h2 = (signal + rng.standard_normal(signal.shape) + 5 for _ in range(2))
    k = np.indices((n,) * 3) - n // 2
    radius = np.sqrt((k**2).sum(0))
    cone = np.abs(k[0]) > np.cos(np.radians(40)) * radius  # unmeasured within 40° of z
    fsc = np.where(cone, 0.0, 1.0).astype(np.float32)
    mask = soft_sphere_mask(n, n / 3)
    real_predict = pipeline.predict_maps
    seen = []

    def predict(maps, nets, progress=None, rotations=(0,)):
        # the coarse networks' outputs (the 12³ grid) are made zero, so that the run's low
        # shells show whose they are; the main network's pass through
        out = real_predict(maps, nets, progress, rotations)
        seen.append(out[0].shape[0])
        return [np.zeros_like(o) for o in out] if out[0].shape[0] < n else out

    monkeypatch.setattr(pipeline, "predict_maps", predict)
    runs = {}
    for cp in (False, True):
        s = preset_settings("tiny", coarse_pass=cp, network_only=True, correct_beyond_limit=True)
        runs[cp] = correct_anisotropy(h1, h2, fsc, mask, 2.0, s, trust=False)
    assert seen == [n, n, 12]  # the coarse pass predicted the whole box binned by 2
    on, off = runs[True], runs[False]
    assert on.settings.coarse_pass is True and off.settings.coarse_pass is False
    assert on.timings["coarse"] > 0 and "coarse" not in off.timings
    assert any(x.startswith("coarse pass: 1 network(s)") for x in on.notes)
    # beyond |k| = n/6 = 4 (shells 5 … : shell 4 holds 3.5 ≤ |k| < 4.5) the maps are the same
    # network's (up to the output's overall scale); below, the coarse output (zero here) has
    # the share coarse_weight · (1 − m), m where the halves call Fourier space measured:
    # F(on) = scale · (1 − coarse_weight · (1 − m)) · F(off)
    assert np.all(_shell_correlation(on.corrected[0], off.corrected[0])[5:] > 0.9999)
    measured = pipeline.measured_weights(h1, h2, mask, fsc)[2]
    f_on, f_off = (np.fft.fftshift(np.fft.fftn(v[0].astype(np.float64))) for v in (
        on.corrected, off.corrected))  # fmt: skip
    r = np.sqrt(((np.indices((n,) * 3) - n // 2) ** 2).sum(0))
    scale = np.median(np.abs(f_on[r > 5]) / np.abs(f_off[r > 5]))
    low = (r > 0) & (r < 4.5)
    keep = 1.0 - coarse_weight(n, 12) * (1.0 - measured)
    np.testing.assert_allclose(f_on[low], scale * keep[low] * f_off[low], atol=1e-3 * scale
                               * np.abs(f_off[low]).max())  # fmt: skip
    inner = (r > 0) & (r <= 2)  # the coarse output stands in full where nothing was measured
    assert keep[low].min() < 0.5 and keep[inner].max() > 0.8  # … and the main one where it was


def _shell_power(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    f = np.fft.fftshift(np.fft.fftn(a.astype(np.float64)))
    shell = np.rint(np.sqrt(((np.indices((n,) * 3) - n // 2) ** 2).sum(0))).astype(int)
    return np.bincount(shell.ravel(), np.abs(f.ravel()) ** 2)[: n // 2]
