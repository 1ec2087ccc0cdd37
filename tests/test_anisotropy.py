"""Tests of spisonet.anisotropy: conical FSC and the diagnostics built on it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from spisonet.anisotropy import (
    SPHERICITY_THRESHOLD,
    _cone_sums,
    _lookup_grid,
    _volume_kernel,
    analyse_anisotropy,
    area_ratio,
    conical_fsc,
    conical_fsc_volume,
    direction_to_relion,
    directional_resolution,
    fibonacci_directions,
    sphericity,
)
from spisonet.errors import (
    EmptyMaskError,
    InvalidValueError,
    MapMismatchError,
    MapShapeError,
    NonFiniteMapError,
)


# --------------------------------------------------------------------------- slow references
def grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """KZ, KY, KX integer frequencies of the fftshift-ed grid and |k|."""
    k = np.arange(n) - n // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return kz, ky, kx, np.sqrt(kx**2 + ky**2 + kz**2)


def slow_conical_fsc(h1, h2, mask, dirs, theta_deg):
    """The definition, voxel by voxel on the full fftshift-ed grid, one cone at a time."""
    n = h1.shape[0]
    a = h1.astype(np.float64)
    b = h2.astype(np.float64)
    if mask is not None:
        a = a * mask
        b = b * mask
    f1 = np.fft.fftshift(np.fft.fftn(a))
    f2 = np.fft.fftshift(np.fft.fftn(b))
    kz, ky, kx, r = grid(n)
    shell = np.rint(r).astype(int)
    cross = np.real(f1 * np.conj(f2))
    p1 = np.abs(f1) ** 2
    p2 = np.abs(f2) ** 2
    dirs = np.asarray(dirs, dtype=np.float64)
    dirs = dirs / np.linalg.norm(dirs, axis=1)[:, None]
    out = np.full((len(dirs), n // 2 + 1), np.nan)
    r_safe = np.where(r == 0, 1.0, r)
    for j, u in enumerate(dirs):
        cos_angle = np.abs(kx * u[0] + ky * u[1] + kz * u[2]) / r_safe
        inside = (cos_angle >= math.cos(math.radians(theta_deg))) | (r == 0)
        for s in range(n // 2 + 1):
            sel = inside & (shell == s)
            if not sel.any():
                continue
            den = math.sqrt(p1[sel].sum() * p2[sel].sum())
            out[j, s] = cross[sel].sum() / den if den > 0 else 0.0
    return out


def random_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n, n))
    return a.astype(np.float32), (a + 1.5 * rng.normal(size=a.shape)).astype(np.float32)


def make_pair(
    n: int,
    missing_cone_deg: float = 0.0,
    axis: str = "z",
    seed: int = 0,
    snr0: float = 1000.0,
    crossing: float = 0.35,
) -> tuple[np.ndarray, np.ndarray]:
    """Half maps: shared smooth signal + independent white noise per half.

    The signal's SNR per Fourier voxel is snr0·exp(−|k|²/σ²), crossing FSC 0.143 near
    shell ``crossing``·n. With ``missing_cone_deg``, the signal is removed beyond shell 4
    from every voxel within that angle of the ``axis`` (a preferred-orientation-like
    missing cone).
    """
    rng = np.random.default_rng(seed)
    sigma = crossing * n / math.sqrt(math.log(snr0 / 0.17))
    f = np.fft.rfftn(rng.normal(size=(n, n, n)))
    kz = np.fft.fftfreq(n, 1.0 / n)[:, None, None]
    ky = np.fft.fftfreq(n, 1.0 / n)[None, :, None]
    kx = np.arange(n // 2 + 1)[None, None, :]
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    env = math.sqrt(snr0) * np.exp(-(r**2) / (2 * sigma**2))
    if missing_cone_deg > 0:
        k_axis = {"z": kz, "y": ky, "x": kx}[axis]
        r_safe = np.where(r == 0, 1.0, r)
        inside = np.abs(k_axis) / r_safe > math.cos(math.radians(missing_cone_deg))
        env = env * ~(inside & (r > 4))
    signal = np.fft.irfftn(f * env, s=(n, n, n), axes=(0, 1, 2))
    h1 = signal + rng.normal(size=signal.shape)
    h2 = signal + rng.normal(size=signal.shape)
    return h1.astype(np.float32), h2.astype(np.float32)


def soft_mask(n: int) -> np.ndarray:
    _, _, _, r = grid(n)
    return np.clip((0.4 * n - r) / 3.0, 0.0, 1.0)


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between the axes ±u and ±v, degrees."""
    c = abs(float(np.dot(u, v))) / (np.linalg.norm(u) * np.linalg.norm(v))
    return math.degrees(math.acos(min(c, 1.0)))


