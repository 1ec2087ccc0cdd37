"""Fourier sampling density: definition, top views, symmetry invariance, STAR input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spisonet.errors import InvalidValueError
from spisonet.fsd3d import (
    _bin_directions,
    _rasterize_planes,
    direction_histogram,
    directions_from_angles,
    fourier_shell_density,
    scf_curve,
)
from spisonet.io import read_star_angles
from spisonet.symmetry import point_group


# --------------------------------------------------------------------------- helpers
def random_angles(n: int, seed: int) -> np.ndarray:
    """Uniform random orientations (rot, tilt, psi) in degrees."""
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-180, 180, n)
    tilt = np.rad2deg(np.arccos(rng.uniform(-1, 1, n)))
    psi = rng.uniform(-180, 180, n)
    return np.stack([rot, tilt, psi], axis=1)


def top_view_angles(n: int, seed: int, spread_deg: float = 3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rot = rng.uniform(-180, 180, n)
    tilt = np.abs(rng.normal(0, spread_deg, n))
    return np.stack([rot, tilt, rng.uniform(-180, 180, n)], axis=1)


def grid_k(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer frequencies kz, ky, kx of the fftshift-ed (n, n, n) grid."""
    r = np.arange(n) - n // 2
    return np.meshgrid(r, r, r, indexing="ij")


def slow_raw(angles: np.ndarray, n: int, sym: str = "C1", hw: float = 1.0) -> np.ndarray:
    """Σ over views and group rotations of [|k·R d| ≤ hw], written out directly."""
    rot = np.deg2rad(angles[:, 0])
    tilt = np.deg2rad(angles[:, 1])
    d = np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], 1)
    kz, ky, kx = grid_k(n)
    out = np.zeros((n, n, n))
    for g in point_group(sym):
        for dx, dy, dz in d @ g.T:
            out += np.abs(kx * dx + ky * dy + kz * dz) <= hw
    return out


def slow_normalise(raw: np.ndarray, s_low: int, s_high: int) -> np.ndarray:
    n = raw.shape[0]
    kz, ky, kx = grid_k(n)
    s = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    out = np.zeros_like(raw)
    for i in range(s.max() + 1):
        sel = s == i
        if i <= s_low:
            out[sel] = 1.0
        elif i <= s_high and raw[sel].max() > 0:
            out[sel] = raw[sel] / raw[sel].max()
    return out


