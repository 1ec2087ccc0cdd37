"""Figures of resolution: FSC curves, and the one-page anisotropy report.

:func:`fsc_figure` plots FSC curves against 1/Å with a resolution axis in Å;
:func:`anisotropy_figure` summarises an :class:`~spisonet.anisotropy.AnisotropyReport`
(global and directional FSC, histogram of directional resolution, directional resolution
over the half sphere, central slices of the 3DFSC volume, a text summary).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._plot import (
    _lambert,
    _new_figure,
    _resolution_axis,
    _resolution_ticks,
    _save,
    _sphere_grid,
    _thresholds,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..anisotropy import AnisotropyReport
    from ..fsc_shells import FSCResult

__all__ = ["anisotropy_figure", "fsc_figure"]


def _fsc_panel(ax: Axes, report: AnisotropyReport) -> None:
    f = report.frequency
    c = report.cone_fsc
    mean, std = c.mean(axis=0), c.std(axis=0)
    ax.fill_between(
        f,
        c.min(axis=0),
        c.max(axis=0),
        color="tab:blue",
        alpha=0.18,
        lw=0,
        label="directional min…max",
    )
    ax.fill_between(
        f,
        mean - std,
        mean + std,
        color="tab:blue",
        alpha=0.35,
        lw=0,
        label="directional mean ± 1 std",
    )
    ax.plot(f, mean, color="tab:blue", lw=1.2, ls="--", label="directional mean")
    for idx, colour, name in (
        ((report.worst_index, "tab:purple", "worst"), (report.best_index, "tab:green", "best"))
        if report.directions_distinguishable
        else ()
    ):
        ax.plot(
            f,
            c[idx],
            color=colour,
            lw=1.0,
            label=f"{name} direction ({report.resolution_0143[idx]:.2f} Å)",
        )
    g = report.global_fsc
    ax.plot(f, g.fsc, color="black", lw=1.8, label=f"global FSC ({g.resolution_0143:.2f} Å)")
    _thresholds(ax)
    ax.set_xlim(0, f[-1])
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(f"Global and conical FSC ({report.n_directions} cones of {report.cone_angle:g}°)")
    ax.legend(fontsize=8, loc="upper right", framealpha=0.85)
    ax.grid(alpha=0.3)
    _resolution_axis(ax)


def _histogram_panel(ax: Axes, report: AnisotropyReport) -> None:
    n, apix = report.box, report.voxel_size
    res = report.resolution_0143
    # directional resolutions sit on shells: bars of one shell (or of a few shells when
    # the range is wide) on an axis linear in 1/Å (equal widths), labelled in Å
    shells = np.rint(n * apix / res).astype(int)
    lo, hi = int(shells.min()), int(shells.max())
    width = max(1, math.ceil((hi - lo + 1) / 40))
    counts = np.bincount((shells - lo) // width)
    step = 1.0 / (n * apix)
    freq = (lo + width * np.arange(counts.size) + 0.5 * (width - 1)) * step
    ax.bar(
        freq,
        counts,
        width=0.85 * width * step,
        color="tab:blue",
        alpha=0.85,
        edgecolor="black",
        lw=0.4,
    )
    g = report.global_fsc.resolution_0143
    st = report.stats("0.143")
    ax.axvline(1.0 / g, color="black", lw=1.5, label=f"global {g:.2f} Å")
    ax.axvline(
        1.0 / st["mean"],
        color="tab:red",
        lw=1.2,
        ls="--",
        label=f"mean {st['mean']:.2f} Å",
    )
    left, right = lo * step - width * step, hi * step + width * step
    ax.set_xlim(left, right)
    ticks = sorted({float(r) for r in n * apix / np.arange(lo, hi + 1)}, reverse=True)
    if len(ticks) > 6:
        ticks = _resolution_ticks(left, right, 6) or ticks[:: math.ceil(len(ticks) / 6)]
    ax.set_xticks([1.0 / t for t in ticks])
    ax.set_xticklabels([f"{t:.3g}" for t in ticks])
    ax.set_xlabel("directional resolution at FSC 0.143 (Å)")
    ax.set_ylabel("number of directions")
    ax.set_title(
        f"Directional resolution: {st['min']:.2f}–{st['max']:.2f} Å, std {st['std']:.2f} Å",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def _sphere_panel(ax: Axes, fig: Figure, report: AnisotropyReport) -> None:
    x, y = _lambert(report.directions)
    res = report.resolution_0143
    # the colour range spans at least 0.9–1.5 × the global resolution, so that a spread
    # of one shell in an isotropic map does not look like anisotropy
    g = report.global_fsc.resolution_0143
    vmin, vmax = min(float(res.min()), 0.9 * g), max(float(res.max()), 1.5 * g)
    size = max(8.0, min(60.0, 9000.0 / max(report.n_directions, 1)))
    sc = ax.scatter(x, y, c=res, s=size, cmap="viridis_r", vmin=vmin, vmax=vmax, lw=0)
    _sphere_grid(ax)
    marks = (
        ((report.worst_index, "X", "red", "worst"), (report.best_index, "*", "white", "best"))
        if report.directions_distinguishable
        else ()
    )
    for idx, marker, colour, name in marks:
        wx, wy = _lambert(report.directions[idx])
        ax.scatter(
            [wx],
            [wy],
            marker=marker,
            s=160,
            c=colour,
            edgecolors="black",
            lw=1.0,
            label=f"{name}: {res[idx]:.2f} Å",
            zorder=5,
        )
    ax.set_xlim(-1.18, 1.18)
    ax.set_ylim(-1.18, 1.18)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(
        "Directional resolution over the sphere\n(Lambert equal-area, centre = z, rings = tilt)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(-0.05, -0.08), framealpha=0.85)
    cb = fig.colorbar(sc, ax=ax, shrink=0.85)
    cb.set_label("resolution at 0.143 (Å)")


def _ring_resolutions(nyquist: float) -> list[float]:
    """Up to 4 round resolutions (Å) for rings, spread evenly in frequency up to Nyquist."""
    return _resolution_ticks(0.1 / nyquist, 1.0 / nyquist, 4)


def _slice_panels(axes: Sequence[Axes], fig: Figure, report: AnisotropyReport) -> None:
    from matplotlib import patheffects

    vol = report.fsc3d
    n, apix = report.box, report.voxel_size
    c = n // 2
    fmax = (n - 1 - c) / (n * apix)
    fmin = -c / (n * apix)
    extent = (fmin - 0.5 / (n * apix), fmax + 0.5 / (n * apix)) * 2
    slices = (
        ("central XY slice (k_z = 0)", vol[c], "k_x (1/Å)", "k_y (1/Å)"),
        ("central XZ slice (k_y = 0)", vol[:, c, :], "k_x (1/Å)", "k_z (1/Å)"),
        ("central YZ slice (k_x = 0)", vol[:, :, c], "k_y (1/Å)", "k_z (1/Å)"),
    )
    nyquist = 2.0 * apix
    rings = _ring_resolutions(nyquist)
    im = None
    t = np.linspace(0, 2 * np.pi, 200)
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    for ax, (title, img, xl, yl) in zip(axes, slices, strict=True):
        im = ax.imshow(
            img,
            origin="lower",
            cmap="viridis",
            vmin=0.0,
            vmax=1.0,
            extent=(extent[0], extent[1], extent[2], extent[3]),
            interpolation="nearest",
        )
        for r in rings:
            f = 1.0 / r
            ax.plot(f * np.cos(t), f * np.sin(t), color="white", lw=0.7, ls="--")
            ax.text(
                f * np.cos(np.radians(40)),
                f * np.sin(np.radians(40)),
                f"{r:g} Å",
                color="white",
                fontsize=8,
                ha="left",
                va="bottom",
                path_effects=outline,
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.tick_params(labelsize=7)
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes), shrink=0.85)
        cb.set_label("cone FSC (3DFSC volume)")


def _summary_text(report: AnisotropyReport) -> str:
    st = report.stats("0.143")
    st5 = report.stats("0.5")
    w, b = report.worst_index, report.best_index
    from ..anisotropy import direction_to_relion

    wt, wr = direction_to_relion(report.directions[w])
    bt, br = direction_to_relion(report.directions[b])
    sph = "n/a" if not math.isfinite(report.sphericity) else f"{report.sphericity:.3f}"
    g = report.global_fsc
    lines = [
        "Summary",
        "",
        f"box {report.box} voxels, {report.voxel_size:g} Å/voxel",
        f"{report.n_directions} cones, half-angle {report.cone_angle:g}°",
        "",
        f"global FSC 0.143   {g.resolution_0143:7.2f} Å",
        f"global FSC 0.5     {g.resolution_05:7.2f} Å",
        "",
        "directional 0.143 (Å)",
        f"  single cones {st['min']:.2f}–{st['max']:.2f}",
        f"  mean {st['mean']:.2f}  std {st['std']:.2f}",
        "directional 0.5 (Å)",
        f"  single cones {st5['min']:.2f}–{st5['max']:.2f}",
        f"  mean {st5['mean']:.2f}  std {st5['std']:.2f}",
        "",
    ]
    if report.directions_distinguishable:
        # the named directions' own resolutions (not the single-cone extremes)
        lines += [
            f"worst: tilt {float(wt):5.1f}°  rot {float(wr):6.1f}°",
            f"       {report.resolution_0143[w]:.2f} Å at 0.143",
            f"best:  tilt {float(bt):5.1f}°  rot {float(br):6.1f}°",
            f"       {report.resolution_0143[b]:.2f} Å at 0.143",
        ]
    else:
        lines += [
            "worst / best direction: none",
            "  cannot tell directions apart:",
            "  all within one Fourier shell",
        ]
    lines += [
        "",
        f"sphericity  {sph}  (3DFSC ≥ {report.sphericity_threshold:g})",
        f"area ratio  {report.area_ratio:.3f}  (worst/best cone)",
    ]
    return "\n".join(lines)


def anisotropy_figure(report: AnisotropyReport, path: str | os.PathLike) -> None:
    """One PNG summarising an :class:`~spisonet.anisotropy.AnisotropyReport`.

    Panels: global FSC with the spread of the directional FSCs (min…max band, mean,
    ±1 std, worst and best) against 1/Å with a resolution axis in Å; histogram of the
    directional 0.143 resolution; directional resolution over the half sphere (Lambert
    equal-area projection, worst and best marked); the three central slices of the 3DFSC
    volume with resolution rings. Written atomically to ``path``.
    """
    fig = _new_figure(18.0, 11.0)
    gs = fig.add_gridspec(2, 4, width_ratios=(1.0, 1.0, 1.0, 1.15))
    ax_fsc = fig.add_subplot(gs[0, :2])
    ax_hist = fig.add_subplot(gs[0, 2])
    ax_sphere = fig.add_subplot(gs[0, 3])
    ax_slices = [fig.add_subplot(gs[1, i]) for i in range(3)]
    _fsc_panel(ax_fsc, report)
    _histogram_panel(ax_hist, report)
    _sphere_panel(ax_sphere, fig, report)
    _slice_panels(ax_slices, fig, report)
    ax_text = fig.add_subplot(gs[1, 3])
    ax_text.set_axis_off()
    ax_text.text(
        0.0,
        1.0,
        _summary_text(report),
        ha="left",
        va="top",
        fontsize=10,
        family="monospace",
        transform=ax_text.transAxes,
    )
    fig.suptitle("spisonet anisotropy report", fontsize=14, fontweight="bold")
    _save(fig, path)


def fsc_figure(
    curves: Mapping[str, FSCResult],
    path: str | os.PathLike,
    title: str = "Fourier shell correlation",
) -> None:
    """FSC curves (against 1/Å, with a resolution axis in Å) to a PNG.

    Parameters
    ----------
    curves : ``{label: FSCResult}``; each legend entry gives its 0.143 resolution.
    path : output PNG, written atomically.
    title : figure title.
    """
    fig = _new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    fmax = 0.0
    for label, res in curves.items():
        ax.plot(res.frequency, res.fsc, lw=1.5, label=f"{label} ({res.resolution_0143:.2f} Å)")
        fmax = max(fmax, float(np.max(res.frequency)))
    _thresholds(ax)
    ax.set_xlim(0, fmax if fmax > 0 else 1.0)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _resolution_axis(ax)
    _save(fig, path)