# --------------------------------------------------------------------------- directions
def test_fibonacci_directions_cover_the_half_sphere_uniformly():
    d = fibonacci_directions(500)
    assert d.shape == (500, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    assert np.all(d[:, 2] > 0)
    # uniform on the half sphere: mean vector (0, 0, 1/2), E[z²] = 1/3
    np.testing.assert_allclose(d.mean(axis=0), [0, 0, 0.5], atol=0.01)
    np.testing.assert_allclose((d[:, 2] ** 2).mean(), 1 / 3, atol=0.01)
    # nearest-neighbour spacing (±u alike) close to the ideal sqrt(2π/500) rad ≈ 6.4°;
    # points near the equator can sit closer to the antipodes of others
    cos = np.abs(d @ d.T)
    np.fill_diagonal(cos, 0)
    nn = np.degrees(np.arccos(cos.max(axis=1)))
    assert 2.5 < nn.min() and nn.max() < 9.0
    assert 5.0 < np.median(nn) < 7.5


def test_fibonacci_directions_rejects_bad_count():
    with pytest.raises(InvalidValueError, match="number of directions must be an integer ≥ 1"):
        fibonacci_directions(0)


def test_direction_to_relion_angles():
    tilt, rot = direction_to_relion(np.array([[0, 0, 1.0], [1.0, 0, 0], [0, 2.0, 0], [1, 1, 0]]))
    np.testing.assert_allclose(tilt, [0, 90, 90, 90], atol=1e-12)
    np.testing.assert_allclose(rot[1:], [0, 90, 45], atol=1e-12)


# --------------------------------------------------------------------------- conical FSC
@pytest.mark.parametrize("n", [16, 17, 24])
@pytest.mark.parametrize(("n_dir", "theta"), [(7, 10.0), (50, 20.0), (50, 35.0)])
@pytest.mark.parametrize("masked", [False, True])
def test_conical_fsc_equals_definition_random(n, n_dir, theta, masked):
    a, b = random_pair(n, seed=n + n_dir)
    mask = soft_mask(n) if masked else None
    dirs = fibonacci_directions(n_dir)
    fast = conical_fsc(a, b, mask=mask, directions=dirs, cone_angle=theta)
    slow = slow_conical_fsc(a, b, mask, dirs, theta)
    assert fast.shape == (n_dir, n // 2 + 1)
    np.testing.assert_array_equal(np.isnan(fast), np.isnan(slow))
    np.testing.assert_allclose(fast, slow, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize("n", [16, 17, 24])
@pytest.mark.parametrize("theta", [10.0, 20.0, 35.0])
def test_conical_fsc_equals_definition_structured(n, theta):
    a, b = make_pair(n, missing_cone_deg=40.0, crossing=0.3)
    # directions along the axes and diagonals hit exact lattice directions (boundary cases)
    dirs = np.vstack(
        [np.eye(3), [[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, -1, 0]], [[2, 1, 0]]]
    )
    fast = conical_fsc(a, b, mask=soft_mask(n), directions=dirs, cone_angle=theta)
    slow = slow_conical_fsc(a, b, soft_mask(n), dirs, theta)
    np.testing.assert_allclose(fast, slow, atol=1e-5, rtol=0, equal_nan=True)


@pytest.mark.parametrize(
    ("distribution", "n_dir", "theta"), [("top+uniform:0.1", 40, 20.0), ("tilt:30", 25, 10.0)]
)
def test_conical_fsc_equals_definition_simulated(distribution, n_dir, theta):
    from spisonet.simulate import make_molecule, simulate_half_maps

    d = simulate_half_maps(make_molecule(24, 2.0, seed=3), 2.0, distribution, 500, seed=3)
    dirs = fibonacci_directions(n_dir)
    fast = conical_fsc(d.half1, d.half2, mask=d.mask, directions=dirs, cone_angle=theta)
    slow = slow_conical_fsc(d.half1, d.half2, d.mask, dirs, theta)
    np.testing.assert_allclose(fast, slow, atol=1e-5, rtol=0, equal_nan=True)


def test_conical_fsc_of_identical_maps_is_one():
    a, _ = random_pair(20)
    c = conical_fsc(a, a, directions=fibonacci_directions(30), cone_angle=20.0)
    np.testing.assert_allclose(c[~np.isnan(c)], 1.0, atol=1e-12)
    # a 20° cone around a generic direction holds no voxel of shell 1 (axes and face
    # diagonals only), but every cone holds voxels beyond shell 3
    assert not np.isnan(c[:, 3:]).any()


def test_conical_fsc_of_90_degree_cone_is_the_global_fsc():
    from spisonet.fsc_shells import fsc_curve

    a, b = random_pair(17, seed=3)
    c = conical_fsc(a, b, directions=fibonacci_directions(5), cone_angle=90.0)
    glob, _ = fsc_curve(a, b)
    np.testing.assert_allclose(c, np.broadcast_to(glob, c.shape), atol=1e-10)


def test_cone_kernel_py_func_matches_compiled():
    n = 10
    a, b = random_pair(n, seed=5)
    f1, f2 = np.fft.rfftn(a.astype(np.float64)), np.fft.rfftn(b.astype(np.float64))
    dirs = fibonacci_directions(12)
    start, index = _lookup_grid(dirs, math.radians(25.0))
    args = (f1, f2, n, dirs, math.cos(math.radians(25.0)), start, index, 2)
    np.testing.assert_allclose(_cone_sums.py_func(*args), _cone_sums(*args), rtol=1e-12)


def test_conical_fsc_errors():
    a = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(MapShapeError, match=r"cubic 3D array \(n, n, n\), got shape \(8, 8, 7\)"):
        conical_fsc(a[:, :, :7], a[:, :, :7])
    with pytest.raises(MapMismatchError, match="half maps must have the same shape"):
        conical_fsc(a, np.zeros((9, 9, 9)))
    with pytest.raises(MapMismatchError, match=r"mask must have the half maps' shape"):
        conical_fsc(a, a, mask=np.ones((4, 4, 4)))
    with pytest.raises(EmptyMaskError, match="mask is zero everywhere"):
        conical_fsc(a, a, mask=np.zeros_like(a))
    bad = a.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(NonFiniteMapError, match="half maps contain NaN"):
        conical_fsc(bad, a)
    with pytest.raises(NonFiniteMapError, match="mask contains NaN"):
        conical_fsc(a, a, mask=bad)
    with pytest.raises(InvalidValueError, match=r"cone half-angle must be in \(0, 90\]"):
        conical_fsc(a, a, cone_angle=0.0)
    with pytest.raises(InvalidValueError, match=r"directions must be an \(m, 3\) array"):
        conical_fsc(a, a, directions=np.ones((4, 2)))
    with pytest.raises(InvalidValueError, match="finite, non-zero vectors"):
        conical_fsc(a, a, directions=np.zeros((2, 3)))
    with pytest.raises(MapShapeError, match="at least 2 voxels"):
        conical_fsc(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))


# --------------------------------------------------------------------------- derived figures
def test_directional_resolution_equals_first_crossing():
    rng = np.random.default_rng(1)
    curves = np.sort(rng.uniform(-0.1, 1.0, size=(40, 13)), axis=1)[:, ::-1].copy()
    curves[0] = 1.0  # never crosses: Nyquist
    curves[1, 1] = np.nan  # an empty cone is no crossing
    curves[1, 2:] = 0.0
    curves[2, 1:] = 0.0  # crosses at the first shell
    n, apix = 24, 1.3
    for thr in (0.143, 0.5):
        res = directional_resolution(curves, thr, apix, n)
        for j, c in enumerate(curves):
            s = next((s for s in range(1, c.size) if c[s] < thr), None)
            expected = 2 * apix if s is None else n * apix / s
            assert res[j] == pytest.approx(expected)
    assert directional_resolution(curves, 0.143, apix, n)[1] == pytest.approx(n * apix / 2)


def test_area_ratio_definition():
    c = np.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.5, 0.0, -0.5]])
    # areas with max(FSC, 0), trapezoid on unit spacing: 3 and 0.75 + 0.25 + 0 = 1.0
    assert area_ratio(c) == pytest.approx(1.0 / 3.0)
    assert area_ratio(c[:1]) == 1.0
    with pytest.raises(InvalidValueError, match="without NaN"):
        area_ratio(np.array([[1.0, np.nan]]))