# --------------------------------------------------------------------------- directions
def test_directions_from_angles_relion_convention() -> None:
    ang = np.array([[0, 0, 0], [0, 90, 10], [90, 90, 0], [30, 60, 0], [-45, 180, 5]], float)
    d = directions_from_angles(ang)
    np.testing.assert_allclose(d[0], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(d[1], [1, 0, 0], atol=1e-15)
    np.testing.assert_allclose(d[2], [0, 1, 0], atol=1e-15)
    t, r = np.deg2rad(60), np.deg2rad(30)
    np.testing.assert_allclose(d[3], [np.cos(r) * np.sin(t), np.sin(r) * np.sin(t), np.cos(t)])
    np.testing.assert_allclose(d[4], [0, 0, -1], atol=1e-15)
    np.testing.assert_allclose(
        np.linalg.norm(directions_from_angles(random_angles(50, 0)), axis=1), 1
    )
    # (N, 2) rot/tilt is accepted and psi plays no part
    np.testing.assert_array_equal(directions_from_angles(ang[:, :2]), d)


# --------------------------------------------------------------------------- definition
@pytest.mark.parametrize(("n", "hw"), [(16, 1.0), (17, 0.5), (15, 1.5)])
def test_raw_density_matches_slow_definition(n: int, hw: float) -> None:
    ang = random_angles(6, seed=n)
    out = fourier_shell_density(ang, n, plane_half_width=hw, normalize=False)
    assert out.dtype == np.float32 and out.shape == (n, n, n)
    np.testing.assert_array_equal(out, slow_raw(ang, n, hw=hw))


def test_normalised_density_matches_slow_definition() -> None:
    n, voxel = 20, 2.0
    ang = random_angles(8, seed=4)
    low_res, high_res = 10.0, 5.0  # s_low = 4, s_high = 8
    out = fourier_shell_density(ang, n, voxel, low_res=low_res, high_res=high_res)
    expected = slow_normalise(slow_raw(ang, n), 4, 8)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # defaults: origin only is forced to 1, Nyquist cut
    out = fourier_shell_density(ang, n, voxel)
    np.testing.assert_allclose(out, slow_normalise(slow_raw(ang, n), 0, n // 2), atol=1e-6)
    assert out.max() == 1.0


def test_kernel_py_func_matches_compiled() -> None:
    n = 9
    d = directions_from_angles(random_angles(5, seed=9))
    w = np.arange(1.0, 6.0)
    a = _rasterize_planes(d, w, n, 1.0, np.inf, np.zeros((n, n, n)))
    b = _rasterize_planes.py_func(d, w, n, 1.0, np.inf, np.zeros((n, n, n)))
    np.testing.assert_array_equal(a, b)
    # weights: equal to the weighted slow sum
    kz, ky, kx = grid_k(n)
    slow = sum(
        wi * (np.abs(kx * x + ky * y + kz * z) <= 1.0) for wi, (x, y, z) in zip(w, d, strict=True)
    )
    np.testing.assert_array_equal(a, slow)


@pytest.mark.parametrize("step_deg", [0.3, 1.0, 4.0])
def test_bin_centres_are_close_to_their_directions(step_deg: float) -> None:
    d = directions_from_angles(random_angles(300, seed=6))
    for v in d:
        centres, counts = _bin_directions(v[None], np.deg2rad(step_deg))
        assert centres.shape == (1, 3) and counts[0] == 1.0
        angle = np.degrees(np.arccos(min(1.0, abs(float(centres[0] @ v)))))
        assert angle < step_deg  # within one bin (± directions are the same plane)
    centres, counts = _bin_directions(d, np.deg2rad(step_deg))
    assert counts.sum() == 300
    np.testing.assert_allclose(np.linalg.norm(centres, axis=1), 1.0)
    assert np.all(centres[:, 2] >= 0)


def test_every_particle_counts_once_per_symmetry_copy() -> None:
    n = 24
    ang = random_angles(5000, seed=1)
    for step in (0.0, 1.0):  # exact and binned
        raw = fourier_shell_density(ang, n, sym="C3", normalize=False, angular_step_deg=step)
        assert raw[n // 2, n // 2, n // 2] == 3 * 5000  # every plane passes the origin


def test_binned_density_close_to_exact() -> None:
    n = 32
    ang = random_angles(3000, seed=2)
    exact = fourier_shell_density(ang, n, angular_step_deg=0)
    binned = fourier_shell_density(ang, n)  # > EXACT_VIEW_LIMIT? no: 3000 → exact by default
    np.testing.assert_array_equal(exact, binned)
    coarse = fourier_shell_density(ang, n, angular_step_deg=1.0)
    inside = exact > 0
    assert np.corrcoef(exact[inside], coarse[inside])[0, 1] > 0.95
    assert np.mean(np.abs(exact - coarse)) < 0.05
    raw_e = fourier_shell_density(ang, n, normalize=False, angular_step_deg=0)
    raw_c = fourier_shell_density(ang, n, normalize=False, angular_step_deg=1.0)
    assert abs(raw_c.sum() / raw_e.sum() - 1) < 0.02


# --------------------------------------------------------------------------- behaviour
def test_top_views_fill_the_equatorial_plane() -> None:
    n = 32
    out = fourier_shell_density(top_view_angles(2000, seed=3), n, sym="C1")
    kz, ky, kx = grid_k(n)
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    band = (r >= 4) & (r <= n // 2)
    equator = band & (np.abs(kz) <= 1)
    off = band & (np.abs(kz) >= 0.5 * r)  # more than 30° away from the plane
    assert out[equator].mean() > 0.5
    assert out[off].mean() < 0.02
    assert out[equator].mean() > 50 * out[off].mean()


def test_uniform_views_fill_fourier_space() -> None:
    n = 24
    out = fourier_shell_density(random_angles(4000, seed=5), n)
    kz, ky, kx = grid_k(n)
    band = (np.sqrt(kx**2 + ky**2 + kz**2) >= 2) & (np.sqrt(kx**2 + ky**2 + kz**2) <= n // 2)
    assert out[band].min() > 0.2  # every direction sampled


def _rotated_indices(
    n: int, g: np.ndarray
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Indices of k and of g·k for every voxel of an odd box (signed permutations only)."""
    kz, ky, kx = grid_k(n)
    k = np.stack([kx.ravel(), ky.ravel(), kz.ravel()])  # (x, y, z) rows
    gk = np.rint(g @ k).astype(int)
    assert np.allclose(g @ k, gk)
    c = n // 2
    src = (k[2] + c, k[1] + c, k[0] + c)
    dst = (gk[2] + c, gk[1] + c, gk[0] + c)
    return src, dst


@pytest.mark.parametrize("sym", ["C4", "O", "D4"])
def test_invariant_under_group_exact_permutation(sym: str) -> None:
    n = 21  # odd: the grid is symmetric about its centre
    out = fourier_shell_density(random_angles(40, seed=7), n, sym=sym)
    assert out.max() == 1.0
    for g in point_group(sym):
        src, dst = _rotated_indices(n, g)
        np.testing.assert_allclose(out[dst], out[src], atol=1e-6)
    # and not invariant without the symmetry (the test can fail)
    plain = fourier_shell_density(random_angles(40, seed=7), n, sym="C1")
    src, dst = _rotated_indices(n, point_group("C4")[1])
    assert np.abs(plain[dst] - plain[src]).max() > 0.1


@pytest.mark.parametrize("sym", ["I", "T"])
def test_invariant_under_non_axis_rotations(sym: str) -> None:
    """raw(g·k) = raw(k): evaluate the definition at rotated (off-grid) points."""
    n = 15
    ang = random_angles(12, seed=11)
    raw = fourier_shell_density(ang, n, sym=sym, normalize=False, angular_step_deg=0)
    rot = np.deg2rad(ang[:, 0])
    tilt = np.deg2rad(ang[:, 1])
    d = np.stack([np.cos(rot) * np.sin(tilt), np.sin(rot) * np.sin(tilt), np.cos(tilt)], 1)
    group = point_group(sym)
    dirs = np.concatenate([d @ g.T for g in group])  # (N·G, 3)
    kz, ky, kx = grid_k(n)
    k = np.stack([kx.ravel(), ky.ravel(), kz.ravel()], 1).astype(float)
    rng = np.random.default_rng(0)
    for g in group[rng.choice(len(group), 6, replace=False)]:
        gk = k @ g.T
        at_gk = (np.abs(gk @ dirs.T) <= 1.0).sum(axis=1)
        mismatch = np.count_nonzero(at_gk != raw.ravel())
        assert mismatch == 0


def test_interpolated_rotation_invariance_icosahedral() -> None:
    from scipy.ndimage import map_coordinates

    n = 33
    out = fourier_shell_density(random_angles(60, seed=13), n, sym="I")
    kz, ky, kx = grid_k(n)
    r = np.sqrt(kx**2 + ky**2 + kz**2)
    sel = (r >= 3) & (r <= n // 2 - 2)
    k = np.stack([kx[sel], ky[sel], kz[sel]], 1).astype(float)
    c = n // 2
    plain = fourier_shell_density(random_angles(60, seed=13), n, sym="C1")
    g = point_group("I")[7]
    gk = k @ g.T
    coords = np.stack([gk[:, 2] + c, gk[:, 1] + c, gk[:, 0] + c])
    err_sym = np.mean(np.abs(map_coordinates(out, coords, order=1) - out[sel]))
    err_c1 = np.mean(np.abs(map_coordinates(plain, coords, order=1) - plain[sel]))
    assert err_sym < 0.5 * err_c1


# --------------------------------------------------------------------------- histogram and SCF
def test_direction_histogram() -> None:
    top = direction_histogram(top_view_angles(3000, seed=1, spread_deg=2.0), "C1", 200)
    assert top.directions.shape == (200, 3) and np.all(top.directions[:, 2] > 0)
    assert top.counts.sum() == pytest.approx(3000)
    assert top.fraction.sum() == pytest.approx(1.0)
    assert top.n_particles == 3000 and top.group_order == 1
    # all mass near the pole
    assert top.fraction[top.tilt_deg < 10].sum() > 0.99
    assert top.empty_fraction > 0.9
    uni = direction_histogram(random_angles(20000, seed=2), "C1", 100)
    assert uni.empty_fraction == 0.0
    assert uni.max_over_mean < 1.5
    # symmetry spreads a single view over the group's copies
    one = direction_histogram(np.array([[0.0, 0.0, 0.0]] * 10), "O", 300)
    assert one.counts.sum() == pytest.approx(10)
    assert np.count_nonzero(one.counts) == 3  # ±x, ±y, ±z fold to 3 axes


def test_scf_curve_definition_and_behaviour() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.5, 2.0, (12, 12, 12))
    raw[0, 0, 0] = 0.0  # a corner beyond Nyquist: ignored
    scf = scf_curve(raw)
    kz, ky, kx = grid_k(12)
    s = np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)
    for i in range(1, 7):
        v = raw[s == i]
        assert scf[i] == pytest.approx(1.0 / (v.mean() * np.mean(1.0 / v)), rel=1e-12)
    assert scf[0] == 1.0
    raw[s == 3] = 1.0
    raw[6, 6, 9] = 0.0  # shell 3 loses one voxel
    assert scf_curve(raw)[3] == 0.0
    n = 24
    uni = scf_curve(fourier_shell_density(random_angles(3000, 1), n, normalize=False))
    top = scf_curve(fourier_shell_density(top_view_angles(3000, 1), n, normalize=False))
    assert np.all(uni[2:8] > 0.8)
    assert np.all(top[3:] == 0.0)


# --------------------------------------------------------------------------- STAR input
STAR_31 = """
# version 30001

data_optics

loop_
_rlnOpticsGroupName #1
_rlnOpticsGroup #2
_rlnImagePixelSize #3
_rlnImageSize #4
_rlnVoltage #5
opticsGroup1 1 1.060000 128 300.000000

# version 30001

data_particles

loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOpticsGroup #5
000001@Extract/job007/a.mrcs 10.000000 0.500000 30.000000 1
000002@Extract/job007/a.mrcs -170.000000 1.000000 0.000000 1
000003@Extract/job007/a.mrcs 45.000000 2.000000 -90.000000 1
"""


def test_read_star_relion31_and_fsd(tmp_path: Path) -> None:
    p = tmp_path / "run_data.star"
    p.write_text(STAR_31)
    ang = read_star_angles(p)
    np.testing.assert_allclose(ang, [[10, 0.5, 30], [-170, 1, 0], [45, 2, -90]])
    out = fourier_shell_density(ang, 16, voxel_size=1.06)
    # three near-top views: the plane kz = 0 is filled, the z axis beyond it is empty
    c = 8
    assert out[c, c, c + 5] == 1.0
    assert out[c + 5, c, c] == 0.0


# --------------------------------------------------------------------------- errors
def test_fsd_errors() -> None:
    ang = random_angles(3, 0)
    with pytest.raises(InvalidValueError, match=r"angles must be an \(N, 3\) array"):
        fourier_shell_density(np.zeros((3, 4)), 8)
    with pytest.raises(InvalidValueError, match=r"angles must be an \(N, 3\) array"):
        fourier_shell_density(np.zeros((0, 3)), 8)
    with pytest.raises(InvalidValueError, match=r"angles contain NaN"):
        fourier_shell_density(np.array([[0.0, np.nan, 0.0]]), 8)
    with pytest.raises(InvalidValueError, match=r"box must be at least 2"):
        fourier_shell_density(ang, 1)
    with pytest.raises(InvalidValueError, match=r"voxel_size must be a positive"):
        fourier_shell_density(ang, 8, voxel_size=0)
    with pytest.raises(InvalidValueError, match=r"plane_half_width must be a positive"):
        fourier_shell_density(ang, 8, plane_half_width=0)
    with pytest.raises(InvalidValueError, match=r"low_res must be a positive"):
        fourier_shell_density(ang, 8, low_res=-1)
    with pytest.raises(InvalidValueError, match=r"needs low_res > high_res"):
        fourier_shell_density(ang, 8, low_res=3, high_res=5)
    with pytest.raises(InvalidValueError, match=r"angular_step_deg must be ≥ 0"):
        fourier_shell_density(ang, 8, angular_step_deg=-1)
    with pytest.raises(InvalidValueError, match=r"unknown point-group symmetry 'Q7'"):
        fourier_shell_density(ang, 8, sym="Q7")
    with pytest.raises(InvalidValueError, match=r"n_directions must be ≥ 1"):
        direction_histogram(ang, "C1", 0)
    with pytest.raises(InvalidValueError, match=r"raw_density must be a cubic 3D map"):
        scf_curve(np.zeros((4, 4)))
