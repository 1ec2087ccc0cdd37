"""The tomogram simulator (spisonet.tomo.simulate): shapes, independent halves, the wedge
where :func:`wedge_weight` puts it (sign of the tilt included), noise scaling with the
SNR, the CTF, and one error per bad input."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from importlib.util import find_spec

import numpy as np
import pytest

from spisonet.errors import InvalidValueError, MapShapeError
from spisonet.fourier import shell_index
from spisonet.tomo import SimulatedTomograms, simulate_tomograms, wedge_weight

SMALL = {"shape": (16, 32, 32), "molecule_box": 8}

#: torch-fourier-slice needs Python ≥ 3.11; without it only the input checks can run.
needs_projector = pytest.mark.skipif(
    find_spec("torch_fourier_slice") is None or find_spec("torch_ctf") is None,
    reason="torch-fourier-slice / torch-ctf not installed (Python ≥ 3.11)",
)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One torch thread: on a busy 2-core machine the back-projection's many small
    elementwise ops run several times slower on 2 threads than on 1."""
    if find_spec("torch") is None:
        yield
        return
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base() -> SimulatedTomograms:
    return simulate_tomograms((32, 64, 64), molecule_box=16, seed=0)


def _ft(a: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fftn(a))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@needs_projector
def test_shapes_dtypes_and_independent_halves(base: SimulatedTomograms) -> None:
    for a in (base.truth, base.even, base.odd):
        assert a.shape == (32, 64, 64)
        assert a.dtype == np.float32
        assert np.isfinite(a).all()
    np.testing.assert_array_equal(base.tilt_angles, np.arange(-60.0, 60.1, 3.0))
    assert base.tilt_angles.dtype == np.float64
    assert base.voxel_size == 10.0 and base.defocus is None
    assert not np.allclose(base.even, base.odd)
    # the mean follows the truth; the difference is noise, unrelated to it
    assert _corr((base.even + base.odd) / 2, base.truth) > 0.3
    assert abs(_corr(base.even - base.odd, base.truth)) < 0.05
    assert _corr(base.even, base.odd) < 0.9
    # molecules: inside the slab, proper rotations; the membrane crosses the slab
    n = base.positions.shape[0]
    assert n >= 3
    assert base.rotations.shape == (n, 3, 3) and base.molecule_index.shape == (n,)
    assert np.all(base.positions >= 8) and np.all(base.positions < np.array([32, 64, 64]) - 7)
    eye = np.einsum("nij,nkj->nik", base.rotations, base.rotations)
    np.testing.assert_allclose(eye, np.broadcast_to(np.eye(3), eye.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(base.rotations), 1.0, atol=1e-12)
    assert base.membrane_center is not None and base.membrane_radius is not None
    assert base.noise_sigma > 0 and base.snr == 0.5


@needs_projector
def test_same_seed_same_tomograms_other_seed_others() -> None:
    calls: list[tuple] = []
    a = simulate_tomograms(**SMALL, seed=3, progress=lambda *c: calls.append(c[:3]))
    b = simulate_tomograms(**SMALL, seed=3)
    c = simulate_tomograms(**SMALL, seed=4)
    for name in ("truth", "even", "odd", "positions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.allclose(a.truth, c.truth) and not np.allclose(a.even, c.even)
    assert calls == [("simulate", k, 4) for k in (1, 2, 3, 4)]


@needs_projector
def test_slab_of_odd_and_unequal_sides() -> None:
    sim = simulate_tomograms((15, 33, 20), molecule_box=8, tilt_step=5.0, membrane=False)
    assert sim.truth.shape == sim.even.shape == sim.odd.shape == (15, 33, 20)
    assert _corr((sim.even + sim.odd) / 2, sim.truth) > 0.3


def _wedge_check(sim: SimulatedTomograms, lo: float, hi: float) -> tuple[float, float]:
    """(power of the reconstruction / power of the truth inside the (lo, hi) wedge in
    shells 3 … n/3, lowest FSC with the truth in the measured region in shells 3 … n/4),
    5° clear of the wedge's edges: the library's trilinear insertion spreads each plane
    by about one padded voxel. (Beyond n/4 the FSC falls below 0.9 even without noise:
    3° apart, the planes no longer fill the measured region there.)"""
    n = sim.truth.shape[0]
    t, r = _ft(sim.truth), _ft((sim.even + sim.odd) / 2)
    shells = shell_index(n)
    band = (shells >= 3) & (shells <= n // 3)
    missing = band & (wedge_weight(n, lo - 5, hi + 5) == 0)
    measured = wedge_weight(n, lo + 5, hi - 5) == 1
    leak = float((np.abs(r[missing]) ** 2).sum() / (np.abs(t[missing]) ** 2).sum())
    fsc = []
    for s in range(3, n // 4 + 1):
        m = (shells == s) & measured
        num = np.real(np.sum(r[m] * np.conj(t[m])))
        fsc.append(num / np.sqrt(np.sum(np.abs(r[m]) ** 2) * np.sum(np.abs(t[m]) ** 2)))
    return leak, float(min(fsc))


@needs_projector
def test_missing_wedge_is_where_wedge_weight_says_with_its_sign() -> None:
    kw = {"shape": (48, 48, 48), "molecule_box": 16, "n_molecules": 8, "membrane": False}
    sim = simulate_tomograms(**kw, tilt_min=-40, tilt_max=60, snr=1e8)
    leak, fsc = _wedge_check(sim, -40, 60)
    assert leak < 0.05, leak
    assert fsc > 0.9, fsc
    # the mirrored series measures part of that wedge: the check must fail for it
    mirrored = simulate_tomograms(**kw, tilt_min=-60, tilt_max=40, snr=1e8)
    np.testing.assert_array_equal(mirrored.truth, sim.truth)
    leak_mirrored, _ = _wedge_check(mirrored, -40, 60)
    assert leak_mirrored > 0.15 and leak_mirrored > 5 * leak, (leak_mirrored, leak)


@needs_projector
def test_noise_scales_with_snr() -> None:
    hi = simulate_tomograms(**SMALL, snr=1.0)
    lo = simulate_tomograms(**SMALL, snr=0.25)
    ratio = float(np.std(lo.even - lo.odd) / np.std(hi.even - hi.odd))
    assert ratio == pytest.approx(2.0, rel=0.2)
    assert lo.noise_sigma / hi.noise_sigma == pytest.approx(2.0, rel=1e-6)


@needs_projector
def test_ctf_flips_and_damps_shells() -> None:
    kw = {"shape": (32, 32, 32), "molecule_box": 8, "voxel_size": 5.0, "snr": 1e8}
    kw |= {"membrane": False, "n_molecules": 6}
    plain = simulate_tomograms(**kw)
    ctf = simulate_tomograms(**kw, defocus=3.0)
    assert ctf.defocus == 3.0
    np.testing.assert_array_equal(ctf.truth, plain.truth)
    a, b = _ft(plain.even), _ft(ctf.even)
    shells = shell_index(32)
    corr, ratio = [], []
    for s in range(2, 16):
        m = shells == s
        num = np.real(np.sum(a[m] * np.conj(b[m])))
        pa, pb = np.sum(np.abs(a[m]) ** 2), np.sum(np.abs(b[m]) ** 2)
        corr.append(num / np.sqrt(pa * pb))
        ratio.append(pb / pa)
    assert max(corr) > 0.5 and min(corr) < -0.5, np.round(corr, 2)
    assert min(ratio) < 0.3, np.round(ratio, 3)


@needs_projector
def test_given_molecule_is_copied() -> None:
    k = np.arange(8) - 4
    ball = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2 <= 6).astype(
        np.float32
    )
    sim = simulate_tomograms(**SMALL, molecule=ball, n_molecules=3, membrane=False)
    assert sim.positions.shape == (3, 3)
    np.testing.assert_array_equal(sim.molecule_index, 0)
    assert sim.membrane_center is None and sim.membrane_radius is None
    assert sim.truth.sum() == pytest.approx(3 * ball.sum(), rel=0.05)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"shape": (16, 32)}, InvalidValueError, "shape must be three positive integers"),
        ({"shape": (16, 0, 32)}, InvalidValueError, "shape must be three positive integers"),
        ({"shape": (16.0, 32, 32)}, InvalidValueError, "shape must be three positive integers"),
        ({"shape": (40, 32, 32)}, InvalidValueError, "Z = 40 must be ≤ max"),
        ({"voxel_size": 0}, InvalidValueError, "voxel_size must be a positive"),
        ({"tilt_min": "a"}, InvalidValueError, "tilt range must be two numbers"),
        ({"tilt_min": -95}, InvalidValueError, "−90 ≤ min < max ≤ 90"),
        ({"tilt_min": 30, "tilt_max": 10}, InvalidValueError, "−90 ≤ min < max ≤ 90"),
        ({"tilt_step": 0}, InvalidValueError, "tilt_step must be a positive"),
        ({"snr": 0}, InvalidValueError, "snr must be a positive"),
        ({"snr": float("nan")}, InvalidValueError, "snr must be a positive"),
        ({"n_molecules": -1}, InvalidValueError, "n_molecules must be an integer ≥ 0"),
        ({"n_molecules": 2.5}, InvalidValueError, "n_molecules must be an integer ≥ 0"),
        pytest.param(
            {"n_molecules": 500},
            InvalidValueError,
            "only .* of 500 molecules fit",
            marks=needs_projector,
        ),
        ({"n_molecules": 0, "membrane": False}, InvalidValueError, "slab would be empty"),
        ({"molecule_box": 20}, InvalidValueError, "molecule_box = 20 voxels does not fit"),
        ({"molecule_box": 2}, InvalidValueError, "molecule_box must be an integer ≥ 4"),
        ({"molecule": np.zeros((4, 4))}, MapShapeError, "molecule: expected a cubic 3D map"),
        ({"molecule": np.ones((20, 20, 20))}, MapShapeError, "larger than the slab"),
        ({"defocus": -1.0}, InvalidValueError, "defocus must be a positive"),
        ({"defocus": 2.0, "voltage": 0}, InvalidValueError, "voltage must be a positive"),
        ({"defocus": 2.0, "amplitude_contrast": 1.5}, InvalidValueError, r"\[0, 1\)"),
        ({"seed": 1.5}, InvalidValueError, "seed must be an integer"),
    ],
)
def test_bad_input_names_the_problem(kwargs: dict, error: type, match: str) -> None:
    args = {**SMALL, **kwargs}
    with pytest.raises(error, match=match):
        simulate_tomograms(**args)


def test_missing_projector_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_fourier_slice", None)
    with pytest.raises(InvalidValueError, match="pip install torch-fourier-slice torch-ctf"):
        simulate_tomograms(**SMALL)
