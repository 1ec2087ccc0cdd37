"""The residual 3D U-Net of the anisotropy correction (ALGORITHM.md §3).

Layout for ``widths = (w0, w1, …, wd)`` (depth ``d = len(widths) - 1``)::

    stem      conv3³ 1→w0 (bias)
    encoder   level n = 0 … d-1: three blocks wn→wn, keep the skip,
              down: conv2³ stride 2 wn→w(n+1) (no bias) → BatchNorm → LeakyReLU
    bottleneck two blocks wd→wd
    decoder   level n = d-1 … 0: ConvTranspose3d k2 s2 w(n+1)→wn → LeakyReLU,
              concatenate [skip, up] (2wn channels), three blocks (2wn→wn, wn→wn, wn→wn)
    head      conv3³ w0→1 (bias); the input is added to the output

A block is conv3³ (no bias) → BatchNorm3d → LeakyReLU. With the published widths
(64, 128, 256, 320) the network has 23 764 737 parameters (≈ 23.8 M).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidValueError, MapShapeError

__all__ = ["WIDTH_PRESETS", "UNet3D"]

#: Channel widths per level; ``large`` is the published network.
WIDTH_PRESETS: dict[str, tuple[int, ...]] = {
    "large": (64, 128, 256, 320),
    "medium": (32, 64, 128, 256),
    "small": (16, 32, 64, 128),
    "tiny": (8, 16, 32, 64),
}


def _block(c_in: int, c_out: int, slope: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm3d(c_out),
        nn.LeakyReLU(slope),
    )


def _stack(c_in: int, c_out: int, n: int, slope: float) -> nn.Sequential:
    return nn.Sequential(*[_block(c_in if i == 0 else c_out, c_out, slope) for i in range(n)])


class UNet3D(nn.Module):
    """Residual 3D U-Net mapping a (B, 1, D, D, D) volume to a volume of the same shape.

    Parameters
    ----------
    widths : sequence of int
        Channels at each level, finest first; ``len(widths) - 1`` is the depth (number of
        2× down-samplings). Default: the published (64, 128, 256, 320).
    convs_per_level : int
        Blocks per encoder/decoder level (3 in the published network).
    bottleneck_convs : int
        Blocks at the coarsest level (2 in the published network).
    negative_slope : float
        LeakyReLU slope (PyTorch's default 0.01, as the public tool).
    residual : bool
        Add the input to the output (the published network does).
    zero_head : bool
        Initialise the head to zero, so that an untrained residual network is the identity.
        Off by default (the published network uses PyTorch's default initialisation).
    """

    def __init__(
        self,
        widths: Sequence[int] = WIDTH_PRESETS["large"],
        convs_per_level: int = 3,
        bottleneck_convs: int = 2,
        negative_slope: float = 0.01,
        residual: bool = True,
        zero_head: bool = False,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise InvalidValueError(
                f"widths must list at least two positive channel counts; got {widths}"
            )
        if convs_per_level < 1 or bottleneck_convs < 0:
            raise InvalidValueError(
                "convs_per_level must be ≥ 1 and bottleneck_convs ≥ 0; "
                f"got {convs_per_level} and {bottleneck_convs}"
            )
        self.widths = widths
        self.depth = len(widths) - 1
        self.residual = residual
        s = negative_slope
        self.stem = nn.Conv3d(1, widths[0], kernel_size=3, padding=1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for n in range(self.depth):
            self.encoders.append(_stack(widths[n], widths[n], convs_per_level, s))
            self.downs.append(
                nn.Sequential(
                    nn.Conv3d(widths[n], widths[n + 1], kernel_size=2, stride=2, bias=False),
                    nn.BatchNorm3d(widths[n + 1]),
                    nn.LeakyReLU(s),
                )
            )
        self.bottleneck = _stack(widths[-1], widths[-1], bottleneck_convs, s)
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for n in reversed(range(self.depth)):
            self.ups.append(
                nn.Sequential(
                    nn.ConvTranspose3d(widths[n + 1], widths[n], kernel_size=2, stride=2),
                    nn.LeakyReLU(s),
                )
            )
            self.decoders.append(_stack(2 * widths[n], widths[n], convs_per_level, s))
        self.head = nn.Conv3d(widths[0], 1, kernel_size=3, padding=1)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def size_multiple(self) -> int:
        """Every spatial edge of the input must be a multiple of this (``2**depth``)."""
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the network.

        Parameters
        ----------
        x : (B, 1, D, H, W) tensor
            Each of D, H, W must be a positive multiple of ``2**depth`` (8 for the
            published network; training cubes are cubic, D = H = W).

        Returns
        -------
        (B, 1, D, H, W) tensor: ``head(...) + x`` when ``residual``.
        """
        m = self.size_multiple
        if x.ndim != 5 or x.shape[1] != 1 or any(d < 1 or d % m for d in x.shape[2:]):
            raise MapShapeError(
                f"the network needs input (B, 1, D, H, W) with D, H, W multiples of {m}; "
                f"found {tuple(x.shape)}"
            )
        h = self.stem(x)
        skips = []
        for enc, down in zip(self.encoders, self.downs, strict=True):
            h = enc(h)
            skips.append(h)
            h = down(h)
        h = self.bottleneck(h)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            h = dec(torch.cat((skip, up(h)), dim=1))
        out = self.head(h)
        return out + x if self.residual else out
