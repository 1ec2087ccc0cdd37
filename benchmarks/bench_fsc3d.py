"""Benchmark of `spisonet.fsc3d.fsc3d`: seconds and peak memory at 64³, 128³ and 256³.

Worst case of the definition: θ = 10°, limit_res = 2·voxel (limit_r = n/2 + 1, every shell
up to Nyquist is averaged). Each size runs in a fresh process (so the peak RSS is its own),
after a warm-up call that compiles/loads the numba kernels. Prints the fitted exponent of
time ∝ n^p.

    python benchmarks/bench_fsc3d.py [--sizes 64 128 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
from spisonet.fsc3d import fsc3d
n, repeats = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
a = rng.normal(size=(n, n, n)).astype(np.float32)
b = (a + rng.normal(size=(n, n, n))).astype(np.float32)
fsc3d(a[:16, :16, :16].copy(), b[:16, :16, :16].copy())  # warm-up: load compiled kernels
times = []
for _ in range(repeats):
    t = time.perf_counter()
    fsc3d(a, b, voxel_size=1.0, limit_res=2.0, cone_angle=10.0)
    times.append(time.perf_counter() - t)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
print(json.dumps({"n": n, "seconds": min(times), "all": times, "peak_gib": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(
        f"command: python benchmarks/bench_fsc3d.py --sizes {' '.join(map(str, args.sizes))} "
        f"--repeats {args.repeats}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"numba threads = all"
    )
    rows = []
    for n in args.sizes:
        out = (
            subprocess.run(
                [sys.executable, "-c", CHILD, str(n), str(args.repeats)],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        rows.append(r)
        runs = ", ".join(f"{t:.2f}" for t in r["all"])
        print(
            f"{n:>4}³  best {r['seconds']:7.2f} s  (runs: {runs})  peak RSS {r['peak_gib']:.2f} GiB"
        )
    if len(rows) >= 2:
        x = np.log([r["n"] for r in rows])
        y = np.log([r["seconds"] for r in rows])
        p = np.polyfit(x, y, 1)[0]
        print(f"fitted exponent: time ∝ n^{p:.2f}")


if __name__ == "__main__":
    main()
