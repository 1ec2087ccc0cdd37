"""Tests of spisonet.nn.unet: architecture, parameter count, shapes and the residual."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spisonet.errors import InvalidValueError, MapShapeError
from spisonet.nn.unet import WIDTH_PRESETS, UNet3D

TINY = (4, 8, 16, 32)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def expected_params(widths: tuple[int, ...], n_conv: int = 3, n_bottleneck: int = 2) -> int:
    """Parameter count written out from the layer list of ALGORITHM.md §3."""

    def block(ci: int, co: int) -> int:  # conv3³ without bias + BatchNorm (γ, β)
        return ci * co * 27 + 2 * co

    w = widths
    p = 1 * w[0] * 27 + w[0]  # stem, with bias
    for n in range(len(w) - 1):
        p += n_conv * block(w[n], w[n])
        p += w[n] * w[n + 1] * 8 + 2 * w[n + 1]  # down conv k2 s2, no bias, + BN
        p += w[n + 1] * w[n] * 8 + w[n]  # transposed conv k2 s2 with bias
        p += block(2 * w[n], w[n]) + (n_conv - 1) * block(w[n], w[n])
    p += n_bottleneck * block(w[-1], w[-1])
    p += w[0] * 27 + 1  # head, with bias
    return p


def test_published_network_has_about_23_8_million_parameters() -> None:
    m = UNet3D()
    assert m.widths == (64, 128, 256, 320) and m.depth == 3
    count = n_params(m)
    assert abs(count - 23.8e6) / 23.8e6 < 0.02
    assert count == expected_params((64, 128, 256, 320))


@pytest.mark.parametrize("name", ["medium", "small", "tiny"])
def test_presets_match_the_layer_list(name: str) -> None:
    widths = WIDTH_PRESETS[name]
    assert n_params(UNet3D(widths)) == expected_params(widths)


def test_layers_follow_the_specification() -> None:
    m = UNet3D(TINY)
    convs = [mod for mod in m.modules() if isinstance(mod, nn.Conv3d)]
    # stem + 3 levels × (3 encoder + 1 down + 3 decoder) + 2 bottleneck + head
    assert len(convs) == 1 + 3 * 7 + 2 + 1
    with_bias = [c for c in convs if c.bias is not None]
    assert with_bias == [m.stem, m.head]
    downs = [d[0] for d in m.downs]
    assert all(d.stride == (2, 2, 2) and d.kernel_size == (2, 2, 2) for d in downs)
    ups = [u[0] for u in m.ups]
    assert all(isinstance(u, nn.ConvTranspose3d) and u.stride == (2, 2, 2) for u in ups)
    assert [d[0][0].in_channels for d in m.decoders] == [2 * w for w in reversed(TINY[:-1])]
    assert sum(isinstance(x, nn.BatchNorm3d) for x in m.modules()) == 3 * 7 + 2


@pytest.mark.parametrize("shape", [(2, 1, 16, 16, 16), (1, 1, 8, 16, 24)])
def test_output_shape_and_gradients(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    m = UNet3D(TINY)
    x = torch.randn(shape)
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_zero_head_is_identity_and_residual_adds_input() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 1, 16, 16, 16)
    m = UNet3D(TINY, zero_head=True)
    assert torch.equal(m(x), x)
    m.eval()
    assert torch.equal(m(x), x)
    plain = UNet3D(TINY, zero_head=True, residual=False)
    assert float(plain(x).detach().abs().max()) == 0.0
    # the residual network is the non-residual one plus its input
    torch.manual_seed(2)
    a = UNet3D(TINY, residual=True)
    b = UNet3D(TINY, residual=False)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x) + x)


def test_shallow_depth_and_size_multiple() -> None:
    m = UNet3D((4, 8))
    assert m.depth == 1 and m.size_multiple == 2
    assert m(torch.randn(1, 1, 6, 6, 6)).shape == (1, 1, 6, 6, 6)
    assert UNet3D(TINY).size_multiple == 8


def test_bad_input_shapes() -> None:
    m = UNet3D(TINY)
    with pytest.raises(MapShapeError, match=r"multiples of 8; found \(1, 1, 12, 12, 12\)"):
        m(torch.zeros(1, 1, 12, 12, 12))
    with pytest.raises(MapShapeError, match=r"input \(B, 1, D, H, W\).*found \(1, 2, 8, 8, 8\)"):
        m(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(MapShapeError, match=r"found \(1, 8, 8, 8\)"):
        m(torch.zeros(1, 8, 8, 8))


def test_bad_widths() -> None:
    with pytest.raises(
        InvalidValueError, match=r"at least two positive channel counts; got \(4,\)"
    ):
        UNet3D((4,))
    with pytest.raises(InvalidValueError, match=r"got \(4, 0\)"):
        UNet3D((4, 0))
    with pytest.raises(InvalidValueError, match="convs_per_level must be ≥ 1"):
        UNet3D(TINY, convs_per_level=0)
