"""Figures of a correction run: the training loss per epoch and the trust check per shell.

:func:`loss_figure` labels each part of the loss in plain words (:data:`LOSS_LABELS`,
with the caption :data:`LOSS_CAPTION`); :func:`trust_figure` shows how much of the hidden
measured signal the network put back, shell by shell.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._plot import _new_figure, _resolution_axis, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "LOSS_CAPTION",
    "LOSS_LABELS",
    "loss_figure",
    "measured_check_figure",
    "trust_figure",
]


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


def trust_figure(trust: Any, voxel_size: float, box: int, path: str | os.PathLike) -> None:
    """The trust check (:class:`spisonet.correction.trust.TrustCheck`) as a PNG.

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
    verdict = trust.verdict
    if verdict == "thin band":  # the score stays, but it says nothing about the cone
        verdict = "thin measured band: cannot vouch for the cone"
    ax.set_title(f"trust check: {score} recovered ({verdict})", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    _save(fig, path)


def measured_check_figure(
    check: dict[str, list[float | None]], voxel_size: float, box: int, path: str | os.PathLike
) -> None:
    """The measured-data check (``CorrectionResult.measured_check``) as a PNG.

    Per shell, over the measured directions: the half maps' estimate of the network's and
    of the raw map's correlation with the truth, and the network's share of the final map
    there (1: its output kept); the shells where the data were mixed back in are shaded.
    """

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in check[key]], dtype=np.float64)

    share, rho_o, rho_h = column("network_share"), column("rho_network"), column("rho_raw")
    shells = np.arange(len(share))
    freq = shells / (box * voxel_size)
    fig = _new_figure(7.5, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ok = shells >= 1
    ax.plot(freq[ok], rho_h[ok], "-", color="grey", label="raw map (estimated)")
    ax.plot(freq[ok], rho_o[ok], "-", color="tab:blue", label="network (estimated)")
    ax.plot(freq[ok], share[ok], ":", color="tab:orange", label="network's share kept")
    mixed = ok & (share < 1.0)
    for f in freq[mixed]:
        ax.axvspan(f - 0.5 / (box * voxel_size), f + 0.5 / (box * voxel_size),
                   color="tab:red", alpha=0.08, lw=0)  # fmt: skip
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("correlation with the truth / share")
    _resolution_axis(ax)
    n_mixed = int(mixed.sum())
    ax.set_title(
        f"measured-data check: data mixed back in at {n_mixed} shell(s)"
        if n_mixed
        else "measured-data check: the network's output kept everywhere",
        fontsize=11,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    _save(fig, path)
