"""The before/after figure of a corrected tomogram: central slices and the wedge.

Each column is one tomogram (the ground truth when known, the input, the corrected one):
its central x-y slice, its central x-z slice (z, the beam, pointing up: the missing wedge
smears objects along z), and the power spectrum of its projection along the tilt axis y,
which is the central kx–kz plane of its 3D Fourier transform (projection-slice theorem):
the missing wedge shows as the dark double cone around kz, and a correction fills it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ._plot import _new_figure, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["TomogramViews", "tomogram_figure", "tomogram_views"]


@dataclass(frozen=True)
class TomogramViews:
    """What the figure shows of one tomogram: (Y, X) central x-y slice, (Z, X) central
    x-z slice and (Z, X) projection along y (for the kx–kz power spectrum)."""

    xy: np.ndarray
    xz: np.ndarray
    projection_y: np.ndarray


def tomogram_views(volume: np.ndarray, thickness: int = 3) -> TomogramViews:
    """:class:`TomogramViews` of a whole (Z, Y, X) tomogram in memory; the slices are the
    mean of ``thickness`` central planes (less noise, same geometry)."""
    v = np.asarray(volume, dtype=np.float32)
    nz, ny, _ = v.shape
    h = max(int(thickness), 1)
    zs = slice(max(nz // 2 - h // 2, 0), nz // 2 - h // 2 + h)
    ys = slice(max(ny // 2 - h // 2, 0), ny // 2 - h // 2 + h)
    return TomogramViews(v[zs].mean(axis=0), v[:, ys].mean(axis=1), v.sum(axis=1))


def _power(projection: np.ndarray) -> np.ndarray:
    p = np.asarray(projection, dtype=np.float64)
    p = p - p.mean()
    f = np.fft.fftshift(np.abs(np.fft.fft2(p)) ** 2)
    return np.log10(f + 1e-12 * max(float(f.max()), 1e-30))


def tomogram_figure(
    views: dict[str, TomogramViews], path: str | os.PathLike, title: str | None = None
) -> Figure:
    """A PNG with one column per entry of ``views`` (e.g. ``{"input": ..., "corrected":
    ...}``): central x-y slice, central x-z slice (z up) and the kx–kz power spectrum.

    Slices are z-scored and drawn on one grey scale per row (the first column's 0.5–99.5
    percentiles); spectra share one log scale. Returns the figure (written to ``path``).
    """
    names = list(views)
    first = views[names[0]]
    nz, nx = first.xz.shape
    ny = first.xy.shape[0]
    width = 3.6 * len(names)
    height = 3.6 * ny / nx + 3.6 * nz / nx + 3.6 * nz / nx + 1.2
    fig = _new_figure(width, max(height, 5.0))
    grid = fig.add_gridspec(3, len(names), height_ratios=[ny / nx, nz / nx, nz / nx])

    def z(a: np.ndarray) -> np.ndarray:
        sd = float(a.std())
        return (a - float(a.mean())) / (sd if sd > 0 else 1.0)

    rows = [
        ("x-y slice", lambda v: z(v.xy), "gray"),
        ("x-z slice (z: beam, up)", lambda v: z(v.xz), "gray"),
        ("power spectrum, kx–kz plane", lambda v: _power(v.projection_y), "magma"),
    ]
    for r, (label, get, cmap) in enumerate(rows):
        ref = get(first)
        lo, hi = np.percentile(ref, [0.5 if r < 2 else 5, 99.5])
        for c, name in enumerate(names):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(get(views[name]), cmap=cmap, origin="lower", vmin=lo, vmax=hi)
            ax.set_title(f"{name}: {label}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    _save(fig, path)
    return fig
