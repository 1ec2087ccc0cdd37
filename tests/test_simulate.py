"""Tests of spisonet.simulate: the test molecule, view distributions, sampling density,
the half-map noise model and the behaviour of the simulated data under FSC."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet import simulate as S
from spisonet.errors import InvalidValueError, MapShapeError, NonFiniteMapError
from spisonet.fsc import fsc_curve
from spisonet.io import Map

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


# ----------------------------------------------------------------------------- molecule


def test_molecule_is_deterministic() -> None:
    a = S.make_molecule(32, 2.0, seed=3)
    b = S.make_molecule(32, 2.0, seed=3)
    c = S.make_molecule(32, 2.0, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_pseudo_atoms_chain_geometry() -> None:
    pos, chain = S.pseudo_atoms(40, 2.0, seed=1)
    assert pos.shape[1] == 3 and pos.shape[0] == chain.shape[0] > 100
    bonded = chain[1:] == chain[:-1]
    assert bonded.sum() > 0.9 * pos.shape[0]
    step = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    np.testing.assert_allclose(step[bonded], S.CA_STEP, atol=1e-9)
    # atoms that are not chain neighbours keep their distance
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    i, j = np.triu_indices(pos.shape[0], k=1)
    neighbours = (j == i + 1) & (chain[i] == chain[j])
    assert dist[i[~neighbours], j[~neighbours]].min() >= S.MIN_CONTACT - 1e-9
    # the nearest other atom of a chain atom is its bonded neighbour, 3.8 Å away
    np.fill_diagonal(dist, np.inf)
    assert np.median(dist.min(1)) == pytest.approx(S.CA_STEP, abs=1e-9)


def test_pseudo_atoms_steps_are_in_angstrom() -> None:
    # the same box with twice the voxel size holds ~8× the atoms (Å-sized steps)
    small, _ = S.pseudo_atoms(32, 1.0, seed=0)
    large, _ = S.pseudo_atoms(32, 2.0, seed=0)
    assert 6 < large.shape[0] / small.shape[0] < 10
    # and spans twice as many Å
    assert np.ptp(large, axis=0).max() > 1.6 * np.ptp(small, axis=0).max()


def test_pseudo_atoms_stay_in_an_elongated_region_inside_the_box() -> None:
    box, voxel = 48, 1.5
    pos, _ = S.pseudo_atoms(box, voxel, seed=2)
    r = np.linalg.norm(pos, axis=1)
    assert r.max() <= 0.3 * box * voxel + 1e-9
    eig = np.linalg.eigvalsh(np.cov(pos.T))
    assert eig[-1] / eig[0] > 1.5  # ellipsoidal, not spherical


def test_render_atoms_matches_gaussian_sum() -> None:
    rng = np.random.default_rng(0)
    n, voxel, b = 20, 1.5, 60.0
    pos = rng.uniform(-6, 6, (5, 3))  # Å, (x, y, z)
    got = S.render_atoms(pos, n, voxel, b)
    sigma = np.sqrt(b / (8 * np.pi**2))  # Å
    z, y, x = (np.indices((n, n, n)) - n // 2) * voxel
    want = np.zeros((n, n, n))
    for px, py, pz in pos:
        want += np.exp(-((x - px) ** 2 + (y - py) ** 2 + (z - pz) ** 2) / (2 * sigma**2))
    want /= want.max()
    np.testing.assert_allclose(got, want, atol=2e-4)


def test_render_atoms_axis_order_and_voxel_size() -> None:
    got = S.render_atoms(np.array([[6.0, -4.0, 2.0]]), 24, voxel_size=2.0)
    # (x, y, z) = (6, -4, 2) Å = (3, -2, 1) voxels from the centre, indexed [z, y, x]
    assert np.unravel_index(np.argmax(got), got.shape) == (12 + 1, 12 - 2, 12 + 3)


def test_render_atoms_bfactor_falloff() -> None:
    n, voxel, b = 32, 1.0, 150.0  # σ = 1.4 voxels: aliasing negligible
    vol = S.render_atoms(np.zeros((1, 3)), n, voxel, b).astype(np.float64)
    amp = np.abs(np.fft.fftn(vol))
    for k in (2, 5, 8):
        s = k / (n * voxel)  # 1/Å
        assert amp[0, 0, k] / amp[0, 0, 0] == pytest.approx(np.exp(-b * s**2 / 4), rel=1e-3)


def test_molecule_is_asymmetric_finite_and_inside(molecule32: np.ndarray) -> None:
    m = molecule32
    n = m.shape[0]
    assert m.dtype == np.float32 and m.shape == (n, n, n)
    assert np.all(np.isfinite(m)) and m.max() == pytest.approx(1.0)
    # inversion through the centre voxel n//2: i -> n - i (mod n)
    inverted = np.roll(m[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))
    a, b = m - m.mean(), inverted - inverted.mean()
    assert (a * b).sum() / (a * a).sum() < 0.6
    # the mass is in the middle: nothing in the outer 3 voxels
    inner = np.zeros_like(m, dtype=bool)
    inner[3:-3, 3:-3, 3:-3] = True
    assert m[~inner].sum() < 1e-4 * m.sum()


def test_molecule_default_bfactor_keeps_high_resolution(molecule32: np.ndarray) -> None:
    # the default B keeps ≥ 1 % of the low-resolution power per shell out to 3 voxels
    n = molecule32.shape[0]
    power = np.abs(np.fft.fftshift(np.fft.fftn(molecule32))) ** 2
    shells = np.rint(np.sqrt((np.stack(np.indices(power.shape)) - n // 2) ** 2).sum(0)).astype(int)
    mean = np.bincount(shells.ravel(), power.ravel()) / np.bincount(shells.ravel())
    assert mean[n // 3] > 1e-3 * mean[2]


def test_molecule_errors() -> None:
    with pytest.raises(InvalidValueError, match="box must be an integer ≥ 8"):
        S.make_molecule(4)
    with pytest.raises(InvalidValueError, match="voxel_size must be a finite number > 0"):
        S.make_molecule(16, voxel_size=0)
    with pytest.raises(InvalidValueError, match="radius_fraction must be in"):
        S.make_molecule(16, radius_fraction=0.6)
    with pytest.raises(InvalidValueError, match="n_chains must be a positive integer"):
        S.make_molecule(16, n_chains=0)
    with pytest.raises(InvalidValueError, match="bfactor must be a finite number > 0"):
        S.make_molecule(16, bfactor=-5)


# ----------------------------------------------------------------------------- views


def _angle_to_z(d: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))


def test_view_directions_distributions() -> None:
    n = 4000
    for dist in ("uniform", "top", "side", "tilt:30"):
        d = S.view_directions(dist, n, seed=1)
        assert d.shape == (n, 3)
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    u = S.view_directions("uniform", n, seed=1)
    np.testing.assert_allclose((u**2).mean(0), 1 / 3, atol=0.03)
    np.testing.assert_allclose(u.mean(0), 0.0, atol=0.05)
    top = _angle_to_z(S.view_directions("top", n, seed=1))
    assert top.max() <= 5.0 + 1e-9 and top.max() > 4.5
    tilt = _angle_to_z(S.view_directions("Tilt: 30", n, seed=1))
    assert tilt.max() <= 30.0 + 1e-9 and tilt.max() > 29.0
    # uniform within the cap: P(angle ≤ 15°) = (1 − cos 15°) / (1 − cos 30°)
    frac = (1 - np.cos(np.radians(15))) / (1 - np.cos(np.radians(30)))
    assert (tilt <= 15).mean() == pytest.approx(frac, abs=0.03)
    side = _angle_to_z(S.view_directions("side", n, seed=1))
    assert np.all(np.abs(side - 90) <= 5.0 + 1e-9)


def test_view_directions_deterministic() -> None:
    a = S.view_directions("tilt:20", 50, seed=7)
    np.testing.assert_array_equal(a, S.view_directions("tilt:20", 50, seed=7))
    assert not np.allclose(a, S.view_directions("tilt:20", 50, seed=8))


def test_view_directions_from_relion_angles() -> None:
    angles = np.array([[0, 90, 10], [90, 90, 0], [30, 0, 5], [45, 60, 0], [200, 120, 33]])
    d = S.view_directions("star", angles=angles)
    rot, tilt = np.radians(angles[:, 0]), np.radians(angles[:, 1])
    want = np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], 1)
    np.testing.assert_allclose(d, want, atol=1e-12)
    np.testing.assert_allclose(d[:3], [[1, 0, 0], [0, 1, 0], [0, 0, 1]], atol=1e-12)
    sub = S.view_directions("star", 3, seed=0, angles=angles)
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
def test_view_directions_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidValueError, match=message):
        S.view_directions(**kwargs)


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
    S._density_kernel.py_func(n, views, np.array([0, 1, 3]), out)
    np.testing.assert_allclose(out.sum(0).reshape(n, n, n), _slow_density(n, views), atol=1e-5)


def test_sampling_density_of_top_views_misses_the_z_axis() -> None:
    w = S.sampling_density(32, S.view_directions("top", 300, seed=0))
    c = 16
    assert w[c, c, c + 10] > 100  # kx axis: on every plane
    assert w[c + 10, c, c] == 0.0  # kz axis: no plane within one voxel


def test_sampling_density_errors() -> None:
    with pytest.raises(InvalidValueError, match=r"must be an \(n_views, 3\) array"):
        S.sampling_density(16, np.zeros((4, 2)))
    with pytest.raises(InvalidValueError, match="finite, non-zero vectors"):
        S.sampling_density(16, np.zeros((4, 3)))


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
    with pytest.raises(InvalidValueError, match="snr must be a finite number > 0"):
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
