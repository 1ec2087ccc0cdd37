"""Peak memory (RSS) of `fsc3d`, training-data preparation and tiled prediction on big boxes.

Each measurement runs in a fresh process so its peak RSS is its own. Prediction uses an
untrained small U-Net (the network's size changes the time, not the map-sized buffers,
which are what this benchmark watches); the map is padded by mirroring and tiles stream
through the network `--batch` at a time.

    python benchmarks/bench_memory.py [--sizes 384 512] [--what fsc3d prepare predict]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

FSC3D = r"""
import json, resource, sys, time
import numpy as np
from spisonet.fsc3d import fsc3d
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n, n), dtype=np.float32)
b = a + rng.standard_normal((n, n, n), dtype=np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
t = time.perf_counter()
r = fsc3d(a, b, voxel_size=1.0, limit_res=2.0, cone_angle=10.0)
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"what": "fsc3d", "n": n, "seconds": secs, "peak_gib": peak,
                  "inputs_gib": base}))
"""

PREDICT = r"""
import json, resource, sys, time
import numpy as np
import torch
from spisonet.nn import UNet3D
from spisonet.nn.predict import predict_map
n, widths, batch = int(sys.argv[1]), tuple(int(w) for w in sys.argv[2].split(",")), int(sys.argv[3])
torch.manual_seed(0)
model = UNet3D(widths)
vol = np.random.default_rng(0).standard_normal((n, n, n), dtype=np.float32)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
t = time.perf_counter()
out = predict_map(model, vol, cube_size=64, crop_size=80, edge=7, batch_size=batch)
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"what": "predict", "n": n, "seconds": secs, "peak_gib": peak,
                  "inputs_gib": base, "widths": list(widths), "batch": batch}))
"""

# The training-data preparation of correct_anisotropy (gpu preset's cube 64, 1000 cubes):
# z-scored halves, W from a given 3D FSC gated by measured power, resized to the cube,
# cube centres in the mask and the cubes of both halves.
PREPARE = r"""
import json, resource, sys, time
import numpy as np
from spisonet.weights import power_presence
from spisonet.maps import zscore
from spisonet.masks import spherical_mask
from spisonet.nn.data import extract_cubes, sample_cube_centres
from spisonet.nn.operators import prepare_sampling_weight
n = int(sys.argv[1])
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n, n), dtype=np.float32)
b = a + rng.standard_normal((n, n, n), dtype=np.float32)
fsc = rng.random((n, n, n), dtype=np.float32)
mask = spherical_mask(n, 0.4 * n, soft_edge_voxels=6)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
t = time.perf_counter()
work = [zscore(a), zscore(b)]
w = prepare_sampling_weight(fsc * power_presence(a, b, mask, 0.1), 64)
centres = sample_cube_centres(mask, 1000, 64, rng=0)
cubes = [extract_cubes(v, centres, 64) for v in work]
secs = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps({"what": "prepare", "n": n, "seconds": secs, "peak_gib": peak,
                  "inputs_gib": base}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[384, 512])
    parser.add_argument(
        "--what",
        nargs="+",
        default=["fsc3d", "prepare", "predict"],
        choices=["fsc3d", "prepare", "predict"],
    )
    parser.add_argument("--widths", default="4,8,16,32")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(
        "command: python benchmarks/bench_memory.py --sizes "
        f"{' '.join(map(str, args.sizes))} --what {' '.join(args.what)} "
        f"--widths {args.widths} --batch {args.batch}"
    )
    print(f"machine: {os.cpu_count()} CPUs")
    for what in args.what:
        for n in args.sizes:
            code, extra = {
                "fsc3d": (FSC3D, []),
                "predict": (PREDICT, [args.widths, str(args.batch)]),
                "prepare": (PREPARE, []),
            }[what]
            out = (
                subprocess.run(
                    [sys.executable, "-c", code, str(n), *extra],
                    check=True,
                    capture_output=True,
                    text=True,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            r = json.loads(out)
            map_gib = n**3 * 4 / 1024**3
            print(
                f"{what:8s} {n}³: {r['seconds']:7.1f} s, peak RSS {r['peak_gib']:.2f} GiB "
                f"(inputs alone {r['inputs_gib']:.2f} GiB; one float32 map = {map_gib:.2f} GiB)"
            )


if __name__ == "__main__":
    main()
