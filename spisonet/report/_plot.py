"""Drawing helpers shared by the report figures.

A figure is a :class:`matplotlib.figure.Figure` on the Agg canvas, never ``pyplot``, so no
global state leaks into the caller's session, and it is saved as PNG through
:func:`spisonet.io.atomic_path`. Also here: the resolution axis (Å) over a frequency axis
(1/Å) and its round ticks, the FSC threshold lines, and the Lambert equal-area map of the
half sphere used by the direction panels. matplotlib is imported inside the functions so
that importing :mod:`spisonet.report` stays cheap.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from ..io import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_NICE_RESOLUTIONS = (100, 50, 30, 20, 15, 10, 8, 6, 5, 4, 3.5, 3, 2.5, 2, 1.5, 1.2, 1)


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


def _lambert(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lambert azimuthal equal-area projection of the upper half sphere onto the unit disc."""
    d = np.asarray(directions, dtype=np.float64)
    d = np.where(d[..., 2:3] < 0, -d, d)
    tilt = np.arccos(np.clip(d[..., 2], -1, 1))
    rho = np.sqrt(2.0) * np.sin(tilt / 2.0)  # 1 at the equator
    phi = np.arctan2(d[..., 1], d[..., 0])
    return rho * np.cos(phi), rho * np.sin(phi)


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
