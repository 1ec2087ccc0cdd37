"""The trust check: hide *measured* Fourier space the way W hides it, and see what returns.

The network is trained to restore what the sampling operator P_W removes from rotated
copies of its own prediction. On the user's own half maps the answer is known wherever
the data were measured, so the same task can be scored: rotate the z-scored half map 1
by the cube rotation R that moves the most *measured* Fourier space into the region W
calls unmeasured, apply P_W, run the trained network, and compare what comes back in the
hidden region with what was there.

Per shell s, with weights h(k) = (1 − W(k)) · W(R⁻¹k) (unmeasured here, measured in the
source), A = F_out − W·Y₁ the content the network *added* to its input, and Y₁, Y₂ the
rotated half maps' transforms:

    recovery(s) = Re Σ h A (1 − W) Y₂* / Re Σ h (1 − W)² Y₁ Y₂*

The denominator is the hidden signal's power (the cross-power of the two halves: their
noise is independent, so it averages out); the numerator is how much of that signal
the network put back (its correlation with the *other* half, whose noise it never saw
in this input). Perfect restoration of the signal gives 1, the identity (nothing added)
0, an unrelated addition 0. A plain FSC would not do: it is blind to amplitude, and P_W
attenuates rather than deletes where 0 < W < 1, so the unchanged input would already
score high. Shells enter the score where the two halves' hidden data agree (FSC ≥
0.143) and the region covers ≥ 5 % of the shell; the score is Σ numerators / Σ
denominators over them, the fraction of the recoverable hidden signal that came back.
With a single map Y₂ := Y₁ (biased low by the noise). The number is shown in the
summary, in ``reconstruct.json`` and in a figure.

A second, amplitude-blind figure rides along for evaluation (``phase_score``, in
``reconstruct.json`` only): the correlation of what the network added with the other
half's hidden data, divided by the square root of the two halves' own agreement there,

    phase(s) = [Re Σ h A B₂* / √(Σ h |A|² · Σ h |B₂|²)] / √(Re Σ h B₁ B₂* / √(Σ h |B₁|² Σ h |B₂|²))

with B_i = (1 − W)·Y_i: the estimated correlation of the addition with the hidden
*signal* (the other half's noise divided out, the usual √FSC step). It is 1 for a
network that puts back the right content at any amplitude, 0 for nothing or an unrelated
addition. Why: the power score counts a fill with the right phases and damped amplitude
as partly missing, and over the evaluation matrix it did not rank the cells by their true
gain. Neither did this figure on the six cells measured so far (RESULTS.md, session 15),
so the verdict stays on the power score.

Where the measured directions lie in a thin band (views within a few degrees of one axis,
:attr:`spisonet.correction.coverage.MeasuredBand.thin`), the hidden part of the band is
restored from the rest of it, a task unlike filling the cone along the band's axis: on the
evaluation matrix both such cells scored 0.13 and 0.29 while their cones gained +0.113 and
+0.014 (RESULTS.md, sessions 33–35). The verdict is then ``"thin band"``: the score is kept
and shown, the check vouches for nothing (:attr:`TrustCheck.vouched` = 0). Pure numerics:
the network enters as a
``predict`` callable (z-scored map in, map out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from .._cube import rotate_array, rotate_fourier
from ..errors import InvalidValueError, MapMismatchError, MapShapeError
from ..fourier import frequency_radius, half_grid, shell_cross
from .coverage import MeasuredBand
from .evaluate import scored_shells

__all__ = ["TrustCheck", "choose_hidden_rotation", "hidden_weights", "region_fsc", "trust_check"]

#: A shell takes part in the score when the hidden region covers this share of it.
MIN_SHELL_COVERAGE = 0.05
#: Below this share of hidden weight in shells 2 … n/4 there is nothing to check.
MIN_HIDDEN_FRACTION = 0.02
#: An addition below this share of the hidden data's power counts as nothing added.
NOTHING_ADDED = 1e-8
#: Verdict thresholds on the score (fraction of the hidden signal's power returned), from
#: the first measured points: the demo (``tilt:20``, ``cpu`` preset, cone FSC with the truth
#: 0.004 → 0.273) scores 0.13; a 128-step tiny network that made the cone worse (−0.11)
#: scores 0.001. Over the evaluation matrix (RESULTS.md, sessions 14–15) every cone cell
#: gained, yet half scored < 0.1 (the best, ``tilt:30`` +0.66, scored 0.09): a low score
#: is the absence of evidence, not evidence of a failure, and the *low* message says so.
GOOD_SCORE = 0.3
PARTIAL_SCORE = 0.1


def hidden_weights(weight: np.ndarray, rotation: int) -> np.ndarray:
    """h(k) = (1 − W(k)) · W(R⁻¹k) on the fftshift-ed grid: measured data hidden by P_W.

    ``weight`` is the (n, n, n) sampling weight W in [0, 1] (fftshift-ed); ``rotation``
    indexes the 24 cube rotations. After the map is rotated by R, the content at k came
    from R⁻¹k, measured there to the degree W(R⁻¹k); P_W keeps W(k) of it.
    """
    w = np.clip(np.asarray(weight, dtype=np.float64), 0.0, 1.0)
    return (1.0 - w) * rotate_fourier(w, rotation)


def choose_hidden_rotation(weight: np.ndarray) -> tuple[int, float]:
    """The rotation (1 … 23) hiding the most measured weight in shells 2 … n/4.

    Returns (rotation index, hidden fraction = Σh / number of voxels, over that band).
    """
    w = np.asarray(weight)
    n = w.shape[0]
    lo, hi = scored_shells(n)
    r = np.rint(frequency_radius(n))
    band = (r >= lo) & (r <= hi)
    best, best_mass = 1, -1.0
    for index in range(1, 24):
        mass = float(hidden_weights(w, index)[band].sum())
        if mass > best_mass + 1e-9:
            best, best_mass = index, mass
    return best, best_mass / max(int(band.sum()), 1)


def region_fsc(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> np.ndarray:
    """FSC of two real (n, n, n) maps per shell, weighted by a Fourier ``region``.

    ``region`` is an fftshift-ed (n, n, n) weight, symmetric under k → −k. Returns
    (n//2 + 1,): Re Σ h F_a F_b* / sqrt(Σ h |F_a|² · Σ h |F_b|²) over shell round(|k|).
    """
    fa = scipy.fft.rfftn(np.asarray(a, dtype=np.float64), workers=-1)
    fb = scipy.fft.rfftn(np.asarray(b, dtype=np.float64), workers=-1)
    return _fsc_of_transforms(fa, fb, half_grid(region), a.shape[0])


def _fsc_of_transforms(fa: np.ndarray, fb: np.ndarray, h: np.ndarray, n: int) -> np.ndarray:
    """:func:`region_fsc` from the maps' rfftn transforms and the region's half grid."""
    cross = shell_cross(fa, fb, h, n)
    denom = np.sqrt(shell_cross(fa, fa, h, n) * shell_cross(fb, fb, h, n))
    out = np.zeros(n // 2 + 1)
    np.divide(cross, denom, out=out, where=denom > 0)
    return out


@dataclass(frozen=True)
class TrustCheck:
    """Outcome of :func:`trust_check` (curves indexed by shell 0 … n//2).

    Attributes
    ----------
    rotation : the cube rotation used (index into the 24).
    hidden_fraction : mean hidden weight h over shells 2 … n/4 (0 … 1).
    recovery : per shell, the fraction of the hidden signal the network put back
        (module docstring); NaN where the hidden signal has no power.
    data_fsc : FSC between the two half maps' hidden data (their own agreement there;
        a single map: None).
    shells_scored : the shells that entered the score.
    score : Σ numerators / Σ denominators of ``recovery`` over ``shells_scored``; None
        when nothing measured could be hidden.
    phase_recovery : per shell, the amplitude-blind figure of the module docstring
        (correlation of the addition with the hidden signal); NaN where undefined.
    phase_score : the same pooled over ``shells_scored`` (None with ``score``).
    verdict : ``"good"``, ``"partial"``, ``"low"``, ``"thin band"`` (the measured
        directions lie in a band too thin for the hidden data to stand for the cone:
        :attr:`spisonet.correction.coverage.MeasuredBand.thin`) or ``"not applicable"``.
    message : one sentence for the user.
    band : the measured band the verdict took into account (None: not read).
    """

    rotation: int
    hidden_fraction: float
    recovery: np.ndarray
    data_fsc: np.ndarray | None
    shells_scored: np.ndarray
    score: float | None
    verdict: str
    message: str
    phase_recovery: np.ndarray | None = None
    phase_score: float | None = None
    band: MeasuredBand | None = None

    @property
    def vouched(self) -> float | None:
        """The share of the hidden signal the check vouches for: ``score``, or 0 where the
        verdict is ``"thin band"`` (the check says nothing about the cone there); None
        without a score. What the evaluation matrix ranks against the true gain."""
        if self.score is None:
            return None
        return 0.0 if self.verdict == "thin band" else self.score

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""

        def arr(x: np.ndarray | None) -> list[float] | None:
            return None if x is None else [float(v) for v in x]

        return {
            "score": self.score,
            "verdict": self.verdict,
            "message": self.message,
            "rotation": self.rotation,
            "hidden_fraction": self.hidden_fraction,
            "shells_scored": [int(s) for s in self.shells_scored],
            "recovery": arr(self.recovery),
            "data_fsc": arr(self.data_fsc),
            "phase_score": self.phase_score,
            "phase_recovery": arr(self.phase_recovery),
            "vouched": self.vouched,
            "measured_band": None if self.band is None else self.band.to_dict(),
        }


def _verdict(score: float | None, band: MeasuredBand | None = None) -> tuple[str, str]:
    if score is None:
        return (
            "not applicable",
            "the 3D FSC marks no part of Fourier space as unmeasured that measured data "
            "could be moved into: there is no missing cone to check the network on",
        )
    pct = f"{round(100 * score)} %"  # round(): no "-0 %"
    if band is not None and band.thin:
        return (
            "thin band",
            f"the network restored {pct} of measured data hidden like the missing cone, but "
            f"the measured directions lie within about ±{band.band:.0f}° of one plane: the "
            "hidden data were restored from the rest of that band, which says nothing about "
            "detail along its axis, so this check cannot vouch for the missing-cone content "
            "(compare the corrected map with the raw average; on our simulations, views "
            "within 5° of one axis gained +0.01 … +0.19 of cone FSC with the truth)",
        )
    if score >= GOOD_SCORE:
        return "good", f"the network restored {pct} of measured data hidden like the missing cone"
    if score >= PARTIAL_SCORE:
        return (
            "partial",
            f"the network restored {pct} of measured data hidden like the missing cone: "
            "read the missing-cone content of the corrected map with care",
        )
    return (
        "low",
        f"the network restored only {pct} of measured data hidden like the missing cone: "
        "this check cannot vouch for the corrected map's missing-cone content; compare it "
        "with the raw average (more data, training or a larger box may help)",
    )


def trust_check(
    half1: np.ndarray,
    half2: np.ndarray | None,
    weight: np.ndarray,
    predict: Callable[[np.ndarray], np.ndarray],
    rotation: int | None = None,
    band: MeasuredBand | None = None,
) -> TrustCheck:
    """Hide measured Fourier space as W hides the missing cone; score what returns.

    Parameters
    ----------
    half1, half2 : (n, n, n) z-scored half maps as the network saw them (half2 optional).
    weight : (n, n, n) sampling weight W in [0, 1], fftshift-ed, at the map's box.
    predict : the trained network on a whole map: (n, n, n) float32 → (n, n, n).
    rotation : force a cube rotation (1 … 23); default :func:`choose_hidden_rotation`.
    band : the measured band (:func:`spisonet.correction.coverage.measured_band`); where it
        is thin the verdict is ``"thin band"`` whatever the score.

    Returns
    -------
    TrustCheck
    """
    a = np.asarray(half1, dtype=np.float32)
    w = np.asarray(weight, dtype=np.float32)
    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise MapShapeError(f"trust check: expected a cubic map; found shape {a.shape}")
    if w.shape != a.shape:
        raise MapMismatchError(f"trust check: W {w.shape} and map {a.shape} differ in shape")
    if half2 is not None and np.shape(half2) != a.shape:
        raise MapMismatchError(f"trust check: half maps {a.shape} and {np.shape(half2)} differ")
    n = a.shape[0]
    if rotation is None:
        rotation, fraction = choose_hidden_rotation(w)
    else:
        if not 1 <= int(rotation) < 24:
            raise InvalidValueError(f"rotation must be in 1 … 23; got {rotation}")
        r = np.rint(frequency_radius(n))
        lo, hi = scored_shells(n)
        scored = (r >= lo) & (r <= hi)
        fraction = float(hidden_weights(w, rotation)[scored].mean())
    h = hidden_weights(w, rotation)
    y1 = rotate_array(a, rotation)
    f1 = scipy.fft.rfftn(y1.astype(np.float64), workers=-1)
    wf = half_grid(w)
    degraded = scipy.fft.irfftn(f1 * wf, s=a.shape, workers=-1).astype(np.float32)
    recovered = np.asarray(predict(degraded), dtype=np.float64)
    if recovered.shape != a.shape:
        raise MapMismatchError(f"trust check: the network returned {recovered.shape}")
    added = scipy.fft.rfftn(recovered, workers=-1) - wf * f1
    hh = half_grid(h)
    data_fsc = None
    if half2 is not None:
        y2 = rotate_array(np.asarray(half2, dtype=np.float32), rotation)
        f2 = scipy.fft.rfftn(y2.astype(np.float64), workers=-1)
        data_fsc = _fsc_of_transforms(f1, f2, hh, n)
    else:
        f2 = f1
    hidden = (1.0 - wf) * f2
    numer = shell_cross(added, hidden, hh, n)
    denom = shell_cross((1.0 - wf) * f1, hidden, hh, n)
    recovery = np.full(n // 2 + 1, np.nan)
    np.divide(numer, denom, out=recovery, where=denom > 0)
    mass = shell_cross(np.ones_like(f1), np.ones_like(f1), hh, n)
    shell_of = np.rint(frequency_radius(n)).astype(np.int64).ravel()
    counts = np.bincount(shell_of, minlength=n // 2 + 1)
    lo, hi = scored_shells(n)
    agree = data_fsc if data_fsc is not None else np.ones(n // 2 + 1)
    shells = np.array(
        [
            s
            for s in range(lo, hi + 1)
            if mass[s] >= MIN_SHELL_COVERAGE * counts[s] and agree[s] >= 0.143 and denom[s] > 0
        ],
        dtype=int,
    )
    score: float | None = None
    if fraction >= MIN_HIDDEN_FRACTION and shells.size:
        score = float(numer[shells].sum() / denom[shells].sum())
    verdict, message = _verdict(score, band)
    hidden1 = (1.0 - wf) * f1
    sums = {
        "ab": numer,
        "aa": shell_cross(added, added, hh, n),
        "bb": shell_cross(hidden, hidden, hh, n),
        "b1b": denom,
        "b1b1": shell_cross(hidden1, hidden1, hh, n),
    }
    phase = _phase_recovery(sums)
    phase_score = None
    if score is not None:
        phase_score = float(
            _phase_recovery({k: v[shells].sum(keepdims=True) for k, v in sums.items()})[0]
        )
        phase_score = None if not np.isfinite(phase_score) else phase_score
    return TrustCheck(
        rotation=int(rotation),
        hidden_fraction=float(fraction),
        recovery=recovery,
        data_fsc=data_fsc,
        shells_scored=shells,
        score=score,
        verdict=verdict,
        message=message,
        phase_recovery=phase,
        phase_score=phase_score,
        band=band,
    )


def _phase_recovery(sums: dict[str, np.ndarray]) -> np.ndarray:
    """corr(A, B₂) / √corr(B₁, B₂) from the sums (module docstring); 0 where nothing was
    added, NaN where the halves' hidden data do not agree."""
    out = np.full(np.shape(sums["ab"]), np.nan)
    # a correlation is blind to scale: an addition at float32 round-off (the identity
    # network) would otherwise score like a real one
    added = sums["aa"] > NOTHING_ADDED * sums["b1b1"]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(added, sums["ab"] / np.sqrt(sums["aa"] * sums["bb"]), 0.0)
        agree = sums["b1b"] / np.sqrt(sums["b1b1"] * sums["bb"])
    ok = (agree > 0) & (sums["bb"] > 0)
    out[ok] = corr[ok] / np.sqrt(agree[ok])
    return out
