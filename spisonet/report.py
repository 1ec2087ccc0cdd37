"""Figures (PNG) and JSON reports.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never
through ``pyplot``, so no global state leaks into the caller's session. Every file is
written atomically through :func:`spisonet.io.atomic_path`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .io import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .anisotropy import AnisotropyReport
    from .fsc import FSCResult
    from .fsd3d import DirectionHistogram

__all__ = ["anisotropy_figure", "fsc_figure", "loss_figure", "sampling_figure", "write_json"]

_NICE_RESOLUTIONS = (100, 50, 30, 20, 15, 10, 8, 6, 5, 4, 3.5, 3, 2.5, 2, 1.5, 1.2, 1)


# --------------------------------------------------------------------------- helpers
def _resolution_ticks(f_lo: float, f_hi: float, max_ticks: int = 7) -> list[float]:
    """Round resolutions (Å) whose frequencies lie in (f_lo, f_hi], at least
    (f_hi − f_lo)/max_ticks apart in 1/Å (kept from the fine end), coarse to fine."""
    gap = (f_hi - f_lo) / max_ticks
    kept: list[float] = []
    for r in sorted(_NICE_RESOLUTIONS):  # fine to coarse
        f = 1.0 / r
        if f_lo < f <= f_hi and all(abs(f - 1.0 / k) >= gap for k in kept):
            kept.append(r)
    return sorted(kept, reverse=True)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _clean(obj: Any) -> Any:
    """Replace non-finite floats by None, recursively (JSON has no NaN / inf)."""
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    return obj


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically; NaN / inf are written as ``null``.

    Parameters
    ----------
    path : output file.
    data : mapping of JSON-serialisable values (numpy scalars and arrays are converted).
    """
    text = json.dumps(_clean(data), indent=2, default=_json_default, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


def _inverse(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.full_like(x, 1e12)  # finite stand-in for 1/0 (axis limits must be finite)
    np.divide(1.0, x, out=out, where=np.abs(x) > 1e-12)
    return out


def _resolution_axis(ax: Axes) -> None:
    """Secondary x axis (top) in Å for an x axis in 1/Å."""
    top = ax.secondary_xaxis("top", functions=(_inverse, _inverse))
    top.set_xlabel("resolution (Å)")
    lo, hi = ax.get_xlim()
    ticks = _resolution_ticks(lo, hi, 8)
    top.set_xticks(ticks)
    top.set_xticklabels([f"{t:g}" for t in ticks])


def _thresholds(ax: Axes) -> None:
    ax.axhline(0.143, color="tab:red", lw=0.9, ls="--", label="0.143")
    ax.axhline(0.5, color="tab:orange", lw=0.9, ls=":", label="0.5")
    ax.axhline(0.0, color="0.6", lw=0.6)


# --------------------------------------------------------------------------- anisotropy
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
    ax.set_title(
        f"Global and conical FSC ({report.n_directions} cones of {report.cone_angle_deg:g}°)"
    )
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


def _lambert(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lambert azimuthal equal-area projection of the upper half sphere onto the unit disc."""
    d = np.asarray(directions, dtype=np.float64)
    d = np.where(d[..., 2:3] < 0, -d, d)
    tilt = np.arccos(np.clip(d[..., 2], -1, 1))
    rho = np.sqrt(2.0) * np.sin(tilt / 2.0)  # 1 at the equator
    phi = np.arctan2(d[..., 1], d[..., 0])
    return rho * np.cos(phi), rho * np.sin(phi)


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
    from .anisotropy import direction_to_relion

    wt, wr = direction_to_relion(report.directions[w])
    bt, br = direction_to_relion(report.directions[b])
    sph = "n/a" if not math.isfinite(report.sphericity) else f"{report.sphericity:.3f}"
    g = report.global_fsc
    lines = [
        "Summary",
        "",
        f"box {report.box} voxels, {report.voxel_size:g} Å/voxel",
        f"{report.n_directions} cones, half-angle {report.cone_angle_deg:g}°",
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


def _sphere_grid(ax) -> None:
    """Tilt rings (30°, 60°, 90°) and x/y labels of an equal-area hemisphere map."""
    t = np.linspace(0, 2 * np.pi, 200)
    for tilt in (30, 60, 90):
        rho = np.sqrt(2.0) * np.sin(np.radians(tilt) / 2.0)
        ax.plot(rho * np.cos(t), rho * np.sin(t), color="0.5", lw=0.6)
        ax.text(
            rho * np.cos(np.radians(100)),
            rho * np.sin(np.radians(100)),
            f"{tilt}°",
            fontsize=8,
            color="black",
            ha="center",
            va="center",
            zorder=6,
            bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8},
        )
    for rot, label in ((0, "x"), (90, "y"), (180, "−x"), (270, "−y")):
        ax.text(
            1.09 * np.cos(np.radians(rot)),
            1.09 * np.sin(np.radians(rot)),
            label,
            ha="center",
            va="center",
            fontsize=9,
        )


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


# --------------------------------------------------------------------------- general
#: Plain-words legend labels of the training-loss parts (keys of the loss history).
LOSS_LABELS = {
    "total": "total: the weighted sum that is minimised",
    "consistency": "consistency: the prediction, sampled by W, vs its own half map",
    "equivariance": "equivariance: a rotated prediction, sampled by W and restored, vs itself",
    "consistency2": "Noise2Noise consistency: the prediction, sampled by W, vs the other half",
    "equivariance2": "Noise2Noise equivariance: that restoration vs the other half's prediction",
}

LOSS_CAPTION = (
    "L1 losses, mean per epoch. W: where the data were measured (the 3D FSC). Consistency "
    "checks the prediction only there; equivariance teaches the network to fill in what was "
    "not measured. The Noise2Noise terms compare with the other, independent half map, so "
    "they keep its noise and level off above zero."
)


def loss_figure(
    history: Mapping[str, Sequence[float]] | Sequence[float], path: str | os.PathLike
) -> Figure:
    """Training curves to a PNG, each loss part labelled in plain words.

    Parameters
    ----------
    history : ``{name: values per epoch}`` (e.g. ``{"total": [...], "consistency": [...]}``)
        or a plain sequence of per-epoch losses. Known names get the labels of
        :data:`LOSS_LABELS`; a caption (:data:`LOSS_CAPTION`) explains them.
    path : output PNG, written atomically.

    Returns
    -------
    The figure (already written to ``path``).
    """
    curves = {"loss": list(history)} if not isinstance(history, Mapping) else dict(history)
    known = any(name in LOSS_LABELS for name in curves)
    fig = _new_figure(8.0, 6.4) if known else _new_figure(7.0, 4.5)
    grid = fig.add_gridspec(2 if known else 1, 1, height_ratios=[3, 1.25] if known else [1])
    ax = fig.add_subplot(grid[0])
    positive = True
    for name, values in curves.items():
        y = np.asarray(values, dtype=np.float64)
        if y.size == 0:
            continue
        positive &= bool(np.all(y[np.isfinite(y)] > 0))
        label = LOSS_LABELS.get(name, name)
        style = {"lw": 2.2, "color": "black"} if name == "total" else {}
        ax.plot(np.arange(1, y.size + 1), y, marker="o", ms=3, label=label, **style)
    if positive and ax.lines:
        ax.set_yscale("log")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (L1)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    if known:  # legend and caption in a panel of their own, under the curves
        below = fig.add_subplot(grid[1])
        below.axis("off")
        handles, labels = ax.get_legend_handles_labels()
        below.legend(handles, labels, loc="upper left", fontsize=8, frameon=False)
        below.text(0.0, 0.0, LOSS_CAPTION, va="bottom", fontsize=8.5, wrap=True)
    elif ax.lines:
        ax.legend(fontsize=8)
    _save(fig, path)
    return fig


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


# --------------------------------------------------------------------------- sampling
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


def trust_figure(trust: Any, voxel_size: float, box: int, path: str | os.PathLike) -> None:
    """The trust check (:class:`spisonet.trust.TrustCheck`) as a PNG.

    Per shell: the fraction of the hidden measured signal the network put back (1 =
    all of it, 0 = none), the two half maps' own agreement (FSC) in the hidden region,
    and the scored shells shaded; the score and its verdict in the title.
    """
    n_shells = len(trust.recovery)
    shells = np.arange(n_shells)
    freq = shells / (box * voxel_size)
    fig = _new_figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    rec = np.asarray(trust.recovery, dtype=np.float64)
    ok = np.isfinite(rec) & (shells >= 2)  # shells 0–1 hold a handful of voxels
    ax.plot(freq[ok], np.clip(rec[ok], -0.5, 1.5), "o-", ms=3, label="hidden signal recovered")
    if trust.data_fsc is not None:
        ax.plot(freq, trust.data_fsc, "--", color="grey", label="half maps' FSC in that region")
    if len(trust.shells_scored):
        lo, hi = freq[min(trust.shells_scored)], freq[max(trust.shells_scored)]
        ax.axvspan(lo, hi, color="tab:green", alpha=0.08, label="shells scored")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylim(-0.5, 1.5)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("fraction recovered / FSC")
    _resolution_axis(ax)
    score = "n/a" if trust.score is None else f"{round(100 * trust.score)} %"
    ax.set_title(f"trust check: {score} recovered ({trust.verdict})", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, path)
