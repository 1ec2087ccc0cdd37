"""The missing-wedge W (spisonet.tomo.wedge) against a slow statement of its definition:
a Fourier voxel is measured when some tilt of the series has it in its central plane, i.e.
when k·d(θ) changes sign (or vanishes) for θ over the tilt range, d(θ) the tilted beam."""

from __future__ import annotations

import numpy as np
import pytest

from spisonet.errors import InvalidValueError
from spisonet.tomo import wedge_weight


def _slow_wedge(size: int, lo: float, hi: float, axis_angle: float) -> np.ndarray:
    psi = np.radians(axis_angle)
    b = np.array([0.0, -np.sin(psi), np.cos(psi)])  # (z, y, x): turns z towards it
    thetas = np.radians(np.linspace(lo, hi, 20001))
    beams = np.stack([np.cos(thetas), np.sin(thetas) * b[1], np.sin(thetas) * b[2]], axis=1)
    c = size // 2
    out = np.zeros((size, size, size))
    for z in range(size):
        for y in range(size):
            for x in range(size):
                k = np.array([z - c, y - c, x - c], dtype=float)
                f = beams @ k  # k·d(θ) over the series
                if f.min() <= 1e-9 and f.max() >= -1e-9:
                    out[z, y, x] = 1.0
    return out


@pytest.mark.parametrize(
    "size, lo, hi, axis_angle",
    [
        (12, -60.0, 60.0, 0.0),
        (11, -47.3, 61.7, 0.0),
        (12, -58.1, 52.9, 33.0),
        (10, -20.0, 90.0, 90.0),
    ],
)
def test_wedge_follows_the_union_of_tilt_planes(size, lo, hi, axis_angle) -> None:
    got = wedge_weight(size, lo, hi, axis_angle)
    want = _slow_wedge(size, lo, hi, axis_angle)
    assert got.shape == (size,) * 3 and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_wedge_geometry_of_the_usual_series() -> None:
    w = wedge_weight(32, -60, 60)
    c = 16
    assert w[c, c, c] == 1  # the zero frequency
    assert w[c + 10, c, c] == 0 and w[c - 10, c, c] == 0  # the beam axis is missing
    assert w[c, c, c + 10] == 1 and w[c, c + 10, c] == 1  # x (tilted towards) and the axis
    inner = w[1:, 1:, 1:]  # about the centre: k and −k lie in the same planes
    np.testing.assert_array_equal(inner, inner[::-1, ::-1, ::-1])
    # the axis angle turns the wedge about z: 90° swaps the roles of x and y
    np.testing.assert_array_equal(wedge_weight(32, -60, 60, 90.0), np.swapaxes(w, 1, 2))
    # a full range measures everything; the measured fraction grows with the range
    assert wedge_weight(16, -90, 90).min() == 1
    assert wedge_weight(32, -40, 40).mean() < w.mean() < wedge_weight(32, -70, 70).mean()


def test_soft_edge_falls_linearly_outside_the_range() -> None:
    c = 32
    w = wedge_weight(64, -60, 60, soft_edge=10.0)
    # the voxel (kz, kx) = (a·sin, ·): θ = atan(−kz/kx); pick θ = −65° (5° outside)
    kx = 10
    kz = int(round(kx * np.tan(np.radians(65.0))))
    theta = np.degrees(np.arctan2(-kz, kx))
    assert w[c + kz, c, c + kx] == pytest.approx(1 - (-60 - theta) / 10, abs=1e-6)
    hard = wedge_weight(64, -60, 60)
    assert np.all(w >= hard) and np.all((w > 0) & (w < 1) <= (hard == 0))


@pytest.mark.parametrize(
    "args, message",
    [
        ((16, 60, -60), "−90 ≤ min < max ≤ 90"),
        ((16, -100, 60), "−90 ≤ min < max ≤ 90"),
        ((16, "a", 60), "two numbers in degrees"),
        ((16, -60, float("nan")), "finite"),
        ((0, -60, 60), "size"),
    ],
)
def test_bad_tilt_ranges_are_clear_errors(args, message) -> None:
    with pytest.raises(InvalidValueError, match=message):
        wedge_weight(*args)
    with pytest.raises(InvalidValueError, match="soft_edge"):
        wedge_weight(16, -60, 60, soft_edge=-1)


def test_the_correction_operators_take_the_wedge_as_they_take_a_3d_fsc() -> None:
    """P_W with the wedge deletes exactly the wedge; one training epoch runs on it."""
    import torch

    from spisonet.nn.data import CubePairs
    from spisonet.nn.operators import apply_sampling, sampling_tensor
    from spisonet.nn.train import TrainSettings, train_network

    d = 16
    w = wedge_weight(d, -60, 60)
    cube = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, d, d, d)))
    out = apply_sampling(cube.float(), sampling_tensor(w, torch.device("cpu")))
    spectrum = np.fft.fftshift(np.abs(np.fft.fftn(out[0, 0].numpy())))
    assert spectrum[w == 0].max() < 1e-4 * spectrum.max()
    assert spectrum[w == 1].min() > 0
    r = np.random.default_rng(1)
    pairs = CubePairs(*(r.standard_normal((4, d, d, d)).astype(np.float32) for _ in range(2)))
    settings = TrainSettings(widths=(4, 8), batch_size=2, epochs=1, device="cpu", amp="off")
    result = train_network(pairs, w, settings)
    assert all(np.isfinite(v[-1]) for v in result.history.values())
