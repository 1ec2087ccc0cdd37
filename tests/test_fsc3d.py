"""spisonet.fsc3d against a slow, literal numpy statement of the definition."""

from __future__ import annotations

import numpy as np
import pytest
from fsc3d_reference import reference_fsc3d
from helpers import blobs, soft_sphere_mask

from spisonet import fsc3d as fsc3d_module
from spisonet.errors import InvalidValueError
from spisonet.fsc3d import fsc3d, phase_agreement

TOL = 1e-5


def _random_pair(n, seed, noise=1.5):
    r = np.random.default_rng(seed)
    a = r.normal(size=(n, n, n)).astype(np.float32)
    return a, (a + noise * r.normal(size=(n, n, n))).astype(np.float32)


def _check(h1, h2, voxel=1.0, mask=None, limit_res=None, angle=10.0, keep_highres=False):
    got = fsc3d(
        h1,
        h2,
        voxel_size=voxel,
        mask=mask,
        limit_res=limit_res,
        cone_angle=angle,
        keep_highres=keep_highres,
    )
    ref, ref_limit, ref_r = reference_fsc3d(h1, h2, voxel, mask, limit_res, angle, keep_highres)
    assert got.limit_res == pytest.approx(ref_limit)
    assert got.limit_r == ref_r
    assert got.volume.dtype == np.float32
    err = np.abs(got.volume.astype(np.float64) - ref).max()
    assert err <= TOL, f"max abs difference {err:.2e}"
    return got, ref


@pytest.mark.parametrize("angle", [10.0, 20.0])
def test_random_32_full_limit(angle):
    h1, h2 = _random_pair(32, 1)
    got, ref = _check(h1, h2, limit_res=2.0, angle=angle)  # limit_r = n/2 + 1: every shell
    assert got.limit_r == 17
    assert np.count_nonzero(ref) > 0.4 * 32**3


def test_random_48_worst_case():
    h1, h2 = _random_pair(48, 2, noise=0.7)
    _check(h1, h2, voxel=1.3, limit_res=2.6, angle=10.0)


def test_odd_box_with_soft_mask_and_angle_20():
    h1, h2 = _random_pair(33, 3, noise=0.8)
    _check(h1, h2, voxel=2.0, mask=soft_sphere_mask(33, 11), limit_res=4.0, angle=20.0)


@pytest.mark.parametrize("masked", [False, True])
def test_structured_pair_default_limit(noisy_pair, masked):
    h1, h2 = noisy_pair(32, seed=4, noise=1.0)
    mask = soft_sphere_mask(32, 12) if masked else None
    got, _ = _check(h1, h2, voxel=1.5, mask=mask)
    assert got.limit_res_is_default
    assert 3.0 < got.limit_res < 48.0  # the 0.143 rule picked a real shell


def test_explicit_limit_res_and_keep_highres(noisy_pair):
    h1, h2 = noisy_pair(32, seed=5, noise=1.0)
    got, _ = _check(h1, h2, voxel=1.0, limit_res=5.0, angle=20.0, keep_highres=True)
    # beyond the limit the volume is 1, inside the limit it is the neighbourhood mean
    assert got.volume[16, 16, 0] == pytest.approx(1.0)
    assert got.volume[16, 16, 16] == pytest.approx(1.0)


def test_keep_highres_with_default_limit(noisy_pair):
    h1, h2 = noisy_pair(24, seed=6, noise=2.0)
    _check(h1, h2, voxel=1.0, keep_highres=True, angle=10.0)


def test_simulated_preferred_orientation_pair():
    simulate = pytest.importorskip("spisonet.simulate")
    data = simulate.simulate_half_maps(
        simulate.make_molecule(32, 2.0, seed=0), 2.0, distribution="top", n_views=300, seed=0
    )
    _check(data.half1, data.half2, voxel=2.0, mask=data.mask, angle=10.0)


def test_compiled_kernel_python_version_agrees():
    """The kernel's pure-Python body (py_func) gives the same answer as the compiled one."""
    h1, h2 = _random_pair(12, 7)
    f = phase_agreement(h1, h2)
    py = fsc3d_module._neighbourhood_average(
        f, 7, 15.0, kernel=fsc3d_module._neighbourhood_means.py_func
    )
    jit = fsc3d_module._neighbourhood_average(f, 7, 15.0)
    np.testing.assert_allclose(py, jit, atol=1e-12)
    ref, _, _ = reference_fsc3d(h1, h2, 1.0, None, 12 * 2.0 / 12, 15.0)
    np.testing.assert_allclose(jit[ref != 0], ref[ref != 0], atol=1e-9)


