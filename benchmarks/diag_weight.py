"""Is the sampling weight W right on the matrix's hard cells? (no training)

    python benchmarks/diag_weight.py

For each cell: the 3D FSC's resolution limit, and W (the power-gated 3D FSC resized to
the 32³ training cube, as the ``cpu`` preset uses it) averaged inside the truly missing
region (within 50° of z, shells 2 … 8 of the cube) and in the measured band (beyond 80°
of z), next to the ungated 3D FSC and the gate alone in the missing region. A correct W is
≈ 0 in the first and high in the second.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_cells import Cell, _angles, cell_mask, ground_truth

from spisonet.fourier import frequency_axis, frequency_radius
from spisonet.fsc3d import fsc3d
from spisonet.nn.operators import prepare_sampling_weight
from spisonet.simulate import draw_view_directions, simulate_half_maps
from spisonet.weights import power_presence

CELLS = [
    Cell("molecule", 64, "tight", "tilt:20"),
    Cell("cftr-z", 48, "sphere", "tilt:20"),
    Cell("cftr-z", 64, "sphere", "tilt:20"),
    Cell("molecule", 48, "tight", "tilt:20"),
    Cell("molecule", 64, "sphere", "tilt:20"),
]


def main() -> None:
    """Print one line per cell."""
    print("# command: python benchmarks/diag_weight.py")
    n = 32
    kz = frequency_axis(n)[:, None, None] * np.ones((n, n, n))
    r = frequency_radius(n)
    cos_z = np.abs(kz) / np.maximum(r, 1e-9)
    band = (np.rint(r) >= 2) & (np.rint(r) <= n // 4)
    missing = band & (cos_z > np.cos(np.deg2rad(50)))
    measured = band & (cos_z < np.cos(np.deg2rad(80)))
    for c in CELLS:
        gt, apix = ground_truth(c.structure, c.box)
        m = cell_mask(c.mask, gt)
        dirs = draw_view_directions(c.distribution, c.n_views, seed=0)
        sim = simulate_half_maps(gt, apix, "star", snr=c.snr, seed=0, angles=_angles(dirs))
        res = fsc3d(sim.half1, sim.half2, voxel_size=apix, mask=m)
        gate = power_presence(sim.half1, sim.half2, m, 0.1)
        w = prepare_sampling_weight(res.volume * gate, n)
        raw = prepare_sampling_weight(res.volume, n)
        g = prepare_sampling_weight(gate, n)
        print(
            f"{c.name}: limit {res.limit_res:.2f} Å; W missing {w[missing].mean():.3f}, "
            f"measured {w[measured].mean():.3f}; ungated 3D FSC missing "
            f"{raw[missing].mean():.3f}; gate missing {g[missing].mean():.3f}; "
            f"mask > 0.5: {(m > 0.5).mean():.3f} of the box"
        )


if __name__ == "__main__":
    main()
