"""Scoring a correction against a known ground truth (simulations and benchmarks).

Pure numerics, no files. The *worst cone* is where a preferred-orientation data set is
least measured: the cone (half-angle ``cone_angle``) around the direction whose
cone FSC between the uncorrected map and the truth, averaged over shells 2 … n/4, is
lowest. It is found from the truth, not assumed to lie along z, so side-view data (a
missing cone along x) and tilted distributions are scored where they are weak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._checks import check_cone_angle, check_cubic_map
from .._compat import renamed_parameter
from ..errors import InvalidValueError, MapShapeError

__all__ = [
    "ConeScore",
    "cone_figure_noise",
    "cone_gains",
    "cone_mean",
    "ground_truth_metrics",
    "hemisphere_directions",
    "near_worst_cones",
    "score_correction",
    "scored_shells",
    "worst_cone",
]


def hemisphere_directions(n: int = 300) -> np.ndarray:
    """``n`` near-uniform unit vectors (x, y, z) with z ≥ 0 (a cone FSC of u equals −u's).

    A Fibonacci spiral over the upper hemisphere; returns (n, 3) float64.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise InvalidValueError(f"n must be a positive integer; got {n!r}")
    i = np.arange(n, dtype=np.float64) + 0.5
    z = 1.0 - i / n  # uniform in z on (0, 1]: uniform area on the hemisphere
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    s = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    return np.stack([s * np.cos(phi), s * np.sin(phi), z], axis=1)


def scored_shells(n: int) -> tuple[int, int]:
    """Shells 2 … n/4 (both included): the band where a missing cone is scored, by the
    matrix and by the trust check."""
    return 2, n // 4


def _shell_band(n: int) -> slice:
    lo, hi = scored_shells(n)
    return slice(lo, hi + 1)


def cone_mean(curves: np.ndarray, n: int) -> np.ndarray:
    """Mean of cone-FSC curves (…, n//2 + 1) over shells 2 … n/4, ignoring empty shells."""
    band = np.asarray(curves, dtype=np.float64)[..., _shell_band(n)]
    with np.errstate(invalid="ignore"):
        return np.nanmean(band, axis=-1)


@renamed_parameter("cone_angle_deg", "cone_angle")
def worst_cone(
    raw: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    cone_angle: float = 20.0,
    directions: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """The least-measured direction of ``raw``, judged against the ``truth``.

    Parameters
    ----------
    raw : (n, n, n) the uncorrected map (e.g. the average of the two half maps).
    truth : (n, n, n) the ground truth.
    mask : optional (n, n, n) mask applied to both before the FFT.
    cone_angle : cone half-angle θ (degrees).
    directions : (m, 3) candidate directions (x, y, z); default
        :func:`hemisphere_directions` (300).

    Returns
    -------
    (direction (3,) unit vector (x, y, z), its cone mean): the direction whose cone FSC
    between ``raw`` and ``truth``, averaged over shells 2 … n/4, is lowest.
    """
    dirs, means = near_worst_cones(raw, truth, mask, 1, 0.0, cone_angle, directions)
    if len(dirs) == 0:
        raise InvalidValueError("no candidate cone holds a voxel of shells 2 … n/4")
    return dirs[0], float(means[0])


def near_worst_cones(
    raw: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    count: int = 8,
    separation: float = 15.0,
    cone_angle: float = 20.0,
    directions: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` least-measured directions of ``raw``, at least ``separation``° apart.

    Directions are taken greedily in order of their cone mean (:func:`worst_cone`'s
    figure: the cone FSC between ``raw`` and the ``truth`` over shells 2 … n/4, lowest
    first), skipping any within ``separation`` degrees of one already taken (u and −u are
    the same cone). The first is :func:`worst_cone`'s direction. Scoring a correction over
    all of them tells how much its worst-cone gain owes to the one cone chosen: at small
    boxes a cone holds a handful of voxels in its lowest shells and its figure is noisy.

    Returns (directions (m, 3) unit vectors (x, y, z), their cone means (m,)), m ≤ count.
    """
    from ..anisotropy import conical_fsc

    a, t = check_cubic_map(raw, "raw map"), check_cubic_map(truth, "ground truth")
    if a.shape != t.shape:
        raise MapShapeError(f"raw map {a.shape} and ground truth {t.shape} differ in shape")
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise InvalidValueError(f"count must be a positive integer; got {count!r}")
    if not 0 <= separation < 90:
        raise InvalidValueError(f"separation must be in [0, 90) degrees; got {separation}")
    dirs = hemisphere_directions() if directions is None else np.asarray(directions, float)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    means = cone_mean(conical_fsc(a, t, mask, dirs, cone_angle), a.shape[0])
    # NaN cone means (no voxel in any scored shell) sort last and are never taken
    order = np.argsort(np.where(np.isnan(means), np.inf, means), kind="stable")
    cos_sep = np.cos(np.radians(separation))
    taken: list[int] = []
    for i in order:
        if np.isnan(means[i]) or len(taken) == count:
            break
        if all(abs(float(dirs[i] @ dirs[j])) < cos_sep for j in taken):
            taken.append(int(i))
    return dirs[taken], means[taken]


def cone_gains(
    truth: np.ndarray,
    raw: np.ndarray,
    corrected: np.ndarray,
    directions: np.ndarray,
    mask: np.ndarray | None = None,
    cone_angle: float = 20.0,
) -> np.ndarray:
    """Gain of ``corrected`` over ``raw`` in the cone mean (shells 2 … n/4) of each of
    ``directions`` ((m, 3), x, y, z): (m,) float64, as :func:`score_correction`'s gain."""
    from ..anisotropy import conical_fsc

    t = check_cubic_map(truth, "ground truth")
    n = t.shape[0]
    dirs = np.asarray(directions, dtype=np.float64)
    before = cone_mean(conical_fsc(check_cubic_map(raw, "raw map"), t, mask, dirs, cone_angle), n)
    after = cone_mean(
        conical_fsc(check_cubic_map(corrected, "corrected map"), t, mask, dirs, cone_angle), n
    )
    return after - before


def cone_figure_noise(n: int, direction: np.ndarray, cone_angle: float = 20.0) -> float:
    """How precisely one cone's figure can be read at box ``n``: the standard deviation of
    the cone mean (shells 2 … n/4, :func:`cone_mean`) between two independent white-noise
    maps.

    A shell's cone FSC over N voxels of the full Fourier grid (N/2 independent complex
    values, Friedel pairs) has variance ≈ 1/N for unrelated maps, so the shell mean over
    S non-empty shells has ``sqrt(Σ 1/N_s) / S``. At small boxes the lowest shells hold a
    handful of voxels: a 20° cone at 48³ reads to about ±0.08 (RESULTS.md, session 22),
    which is the scale of a worst-cone gain that can be told from none.

    Parameters
    ----------
    n : box edge (voxels).
    direction : (3,) cone axis (x, y, z).
    cone_angle : cone half-angle θ (degrees).

    Returns
    -------
    float; NaN when no scored shell holds a voxel of the cone.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 4:
        raise InvalidValueError(f"n must be an integer box edge ≥ 4; got {n!r}")
    u = np.asarray(direction, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(u))
    if not np.isfinite(norm) or norm == 0:
        raise InvalidValueError(f"direction must be a non-zero vector; got {direction!r}")
    u = u / norm
    from ..fourier import frequency_axis, frequency_radius

    cos_t = np.cos(check_cone_angle(cone_angle))  # radians
    k = frequency_axis(n).astype(np.float64)
    kz, ky, kx = k[:, None, None], k[None, :, None], k[None, None, :]
    r = frequency_radius(n)
    shell = np.rint(r).astype(np.int64)
    lo, hi = scored_shells(n)
    inside = (np.abs(kx * u[0] + ky * u[1] + kz * u[2]) >= cos_t * r) & (shell >= lo)
    inside &= shell <= hi
    counts = np.bincount(shell[inside], minlength=hi + 1)[lo : hi + 1]
    counts = counts[counts > 0]
    if counts.size == 0:
        return float("nan")
    return float(np.sqrt(np.sum(1.0 / counts)) / counts.size)


@dataclass(frozen=True)
class ConeScore:
    """How a correction did against the truth.

    Attributes
    ----------
    direction : (3,) the worst-cone axis (x, y, z), found on the raw map.
    cone_raw, cone_corrected : mean cone FSC with the truth over shells 2 … n/4.
    gain : ``cone_corrected − cone_raw``.
    global_raw, global_corrected : (n//2 + 1,) global FSC with the truth.
    max_global_drop : the largest ``global_raw − global_corrected`` over shells
        1 … n/2 − 1 (positive: the correction lost something there).
    worst_drop_shell : where that drop is.
    figure_noise : :func:`cone_figure_noise` of the worst cone: a gain well under it
        cannot be told from none by this one cone.
    """

    direction: np.ndarray
    cone_raw: float
    cone_corrected: float
    gain: float
    global_raw: np.ndarray
    global_corrected: np.ndarray
    max_global_drop: float
    worst_drop_shell: int
    figure_noise: float = float("nan")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {
            "direction": [float(x) for x in self.direction],
            "cone_raw": self.cone_raw,
            "cone_corrected": self.cone_corrected,
            "gain": self.gain,
            "max_global_drop": self.max_global_drop,
            "worst_drop_shell": self.worst_drop_shell,
            "figure_noise": self.figure_noise,
            "global_raw": [float(x) for x in self.global_raw],
            "global_corrected": [float(x) for x in self.global_corrected],
        }


@renamed_parameter("cone_angle_deg", "cone_angle")
def score_correction(
    truth: np.ndarray,
    raw: np.ndarray,
    corrected: np.ndarray,
    mask: np.ndarray | None = None,
    cone_angle: float = 20.0,
) -> ConeScore:
    """Worst-cone gain and worst global-shell drop of ``corrected`` over ``raw``.

    The worst cone is found on ``raw`` (:func:`worst_cone`) and both maps are scored in
    that same cone, with the same ``mask``.
    """
    from ..anisotropy import conical_fsc
    from ..fsc_shells import fsc_curve

    t = check_cubic_map(truth, "ground truth")
    r = check_cubic_map(raw, "raw map")
    c = check_cubic_map(corrected, "corrected map")
    n = t.shape[0]
    u, raw_mean = worst_cone(r, t, mask, cone_angle)
    corr_mean = float(cone_mean(conical_fsc(c, t, mask, u[None], cone_angle)[0], n))
    g_raw = fsc_curve(r, t, mask)[0]
    g_cor = fsc_curve(c, t, mask)[0]
    drop = g_raw[1 : n // 2] - g_cor[1 : n // 2]
    return ConeScore(
        direction=u,
        cone_raw=raw_mean,
        cone_corrected=corr_mean,
        gain=corr_mean - raw_mean,
        global_raw=np.asarray(g_raw),
        global_corrected=np.asarray(g_cor),
        max_global_drop=float(np.max(drop)),
        worst_drop_shell=int(np.argmax(drop)) + 1,
        figure_noise=cone_figure_noise(n, u, cone_angle),
    )


@renamed_parameter("cone_angle_deg", "cone_angle")
def ground_truth_metrics(
    ground_truth: np.ndarray,
    maps: dict[str, np.ndarray],
    voxel_size: float,
    mask: np.ndarray | None = None,
    axis: tuple[float, float, float] = (0.0, 0.0, 1.0),
    cone_angle: float = 20.0,
    n_directions: int = 200,
) -> dict[str, dict[str, Any]]:
    """Compare maps with a known ground truth (simulations, benchmarks, the demo).

    For each map: the global FSC vs the ground truth (masked), the cone FSC inside
    ``cone_angle`` of ``axis`` (x, y, z; the view axis of a preferred-orientation
    simulation), its mean over shells 2 … n/4 (``cone_mean``), and the 0.5-FSC
    resolution along the worst and best of ``n_directions`` Fibonacci directions (cone
    FSC vs the ground truth, same cone angle) and globally.

    Returns
    -------
    ``{name: {"global_fsc": (n//2+1,), "axis_fsc": (n//2+1,), "cone_mean": float,
    "res05_global": Å, "res0143_global": Å, "res05_worst": Å, "res05_best": Å,
    "worst_direction": (3,),
    "best_direction": (3,), "worst_fsc": (n//2+1,), "best_fsc": (n//2+1,)}}``
    """
    from ..anisotropy import conical_fsc, directional_resolution, fibonacci_directions
    from ..fsc_shells import fsc

    gt = check_cubic_map(ground_truth, "ground truth")
    n = gt.shape[0]
    u = np.asarray(axis, dtype=np.float64)[None]
    dirs = fibonacci_directions(n_directions)
    out: dict[str, dict[str, Any]] = {}
    for name, vol in maps.items():
        v = check_cubic_map(vol, name)
        g = fsc(v, gt, voxel_size, mask)
        ax = conical_fsc(v, gt, mask, u, cone_angle)[0]
        cones = conical_fsc(v, gt, mask, dirs, cone_angle)
        res = directional_resolution(cones, 0.5, voxel_size, n)
        iw, ib = int(np.argmax(res)), int(np.argmin(res))
        out[name] = {
            "global_fsc": g.fsc,
            "axis_fsc": ax,
            "cone_mean": float(cone_mean(ax, n)),
            "res05_global": float(g.resolution_05),
            "res0143_global": float(g.resolution_0143),
            "res05_worst": float(res[iw]),
            "res05_best": float(res[ib]),
            "worst_direction": dirs[iw],
            "best_direction": dirs[ib],
            "worst_fsc": cones[iw],
            "best_fsc": cones[ib],
        }
    return out
