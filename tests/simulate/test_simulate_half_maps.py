"""Tests of spisonet.simulate.half_maps: the half-map noise model, the behaviour of the
simulated data under FSC, Fourier binning and simulate_dataset."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet import simulate as S
from spisonet.errors import InvalidValueError, MapShapeError, NonFiniteMapError
from spisonet.fsc_shells import fsc_curve
from spisonet.io import Map

# ----------------------------------------------------------------------------- helpers


def _hermitian(w: np.ndarray) -> np.ndarray:
    """Average w(k) and w(-k) (unshifted grid; matters only on Nyquist planes)."""
    n = w.shape[0]
    out = np.empty_like(w)
    for i, j, k in np.ndindex(w.shape):
        out[i, j, k] = 0.5 * (w[i, j, k] + w[(-i) % n, (-j) % n, (-k) % n])
    return out


def _cone_fsc(a: np.ndarray, b: np.ndarray, axis: int, degrees: float = 20.0) -> np.ndarray:
    """Per-shell FSC over voxels within ``degrees`` of ±axis (0 = z, 2 = x), unmasked."""
    n = a.shape[0]
    f1 = np.fft.fftshift(np.fft.fftn(a))
    f2 = np.fft.fftshift(np.fft.fftn(b))
    k = np.stack(np.indices((n, n, n)) - n // 2).astype(np.float64)  # z, y, x
    r = np.sqrt((k**2).sum(0))
    shells = np.rint(r).astype(int)
    cosine = np.abs(k[axis]) / np.maximum(r, 1e-9)
    sel = cosine >= np.cos(np.deg2rad(degrees))
    m = n // 2 + 1
    num = np.bincount(shells[sel], np.real(f1 * np.conj(f2))[sel], m)[:m]
    p1 = np.bincount(shells[sel], np.abs(f1[sel]) ** 2, m)[:m]
    p2 = np.bincount(shells[sel], np.abs(f2[sel]) ** 2, m)[:m]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(p1 * p2 > 0, num / np.sqrt(p1 * p2), 0.0)


@pytest.fixture(scope="module")
def molecule32() -> np.ndarray:
    return S.make_molecule(32, 2.0, seed=0)


# ----------------------------------------------------------------------------- half maps


def test_half_maps_are_deterministic(molecule32: np.ndarray) -> None:
    a = S.simulate_half_maps(molecule32, 2.0, "tilt:40", 200, 0.05, seed=5)
    b = S.simulate_half_maps(molecule32, 2.0, "tilt:40", 200, 0.05, seed=5)
    c = S.simulate_half_maps(molecule32, 2.0, "tilt:40", 200, 0.05, seed=6)
    for name in ("half1", "half2", "density1", "density2", "directions", "mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.allclose(a.half1, c.half1)
    assert a.half1.dtype == np.float32 and a.half1.shape == molecule32.shape
    assert a.half2.dtype == np.float32 and a.mask.dtype == np.float32
    assert sorted(np.bincount(a.half_of_view)[1:]) == [100, 100]
    np.testing.assert_allclose(
        a.density1 + a.density2, S.sampling_density(32, a.directions), rtol=1e-5, atol=1e-4
    )


def test_half_map_signal_weight_is_wiener(molecule32: np.ndarray) -> None:
    # with negligible noise, half = IFFT(W/(W+λ) · FFT(gt)), λ = 0.02 · mean(W)
    d = S.simulate_half_maps(molecule32, 2.0, "tilt:30", 300, snr=1e12, seed=2)
    w = _hermitian(np.fft.ifftshift(d.density1).astype(np.float64))
    lam = S.REGULARISATION * w.mean()
    want = np.fft.ifftn(w / (w + lam) * np.fft.fftn(molecule32.astype(np.float64))).real
    np.testing.assert_allclose(d.half1, want, atol=1e-5 * np.abs(want).max())


def test_half_map_noise_variance_follows_one_over_w() -> None:
    # with a tiny SNR the half map is noise: E|H|² = σ² W / (W + λ)²
    rng = np.random.default_rng(0)
    gt = rng.standard_normal((24, 24, 24)).astype(np.float32)
    snr = 1e-8
    d = S.simulate_half_maps(gt, 1.0, "tilt:45", 400, snr=snr, seed=1)
    assert d.noise_sigma**2 == pytest.approx(24**3 * gt.var(dtype=np.float64) / snr, rel=1e-6)
    w = _hermitian(np.fft.ifftshift(d.density2).astype(np.float64))
    lam = S.REGULARISATION * w.mean()
    power = np.abs(np.fft.fftn(d.half2.astype(np.float64))) ** 2
    expected = d.noise_sigma**2 * w / (w + lam) ** 2
    sel = w > 0
    assert (power[sel] / expected[sel]).mean() == pytest.approx(1.0, abs=0.05)
    assert np.abs(power[~sel]).max() < 1e-6 * power.max()


def test_uniform_views_give_isotropic_fsc(molecule32: np.ndarray) -> None:
    d = S.simulate_half_maps(molecule32, 2.0, "uniform", 1000, snr=0.05, seed=0)
    fz = _cone_fsc(d.half1, d.half2, axis=0)[2:16]
    fx = _cone_fsc(d.half1, d.half2, axis=2)[2:16]
    assert fz.mean() > 0.4 and fx.mean() > 0.4
    assert abs(fz.mean() - fx.mean()) < 0.1


def test_top_views_give_low_fsc_along_z(molecule32: np.ndarray) -> None:
    d = S.simulate_half_maps(molecule32, 2.0, "top", 1000, snr=0.05, seed=0)
    fz = _cone_fsc(d.half1, d.half2, axis=0)[3:16]
    fx = _cone_fsc(d.half1, d.half2, axis=2)[3:16]
    assert fx.mean() > 0.5
    assert abs(fz.mean()) < 0.2
    assert fx.mean() - fz.mean() > 0.4


def _fsc_to_gt(data: S.SimulatedData) -> float:
    curve, _ = fsc_curve(data.half1, data.gt, data.mask)
    return float(curve[1:].mean())


def test_more_views_or_more_snr_give_better_maps(molecule32: np.ndarray) -> None:
    base = _fsc_to_gt(S.simulate_half_maps(molecule32, 2.0, "uniform", 200, 0.005, seed=0))
    views = _fsc_to_gt(S.simulate_half_maps(molecule32, 2.0, "uniform", 2000, 0.005, seed=0))
    snr = _fsc_to_gt(S.simulate_half_maps(molecule32, 2.0, "uniform", 200, 0.05, seed=0))
    assert views > base + 0.1
    assert snr > base + 0.1


def test_half_map_errors(molecule32: np.ndarray) -> None:
    with pytest.raises(MapShapeError, match="expected a cubic 3D map"):
        S.simulate_half_maps(molecule32[:, :, :30])
    bad = molecule32.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(NonFiniteMapError, match="NaN or infinite"):
        S.simulate_half_maps(bad)
    with pytest.raises(InvalidValueError, match="snr must be a positive number"):
        S.simulate_half_maps(molecule32, snr=0)
    with pytest.raises(InvalidValueError, match="ground_truth is constant"):
        S.simulate_half_maps(np.ones((16, 16, 16)))
    with pytest.raises(InvalidValueError, match="need at least 2 views"):
        S.simulate_half_maps(molecule32, n_views=1)


# ----------------------------------------------------------------------------- binning


@pytest.mark.parametrize(("n", "m"), [(32, 16), (33, 20), (24, 24)])
def test_fourier_crop_keeps_band_limited_content(n: int, m: int) -> None:
    # a sum of cosines below the new Nyquist is sampled exactly on the coarser grid
    waves = [((1, 2, 0), 0.3), ((3, -1, 2), 1.1), ((0, 0, 4), -0.4)]  # (kx, ky, kz), phase

    def sample(size: int) -> np.ndarray:
        z, y, x = np.indices((size, size, size)) / size
        return (
            sum(np.cos(2 * np.pi * (kx * x + ky * y + kz * z) + ph) for (kx, ky, kz), ph in waves)
            + 0.7
        )

    got = S.fourier_crop(sample(n).astype(np.float32), m)
    assert got.shape == (m, m, m) and got.dtype == np.float32
    np.testing.assert_allclose(got, sample(m), atol=2e-5)


def test_fourier_crop_errors() -> None:
    with pytest.raises(InvalidValueError, match=r"new_box must be an integer in \[2, 16\]"):
        S.fourier_crop(np.zeros((16, 16, 16)), 20)


def test_simulate_dataset_from_map_bins_and_scales_voxel() -> None:
    gt = S.make_molecule(40, 1.3, seed=1)
    d = S.simulate_dataset(box=20, distribution="uniform", n_views=100, from_map=Map(gt, 1.3))
    assert d.voxel_size == pytest.approx(2.6)
    np.testing.assert_allclose(d.gt, S.fourier_crop(gt, 20), atol=1e-6)
    d2 = S.simulate_dataset(distribution="uniform", n_views=100, from_map=gt, voxel_size=1.3)
    assert d2.voxel_size == pytest.approx(1.3) and d2.gt.shape == (40, 40, 40)
    with pytest.raises(InvalidValueError, match="larger than the 40³ map"):
        S.simulate_dataset(box=48, from_map=gt)


def test_simulate_dataset_molecule_defaults() -> None:
    d = S.simulate_dataset(box=32, n_views=200, seed=4)
    np.testing.assert_array_equal(d.gt, S.make_molecule(32, 2.0, 4))
    assert d.voxel_size == 2.0
    # default distribution is 'top': every view within 5° of z
    assert np.degrees(np.arccos(d.directions[:, 2])).max() <= 5.0 + 1e-9
