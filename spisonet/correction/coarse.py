"""The coarse pass: the box's lowest shells corrected by a network that sees the whole box.

The main network trains on cubes of ``cube_size`` cut from the box. A cube is a window of
the map, and it holds the box's shell s as its own shell s · cube / n: in a 48³ box with
32³ cubes the box's shells 2 … 6 (84 … 28 Å at 3.5 Å/voxel) are the cubes' shells 1.3 … 4,
which the cube barely resolves, and P_W, which acts on the cube periodically, disagrees
with the windowed data there. The coarse pass bins the whole (prepared) box by 2 in
Fourier space (:func:`spisonet.fourier.fourier_crop`: the same frequencies up to the box's
shell n/4), trains one more network per ensemble member on that whole box as its single
training cube, with W cropped the same way (exact: the binned box is periodic as P_W
assumes), predicts it, pads it back (:func:`spisonet.fourier.fourier_pad`) and hands the
box's lowest shells over to it: its output below shell n/12, the main network's from
shell n/6 on, linear between (:func:`coarse_weight`), and only in the directions the data
did not measure (:func:`blend_coarse`: the main network keeps the measured ones). Boxes
larger than twice the training cube are binned further, to the cube's edge c (one coarse
step costs no more than a main one), and the hand-over follows the grid: c/6 … c/3 of the
box's shells.

Opt-in (``--coarse-pass``): measured on the evaluation matrix with the same main networks
with and without it (benchmarks/RESULTS.md, sessions 26–28). Blended into every direction
(sessions 26–27) it removed the drop at the lowest global shells on both RELION-noise cells
but cost worst-cone gain; blended into the unmeasured directions only (session 28) it halved
the mean worst drop over four RELION-noise ensembles at an unchanged mean gain (+0.100 →
+0.102, per ensemble −0.023 … +0.031), for 40–80 % more training time: no default can be
drawn from that. It needs two halves and training (not a pretrained model, not
``independent`` networks).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import InvalidValueError
from ..fourier import fourier_blend, fourier_crop, fourier_pad, frequency_radius
from ..maps import zscore
from ..progress import Progress
from .settings import CorrectionSettings, smallest_tile

__all__ = [
    "blend_coarse",
    "coarse_applies",
    "coarse_box",
    "coarse_outputs",
    "coarse_weight",
]


def coarse_box(n: int, s: CorrectionSettings) -> int:
    """Edge of the coarse pass's grid for an n³ box: n / 2, at most the training cube's
    edge (so that a step of the coarse network costs no more than one of the main
    network), rounded down to a multiple of the U-Net's 2^(levels − 1) (at least one)."""
    m = 2 ** (len(s.widths) - 1)
    return max(m, min(n // 2, s.cube_size) // m * m)


def coarse_weight(n: int, grid: int | None = None) -> np.ndarray:
    """(n, n, n) fftshift-ed weight of the coarse output made on a ``grid``³ grid (default
    n / 2): 1 up to shell grid/6, 0 from shell grid/3 on (n/12 and n/6 for the default
    grid), linear in |k| between (float32)."""
    c = n / 2 if grid is None else grid
    lo, hi = c / 6, c / 3
    r = frequency_radius(n)
    return np.clip((hi - r) / (hi - lo), 0.0, 1.0).astype(np.float32)


def coarse_applies(s: CorrectionSettings, two_halves: bool, pretrained: bool) -> tuple[bool, str]:
    """(whether the coarse pass runs, why not when it was asked for and cannot)."""
    if not s.coarse_pass:
        return False, ""
    reasons = []
    if not two_halves:
        reasons.append("one map")
    if pretrained or s.epochs == 0:
        reasons.append("a pretrained model")
    if s.independent:
        reasons.append("independent networks")
    if reasons:
        return False, f"--coarse-pass ignored ({', '.join(reasons)})"
    return True, ""


def coarse_outputs(
    network_input: list[np.ndarray],
    weight_gated: np.ndarray | None,
    s: CorrectionSettings,
    voxel_size: float,
    notes: list[str],
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """Each half's coarse-pass output at the box's size, in the units of ``network_input``.

    Parameters
    ----------
    network_input : the (n, n, n) halves as the main network sees them (z-scored).
    weight_gated : (n, n, n) W before it is resized to a cube (3D FSC × gate); None: W = 1.
    s : the run's settings (``ensemble`` networks, seeds ``seed`` …).
    voxel_size : Å per voxel (for the notes).
    """
    from ..nn.operators import prepare_sampling_weight
    from .pipeline import PreparedMaps, SamplingWeight, predict_maps, train_networks

    n = network_input[0].shape[0]
    c = coarse_box(n, s)
    binned = [fourier_crop(z, c) for z in network_input]
    scale = [(float(b.mean()), float(b.std())) for b in binned]
    z = [zscore(b) for b in binned]
    lo = n // 2 - c // 2
    if weight_gated is None:
        w = np.ones((c, c, c), dtype=np.float32)
    else:
        w = prepare_sampling_weight(weight_gated[lo : lo + c, lo : lo + c, lo : lo + c], c)
    edge = min(s.predict_edge, c // 2)
    tile = smallest_tile(c, edge, s.widths)
    cs = replace(s, cube_size=c, predict_edge=edge, predict_crop_size=tile, coarse_pass=False)
    maps = PreparedMaps(z, z, z)
    nets = train_networks(
        maps,
        np.ones((c, c, c), dtype=np.float32),
        SamplingWeight(w, None, None),
        cs,
        [],  # its notes would repeat the main networks'
        progress=_prefixed(progress),
    )
    outs = predict_maps(maps, nets, _prefixed(progress))
    notes.append(
        f"coarse pass: {len(nets.models)} network(s) trained on the whole box binned to "
        f"{c}³; their output stands at resolutions coarser than "
        f"{6 * n / c * voxel_size:.0f} Å (shell {c / 6:.1f}), the main network's at "
        f"{3 * n / c * voxel_size:.0f} Å (shell {c / 3:.1f}) and finer, blended between"
    )
    return [fourier_pad(o * sd + mu, n) for o, (mu, sd) in zip(outs, scale, strict=True)]


def _prefixed(progress: Progress | None) -> Progress | None:
    """``progress`` with ``"coarse "`` before every stage (``"coarse train (1/3)"`` …)."""
    if progress is None:
        return None

    def coarse(stage: str, done: float, total: float, info=None) -> None:
        progress(f"coarse {stage}", done, total, info)

    return coarse


def blend_coarse(
    fine: list[np.ndarray],
    coarse: list[np.ndarray],
    grid: int | None = None,
    measured: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Each half's main-network output with its lowest shells taken from the coarse pass
    made on a ``grid``³ grid (:func:`coarse_weight`; default n / 2).

    ``measured``: (n, n, n) fftshift-ed weight in [0, 1] of the directions the data
    measured (the measured-data step's, :func:`spisonet.correction.pipeline.measured_weights`);
    the coarse output then stands only where they were not, with weight
    ``coarse_weight · (1 − measured)``: the main network keeps the measured directions,
    which the measured-data step judges afterwards, and the coarse one fills the missing
    region's lowest shells from the whole box (on four RELION-noise ensembles it beat the
    blend over all directions in gain on all four and in worst drop on three;
    benchmarks/RESULTS.md, session 28). None: all directions."""
    n = fine[0].shape[0]
    w = coarse_weight(n, grid)
    if measured is not None:
        m = np.asarray(measured, dtype=np.float32)
        if m.shape != (n, n, n):
            raise InvalidValueError(f"measured weight {m.shape} does not match the box {n}³")
        w = w * (1.0 - np.clip(m, 0.0, 1.0))
    return [fourier_blend(f, c, w) for f, c in zip(fine, coarse, strict=True)]
