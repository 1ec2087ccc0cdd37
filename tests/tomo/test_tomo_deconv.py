"""CTF deconvolution (spisonet.tomo.deconv) against slow statements of its definitions:
a textbook CTF, the tom_deconv filter written out term by term, and the 3D filter applied
with a full complex FFT and a per-voxel radius."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from spisonet.errors import InvalidValueError, MapShapeError, NonFiniteMapError
from spisonet.tomo import ctf_1d, deconv_filter, deconvolve

needs_torch_ctf = pytest.mark.skipif(
    importlib.util.find_spec("torch_ctf") is None, reason="torch-ctf needs Python ≥ 3.11"
)


def _textbook_ctf(n, voxel, defocus_um, kv=300.0, cs_mm=2.7, amp=0.07, phase_deg=0.0):
    """−[√(1−A²)·sin χ + A·cos χ] with χ = π·λ·Δz·f² − (π/2)·Cs·λ³·f⁴ + φ (Å units)."""
    volts = kv * 1e3
    lam = 12.2643 / np.sqrt(volts * (1.0 + 0.97845e-6 * volts))  # Å, relativistic
    out = np.empty(n)
    for i in range(n):
        f = i / (n - 1) * 0.5 / voxel  # cycles/Å
        chi = np.pi * lam * defocus_um * 1e4 * f**2 - np.pi / 2 * cs_mm * 1e7 * lam**3 * f**4
        chi += np.radians(phase_deg)
        out[i] = -(np.sqrt(1.0 - amp**2) * np.sin(chi) + amp * np.cos(chi))
    return out


@needs_torch_ctf
@pytest.mark.parametrize(
    "voxel, defocus, kv, cs, amp, phase",
    [
        (10.0, 3.0, 300.0, 2.7, 0.07, 0.0),
        (5.4, 6.0, 300.0, 2.7, 0.1, 0.0),
        (3.0, 1.5, 200.0, 2.0, 0.07, 30.0),
    ],
)
def test_ctf_is_the_negated_textbook_ctf(voxel, defocus, kv, cs, amp, phase) -> None:
    # torch-ctf's sign: CTF = +[√(1−A²)·sin χ + A·cos χ], i.e. CTF(0) = +A, first lobe > 0
    got = ctf_1d(513, voxel, defocus, kv, cs, amp, phase)
    want = -_textbook_ctf(513, voxel, defocus, kv, cs, amp, phase)
    assert got.dtype == np.float64 and got.shape == (513,)
    np.testing.assert_allclose(got, want, atol=5e-4)  # torch-ctf computes in float32
    assert got[0] == pytest.approx(np.sin(np.radians(phase) + np.arcsin(amp)), abs=1e-6)


@needs_torch_ctf
@pytest.mark.parametrize(
    "voxel, defocus, kv, amp",
    [(10.0, 3.0, 300.0, 0.07), (5.4, 6.0, 200.0, 0.1), (20.0, 0.5, 300.0, 0.07)],
)
def test_first_ctf_zero_is_the_textbook_root(voxel, defocus, kv, amp) -> None:
    """The first zero of the textbook CTF, by bisection on its sign in cycles/voxel
    (None when the sign holds up to Nyquist: 20 Å voxels, 0.5 µm)."""
    from spisonet.tomo.deconv import first_ctf_zero

    def ctf_at(k: float) -> float:  # k in cycles/voxel, through the textbook formula
        return -_textbook_ctf(2, voxel / (2 * k), defocus, kv, 2.7, amp)[1]

    got = first_ctf_zero(voxel, defocus, kv, 2.7, amp)
    grid = np.linspace(1e-4, 0.5, 2001)
    signs = np.sign([ctf_at(k) for k in grid])
    if np.all(signs == signs[0]):
        assert got is None
        return
    i = int(np.flatnonzero(signs != signs[0])[0])
    a, b = grid[i - 1], grid[i]
    for _ in range(60):
        m = (a + b) / 2
        a, b = (m, b) if np.sign(ctf_at(m)) == signs[0] else (a, m)
    assert got == pytest.approx((a + b) / 2, abs=1e-4)


def _slow_filter(n, voxel, defocus, snr_falloff, strength, hp_nyquist, **ctf_kw):
    ctf = -_textbook_ctf(n, voxel, defocus, **ctf_kw)
    out = np.zeros(n)
    for i in range(n):
        f = i / (n - 1) * 0.5 / voxel
        s = f * voxel * 2.0  # fraction of Nyquist
        highpass = 1.0 - np.cos(np.pi * min(1.0, s / hp_nyquist))
        snr = np.exp(-s * snr_falloff * 100.0 / voxel) * 10.0 ** (3.0 * strength) * highpass
        out[i] = 0.0 if snr == 0 else ctf[i] / (ctf[i] ** 2 + 1.0 / snr)
    return out / np.abs(out).max()


@needs_torch_ctf
@pytest.mark.parametrize(
    "voxel, defocus, falloff, strength, hp",
    [(10.0, 3.0, 1.0, 1.0, 0.02), (6.0, 5.0, 1.2, 0.67, 0.05), (4.0, 2.0, 0.8, 1.5, 0.3)],
)
def test_deconv_filter_follows_its_formula(voxel, defocus, falloff, strength, hp) -> None:
    got = deconv_filter(
        1025,
        voxel,
        defocus,
        snr_falloff=falloff,
        deconv_strength=strength,
        highpass_nyquist=hp,
    )
    want = _slow_filter(1025, voxel, defocus, falloff, strength, hp)
    np.testing.assert_allclose(got, want, atol=3e-4)  # CTF in float32, near zeros
    assert got[0] == 0.0 and got.max() == pytest.approx(1.0)


def _slow_deconvolve(vol, voxel, defocus):
    n_fine = max(4096, 4 * max(vol.shape))
    filt = deconv_filter(n_fine, voxel, defocus)
    freqs = np.linspace(0.0, 0.5 / voxel, n_fine)
    f = [np.fft.fftfreq(n, d=voxel) for n in vol.shape]
    spec = np.fft.fftn(vol.astype(np.float64))
    for z, y, x in np.ndindex(vol.shape):
        r = np.sqrt(f[0][z] ** 2 + f[1][y] ** 2 + f[2][x] ** 2)
        spec[z, y, x] *= np.interp(r, freqs, filt)
    out = np.fft.ifftn(spec).real
    return (out - out.mean()) / out.std() * vol.std() + vol.mean()


@needs_torch_ctf
@pytest.mark.parametrize("shape", [(7, 12, 10), (8, 9, 13)])
def test_deconvolve_matches_a_slow_full_fft(shape) -> None:
    rng = np.random.default_rng(3)
    vol = (rng.normal(size=shape) * 2.0 + 5.0).astype(np.float32)
    got = deconvolve(vol, 8.0, 2.5)
    assert got.shape == shape and got.dtype == np.float32
    want = _slow_deconvolve(vol, 8.0, 2.5)
    np.testing.assert_allclose(got, want, atol=2e-5)  # float32 FFTs; values ~5 ± 6
    assert float(got.mean()) == pytest.approx(float(vol.mean()), abs=1e-4)
    assert float(got.std()) == pytest.approx(float(vol.std()), rel=1e-4)


@needs_torch_ctf
def test_deconvolve_keeps_a_constant_tomogram_and_accepts_other_dtypes() -> None:
    flat = np.full((4, 5, 6), 2.5, dtype=np.float64)
    out = deconvolve(flat, 10.0, 3.0)
    assert out.dtype == np.float32 and np.all(out == 2.5)
    ints = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    assert deconvolve(ints, 10.0, 3.0).dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"voxel_size": 0.0}, "voxel_size must be > 0 Å, got 0.0"),
        ({"voxel_size": float("nan")}, "voxel_size must be a finite number"),
        ({"defocus": -2.0}, r"defocus must be > 0 µm \(underfocus\), got -2.0"),
        ({"voltage": 0}, "voltage must be > 0 kV, got 0"),
        (
            {"amplitude_contrast": 1.0},
            r"amplitude_contrast must be a fraction in \[0, 1\), got 1.0",
        ),
        ({"amplitude_contrast": -0.1}, "amplitude_contrast must be a fraction"),
        ({"snr_falloff": 0.0}, "snr_falloff must be > 0, got 0.0"),
        ({"deconv_strength": -1.0}, "deconv_strength must be > 0, got -1.0"),
        ({"highpass_nyquist": 0.0}, r"highpass_nyquist must be a fraction of Nyquist in \(0, 1\]"),
        ({"highpass_nyquist": 1.5}, "highpass_nyquist must be .* got 1.5"),
    ],
)
def test_bad_options_are_refused(kwargs, match) -> None:
    args = {"voxel_size": 10.0, "defocus": 3.0, **kwargs}
    vol = np.zeros((4, 4, 4), dtype=np.float32)
    with pytest.raises(InvalidValueError, match=match):
        deconvolve(vol, **args)
    with pytest.raises(InvalidValueError, match=match):
        deconv_filter(64, **args)


def test_bad_tomograms_and_n_freq_are_refused() -> None:
    with pytest.raises(MapShapeError, match=r"expected a non-empty 3D \(Z, Y, X\) array"):
        deconvolve(np.zeros((4, 4)), 10.0, 3.0)
    with pytest.raises(MapShapeError, match="expected real numbers"):
        deconvolve(np.zeros((3, 3, 3), dtype=complex), 10.0, 3.0)
    vol = np.zeros((3, 4, 5), dtype=np.float32)
    vol[1, 2, 3] = np.nan
    vol[0, 0, 0] = np.inf
    with pytest.raises(NonFiniteMapError, match="contains 2 NaN or infinite values"):
        deconvolve(vol, 10.0, 3.0)
    with pytest.raises(InvalidValueError, match="n_freq must be an integer ≥ 2, got 1"):
        ctf_1d(1, 10.0, 3.0)
    with pytest.raises(InvalidValueError, match=r"n_freq must be an integer ≥ 2, got 2\.5"):
        ctf_1d(2.5, 10.0, 3.0)


def test_missing_torch_ctf_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_ctf", None)  # import now raises ImportError
    with pytest.raises(InvalidValueError, match=r"pip install torch-ctf"):
        ctf_1d(16, 10.0, 3.0)
