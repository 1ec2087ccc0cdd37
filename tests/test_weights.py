"""spisonet.weights: the measured-power gate of W and the blend weight of the RELION step."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.errors import InvalidValueError
from spisonet.weights import (
    directional_weight,
    measured_weight,
    power_presence,
    unmeasured_agreement,
)


def _slow(h1, h2, mask, t, q):
    n = h1.shape[0]

    def amp(v):
        z = (v - v.mean()) / v.std()
        if mask is not None:
            z = z * mask
        return np.abs(np.fft.fftshift(np.fft.fftn(z)))

    p = amp(h1) * (amp(h2) if h2 is not None else amp(h1))
    sm = np.zeros_like(p)
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                sm += np.roll(p, (dz, dy, dx), axis=(0, 1, 2))
    sm /= 27
    k = np.arange(n) - n // 2
    shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2))
    out = np.empty_like(sm)
    for s in np.unique(shell):
        sel = shell == s
        out[sel] = sm[sel] / (t * np.percentile(sm[sel], q))
    return np.clip(out, 0, 1)


@pytest.mark.parametrize("n", [12, 13])
def test_power_presence_matches_definition(n):
    rng = np.random.default_rng(n)
    h1, h2 = rng.normal(size=(2, n, n, n)).astype(np.float32)
    mask = rng.uniform(0.2, 1, size=(n, n, n)).astype(np.float32)
    got = power_presence(h1, h2, mask, 0.3, 80.0)
    np.testing.assert_allclose(got, _slow(h1, h2, mask, 0.3, 80.0), atol=2e-5)
    got1 = power_presence(h1, None, None, 0.5, 90.0)
    np.testing.assert_allclose(got1, _slow(h1, None, None, 0.5, 90.0), atol=2e-5)
    # threshold 1 at the 100th percentile: a gate below 1 almost everywhere, so the two
    # gates' minimum is taken from each of them somewhere
    both = power_presence(h1, h2, mask, 1.0, 100.0, also_unmasked=True)
    masked, unmasked = _slow(h1, h2, mask, 1.0, 100.0), _slow(h1, h2, None, 1.0, 100.0)
    np.testing.assert_allclose(both, np.minimum(masked, unmasked), atol=2e-5)
    assert np.mean(masked < unmasked - 0.01) > 0.1 and np.mean(unmasked < masked - 0.01) > 0.1
    np.testing.assert_array_equal(
        power_presence(h1, h2, None, 1.0, 100.0, also_unmasked=True),
        power_presence(h1, h2, None, 1.0, 100.0),
    )


def test_power_presence_zeroes_an_empty_cone_only():
    n = 24
    rng = np.random.default_rng(0)
    k = np.fft.fftfreq(n) * n
    kz = k[:, None, None] * np.ones((n, n, n))
    r = np.sqrt(kz**2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    missing = np.abs(kz) > 0.7 * np.maximum(r, 1e-9)  # a missing cone around z
    g = np.fft.fftn(rng.normal(size=(n, n, n)))
    h = [
        np.fft.ifftn(np.where(missing, 0, g + 0.3 * np.fft.fftn(rng.normal(size=(n, n, n))))).real
        for _ in range(2)
    ]
    gate = np.fft.ifftshift(power_presence(h[0], h[1]))
    deep = missing & (r > 6) & (np.abs(kz) > 0.95 * r)  # away from the cone edge
    assert gate[deep].max() < 0.05
    assert gate[~missing & (r > 2)].mean() > 0.95
    iso = power_presence(*rng.normal(size=(2, n, n, n)))
    assert np.mean(iso == 1) > 0.8  # isotropic data: W is left as it is almost everywhere
    with pytest.raises(InvalidValueError, match=r"threshold must be in \(0, 1\]"):
        power_presence(h[0], h[1], threshold=0)


def test_measured_weight_follows_the_sampling():
    """On a tilt:20 simulation (no views beyond 20° of z: kz is the missing direction)
    the weight is high across z and low along it; on uniform data it is high everywhere."""
    from spisonet.fourier import frequency_axis
    from spisonet.fsc3d import fsc3d
    from spisonet.simulate import make_molecule, simulate_half_maps

    n = 48
    gt = make_molecule(n, 2.0, seed=0)
    k = frequency_axis(n).astype(float)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    r = np.sqrt(kz**2 + ky**2 + kx**2)
    band = (r >= 3) & (r <= n / 4)
    cos_z = np.abs(kz) / np.maximum(r, 1e-9)
    along_z = band & (cos_z > np.cos(np.deg2rad(20)))
    across = band & (cos_z < np.sin(np.deg2rad(20)))
    means = {}
    for dist in ("tilt:20", "uniform"):
        sim = simulate_half_maps(gt, 2.0, dist, 1500, 0.05, seed=1)
        f3d = fsc3d(sim.half1, sim.half2, 2.0, sim.mask).volume
        w = measured_weight(f3d, sim.half1, sim.half2, sim.mask)
        assert w.shape == (n, n, n) and w.min() >= 0 and w.max() <= 1
        means[dist] = (float(w[along_z].mean()), float(w[across].mean()))
    z_tilt, x_tilt = means["tilt:20"]
    z_uni, x_uni = means["uniform"]
    assert x_tilt > 0.7 and z_tilt < 0.3, means
    assert z_uni > 0.7 and x_uni > 0.7, means


def _trilinear(w: np.ndarray, p: np.ndarray) -> float:
    """w at the real point p by hand: the 8 neighbours weighted by their overlaps."""
    base = np.floor(p).astype(int)
    frac = p - base
    value = 0.0
    for corner in np.ndindex(2, 2, 2):
        idx = np.clip(base + np.array(corner), 0, w.shape[0] - 1)
        share = np.prod([f if c else 1 - f for f, c in zip(frac, corner, strict=True)])
        value += share * w[tuple(idx)]
    return value


def _slow_directional(w: np.ndarray, lo: int, hi: int) -> np.ndarray:
    n = w.shape[0]
    c = n // 2
    out = np.empty_like(w, dtype=np.float64)
    for idx in np.ndindex(w.shape):
        k = np.array(idx, dtype=float) - c
        r = np.sqrt((k**2).sum())
        if r == 0:
            out[idx] = w[idx]
            continue
        out[idx] = np.mean([_trilinear(w, c + s * k / r) for s in range(lo, hi + 1)])
    return out


@pytest.mark.parametrize("n", [10, 16])
def test_directional_weight_matches_the_slow_statement_on_random_weights(n) -> None:
    w = np.random.default_rng(n).random((n, n, n))
    lo, hi = int(np.ceil(n / 8)), int(np.floor(n / 4))
    np.testing.assert_allclose(directional_weight(w), _slow_directional(w, lo, hi), atol=1e-6)
    np.testing.assert_allclose(directional_weight(w, (1, 3)), _slow_directional(w, 1, 3), atol=1e-6)


def test_directional_weight_carries_a_cone_to_every_shell() -> None:
    """A missing cone along z whose 3D FSC fades with resolution (and is noise beyond):
    the directional weight is the cone's pattern at every shell, not the fading."""
    n = 32
    k = np.indices((n,) * 3, dtype=float) - n // 2
    r = np.sqrt((k**2).sum(0))
    cos_z = np.abs(k[0]) / np.where(r > 0, r, 1)
    pattern = np.clip((0.8 - cos_z) / 0.3, 0, 1)  # 0 within ~37° of z, 1 beyond ~60°
    fading = pattern * np.clip(1.5 - r / 10, 0, 1)
    noisy = np.where(r > 12, np.random.default_rng(0).random(r.shape), fading)
    got = directional_weight(noisy)
    band = (r >= 13) & (r <= 15)
    clear = band & ((cos_z > 0.85) | (cos_z < 0.35))  # away from the ramp's edge
    np.testing.assert_allclose(got[clear], np.round(pattern[clear]), atol=0.15)


