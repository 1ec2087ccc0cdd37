"""Which directions the half maps measured: the largest unmeasured cone and the measured band.

Preferred orientation leaves a band of measured Fourier directions: views within β of one
axis v measure every direction within β of the plane perpendicular to v, and nothing in the
cone of half-angle 90° − β around v. How wide that band is decides what the correction can
do. With β ≈ 20° (``tilt:20``) the halves hold real information out of the plane and the
network learns from it; with β ≈ 5° (``top``) they hold about one projection's worth along
v, and no self-supervised correction can put detail along v back from the data (RESULTS.md,
session 37: on ``cftr-z_64_sphere_top`` the network's fill carries ≤ 2 % of the truth's power
in the cone, at every setting tried). The trust check, which hides a part of the measured
band and asks the network to restore it, is then answered from the rest of the band — a
task unlike filling the cone — and its score does not carry over (sessions 33–35: that cell
scored among the highest while it gained least).

The reading here comes from the measured-power gate W is multiplied by
(:func:`spisonet.weights.power_presence`). Along each direction d of a hemisphere grid, the
gate is averaged over whole-voxel radii ``shells`` (default n/8 … n/4, as
:func:`spisonet.weights.directional_weight`); d counts as measured where that mean is ≥ ½.
The largest unmeasured cone is ``max_v min_{d measured} ∠(v, ±d)``. The gate widens every
measured region by its 3×3×3 neighbourhood and the data's own spread, so the raw reading
is narrower than the truth by about ``GATE_BLUR_VOXELS`` voxels at the mean radius r̄:
the cone is reported as the reading plus asin(GATE_BLUR_VOXELS / r̄). Calibrated on the
evaluation matrix's 24 inputs (docs/method.md): views within 5°, 20° and 30° of one axis
read β = 4.5°, 20.6 ± 0.7° and 30.8° at boxes 48 … 128.

Pure numerics, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from .._checks import check_cubic_map
from ..errors import InvalidValueError
from ..weights import ray_radii
from .evaluate import hemisphere_directions

__all__ = ["GATE_BLUR_VOXELS", "THIN_BAND_DEG", "MeasuredBand", "measured_band"]

#: How many voxels the measured-power gate widens a measured region by, at the mean radius
#: of the shells read (fitted on the matrix's inputs: the reading fell short of the views'
#: known spread by 15.5°, 11.5° and 5.7° at boxes 48, 64 and 128, i.e. asin(2.4 / r̄)).
GATE_BLUR_VOXELS = 2.4
#: A band of measured directions no wider than ±this (degrees) holds little more than one
#: projection's worth of information along its axis: the trust check cannot vouch there.
#: Midway between the readings of views within 5° (3.3 … 5.2°; CFTR turned along z under a
#: sphere gained +0.014 in its cone) and within 10° (9.9 … 10.5°; the same CFTR gained
#: +0.183): RESULTS.md, session 38.
THIN_BAND_DEG = 7.5
#: Above this blur (degrees) the box is too small for the band to be read.
MAX_BLUR_DEG = 20.0
#: Directions on the hemisphere grid (spacing ≈ 3°).
N_DIRECTIONS = 2000


@dataclass(frozen=True)
class MeasuredBand:
    """What :func:`measured_band` read from a measured-power gate.

    Attributes
    ----------
    axis : (3,) unit vector (x, y, z), the centre of the largest unmeasured cone.
    cone : its half-angle (degrees), corrected for the gate's blur; 0 when every direction
        of the grid reads measured.
    band : 90 − ``cone``: the measured directions lie within ±``band``° of the plane
        perpendicular to ``axis`` (degrees).
    measured_fraction : share of the hemisphere's directions that read measured.
    blur : the correction added to the reading (degrees).
    readable : False when the box is too small for the blur to leave a usable reading
        (blur > ``MAX_BLUR_DEG``); ``thin`` is then False.
    """

    axis: tuple[float, float, float]
    cone: float
    band: float
    measured_fraction: float
    blur: float
    readable: bool

    @property
    def thin(self) -> bool:
        """The measured directions lie within ±``THIN_BAND_DEG``° of one plane."""
        return self.readable and self.band <= THIN_BAND_DEG

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {
            "axis_xyz": [round(float(v), 4) for v in self.axis],
            "unmeasured_cone_deg": round(self.cone, 2),
            "measured_band_deg": round(self.band, 2),
            "measured_fraction": round(self.measured_fraction, 4),
            "gate_blur_deg": round(self.blur, 2),
            "readable": self.readable,
            "thin": self.thin,
        }

    def describe(self) -> str:
        """One sentence for the user."""
        if not self.readable:
            return (
                f"measured directions: the box is too small to read the band (the gate's "
                f"blur is {self.blur:.0f}° at the shells read)"
            )
        if self.cone == 0:
            return "measured directions: every direction reads measured (no unmeasured cone)"
        axis = ", ".join(f"{v:.2f}" for v in self.axis)
        text = (
            f"measured directions: within about ±{self.band:.0f}° of the plane perpendicular "
            f"to ({axis}) (x, y, z); the largest unmeasured cone is about {self.cone:.0f}° "
            "around that axis"
        )
        if self.thin:
            text += (
                ": little more than one projection's worth of information along it, so "
                "detail along that axis in the corrected map comes from the network and the "
                "mask, not from the data"
            )
        return text


def measured_band(
    presence: np.ndarray,
    shells: tuple[float, float] | None = None,
    directions: np.ndarray | None = None,
    blur_voxels: float = GATE_BLUR_VOXELS,
) -> MeasuredBand:
    """The largest cone of directions in which ``presence`` reads nothing measured.

    Parameters
    ----------
    presence : (n, n, n) measured-power gate in [0, 1] (fftshift-ed, centre n//2), e.g.
        :func:`spisonet.weights.power_presence`.
    shells : (lo, hi) radii in voxels read along each direction (every whole radius in
        between, linear interpolation); default (n/8, n/4).
    directions : (m, 3) unit vectors (x, y, z) of the hemisphere grid; default
        :func:`spisonet.correction.evaluate.hemisphere_directions` (2000).
    blur_voxels : the gate's widening of measured regions (voxels); 0 for a sharp gate.

    Returns
    -------
    MeasuredBand
    """
    g = np.asarray(check_cubic_map(presence, "measured-power gate"), dtype=np.float64)
    n = g.shape[0]
    radii = ray_radii(n, shells)
    if not np.isfinite(blur_voxels) or blur_voxels < 0:
        raise InvalidValueError(f"blur_voxels must be ≥ 0; got {blur_voxels}")
    dirs = hemisphere_directions(N_DIRECTIONS) if directions is None else directions
    dirs = np.asarray(dirs, dtype=np.float64).reshape(-1, 3)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    c = n // 2
    mean = np.zeros(len(dirs))
    for r in radii:
        p = c + r * dirs  # (x, y, z) → array axes (z, y, x)
        mean += map_coordinates(g, [p[:, 2], p[:, 1], p[:, 0]], order=1, mode="nearest")
    mean /= radii.size
    measured = mean >= 0.5
    r_mean = float(radii.mean())
    blur = float(np.degrees(np.arcsin(min(1.0, blur_voxels / r_mean))))
    readable = blur <= MAX_BLUR_DEG
    if not measured.any():
        axis = (0.0, 0.0, 1.0)
        return MeasuredBand(axis, 90.0, 0.0, 0.0, blur, readable)
    # the angle from each candidate axis to its nearest measured direction (u ≡ −u)
    nearest = np.abs(dirs @ dirs[measured].T).max(axis=1)
    angle = np.degrees(np.arccos(np.clip(nearest, -1.0, 1.0)))
    i = int(np.argmax(angle))
    read = float(angle[i])
    # a reading under half the grid's spacing is the grid itself: nothing unmeasured
    spacing = float(np.degrees(np.sqrt(2 * np.pi / len(dirs))))
    cone = 0.0 if read < 0.5 * spacing else min(90.0, read + blur)
    axis = (float(dirs[i, 0]), float(dirs[i, 1]), float(dirs[i, 2]))
    return MeasuredBand(axis, cone, 90.0 - cone, float(measured.mean()), blur, readable)
