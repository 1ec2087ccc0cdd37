"""The trust check on cases with a known answer (no training).

    python benchmarks/bench_trust_known.py

64³ built-in molecule, 2 Å, 2000 views, SNR 0.01; W = the power-gated 3D FSC at the map's
box. Two stand-in "networks": one returns its input (must score 0), one returns the truth
rescaled to the z-scored half map's units (should score ≈ 1 where that rescaling is fair).
"""

import time

from spisonet._cube import rotate_array
from spisonet.correction.trust import trust_check
from spisonet.fsc3d import fsc3d
from spisonet.maps import zscore
from spisonet.nn.operators import prepare_sampling_weight
from spisonet.simulate import make_molecule, simulate_half_maps
from spisonet.weights import power_presence


def main() -> None:
    """Print, per distribution, the identity's and the truth-returning network's score."""
    print("# command: python benchmarks/bench_trust_known.py")
    gt = make_molecule(64, 2.0, seed=0)
    g0 = gt - gt.mean()
    for dist in ["tilt:20", "uniform", "side"]:
        d = simulate_half_maps(gt, 2.0, dist, 2000, 0.01, seed=0)
        f = fsc3d(d.half1, d.half2, voxel_size=2.0, mask=d.mask).volume
        w = prepare_sampling_weight(f * power_presence(d.half1, d.half2, d.mask), 64)
        z1, z2 = zscore(d.half1), zscore(d.half2)
        t0 = time.time()
        ident = trust_check(z1, z2, w, lambda x: x)
        truth = g0 * float((z1 * g0).sum() / (g0 * g0).sum())
        rot = ident.rotation
        orc = trust_check(z1, z2, w, lambda x, t=truth, r=rot: rotate_array(t, r))
        print(
            f"{dist}: rotation {rot}, hidden fraction {ident.hidden_fraction:.3f}; identity "
            f"{ident.score:.3f} ({ident.verdict}); truth-returning {orc.score:.3f} "
            f"({orc.verdict}); shells {orc.shells_scored.tolist()}; {time.time() - t0:.1f} s"
        )


if __name__ == "__main__":
    main()
