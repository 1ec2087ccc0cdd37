"""The before/after figure of a correction against a known ground truth (the demo)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..fourier import lowpass
from ._plot import _resolution_axis

__all__ = ["FSC_THRESHOLD_LABELS", "before_after_figure"]


#: Legend labels of the FSC thresholds in :func:`before_after_figure`.
FSC_THRESHOLD_LABELS = {0.143: "FSC = 0.143", 0.5: "FSC = 0.5"}


def before_after_figure(
    ground_truth: np.ndarray,
    raw: np.ndarray,
    corrected: np.ndarray,
    metrics: dict[str, dict[str, Any]],
    voxel_size: float,
    path: str | os.PathLike,
    *,
    mask: np.ndarray | None = None,
    lowpass_resolution: float | None = None,
):
    """A PNG comparing the ground truth, the map before correction and after, like with like.

    Top rows: the central z-y slice (x = n/2, the view axis z pointing up, so a missing
    cone around z shows as smearing along z) and x-y slice of the three maps, each
    low-passed at the same ``lowpass_resolution`` Å (None: unfiltered; the demo uses the
    raw half maps' 0.143 FSC resolution), z-scored inside ``mask`` and drawn on one grey
    scale. Bottom row: FSC with the ground truth, computed the same way for both maps:
    global, in the 20° cone around the view axis and along the best direction, with the
    FSC = 0.143 and 0.5 lines in the legends; a caption says all this under the panels.
    ``metrics`` is :func:`ground_truth_metrics`' output with keys ``"raw"`` and
    ``"corrected"``.

    Returns
    -------
    The :class:`matplotlib.figure.Figure` (already written to ``path``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io import atomic_path

    n = np.asarray(ground_truth).shape[0]
    c = n // 2
    inside = np.ones((n, n, n), bool) if mask is None else np.asarray(mask) > 0.5
    if not inside.any():
        inside[:] = True

    def shown(vol: np.ndarray) -> np.ndarray:
        v = np.asarray(vol, dtype=np.float32)
        if lowpass_resolution is not None:
            v = lowpass(v, lowpass_resolution, voxel_size)
        sd = float(v[inside].std())
        return (v - float(v[inside].mean())) / (sd if sd > 0 else 1.0)

    maps = {
        "ground truth": shown(ground_truth),
        "before (raw half-map average)": shown(raw),
        "after (corrected)": shown(corrected),
    }
    truth_slices = np.concatenate([maps["ground truth"][:, :, c], maps["ground truth"][c]])
    vmin, vmax = np.percentile(truth_slices, [0.5, 99.5])
    fig = Figure(figsize=(12, 11.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(4, 3, height_ratios=[1, 1, 1.15, 0.28])
    for col, (name, v) in enumerate(maps.items()):
        for row, (sl, label) in enumerate(((v[:, :, c], "z-y slice (z up)"), (v[c], "x-y slice"))):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(sl, cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
            ax.set_title(f"{name}: {label}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    shells = np.arange(n // 2 + 1)
    freq = shells / (n * voxel_size)
    before, after = metrics["raw"], metrics["corrected"]
    panels = (
        (
            f"global; 0.143: {before['res0143_global']:.1f} → {after['res0143_global']:.1f} Å, "
            f"0.5: {before['res05_global']:.1f} → {after['res05_global']:.1f} Å",
            "global_fsc",
        ),
        (
            f"20° cone around the view axis z; mean (shells 2–{n // 4}) "
            f"{before['cone_mean']:.2f} → {after['cone_mean']:.2f}",
            "axis_fsc",
        ),
        ("20° cone along the best-measured direction", "best_fsc"),
    )
    for col, (title, key) in enumerate(panels):
        ax = fig.add_subplot(grid[2, col])
        for m, label, style, colour in (
            (before, "before (raw average)", "--", "tab:blue"),
            (after, "after (corrected)", "-", "tab:green"),
        ):
            curve = np.asarray(m[key])
            ax.plot(freq[: curve.size], curve, style, color=colour, lw=1.5, label=label)
        for level, colour, ls in ((0.143, "tab:red", "--"), (0.5, "tab:orange", ":")):
            ax.axhline(level, color=colour, lw=0.9, ls=ls, label=FSC_THRESHOLD_LABELS[level])
        if lowpass_resolution is not None:
            ax.axvline(
                1.0 / lowpass_resolution,
                color="0.4",
                lw=0.8,
                ls="-.",
                label=f"slices low-passed at {lowpass_resolution:.1f} Å",
            )
        ax.axhline(0.0, color="0.6", lw=0.6)
        lowest = min(float(np.nanmin(np.asarray(m[key])[1:])) for m in (before, after))
        ax.set_ylim(max(-1.0, min(-0.1, lowest - 0.05)), 1.05)
        ax.set_xlim(0, freq[-1])
        ax.set_xlabel("spatial frequency (1/Å)")
        ax.set_ylabel("FSC with the ground truth")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        _resolution_axis(ax)
    filtered = (
        f"low-passed at {lowpass_resolution:.1f} Å (the raw half maps' 0.143 FSC resolution)"
        if lowpass_resolution is not None
        else "unfiltered"
    )
    caption = (
        f"Slices: every map {filtered}, z-scored inside the mask, one grey scale. Curves: FSC "
        "of each whole map with the ground truth inside the mask, computed the same way "
        "before and after. In the cone around the view axis z no view measured the data; "
        "along the best direction they were measured."
    )
    cap = fig.add_subplot(grid[3, :])
    cap.axis("off")
    handles, labels = fig.axes[-2].get_legend_handles_labels()  # the last FSC panel's
    cap.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9, frameon=False)
    cap.text(0.0, 0.45, caption, va="top", ha="left", fontsize=9.5, wrap=True)
    fig.suptitle("spisonet: before / after anisotropy correction", fontweight="bold")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return fig