@pytest.mark.parametrize("n", [12, 13])
def test_conical_fsc_volume_equals_definition(n):
    dirs = fibonacci_directions(9)
    rng = np.random.default_rng(n)
    values = rng.uniform(-1, 1, size=(9, n // 2 + 1))
    vol = conical_fsc_volume(values, dirs, n)
    kz, ky, kx, r = grid(n)
    shell = np.rint(r).astype(int)
    r_safe = np.where(r == 0, 1.0, r)
    cos = np.abs(
        kx[..., None] * dirs[:, 0] + ky[..., None] * dirs[:, 1] + kz[..., None] * dirs[:, 2]
    )
    nearest = np.argmax(cos / r_safe[..., None], axis=-1)
    expected = np.where(shell <= n // 2, values[nearest, np.minimum(shell, n // 2)], 0.0)
    expected[n // 2, n // 2, n // 2] = values[0, 0]
    assert vol.dtype == np.float32 and vol.shape == (n, n, n)
    np.testing.assert_allclose(vol, expected, atol=1e-6)
    # the kernel's Python statement agrees too
    start, index = _lookup_grid(dirs, None)
    out = np.empty((n, n, n), np.float32)
    _volume_kernel.py_func(np.ascontiguousarray(values), n, dirs, start, index, out)
    np.testing.assert_array_equal(out, vol)


def test_conical_fsc_volume_rejects_wrong_shape():
    with pytest.raises(InvalidValueError, match=r"cone_fsc must have shape \(3, 5\)"):
        conical_fsc_volume(np.zeros((3, 4)), fibonacci_directions(3), 8)


def ellipsoid(n: int, axes: tuple[float, float, float]) -> np.ndarray:
    kz, ky, kx, _ = grid(n)
    return ((kz / axes[0]) ** 2 + (ky / axes[1]) ** 2 + (kx / axes[2]) ** 2 <= 1).astype(np.float32)


def test_sphericity_of_ball_and_flat_ellipsoid():
    ball = sphericity(ellipsoid(48, (15, 15, 15)))
    assert 0.95 < ball < 1.05
    flat = sphericity(ellipsoid(48, (4, 18, 18)))
    # analytic sphericity of a 4:18:18 oblate spheroid is ≈ 0.62
    assert 0.5 < flat < 0.75
    # the limit to max_shell cuts the ball down to a smaller ball
    assert 0.95 < sphericity(ellipsoid(48, (20, 20, 20)), max_shell=10) < 1.05
    # only the region connected to the centre counts: a far blob changes nothing
    two = ellipsoid(48, (15, 15, 15))
    two[:4, :4, :4] = 1.0
    assert sphericity(two) == pytest.approx(ball)
    assert math.isnan(sphericity(np.zeros((16, 16, 16))))


# --------------------------------------------------------------------------- analysis
@pytest.fixture(scope="module")
def iso_report():
    a, b = make_pair(48, seed=1)
    return analyse_anisotropy(a, b, voxel_size=1.5)


@pytest.fixture(scope="module")
def top_report():
    a, b = make_pair(48, missing_cone_deg=60.0, seed=2)
    return analyse_anisotropy(a, b, voxel_size=1.5)


def test_isotropic_pair_is_isotropic(iso_report):
    r = iso_report
    assert r.sphericity >= 0.9
    assert r.area_ratio >= 0.8
    st = r.stats("0.143")
    assert st["max"] - st["min"] <= 0.25 * r.global_fsc.resolution_0143
    assert st["std"] <= 0.06 * r.global_fsc.resolution_0143
    assert abs(st["mean"] - r.global_fsc.resolution_0143) < 0.1 * r.global_fsc.resolution_0143


def test_missing_cone_along_z_is_found(iso_report, top_report):
    r = top_report
    assert angle_deg(r.worst_direction, [0, 0, 1]) <= 15.0
    assert angle_deg(r.best_direction, [0, 0, 1]) >= 60.0
    assert r.sphericity <= iso_report.sphericity - 0.1
    assert r.area_ratio <= 0.5 * iso_report.area_ratio
    # directions near the axis lose their resolution, directions near the equator keep it
    tilt, _ = direction_to_relion(r.directions)
    assert np.median(r.resolution_0143[tilt < 20]) > 2 * r.global_fsc.resolution_0143
    assert np.median(r.resolution_0143[tilt > 80]) < 1.2 * r.global_fsc.resolution_0143
    # the 3DFSC volume: high along x and y at mid resolution, low along z
    c, s = r.box // 2, 10
    assert r.fsc3d[c, c, c + s] > 0.9 and r.fsc3d[c, c + s, c] > 0.9
    assert r.fsc3d[c + s, c, c] < 0.2


def test_missing_cone_along_x_is_found():
    # guards the axis order: maps are [z, y, x], directions (x, y, z)
    a, b = make_pair(40, missing_cone_deg=60.0, axis="x", seed=4)
    r = analyse_anisotropy(a, b, voxel_size=1.0, n_directions=300)
    assert angle_deg(r.worst_direction, [1, 0, 0]) <= 15.0
    tilt, rot = direction_to_relion(r.worst_direction)
    assert abs(float(tilt) - 90.0) <= 15.0
    assert min(abs(float(rot)), 180.0 - abs(float(rot))) <= 15.0


def test_report_fields_and_dict(top_report):
    r = top_report
    n = r.box
    assert r.cone_fsc.shape == (500, n // 2 + 1)
    assert not np.isnan(r.cone_fsc).any()
    assert r.fsc3d.shape == (n, n, n) and r.fsc3d.dtype == np.float32
    assert r.sphericity_threshold == SPHERICITY_THRESHOLD == 0.5
    d = r.to_dict()
    for key in (
        "version",
        "voxel_size_A",
        "box",
        "cone_angle_deg",
        "n_directions",
        "global_resolution_0143_A",
        "global_resolution_05_A",
        "directional_resolution_0143_A",
        "directional_resolution_05_A",
        "worst_direction",
        "best_direction",
        "sphericity",
        "sphericity_threshold",
        "area_ratio",
        "curves",
    ):
        assert key in d, key
    assert d["voxel_size_A"] == 1.5 and d["box"] == 48 and d["cone_angle_deg"] == 20.0
    assert set(d["directional_resolution_0143_A"]) == {"min", "max", "mean", "std"}
    w = d["worst_direction"]
    assert set(w) >= {"vector_xyz", "tilt_deg", "rot_deg", "resolution_0143_A"}
    text = json.dumps(d, allow_nan=False)  # raises on NaN / inf
    back = json.loads(text)

    def finite(x):
        if isinstance(x, dict):
            return all(finite(v) for v in x.values())
        if isinstance(x, list):
            return all(finite(v) for v in x)
        return not isinstance(x, float) or math.isfinite(x)

    assert finite(back)
    assert back["sphericity"] == pytest.approx(r.sphericity)


def test_min_cone_voxels_only_touches_sparse_low_shells():
    a, b = make_pair(32, seed=6)
    strict = analyse_anisotropy(a, b, 1.0, n_directions=60, min_cone_voxels=1)
    default = analyse_anisotropy(a, b, 1.0, n_directions=60)
    raw = conical_fsc(a, b, directions=fibonacci_directions(60))
    np.testing.assert_allclose(strict.cone_fsc[~np.isnan(raw)], raw[~np.isnan(raw)])
    np.testing.assert_array_equal(default.cone_fsc[:, 6:], raw[:, 6:])


def test_analyse_progress_and_errors():
    a, b = random_pair(16)
    seen = []
    analyse_anisotropy(
        a, b, 1.0, n_directions=20, progress=lambda s, d, t, i=None: seen.append(d / t)
    )
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    with pytest.raises(InvalidValueError, match="voxel size must be a positive number"):
        analyse_anisotropy(a, b, 0.0)
    with pytest.raises(InvalidValueError, match="min_cone_voxels must be an integer ≥ 1"):
        analyse_anisotropy(a, b, 1.0, min_cone_voxels=0)


def test_old_cone_angle_keyword_still_works_with_a_warning():
    a, b = random_pair(16)
    dirs = fibonacci_directions(5)
    new = conical_fsc(a, b, directions=dirs, cone_angle=30.0)
    with pytest.warns(DeprecationWarning, match=r"cone_angle_deg=\.\.\.\) is deprecated"):
        old = conical_fsc(a, b, directions=dirs, cone_angle_deg=30.0)
    np.testing.assert_array_equal(new, old)
    with pytest.raises(TypeError, match="got both"):
        conical_fsc(a, b, directions=dirs, cone_angle=30.0, cone_angle_deg=30.0)
