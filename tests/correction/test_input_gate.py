"""The gate's low-shell cap and the gated network input (spisonet.correction.pipeline)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import blobs

from spisonet.correction.pipeline import (
    PreparedMaps,
    SamplingWeight,
    filter_network_input,
    low_shell_gate,
)

N = 32


def _grid(n: int):
    c = n // 2
    k = np.indices((n, n, n), dtype=np.float64) - c
    radius = np.sqrt((k**2).sum(axis=0))
    cos_z = np.abs(k[0]) / np.where(radius > 0, radius, 1.0)
    return radius, cos_z


def test_a_leaked_cone_at_low_shells_is_closed_and_the_rest_kept() -> None:
    """A gate that is 0 in a 40° cone around z from n/8 on but 1 there below n/8 (what a
    mask's leakage does): the cap closes the cone below n/8 and changes nothing else."""
    radius, cos_z = _grid(N)
    cone = cos_z > np.cos(np.radians(40))
    gate = np.where(cone & (radius >= N / 8), 0.0, 1.0).astype(np.float32)
    out = low_shell_gate(gate)
    low = (radius < N / 8) & (radius >= 1)
    # well inside the cone (away from its edge, where the direction's mean is partial)
    deep = cos_z > np.cos(np.radians(25))
    assert out[low & deep].max() < 0.05
    np.testing.assert_array_equal(out[radius >= N / 8], gate[radius >= N / 8])
    outside = cos_z < np.cos(np.radians(55))
    np.testing.assert_allclose(out[outside], 1.0, atol=1e-6)
    assert np.all(out <= gate + 1e-7)  # a cap: it never opens anything


def test_isotropic_gate_is_unchanged() -> None:
    gate = np.ones((N, N, N), dtype=np.float32)
    np.testing.assert_allclose(low_shell_gate(gate), gate, atol=1e-6)


def test_the_network_input_is_each_half_times_the_gate_in_fourier_space() -> None:
    """Against a slow statement: full complex FFT, the fftshift-ed gate moved to FFT order,
    the product transformed back, then z-scored."""
    radius, cos_z = _grid(N)
    gate = np.where(cos_z > np.cos(np.radians(30)), 0.0, 1.0)
    gate = np.where(radius < 1, 1.0, gate).astype(np.float32)
    halves = [blobs(N, s).astype(np.float32) + 0.3 for s in (1, 2)]
    maps = PreparedMaps(halves, halves, halves)
    weight = SamplingWeight(np.ones((8, 8, 8), np.float32), None, None, gate)
    got = filter_network_input(maps, weight)
    for h, g in zip(halves, got.network_input, strict=True):
        f = np.fft.fftn(h.astype(np.float64)) * np.fft.ifftshift(gate)
        want = np.fft.ifftn(f).real
        want = (want - want.mean()) / want.std()
        np.testing.assert_allclose(g, want, atol=2e-5)
        # nothing left in the cone
        fg = np.fft.fftshift(np.fft.fftn(g))
        inside = (cos_z > np.cos(np.radians(30))) & (radius >= 1)
        assert np.abs(fg[inside]).max() < 1e-3 * np.abs(fg).max()
    assert got.originals is maps.originals and got.lowpassed is maps.lowpassed
    # without a gate (W = 1 or no presence threshold) the maps are returned as they were
    same = filter_network_input(maps, SamplingWeight(np.ones((8, 8, 8)), None, None))
    assert same is maps


@pytest.mark.parametrize("flag", ["low_shell_gate", "filter_input"])
def test_the_run_records_what_it_did(flag: str) -> None:
    from helpers import soft_sphere_mask

    from spisonet.correction import correct_anisotropy, preset_settings

    n = 24
    rng = np.random.default_rng(0)
    s = blobs(n, 0) * 3
    h1, h2 = ((s + rng.standard_normal(s.shape)).astype(np.float32) for _ in range(2))
    k = np.abs(np.arange(n) - n // 2)[:, None, None] * np.ones((1, n, n))
    fsc = np.clip(1.0 - k / (n // 2), 0, 1).astype(np.float32)
    settings = preset_settings("tiny", **{flag: True})
    r = correct_anisotropy(h1, h2, fsc, soft_sphere_mask(n, n / 3), 2.0, settings)
    assert r.settings.to_dict()[flag] is True
    noted = any("filtered by the measured-power gate" in x for x in r.notes)
    assert noted == (flag == "filter_input")
