"""Map tools against slow full-FFT numpy statements of their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.errors import InvalidValueError, MapMismatchError, MapShapeError, NonFiniteMapError
from spisonet.fsc_shells import fsc_curve
from spisonet.maps import (
    combine_map,
    fsc_weight,
    match_mean_std,
    radial_amplitude,
    whiten,
    zscore,
)


# --------------------------------------------------------------------------- slow statements
def slow_shells(n: int) -> np.ndarray:
    """round(|k|) on the fftshift-ed full grid, by explicit meshgrid."""
    r = np.arange(n) - n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    return np.rint(np.sqrt(z**2 + y**2 + x**2)).astype(int)


def slow_shell_mean_amp(vol: np.ndarray) -> np.ndarray:
    f = np.abs(np.fft.fftshift(np.fft.fftn(vol.astype(np.float64))))
    s = slow_shells(vol.shape[0])
    return np.array([f[s == i].mean() if np.any(s == i) else 0.0 for i in range(s.max() + 1)])


def slow_filter(vol: np.ndarray, per_voxel_shifted: np.ndarray) -> np.ndarray:
    f = np.fft.fftshift(np.fft.fftn(vol.astype(np.float64)))
    return np.real(np.fft.ifftn(np.fft.ifftshift(f * per_voxel_shifted)))


def smooth_random_map(n: int, seed: int, bfactor: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Gaussian noise with a Gaussian amplitude decay exp(-bfactor s²/4), s in 1/voxel."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, n, n))
    k = np.fft.fftfreq(n)
    s2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    out = np.real(np.fft.ifftn(np.fft.fftn(v) * np.exp(-bfactor * s2 / 4)))
    return (out * scale).astype(np.float32)


def soft_mask(n: int) -> np.ndarray:
    r = np.arange(n) - n // 2
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    d = np.sqrt(z**2 + y**2 + x**2)
    return np.clip((0.4 * n - d) / 3.0, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- normalisation
def test_zscore_definition() -> None:
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(9, 9, 9)) * 3 + 5).astype(np.float32)
    z = zscore(a)
    assert z.dtype == np.float32
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(z, (a64 - a64.mean()) / a64.std(), atol=1e-6)
    assert abs(float(z.astype(np.float64).mean())) < 1e-6
    assert abs(float(z.astype(np.float64).std()) - 1) < 1e-6


def test_zscore_constant_map() -> None:
    with pytest.raises(InvalidValueError, match=r"cannot z-score a constant map"):
        zscore(np.full((4, 4, 4), 2.5, np.float32))


def test_zscore_non_finite() -> None:
    a = np.zeros((4, 4, 4))
    a[1, 1, 1] = np.nan
    with pytest.raises(NonFiniteMapError, match=r"NaN or infinite"):
        zscore(a)


def test_match_mean_std() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 8, 8))
    ref = rng.normal(size=(8, 8, 8)) * 7 - 3
    out = match_mean_std(a, ref).astype(np.float64)
    assert out.dtype == np.float64
    np.testing.assert_allclose([out.mean(), out.std()], [ref.mean(), ref.std()], rtol=1e-5)
    # linear: correlation with the input is 1
    assert np.corrcoef(out.ravel(), a.ravel())[0, 1] > 1 - 1e-9


@pytest.mark.parametrize("n", [12, 13])
def test_radial_amplitude_matches_full_fft(n: int) -> None:
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, n, n))
    m = soft_mask(n)
    np.testing.assert_allclose(radial_amplitude(a), slow_shell_mean_amp(a), rtol=1e-10)
    np.testing.assert_allclose(radial_amplitude(a, m), slow_shell_mean_amp(a * m), rtol=1e-10)


# --------------------------------------------------------------------------- whitening
def slow_whiten(vol, voxel, mask, low_res, high_res, eps=1e-4):
    n = vol.shape[0]
    r_low = int(voxel * n / low_res)
    r_high = int(voxel * n / high_res)
    masked = vol if mask is None else vol * mask
    amp = slow_shell_mean_amp(masked)
    s = slow_shells(n)
    filt = np.ones(s.shape)
    for i in range(r_low + 1, r_high):
        filt[s == i] = amp[r_low] / (amp[i] + eps)
    return slow_filter(vol, filt)


@pytest.mark.parametrize(("n", "use_mask"), [(24, False), (24, True), (21, True)])
def test_whiten_matches_definition(n: int, use_mask: bool) -> None:
    vol = smooth_random_map(n, seed=n, bfactor=30.0, scale=50.0)
    mask = soft_mask(n) if use_mask else None
    out = whiten(vol, 1.5, mask=mask, low_res=12.0, high_res=4.0)
    assert out.dtype == np.float32 and out.shape == vol.shape
    expected = slow_whiten(vol.astype(np.float64), 1.5, mask, 12.0, 4.0)
    np.testing.assert_allclose(out, expected, atol=1e-5 * np.abs(expected).max())
    # outside the band the map is untouched: shells ≤ r_low keep their coefficients
    f_in = np.fft.fftshift(np.fft.fftn(vol.astype(np.float64)))
    f_out = np.fft.fftshift(np.fft.fftn(out.astype(np.float64)))
    low = slow_shells(n) <= int(1.5 * n / 12.0)
    np.testing.assert_allclose(f_out[low], f_in[low], atol=1e-3 * np.abs(f_in).max())


def test_whiten_flattens_steep_bfactor() -> None:
    n, voxel = 48, 1.0
    vol = smooth_random_map(n, seed=5, bfactor=120.0, scale=1000.0)
    low_res, high_res = 10.0, 3.0
    r_low, r_high = int(voxel * n / low_res), int(voxel * n / high_res)
    before = radial_amplitude(vol)[r_low:r_high]
    assert before.max() / before.min() > 10  # steep fall-off inside the band
    after = radial_amplitude(whiten(vol, voxel, low_res=low_res, high_res=high_res))
    band = after[r_low:r_high]
    assert band.max() / band.min() < 1.01
    # outside the band nothing changes
    np.testing.assert_allclose(after[: r_low + 1], radial_amplitude(vol)[: r_low + 1], rtol=1e-4)
    # (float32 output: compare with an absolute floor set by the largest amplitude)
    ref = radial_amplitude(vol)
    np.testing.assert_allclose(after[r_high:], ref[r_high:], rtol=1e-3, atol=1e-6 * ref.max())


def test_whiten_with_mask_still_flattens() -> None:
    n = 48
    vol = smooth_random_map(n, seed=6, bfactor=120.0, scale=1000.0)
    out = whiten(vol, 1.0, mask=soft_mask(n), low_res=10.0, high_res=3.0)
    band = radial_amplitude(out)[4:16]
    assert band.max() / band.min() < 1.5


def test_whiten_errors() -> None:
    vol = np.random.default_rng(0).normal(size=(16, 16, 16))
    with pytest.raises(InvalidValueError, match=r"low_res > high_res"):
        whiten(vol, 1.0, low_res=3.0, high_res=10.0)
    with pytest.raises(InvalidValueError, match=r"voxel_size must be a positive number"):
        whiten(vol, 0.0)
    with pytest.raises(InvalidValueError, match=r"finer than Nyquist"):
        whiten(vol, 1.0, low_res=1.5, high_res=1.0)
    with pytest.raises(MapMismatchError, match=r"mask shape \(8, 8, 8\) differs"):
        whiten(vol, 1.0, mask=np.ones((8, 8, 8)))
    with pytest.raises(MapShapeError, match=r"expected a cubic 3D map"):
        whiten(np.zeros((8, 8, 9)), 1.0)
    bad = vol.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(NonFiniteMapError, match=r"1 NaN or infinite"):
        whiten(bad, 1.0)


# --------------------------------------------------------------------------- combine_map
def slow_combine(low, high, threshold_res, voxel, mask):
    n = low.shape[0]
    m = np.ones_like(low) if mask is None else mask
    a_lo = slow_shell_mean_amp(low * m)
    a_hi = slow_shell_mean_amp(high * m)
    a_lo[np.abs(a_lo) < 1e-7] = 1e-7
    ratio = a_hi / a_lo
    s = slow_shells(n)
    matched = slow_filter(low, ratio[s])
    rad = n * voxel / threshold_res
    sphere = np.zeros(s.shape)
    for i in range(s.max() + 1):
        if i < rad - 5:
            sphere[s == i] = 1.0
        elif i < rad:
            sphere[s == i] = (rad - i) / 6.0
    high_low = slow_filter(high, sphere)
    out_low = slow_filter(matched, sphere)
    out_low = (out_low - out_low.mean()) / out_low.std() * high_low.std() + high_low.mean()
    out = out_low + slow_filter(high, 1 - sphere)
    return (out - out.mean()) / out.std() * high.std() + high.mean()


@pytest.mark.parametrize(("n", "use_mask"), [(24, False), (24, True), (25, True)])
def test_combine_map_matches_definition(n: int, use_mask: bool) -> None:
    low = smooth_random_map(n, seed=1, bfactor=20.0, scale=3.0) + 1.0
    high = smooth_random_map(n, seed=2, bfactor=5.0)
    mask = soft_mask(n) if use_mask else None
    out = combine_map(low, high, threshold_res=4.0, voxel_size=1.3, mask=mask)
    assert out.dtype == np.float32 and out.shape == (n, n, n)
    expected = slow_combine(low.astype(np.float64), high.astype(np.float64), 4.0, 1.3, mask)
    np.testing.assert_allclose(out, expected, atol=1e-5 * np.abs(expected).max())


def test_combine_map_keeps_low_below_and_high_above() -> None:
    n = 32
    low = smooth_random_map(n, seed=11, bfactor=10.0)
    high = smooth_random_map(n, seed=12, bfactor=10.0)
    threshold_res, voxel = 3.2, 1.0  # rad = 10 shells
    rad = n * voxel / threshold_res
    out = combine_map(low, high, threshold_res, voxel)
    f_low, _ = fsc_curve(out, low)
    f_high, _ = fsc_curve(out, high)
    inner = np.arange(1, int(np.ceil(rad - 5)))  # sphere value 1
    outer = np.arange(int(np.ceil(rad)), n // 2 + 1)  # sphere value 0
    np.testing.assert_allclose(f_low[inner], 1.0, atol=1e-5)
    np.testing.assert_allclose(f_high[outer], 1.0, atol=1e-5)
    # and the two inputs are independent, so the other side is uncorrelated
    assert np.all(np.abs(f_high[inner]) < 0.5)
    assert np.all(np.abs(f_low[outer]) < 0.5)
    # overall scale of the high map kept
    np.testing.assert_allclose(
        [out.astype(np.float64).mean(), out.astype(np.float64).std()],
        [high.astype(np.float64).mean(), high.astype(np.float64).std()],
        rtol=1e-4,
        atol=1e-6,
    )


def test_combine_map_matches_spectrum_of_high() -> None:
    n = 32
    low = smooth_random_map(n, seed=3, bfactor=60.0, scale=10.0)
    high = smooth_random_map(n, seed=4, bfactor=5.0)
    out = combine_map(low, high, 4.0, 1.0)
    # inside the flat part of the sphere, the output's spectrum has the high map's shape
    a_out = radial_amplitude(out)[1:3]
    a_high = radial_amplitude(high)[1:3]
    ratio = a_out / a_high
    assert ratio.max() / ratio.min() < 1.05


def test_combine_map_errors() -> None:
    a = np.random.default_rng(0).normal(size=(16, 16, 16))
    with pytest.raises(MapMismatchError, match=r"low map shape \(16, 16, 16\) differs"):
        combine_map(a, a[:8, :8, :8], 4.0, 1.0)
    with pytest.raises(InvalidValueError, match=r"coarser than the box"):
        combine_map(a, a, 40.0, 1.0)
    with pytest.raises(InvalidValueError, match=r"threshold_res must be a positive number"):
        combine_map(a, a, -1.0, 1.0)
    with pytest.raises(InvalidValueError, match=r"no content below"):
        combine_map(np.zeros_like(a), a, 4.0, 1.0)


# --------------------------------------------------------------------------- FSC weighting
def slow_fsc_weight(vol, curve, mode):
    s = slow_shells(vol.shape[0])
    w = np.zeros(s.shape)
    for i in range(min(s.max() + 1, curve.size)):
        c = curve[i]
        if mode == "relion":
            w[s == i] = max(c, 0.0)
        else:
            c = min(max(c, 0.0), 1.0)
            w[s == i] = np.sqrt(2 * c / (1 + c))
    return slow_filter(vol, w)


@pytest.mark.parametrize("mode", ["relion", "rosenthal"])
@pytest.mark.parametrize("n", [16, 17])
def test_fsc_weight_matches_definition(mode: str, n: int) -> None:
    rng = np.random.default_rng(n)
    vol = rng.normal(size=(n, n, n)).astype(np.float32)
    # a curve with negatives, values above 1 and shorter than the shells of the corners
    curve = np.concatenate([[1.0, 1.2], np.linspace(0.95, -0.2, n // 2 - 1)])
    out = fsc_weight(vol, curve, mode=mode)
    assert out.dtype == np.float32
    expected = slow_fsc_weight(vol.astype(np.float64), curve, mode)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_fsc_weight_identity_and_zero() -> None:
    rng = np.random.default_rng(2)
    vol = rng.normal(size=(12, 12, 12))
    ones = np.ones(40)
    np.testing.assert_allclose(fsc_weight(vol, ones, "relion"), vol, atol=1e-5)
    np.testing.assert_allclose(fsc_weight(vol, ones, "rosenthal"), vol, atol=1e-5)
    assert np.all(fsc_weight(vol, np.zeros(40), "relion") == 0)
    # a curve of the global FSC length (n//2 + 1) zeroes the corners beyond Nyquist
    c, _ = fsc_curve(vol, vol)
    out = fsc_weight(vol, c)
    spec = radial_amplitude(out)
    assert np.all(spec[12 // 2 + 1 :] < 1e-5)


def test_fsc_weight_errors() -> None:
    vol = np.zeros((8, 8, 8))
    with pytest.raises(InvalidValueError, match=r"unknown FSC weighting mode 'gold'"):
        fsc_weight(vol, np.ones(5), mode="gold")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match=r"non-empty 1-D array"):
        fsc_weight(vol, np.ones((2, 5)))
    with pytest.raises(InvalidValueError, match=r"fsc_curve contains NaN"):
        fsc_weight(vol, np.array([1.0, np.nan]))
