"""spisonet.fourier.fourier_blend against a slow full-grid statement of its definition."""

import numpy as np
import pytest

from spisonet.errors import MapShapeError
from spisonet.fourier import fourier_blend, soft_sphere


def centrosymmetric(w: np.ndarray) -> np.ndarray:
    """Average a fftshift-ed grid with its point reflection k -> -k."""
    n = w.shape[0]
    # shifted index i holds k = i - n//2; -k sits at n//2 - k (mod n)
    idx = (n // 2 - (np.arange(n) - n // 2)) % n
    return 0.5 * (w + w[np.ix_(idx, idx, idx)])


def slow_blend(base, repl, w):
    fb = np.fft.fftshift(np.fft.fftn(base.astype(np.complex128)))
    fr = np.fft.fftshift(np.fft.fftn(repl.astype(np.complex128)))
    wc = np.clip(w, 0, 1)
    mix = (1 - wc) * fb + wc * fr
    out = np.fft.ifftn(np.fft.ifftshift(mix))
    return out.real, np.abs(out.imag).max()


@pytest.mark.parametrize("n", [16, 17])
def test_blend_matches_full_grid_definition_random(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(2, n, n, n))
    w = centrosymmetric(rng.uniform(-0.3, 1.3, size=(n, n, n)))
    ref, imag = slow_blend(a, b, w)
    assert imag < 1e-9  # the weight is centrosymmetric: the mix is a real map
    np.testing.assert_allclose(fourier_blend(a, b, w), ref, atol=2e-5)


def test_blend_structured_limits():
    n = 24
    x = np.zeros((n, n, n))
    x[8:16, 10:14, 6:18] = 1.0
    y = np.roll(x, 3, axis=0) * 2.0
    np.testing.assert_allclose(fourier_blend(x, y, np.ones((n, n, n))), y, atol=1e-5)
    np.testing.assert_allclose(fourier_blend(x, y, np.zeros((n, n, n))), x, atol=1e-5)
    # a sphere: low frequencies from y, high from x (the definition, on structured data)
    w = soft_sphere(n, 4.0, 2.0)
    ref, _ = slow_blend(x, y, w)
    np.testing.assert_allclose(fourier_blend(x, y, w), ref, atol=2e-5)


def test_blend_shape_mismatch_is_clear():
    with pytest.raises(MapShapeError, match="one shape"):
        fourier_blend(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), np.zeros((8, 8, 8)))


def _cosines(size: int, waves) -> np.ndarray:
    """A sum of cosines (integer frequencies per box, phases) sampled on a size³ grid."""
    z, y, x = np.indices((size, size, size)) / size
    return 0.4 + sum(
        np.cos(2 * np.pi * (kx * x + ky * y + kz * z) + ph) for (kx, ky, kz), ph in waves
    )


@pytest.mark.parametrize(("m", "n"), [(16, 32), (12, 30), (20, 20)])
def test_fourier_pad_samples_band_limited_content_on_the_finer_grid(m, n):
    from spisonet.fourier import fourier_crop, fourier_pad

    waves = [((1, 2, 0), 0.3), ((3, -1, 2), 1.1), ((0, 0, 5), -0.4), ((-2, 4, 1), 2.0)]
    got = fourier_pad(_cosines(m, waves).astype(np.float32), n)
    assert got.shape == (n, n, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, _cosines(n, waves), atol=3e-5)
    # and back: the crop of the pad is the map itself
    np.testing.assert_allclose(fourier_crop(got, m), _cosines(m, waves), atol=3e-5)


def test_fourier_pad_of_random_map_keeps_its_transform():
    from spisonet.fourier import fourier_pad

    m, n = 10, 16
    f = np.fft.fftn(np.random.default_rng(3).normal(size=(m, m, m)))
    # without content on its Nyquist planes (no Hermitian partner on the finer grid)
    f[m // 2], f[:, m // 2], f[:, :, m // 2] = 0, 0, 0
    v = np.fft.ifftn(f).real
    f_small = np.fft.fftshift(np.fft.fftn(v))
    f_big = np.fft.fftshift(np.fft.fftn(fourier_pad(v, n).astype(np.float64)))
    lo = n // 2 - m // 2
    inner = f_big[lo : lo + m, lo : lo + m, lo : lo + m] * (m / n) ** 3
    np.testing.assert_allclose(inner, f_small, atol=1e-3)
    outside = np.ones((n, n, n), bool)
    outside[lo : lo + m, lo : lo + m, lo : lo + m] = False
    assert np.abs(f_big[outside]).max() < 1e-3


def test_fourier_pad_errors():
    from spisonet.errors import InvalidValueError
    from spisonet.fourier import fourier_pad

    with pytest.raises(InvalidValueError, match=r"new_box must be an integer in ≥ 16"):
        fourier_pad(np.zeros((16, 16, 16)), 8)
