"""The Fourier sampling figure of a particle set (the ``fsd3d`` command's report).

:func:`sampling_figure` shows the views per direction over the half sphere, the SCF-like
sampling uniformity per shell and central slices of the normalised sampling density
(:mod:`spisonet.fsd3d` computes all three).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._plot import _lambert, _new_figure, _resolution_axis, _save, _sphere_grid

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..fsd3d import DirectionHistogram

__all__ = ["sampling_figure"]


def _sampling_sphere_panel(ax: Axes, fig: Figure, histogram: DirectionHistogram) -> None:
    from matplotlib.colors import LogNorm

    x, y = _lambert(histogram.directions)
    rel = histogram.counts / max(float(histogram.counts.mean()), 1e-300)
    empty = rel <= 0
    size = max(12.0, min(80.0, 15000.0 / max(rel.size, 1)))
    ax.scatter(x[empty], y[empty], s=size, c="0.85", lw=0, label="no views")
    top = max(1, int(round(0.05 * rel.size)))
    share = float(np.sort(histogram.fraction)[::-1][:top].sum())
    ax.text(
        1.0,
        0.0,
        f"busiest 5% of directions:\n{100 * share:.0f}% of the views",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=9,
    )
    sc = None
    if np.any(~empty):
        lo, hi = float(rel[~empty].min()), float(rel[~empty].max())
        norm = LogNorm(vmin=min(lo, 0.1), vmax=max(hi, 10.0))
        sc = ax.scatter(
            x[~empty], y[~empty], c=rel[~empty], s=size, cmap="viridis", norm=norm, lw=0
        )
    _sphere_grid(ax)
    ax.set_xlim(-1.18, 1.18)
    ax.set_ylim(-1.18, 1.18)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(
        f"Projection directions ({histogram.n_particles} particles × {histogram.group_order})\n"
        "(Lambert equal-area, centre = z, rings = tilt)",
        fontsize=10,
    )
    if np.any(empty):
        ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(-0.05, -0.08), framealpha=0.85)
    if sc is not None:
        cb = fig.colorbar(sc, ax=ax, shrink=0.85)
        cb.set_label("views per direction / mean")


def _scf_panel(ax: Axes, scf: np.ndarray, voxel_size: float, box: int) -> None:
    s = np.arange(scf.size)
    f = s / (box * voxel_size)
    ax.plot(f[1:], scf[1:], color="tab:blue", lw=1.6, marker="o", ms=2.5)
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--", label="uniform sampling")
    ax.set_xlim(0, f[-1])
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("1 / (mean(S) · mean(1/S)) per shell")
    ax.set_title("SCF-like sampling uniformity (0 = some voxel never sampled)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _resolution_axis(ax)


def _density_slices(axes: Sequence[Axes], fig: Figure, density: np.ndarray, voxel_size: float):
    vol = np.asarray(density)
    n = vol.shape[0]
    c = n // 2
    step = 1.0 / (n * voxel_size)
    lo, hi = (-c - 0.5) * step, (n - 1 - c + 0.5) * step
    im = None
    for ax, (title, img, xl, yl) in zip(
        axes,
        (
            ("FSD3D central XY slice (k_z = 0)", vol[c], "k_x (1/Å)", "k_y (1/Å)"),
            ("FSD3D central XZ slice (k_y = 0)", vol[:, c, :], "k_x (1/Å)", "k_z (1/Å)"),
        ),
        strict=True,
    ):
        im = ax.imshow(
            img,
            origin="lower",
            cmap="magma",
            vmin=0.0,
            vmax=1.0,
            extent=(lo, hi, lo, hi),
            interpolation="nearest",
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.tick_params(labelsize=7)
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes), shrink=0.85)
        cb.set_label("sampling density (shell maximum = 1)")


def sampling_figure(
    histogram: DirectionHistogram,
    scf: np.ndarray,
    density: np.ndarray,
    voxel_size: float,
    path: str | os.PathLike,
    sym: str = "C1",
) -> None:
    """One PNG of how a particle set samples Fourier space (the ``fsd3d`` report).

    Panels: views per direction over the half sphere (Lambert equal-area projection,
    log colour scale relative to the mean, directions without views in grey); the
    SCF-like figure per shell (:func:`spisonet.fsd3d.scf_curve`) against 1/Å with a
    resolution axis; central XY and XZ slices of the normalised sampling density.

    Parameters
    ----------
    histogram : :func:`spisonet.fsd3d.direction_histogram` of the particles.
    scf : (box//2 + 1,) SCF-like values per shell.
    density : (box, box, box) normalised sampling density (fftshift-ed).
    voxel_size : Å per voxel.
    path : output PNG, written atomically.
    sym : point group, shown in the title.
    """
    density = np.asarray(density)
    box = int(density.shape[0])
    fig = _new_figure(13.0, 10.0)
    gs = fig.add_gridspec(2, 2)
    _sampling_sphere_panel(fig.add_subplot(gs[0, 0]), fig, histogram)
    _scf_panel(fig.add_subplot(gs[0, 1]), np.asarray(scf, dtype=np.float64), voxel_size, box)
    _density_slices([fig.add_subplot(gs[1, i]) for i in range(2)], fig, density, voxel_size)
    fig.suptitle(
        f"spisonet Fourier sampling report (box {box}, {voxel_size:g} Å/voxel, {sym})",
        fontsize=13,
        fontweight="bold",
    )
    _save(fig, path)
