"""Tests of spisonet.nn.predict: tiling, mirror padding and linear-ramp blending."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from spisonet.errors import InvalidValueError, MapShapeError, NonFiniteMapError
from spisonet.nn.predict import blend_ramp, predict_map
from spisonet.nn.unet import UNet3D


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_ramps_sum_to_one_across_overlaps() -> None:
    for s, e, tiles in [(16, 4, 3), (64, 7, 5), (10, 5, 2), (8, 0, 4), (12, 3, 1)]:
        total = np.zeros(tiles * s + 2 * e)
        for t in range(tiles):
            r = blend_ramp(s, e, first=t == 0, last=t == tiles - 1)
            assert r.shape == (s + 2 * e,) and np.all((r > 0) & (r <= 1))
            total[t * s : t * s + s + 2 * e] += r
        np.testing.assert_allclose(total, 1.0, atol=1e-12)
    r = blend_ramp(16, 4)
    np.testing.assert_allclose(r[:8], (np.arange(8) + 0.5) / 8)  # linear over 2e voxels
    np.testing.assert_allclose(r[8:16], 1.0)
    np.testing.assert_allclose(r[16:], r[:8][::-1])


@pytest.mark.parametrize(
    ("shape", "cube", "crop", "edge"),
    [
        ((40, 40, 40), 16, 24, 4),
        ((37, 37, 37), 16, 24, 4),
        ((37, 37, 37), 16, 32, 7),
        ((32, 32, 32), 16, 24, 0),
        ((13, 30, 21), 8, 16, 3),
        ((10, 10, 10), 16, 24, 4),  # a map smaller than one tile
    ],
)
def test_identity_network_reconstructs_input(shape, cube, crop, edge) -> None:
    vol = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    out = predict_map(Identity(), vol, cube_size=cube, crop_size=crop, edge=edge, batch_size=3)
    assert out.shape == vol.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, vol, atol=1e-6)


def test_local_filter_equals_filtering_the_mirrored_map() -> None:
    """A 3³ convolution sees the right neighbours: tiles are placed and padded correctly."""
    torch.manual_seed(0)
    conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)
    kernel = conv.weight.detach()[0, 0].numpy().astype(np.float64)
    vol = np.random.default_rng(1).standard_normal((37, 37, 37)).astype(np.float32)
    out = predict_map(conv, vol, cube_size=16, crop_size=24, edge=3, batch_size=5)
    expected = ndimage.correlate(vol.astype(np.float64), kernel, mode="mirror")
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_zero_head_unet_predicts_identity_and_batch_size_is_irrelevant() -> None:
    torch.manual_seed(0)
    model = UNet3D((4, 8, 16, 32), zero_head=True)
    model.train()
    vol = np.random.default_rng(2).standard_normal((20, 20, 20)).astype(np.float32)
    out = predict_map(model, vol, cube_size=16, crop_size=24, edge=4, batch_size=2)
    np.testing.assert_allclose(out, vol, atol=1e-6)
    assert model.training  # mode restored
    net = UNet3D((4, 8, 16, 32))
    a = predict_map(net, vol, cube_size=16, crop_size=24, edge=4, batch_size=1)
    b = predict_map(net, vol, cube_size=16, crop_size=24, edge=4, batch_size=8)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a, vol, atol=1e-3)


def test_progress_callback_and_streaming_batches() -> None:
    calls: list[tuple[int, int]] = []
    seen: list[int] = []

    class Spy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.shape[0])
            return x

    vol = np.zeros((40, 40, 40), dtype=np.float32)
    predict_map(Spy(), vol, cube_size=16, crop_size=24, edge=4, batch_size=4,
                progress=lambda s, d, t, i=None: calls.append((d, t)))  # fmt: skip
    assert calls[-1] == (27, 27) and [c[0] for c in calls] == sorted({c[0] for c in calls})
    assert max(seen) <= 4 and sum(seen) == 27 and len(calls) == len(seen)


def test_autocast_path_runs() -> None:
    conv = nn.Conv3d(1, 1, 1, bias=False)
    nn.init.ones_(conv.weight)
    vol = np.random.default_rng(3).standard_normal((16, 16, 16)).astype(np.float32)
    out = predict_map(conv, vol, cube_size=8, crop_size=16, edge=2, amp_dtype=torch.bfloat16)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, vol, atol=0.05)


def test_predict_errors() -> None:
    vol = np.zeros((16, 16, 16), dtype=np.float32)
    with pytest.raises(InvalidValueError, match="crop_size must be at least cube_size \\+ 2·edge"):
        predict_map(Identity(), vol, cube_size=16, crop_size=20, edge=4)
    with pytest.raises(InvalidValueError, match="edge must be at most cube_size / 2 = 4; got 5"):
        predict_map(Identity(), vol, cube_size=8, crop_size=24, edge=5)
    with pytest.raises(InvalidValueError, match="batch_size must be an integer ≥ 1; got 0"):
        predict_map(Identity(), vol, cube_size=8, crop_size=16, edge=2, batch_size=0)
    with pytest.raises(MapShapeError, match=r"map must be a 3D array; found shape \(16, 16\)"):
        predict_map(Identity(), vol[0], cube_size=8, crop_size=16, edge=2)
    bad = vol.copy()
    bad[1, 2, 3] = np.inf
    with pytest.raises(NonFiniteMapError, match="map contains NaN or infinite"):
        predict_map(Identity(), bad, cube_size=8, crop_size=16, edge=2)

    class Shrink(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[..., 1:]

    with pytest.raises(MapShapeError, match="it must keep the shape"):
        predict_map(Shrink(), vol, cube_size=8, crop_size=16, edge=2)
