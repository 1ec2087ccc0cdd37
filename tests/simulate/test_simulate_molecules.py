"""Tests of spisonet.simulate.molecules: the protein-like test molecule (chain geometry,
rendering, determinism, errors)."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet import simulate as S
from spisonet.errors import InvalidValueError


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
    with pytest.raises(InvalidValueError, match="voxel_size must be a positive number"):
        S.make_molecule(16, voxel_size=0)
    with pytest.raises(InvalidValueError, match="radius_fraction must be in"):
        S.make_molecule(16, radius_fraction=0.6)
    with pytest.raises(InvalidValueError, match="n_chains must be a positive integer"):
        S.make_molecule(16, n_chains=0)
    with pytest.raises(InvalidValueError, match="bfactor must be a positive number"):
        S.make_molecule(16, bfactor=-5)
