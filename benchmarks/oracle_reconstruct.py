"""The best possible reference, as a RELION external reconstructor (a yardstick).

    RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE="python benchmarks/oracle_reconstruct.py"
    SPISONET_ORACLE_TRUTH=/path/truth.mrc

For every job RELION hands over, the map returned is the ground truth, its Fourier
amplitudes matched shell by shell to RELION's own reconstruction of the job (what RELION
would have used) and cut at the job's current resolution (RELION's ``current_size``):
the phases are perfect, the amplitudes and the band are RELION's. No correction can give
RELION a better reference, so a refinement run with it bounds what the correction can do
(``benchmarks/bench_relion.py --only oracle``). Used by the benchmark only.

With ``SPISONET_ORACLE_MODE=network`` the truth takes the place of the *network* inside
spisonet's own correction instead (``--only oracle-network``): the same gates, the same
rendezvous and 3D FSC of the two halves, the same low-pass, radial amplitudes and RELION's
map kept where measured (``RelionCorrection._finish``), only the network's output is the
truth. That run bounds what a perfect network could give through spisonet's design; the
plain oracle bounds what any reference could.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def oracle_map(truth: np.ndarray, plain: np.ndarray, current_size: int) -> np.ndarray:
    """``truth`` with ``plain``'s mean |F| per shell, zero beyond shell ``current_size // 2``."""
    from spisonet.fourier import rfft_shells

    n = truth.shape[0]
    shells, friedel = rfft_shells(n)  # weights: the half grid's sums equal the full grid's
    ft, fp = np.fft.rfftn(truth.astype(np.float64)), np.fft.rfftn(plain.astype(np.float64))
    s, w = shells.ravel(), friedel.ravel()
    count = np.bincount(s, w, minlength=n)
    a_truth = np.bincount(s, w * np.abs(ft).ravel(), minlength=n) / np.maximum(count, 1e-30)
    a_plain = np.bincount(s, w * np.abs(fp).ravel(), minlength=n) / np.maximum(count, 1e-30)
    ratio = np.where(a_truth > 0, a_plain / np.maximum(a_truth, 1e-30), 0.0)
    ratio[current_size // 2 + 1 :] = 0.0
    return np.fft.irfftn(ft * ratio[shells], s=truth.shape, axes=(0, 1, 2)).astype(np.float32)


def perfect_network_correction(truth: np.ndarray):
    """spisonet's RELION correction (settings from the environment) with the truth as the
    network's output."""
    from spisonet.fsc3d import fsc3d
    from spisonet.relion import RelionCorrection
    from spisonet.relion.settings import correction_settings
    from spisonet.weights import measured_weight

    class PerfectNetwork(RelionCorrection):
        def _train(self, job, jn, own, other, plain, voxel, res, t0):
            if truth.shape != plain.shape:
                raise SystemExit(f"truth {truth.shape} and job {plain.shape} differ in box")
            half1, half2 = (own, other) if jn.half == 1 else (other, own)
            mask = self._mask(job.star_path.parent, jn, voxel, own.shape[0])
            limit = max(res, 2.0 * voxel)
            f3d = fsc3d(half1, half2, voxel_size=voxel, mask=mask, limit_res=limit).volume
            measured = measured_weight(f3d, half1, half2, mask)
            out, kept = self._finish(job, jn, truth, plain, measured, voxel, limit)
            self.summary = self._line(f"the truth as the network's output{kept}", t0)
            return out

    return PerfectNetwork(correction_settings())


def main(argv: list[str] | None = None) -> int:
    """Write the oracle map for the job STAR in ``argv[0]``; 0 on success."""
    from spisonet.io import read_map, write_map
    from spisonet.relion import read_external_star, run_external_reconstruct
    from spisonet.relion.job import reconstruct
    from spisonet.relion.plain_map import plain_map_options
    from spisonet.relion.runner import minres_map_setting

    args = sys.argv[1:] if argv is None else argv
    truth_map = read_map(os.environ["SPISONET_ORACLE_TRUTH"])
    if os.environ.get("SPISONET_ORACLE_MODE") == "network":
        correction = perfect_network_correction(truth_map.data)
        run_external_reconstruct(Path(args[-1]), correction=correction)
        return 0
    job = read_external_star(Path(args[-1]))
    options = plain_map_options(job, minres_map=minres_map_setting())  # as relion_refine's
    plain = reconstruct(job, minres_map=options.minres_map, skip_gridding=options.skip_gridding)
    if truth_map.data.shape != plain.shape:
        raise SystemExit(f"truth {truth_map.data.shape} and job {plain.shape} differ in box")
    out = oracle_map(truth_map.data, plain, job.current_size)
    write_map(job.result, out, voxel_size=job.pixel_size or truth_map.voxel_size)
    print(f"oracle: {job.star_path.name}: truth at RELION's amplitudes up to shell "
          f"{job.current_size // 2}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
