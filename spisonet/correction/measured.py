"""Keep the measured data where the network is estimated to be worse than it.

The network is trained to agree with the data only through W, and on some maps it loses
*measured* signal (the evaluation matrix's ``cftr-z`` ``top`` cell lost up to 0.1 of global
FSC with the truth at shells well inside the 3D FSC's limit). The two half maps let the
data say where: per Fourier shell, over the measured directions, the mix

    final = α · network + (1 − α) · raw

whose correlation with the truth is highest: with ``D = H − O`` (``H`` the raw average,
``O`` the network's average) the mix is ``H − α D``, its power ``|H|² − 2α<D, H> + α²|D|²``
is known, and its product with the truth ``<H, T> − α<D, T>`` is estimated without bias
from the *other* half: ``<H, T> ≈ Re <H1, H2>`` and ``<O, T> ≈ ½ Re(<O1, H2> + <O2, H1>)``
(each network output against the half it was not made from); ``|T|² ≈ Re <H1, H2>``. The
best α in [0, 1] is a closed form (1: the network kept). Correlation, not squared error,
because a Fourier shell correlation is what users read and amplitude is restored later
anyway: a network output that is the truth at 1.2× the raw amplitude is *better* and must
be kept. The mix is applied only where Fourier space was measured (weight ``measured``),
so the missing cone, where the data have nothing to say, keeps the network's fill.

Pure numerics, no files. The sums are taken on the masked maps (the mask limits the noise
the estimates see); the blend is applied to the unmasked maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MapMismatchError
from ..fourier import fourier_blend, half_grid, shell_cross, shell_index

#: The mix is made at a shell only where the halves estimate that it raises the correlation
#: with the truth over the network alone by more than this (RESULTS.md, session 13: without
#: a margin, mixes that gained < 0.01 in the lowest shells cost `tilt:20/30` cells and a
#: RELION-noise cell 0.03–0.12 of their cone gain — under a mask, measured content leaks
#: into the cone).
LOSS_MARGIN = 0.02

__all__ = [
    "MeasuredBlend",
    "keep_measured_data",
    "network_weight_per_shell",
]


@dataclass(frozen=True)
class MeasuredBlend:
    """The outcome of :func:`keep_measured_data`.

    Attributes
    ----------
    maps : the blended maps, one per half, float32, (n, n, n).
    network_weight : (n//2 + 1,) α per shell in [0, 1] over the measured directions (1: the
        network's output kept, 0: the measured data kept), as applied (after ``margin``
        and ``within``).
    rho_network, rho_raw : (n//2 + 1,) the halves' estimate of the network's and the raw
        map's correlation with the truth over the measured directions, NaN where the
        halves do not agree.
    gain : (n//2 + 1,) the estimated correlation the best mix gains over the network alone
        (before ``margin`` and ``within``), 0 where the halves do not agree.
    margin : the margin the mix was made with (None: none).
    """

    maps: list[np.ndarray]
    network_weight: np.ndarray
    rho_network: np.ndarray | None = None
    rho_raw: np.ndarray | None = None
    gain: np.ndarray | None = None
    margin: float | None = None


def _shell_sums(
    networks: tuple[np.ndarray, np.ndarray],
    halves: tuple[np.ndarray, np.ndarray],
    measured: np.ndarray,
    mask: np.ndarray | None,
    smooth: int,
) -> dict[str, np.ndarray]:
    """Per-shell inner products over the measured directions, pooled over ±``smooth``
    shells: ``dh`` <D, H>, ``dd`` |D|², ``ht`` <H1, H2> (≈ <H, T> ≈ |T|²), ``ot``
    ½(<O1, H2> + <O2, H1>) (≈ <O, T>), ``oo`` |O|², ``hh`` |H|² (O, H the averages)."""
    o1, o2 = (np.asarray(a, dtype=np.float64) for a in networks)
    h1, h2 = (np.asarray(a, dtype=np.float64) for a in halves)
    n = h1.shape[0]
    for a, name in ((o1, "network 1"), (o2, "network 2"), (h2, "half 2"), (measured, "measured")):
        if np.shape(a) != h1.shape:
            raise MapMismatchError(f"{name} has shape {np.shape(a)}; half 1 has {h1.shape}")
    m = 1.0 if mask is None else np.asarray(mask, dtype=np.float64)
    f_o1, f_o2, f_h1, f_h2 = (np.fft.rfftn(a * m) for a in (o1, o2, h1, h2))
    f_h = 0.5 * (f_h1 + f_h2)
    f_o = 0.5 * (f_o1 + f_o2)
    f_d = f_h - f_o
    r = half_grid(measured).clip(0.0, 1.0)
    kernel = np.ones(2 * smooth + 1)

    def per_shell(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        total = shell_cross(a, b, r, n)
        return np.convolve(total, kernel, mode="same") if smooth > 0 else total

    return {
        "dh": per_shell(f_d, f_h),
        "dd": per_shell(f_d, f_d),
        "ht": per_shell(f_h1, f_h2),
        "ot": 0.5 * (per_shell(f_o1, f_h2) + per_shell(f_o2, f_h1)),
        "oo": per_shell(f_o, f_o),
        "hh": per_shell(f_h, f_h),
    }


def _halves_agree(sums: dict[str, np.ndarray]) -> np.ndarray:
    """Shells where the estimates mean something: the halves share signal, both maps have
    power."""
    return (sums["ht"] > 0) & (sums["hh"] > 0) & (sums["oo"] > 0)


def _mix_score(sums: dict[str, np.ndarray], alpha: np.ndarray) -> np.ndarray:
    """Estimated ``<X, T> / |X|`` for ``X = α·O + (1 − α)·H = H − α·D`` per shell.

    ``<X, T> = <H, T> − α<D, T>`` and ``|X|² = |H|² − 2α<D, H> + α²|D|²``; divided by
    ``|T|`` it is X's correlation with the truth.
    """
    d_t = sums["ht"] - sums["ot"]
    numerator = sums["ht"] - alpha * d_t
    power = sums["hh"] - 2.0 * alpha * sums["dh"] + alpha**2 * sums["dd"]
    tiny = 1e-300
    return numerator / np.sqrt(np.maximum(power, tiny))


def _alpha(sums: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """α in [0, 1] maximising the estimated correlation of the mix with the truth, and the
    estimated correlation it gains over the network alone (α = 1); α = 1, gain 0 where the
    halves do not agree (no signal to judge by)."""
    d_t = sums["ht"] - sums["ot"]
    # stationary point of (<H,T> − α<D,T>) / |H − αD|, a ratio of a line and a quadratic's root
    numerator = sums["ht"] * sums["dh"] - d_t * sums["hh"]
    denominator = sums["ht"] * sums["dd"] - d_t * sums["dh"]
    with np.errstate(invalid="ignore", divide="ignore"):
        stationary = np.where(denominator != 0, numerator / denominator, 1.0)
    candidates = np.stack([np.zeros_like(d_t), np.ones_like(d_t), np.clip(stationary, 0, 1)])
    scores = np.stack([_mix_score(sums, a) for a in candidates])
    best = np.argmax(scores, axis=0)
    columns = np.arange(d_t.size)
    alpha = candidates[best, columns]
    ok = _halves_agree(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        gain = (scores[best, columns] - scores[1]) / np.sqrt(np.where(ok, sums["ht"], 1.0))
    return np.where(ok, alpha, 1.0), np.where(ok, gain, 0.0)


def _correlations(sums: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    # corr(X, T) = <X, T> / (|X| |T|), |T|² ≈ <H1, H2>; NaN where the halves disagree
    t2 = sums["ht"]
    ok = _halves_agree(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_o = np.where(ok, sums["ot"] / np.sqrt(sums["oo"] * t2), np.nan)
        rho_h = np.where(ok, t2 / np.sqrt(sums["hh"] * t2), np.nan)
    return rho_o, rho_h


def network_weight_per_shell(
    networks: tuple[np.ndarray, np.ndarray],
    halves: tuple[np.ndarray, np.ndarray],
    measured: np.ndarray,
    mask: np.ndarray | None = None,
    smooth: int = 1,
) -> np.ndarray:
    """α per Fourier shell: the network's share of the best mix with the raw data.

    Parameters
    ----------
    networks : the network's output for half 1 and for half 2, (n, n, n) each, in the
        halves' units.
    halves : the raw half maps, (n, n, n) each.
    measured : (n, n, n) fftshift-ed weight in [0, 1] of the measured directions; the
        shell sums are weighted by it.
    mask : real-space mask the maps are multiplied by before the sums (None: none).
    smooth : the sums are pooled over shells s − smooth … s + smooth before the division
        (fewer noisy estimates at high shells).

    Returns
    -------
    (n//2 + 1,) float64 in [0, 1]: the α maximising the estimated correlation of
    ``α·network + (1 − α)·raw`` with the truth (no margin); 1 where a shell has no
    measured weight or the halves do not agree.
    """
    return _alpha(_shell_sums(networks, halves, measured, mask, smooth))[0]


def keep_measured_data(
    networks: list[np.ndarray],
    halves: list[np.ndarray],
    measured: np.ndarray,
    mask: np.ndarray | None = None,
    smooth: int = 1,
    within: np.ndarray | None = None,
    margin: float | None = LOSS_MARGIN,
    estimate_with: np.ndarray | None = None,
) -> MeasuredBlend:
    """Each half's network output with the raw half mixed back in where the data are better.

    ``map_i = O_i + within[shell] · measured · (1 − α[shell]) · (H_i − O_i)`` in Fourier
    space, α from :func:`network_weight_per_shell`; the average of the two results is the
    α-mix of the averages. ``margin``: the mix is made only at shells where the halves
    estimate that it raises the correlation with the truth over the measured directions
    (``<X, T> / (|X| |T|)``) by more than ``margin`` over the network's output alone;
    None: wherever it raises it at all.
    ``within``: (n//2 + 1,) per-shell factor in [0, 1] limiting where the mix applies (e.g.
    0 beyond a hand-over to the original map); None: everywhere. Other arguments as
    :func:`network_weight_per_shell` (two halves and two network outputs).
    ``estimate_with``: (n, n, n) fftshift-ed weight of the shell sums α is estimated from
    (e.g. the well-measured directions only, where the estimates are sound); None:
    ``measured``. The mix is applied with ``measured`` either way.
    """
    if len(networks) != 2 or len(halves) != 2:
        raise MapMismatchError("keep_measured_data needs two half maps and two network outputs")
    n = halves[0].shape[0]
    judged = measured if estimate_with is None else estimate_with
    sums = _shell_sums((networks[0], networks[1]), (halves[0], halves[1]), judged, mask, smooth)
    alpha, gain = _alpha(sums)
    rho_o, rho_h = _correlations(sums)
    if margin is not None:
        alpha = np.where(gain > margin, alpha, 1.0)
    index = shell_index(n)
    shells = np.minimum(index, n // 2)
    m = np.clip(np.asarray(measured, dtype=np.float64), 0.0, 1.0)
    weight = m * (1.0 - alpha[shells])
    weight = np.where(index > n // 2, 0.0, weight)  # corners: no estimate, network
    if within is not None:
        cap = np.clip(np.asarray(within, dtype=np.float64), 0.0, 1.0)
        if cap.shape != (n // 2 + 1,):
            raise MapMismatchError(f"within has shape {cap.shape}; expected ({n // 2 + 1},)")
        weight = weight * cap[shells]
        alpha = 1.0 - cap * (1.0 - alpha)  # the share actually left to the network
    maps = [fourier_blend(o, h, weight) for o, h in zip(networks, halves, strict=True)]
    return MeasuredBlend(maps, alpha, rho_o, rho_h, gain, margin)