def test_phase_agreement_is_bounded_and_centrosymmetric():
    h1, h2 = _random_pair(17, 8)
    f = phase_agreement(h1, h2)
    assert np.all(np.abs(f) <= 1 + 1e-12)
    np.testing.assert_array_equal(f, f[::-1, ::-1, ::-1])  # odd box: k -> -k is a flip
    assert phase_agreement(h1, h1)[8, 8, 8] == pytest.approx(1.0)


def test_identical_halves_give_one_inside_the_limit():
    m = blobs(24)
    got = fsc3d(m, m, limit_res=2.0)
    k = np.arange(24) - 12
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    np.testing.assert_allclose(got.volume[r < got.limit_r], 1.0, atol=1e-6)
    assert np.all(got.volume[r >= got.limit_r] == 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cone_angle": 0.0}, r"cone_angle must be in \(0, 180\]"),
        ({"limit_res": -3.0}, r"limit_res must be a positive resolution"),
        ({"mask": np.ones((8, 8, 8))}, r"mask shape \(8, 8, 8\) differs"),
    ],
)
def test_bad_arguments(kwargs, message):
    h1, h2 = _random_pair(10, 9)
    with pytest.raises(InvalidValueError, match=message):
        fsc3d(h1, h2, **kwargs)


def test_mismatched_or_constant_maps():
    with pytest.raises(InvalidValueError, match="two cubic half maps of equal shape"):
        fsc3d(np.zeros((8, 8, 8)), np.zeros((9, 9, 9)))
    with pytest.raises(InvalidValueError, match="constant"):
        fsc3d(np.zeros((8, 8, 8)), np.ones((8, 8, 8)))


def test_top_dominated_simulation_is_low_along_the_view_axis():
    simulate = pytest.importorskip("spisonet.simulate")
    data = simulate.simulate_half_maps(
        simulate.make_molecule(48, 2.0, seed=1),
        2.0,
        distribution="top+uniform:0.1",
        n_views=1500,
        seed=1,
    )
    vol = fsc3d(data.half1, data.half2, 2.0, data.mask).volume
    c = 24
    along_z = vol[c + 6 : c + 14, c, c].mean()  # shells 6–13 along the view axis
    along_x = vol[c, c, c + 6 : c + 14].mean()
    assert along_x > along_z + 0.3, (along_x, along_z)


def test_uniform_simulation_is_nearly_isotropic():
    simulate = pytest.importorskip("spisonet.simulate")
    data = simulate.simulate_half_maps(
        simulate.make_molecule(48, 2.0, seed=2),
        2.0,
        distribution="uniform",
        n_views=1500,
        seed=2,
    )
    vol = fsc3d(data.half1, data.half2, 2.0, data.mask).volume
    c = 24
    means = [
        vol[c + 6 : c + 14, c, c].mean(),
        vol[c, c + 6 : c + 14, c].mean(),
        vol[c, c, c + 6 : c + 14].mean(),
    ]
    assert max(means) - min(means) < 0.15, means


def _slow_support_limit(volume: np.ndarray, voxel_size: float) -> float | None:
    """The definition, voxel by voxel: m·voxel / floor(largest |k| of a non-zero voxel)."""
    m = volume.shape[0]
    c = m // 2
    best = -1.0
    for z in range(m):
        for y in range(m):
            for x in range(m):
                if volume[z, y, x] != 0:
                    best = max(best, ((z - c) ** 2 + (y - c) ** 2 + (x - c) ** 2) ** 0.5)
    r = int(np.floor(best + 1e-9)) if best >= 0 else 0
    return None if r < 1 else m * voxel_size / r


@pytest.mark.parametrize("m", [12, 15])
def test_support_limit_follows_its_definition(m) -> None:
    from spisonet.fsc3d import support_limit

    rng = np.random.default_rng(m)
    for cut in (0.5, 3.2, 5.0, 6.9, 99.0):
        c = m // 2
        idx = np.indices((m, m, m)) - c
        radius = np.sqrt((idx**2).sum(axis=0))
        vol = np.where(radius <= cut, rng.uniform(0.01, 1.0, (m, m, m)), 0.0)
        vol[rng.random(vol.shape) < 0.3] = 0.0  # holes inside the support change nothing
        assert support_limit(vol, 1.7) == _slow_support_limit(vol, 1.7)
    assert support_limit(np.zeros((m, m, m)), 1.0) is None


def test_support_limit_is_fsc3d_limit_res(noisy_pair) -> None:
    from spisonet.fsc3d import support_limit

    a, b = noisy_pair(32, seed=4, noise=1.0)
    for limit in (None, 9.0):
        r = fsc3d(a, b, voxel_size=1.5, limit_res=limit)
        # the last shell computed is limit_r − 1: for a default limit that is limit_res
        assert support_limit(r.volume, 1.5) == pytest.approx(32 * 1.5 / (r.limit_r - 1))
        if limit is None:
            assert support_limit(r.volume, 1.5) == pytest.approx(r.limit_res)