def test_directional_weight_refuses_bad_shells() -> None:
    with pytest.raises(InvalidValueError, match="shells"):
        directional_weight(np.ones((8, 8, 8)), (3, 2))


def _slow_agreement(h1, h2, gate, top):
    """S by its definition: an explicit DFT (a matrix per axis), the shell of every voxel
    of the centred grid from its own frequency triple, plain sums over shells 2 … top."""
    n = h1.shape[0]
    j = np.arange(n)
    e = np.exp(-2j * np.pi * np.outer(j, j) / n)

    def dft(v):
        return np.einsum("ai,bj,ck,ijk->abc", e, e, e, v.astype(np.complex128))

    f1, f2 = dft(h1), dft(h2)
    num = den = 0.0
    for a in range(n):
        for b in range(n):
            for c in range(n):
                # voxel (a, b, c) of the fft-ordered grid sits at the centred index k + n//2
                kz, ky, kx = ((x + n // 2) % n - n // 2 for x in (a, b, c))
                shell = round(float(np.sqrt(kz * kz + ky * ky + kx * kx)))
                if 2 <= shell <= top:
                    cross = (f1[a, b, c] * np.conj(f2[a, b, c])).real
                    g = gate[kz + n // 2, ky + n // 2, kx + n // 2]
                    num += (1 - g) * cross
                    den += cross
    return num / den


@pytest.mark.parametrize("n", [10, 11])
def test_unmeasured_agreement_matches_its_definition_on_random_data(n) -> None:
    rng = np.random.default_rng(n)
    common = rng.normal(size=(n, n, n))
    h1 = (common + 0.5 * rng.normal(size=(n, n, n))).astype(np.float32)
    h2 = (common + 0.5 * rng.normal(size=(n, n, n))).astype(np.float32)
    gate = rng.uniform(0, 1, size=(n, n, n)).astype(np.float32)
    for top in (None, 4):
        want = _slow_agreement(h1, h2, gate, n // 4 if top is None else top)
        assert unmeasured_agreement(h1, h2, gate, top) == pytest.approx(want, rel=1e-4)


def test_unmeasured_agreement_is_the_power_share_of_waves_where_the_gate_is_zero() -> None:
    """Two plane waves, one where the gate reads unmeasured (amplitude a) and one where it
    reads measured (b): S = a² / (a² + b²); independent noise in each half barely moves it;
    a gate of 1 everywhere gives 0; halves that agree on nothing give 0."""
    n = 24
    z, _, x = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    a, b = 0.6, 1.0
    hidden = a * np.cos(2 * np.pi * 4 * z / n)  # along z: shell 4, where the gate is 0
    seen = b * np.cos(2 * np.pi * 5 * x / n)  # along x: shell 5, measured
    k = np.arange(n) - n // 2
    kz = np.abs(k)[:, None, None] * np.ones((1, n, n))
    ky = np.abs(k)[None, :, None] * np.ones((n, 1, n))
    kx = np.abs(k)[None, None, :] * np.ones((n, n, 1))
    gate = np.where(kz > np.maximum(kx, ky), 0.0, 1.0).astype(np.float32)  # a cone along z
    s = (hidden + seen).astype(np.float32)
    assert unmeasured_agreement(s, s, gate) == pytest.approx(a**2 / (a**2 + b**2), rel=1e-5)
    rng = np.random.default_rng(0)
    h1 = s + 0.3 * rng.normal(size=s.shape).astype(np.float32)
    h2 = s + 0.3 * rng.normal(size=s.shape).astype(np.float32)
    assert unmeasured_agreement(h1, h2, gate) == pytest.approx(a**2 / (a**2 + b**2), abs=0.02)
    assert unmeasured_agreement(h1, h2, np.ones_like(gate)) == 0.0
    assert unmeasured_agreement(h1, -h1, gate) == 0.0  # agreed power ≤ 0: nothing agreed


def test_unmeasured_agreement_refuses_bad_input() -> None:
    h = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(InvalidValueError, match="one shape"):
        unmeasured_agreement(h, h, np.ones((6, 6, 6), np.float32))
    with pytest.raises(InvalidValueError, match="max_shell"):
        unmeasured_agreement(h, h, np.ones_like(h), max_shell=1)
