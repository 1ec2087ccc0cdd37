"""spisonet.fsc: global FSC against a literal full-FFT statement, and resolution rules."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import blobs, soft_sphere_mask

from spisonet.fsc_shells import fsc, fsc_curve, resolution_at


def reference_fsc(a, b, mask=None):
    n = a.shape[0]
    if mask is not None:
        a, b = a * mask, b * mask
    f1 = np.fft.fftshift(np.fft.fftn(a.astype(np.float64)))
    f2 = np.fft.fftshift(np.fft.fftn(b.astype(np.float64)))
    k = np.arange(n) - n // 2
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    out = []
    for s in range(n // 2 + 1):
        sel = r == s
        num = np.real(f1[sel] * np.conj(f2[sel])).sum()
        out.append(num / np.sqrt((np.abs(f1[sel]) ** 2).sum() * (np.abs(f2[sel]) ** 2).sum()))
    return np.array(out)


@pytest.mark.parametrize("n", [16, 17, 24])
@pytest.mark.parametrize("masked", [False, True])
def test_fsc_matches_definition(rng, n, masked):
    a = rng.normal(size=(n, n, n))
    b = 0.7 * a + rng.normal(size=(n, n, n))
    mask = soft_sphere_mask(n, n / 3) if masked else None
    curve, _ = fsc_curve(a, b, mask)
    np.testing.assert_allclose(curve, reference_fsc(a, b, mask), atol=1e-10)


def test_fsc_of_structured_pair_matches_definition(noisy_pair):
    h1, h2 = noisy_pair(20, noise=1.0)
    curve, counts = fsc_curve(h1, h2)
    np.testing.assert_allclose(curve, reference_fsc(h1, h2), atol=1e-6)
    k = np.arange(20) - 10
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    assert counts.tolist() == [int((r == s).sum()) for s in range(11)]


def test_identical_maps_have_fsc_one_and_values_are_bounded(rng):
    a = blobs(16)
    curve, _ = fsc_curve(a, a)
    np.testing.assert_allclose(curve[1:], 1.0, atol=1e-12)
    c2, _ = fsc_curve(a, rng.normal(size=a.shape))
    assert np.all(np.abs(c2) <= 1.0)


def test_resolution_is_first_crossing_in_angstrom():
    curve = np.array([1.0, 0.9, 0.6, 0.4, 0.2, 0.1, 0.3, 0.05])
    # n = 14, voxel 2 Å: shell 3 (0.4 < 0.5) → 28/3 Å; shell 5 (0.1 < 0.143) → 28/5 Å
    assert resolution_at(curve, 0.5, 14, 2.0) == pytest.approx(28 / 3)
    assert resolution_at(curve, 0.143, 14, 2.0) == pytest.approx(28 / 5)
    assert resolution_at(np.ones(8), 0.143, 14, 2.0) == pytest.approx(4.0)  # never: Nyquist


def test_fsc_result_carries_frequency_axis(noisy_pair):
    h1, h2 = noisy_pair(24, noise=2.0)
    res = fsc(h1, h2, voxel_size=1.5)
    assert res.fsc.shape == res.frequency.shape == res.resolution.shape == (13,)
    np.testing.assert_allclose(res.frequency[1:], np.arange(1, 13) / (24 * 1.5))
    np.testing.assert_allclose(res.resolution[1:], 24 * 1.5 / np.arange(1, 13))
    assert 3.0 <= res.resolution_0143 <= res.resolution_05
