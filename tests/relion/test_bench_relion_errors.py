"""The angular-error figures of benchmarks/bench_relion.py against a slow statement of
their definition: per particle, the angle of R_true · R_est⁻¹ (raw), and of the same with
the run's one global turn removed (residual)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_relion import angular_errors, errors_by_iteration, paired_median_difference


def _angle_deg(m: np.ndarray) -> float:
    """Rotation angle of a 3 × 3 rotation matrix, from its trace."""
    return float(np.degrees(np.arccos(np.clip((np.trace(m) - 1.0) / 2.0, -1.0, 1.0))))


def _write_data_star(path: Path, est: Rotation) -> None:
    rot, tilt, psi = est.as_euler("ZYZ", degrees=True).T
    names = [f"{i + 1:06d}@particles.mrcs" for i in range(len(rot))]
    table = pd.DataFrame(
        {"rlnImageName": names, "rlnAngleRot": rot, "rlnAngleTilt": tilt, "rlnAnglePsi": psi}
    )
    starfile.write({"particles": table}, path, overwrite=True)


def test_raw_and_residual_errors_follow_their_definition(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 400
    true = Rotation.random(n, random_state=4)
    true_angles = true.as_euler("ZYZ", degrees=True)
    # every particle off by a known small turn p_i (a few of them by more than 10°), the
    # whole run turned by a global g: R_true · R_est⁻¹ = g · p_i
    size = rng.uniform(0.5, 6.0, n)
    size[:20] = rng.uniform(11.0, 14.0, 20)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    p = Rotation.from_rotvec(np.radians(size)[:, None] * axes)
    g = Rotation.from_rotvec(np.radians(9.0) * np.array([0.6, -0.8, 0.0]))
    est = (g * p).inv() * true
    star = tmp_path / "run_it003_data.star"
    _write_data_star(star, est)

    got = angular_errors(true_angles, star, cone_deg=30.0)

    r_true = true.as_matrix()
    r_est = est.as_matrix()
    raw = np.array([_angle_deg(a @ b.T) for a, b in zip(r_true, r_est, strict=True)])
    # the global turn as the chordal mean of the relative rotations (SVD projection of
    # their sum); the residual is the angle left after taking it out
    u, _, vt = np.linalg.svd(sum(a @ b.T for a, b in zip(r_true, r_est, strict=True)))
    g_mean = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    residual = np.array(
        [_angle_deg(g_mean.T @ a @ b.T) for a, b in zip(r_true, r_est, strict=True)]
    )

    assert abs(got["angular_error_median_deg"] - np.median(raw)) < 1e-3
    assert abs(got["global_offset_deg"] - 9.0) < 0.3
    assert abs(got["residual_error_median_deg"] - np.median(residual)) < 0.05
    assert abs(got["residual_error_median_deg"] - np.median(size)) < 0.2
    assert got["fraction_residual_above_10deg"] == np.mean(residual > 10)
    assert abs(got["fraction_residual_above_10deg"] - 20 / n) < 1e-9
    assert abs(got["fraction_error_above_10deg"] - np.mean(raw > 10)) < 1e-9
    tilt = true_angles[:, 1]
    preferred = np.minimum(tilt, 180.0 - tilt) <= 30.5
    assert 0 < preferred.sum() < n
    assert abs(got["fraction_preferred"] - preferred.mean()) < 1e-9
    assert abs(got["residual_error_median_rare_deg"] - np.median(residual[~preferred])) < 0.05
    assert abs(got["angular_error_median_preferred_deg"] - np.median(raw[preferred])) < 1e-3

    # per iteration: one entry per run_itNNN_data.star, the final joined file not included
    _write_data_star(tmp_path / "run_it001_data.star", true)
    _write_data_star(tmp_path / "run_data.star", true)
    by_it = errors_by_iteration(true_angles, tmp_path, 30.0)
    assert sorted(by_it) == [1, 3]
    assert by_it[1][0] < 1e-3
    assert abs(by_it[3][0] - got["residual_error_median_deg"]) < 0.01


def test_paired_median_difference_is_the_shift_and_its_interval_covers_it() -> None:
    rng = np.random.default_rng(0)
    a = rng.gamma(2.0, 2.0, 300)
    d, lo, hi = paired_median_difference(a, a)
    assert d == lo == hi == 0.0
    d, lo, hi = paired_median_difference(a, a - 0.7)  # every particle 0.7° better
    assert abs(d + 0.7) < 1e-12 and abs(lo + 0.7) < 1e-12 and abs(hi + 0.7) < 1e-12
    # unrelated noise of the second run: the interval widens and still holds the true
    # difference of medians of the two distributions (0 here)
    b = rng.gamma(2.0, 2.0, 300)
    d, lo, hi = paired_median_difference(a, b)
    assert lo < 0.0 < hi and hi - lo > 0.3
