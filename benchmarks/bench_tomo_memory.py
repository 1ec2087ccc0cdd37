"""Peak memory of ``spisonet tomo predict`` on a large tomogram pair (streamed prediction).

Usage::

    python benchmarks/bench_tomo_memory.py [--shape 300,1000,1000] [--preset tiny]
        [--memory 1024] [--work /tmp/bench_tomo_memory] [--keep]

Writes an even/odd pair of the given (Z, Y, X) shape to ``--work`` (float32 noise with a
few slabs of structure, written slab by slab so this script itself stays small), trains a
model of the preset's architecture for one step on a small simulated pair (the weights do
not change the memory), then runs ``spisonet tomo predict`` in a child process and reports
its peak resident memory (``ru_maxrss`` of the child), the wall time and the tiles per
second, with the command line. The limit asked for (issue 12): under 8 GiB for
1000 × 1000 × 300.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from spisonet.io import map_slab_writer


def _write_tomogram(path: Path, shape: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    with map_slab_writer(path, shape, voxel_size=10.0) as write:
        for y0 in range(0, ny, 64):
            y1 = min(ny, y0 + 64)
            slab = rng.normal(size=(nz, y1 - y0, nx)).astype(np.float32)
            slab[nz // 2 - 5 : nz // 2 + 5] += 2.0  # a "membrane" across the tomogram
            write(y0, y1, slab)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="300,1000,1000", help="Z,Y,X")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument(
        "--widths",
        default=None,
        help="the model's network (default: the preset's); memory depends on it only "
        "through one batch of tiles",
    )
    ap.add_argument("--cube-size", type=int, default=None)
    ap.add_argument("--memory", type=float, default=1024.0, help="MiB per input slab")
    ap.add_argument("--work", default="/tmp/bench_tomo_memory")
    ap.add_argument("--keep", action="store_true", help="keep the tomograms written")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "spisonet", "tomo"]

    t = time.perf_counter()
    for name, seed in (("even", 1), ("odd", 2)):
        if not (work / f"{name}.mrc").exists():
            _write_tomogram(work / f"{name}.mrc", shape, seed)
    big = work / "big.toml"
    subprocess.run(
        [
            *exe,
            "prepare",
            str(big),
            "--even",
            str(work / "even.mrc"),
            "--odd",
            str(work / "odd.mrc"),
            "--name",
            "big",
        ],
        check=True,
        capture_output=True,
    )
    small = work / "small"
    subprocess.run(
        [*exe, "simulate", "-o", str(small), "--shape", "64,96,96"], check=True, capture_output=True
    )
    subprocess.run(
        [
            *exe,
            "refine",
            str(small / "tomograms.toml"),
            "-o",
            str(work / "model"),
            "--preset",
            args.preset,
            "--epochs",
            "1",
            "--n-subvolume",
            "4",
            *(["--widths", args.widths] if args.widths else []),
            *(["--cube-size", str(args.cube_size)] if args.cube_size else []),
            "--device",
            "cpu",
        ],
        check=True,
        capture_output=True,
    )
    setup = time.perf_counter() - t

    cmd = [
        *exe,
        "predict",
        str(big),
        str(work / "model" / "model.pt"),
        "-o",
        str(work / "out"),
        "--preset",
        args.preset,
        "--device",
        "cpu",
        "--memory",
        str(args.memory),
    ]
    # a fresh wrapper whose only child is predict: its ru_maxrss is predict's alone
    wrapper = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(r.returncode)"
    )
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stdout + proc.stderr)
    peak_kib = int(proc.stdout.split("PEAK_KIB")[-1].split()[0])
    gib = peak_kib / 2**20
    size_gib = 4 * np.prod(shape) / 2**30
    print(f"$ {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{datetime.date.today()}  {platform.machine()} {os.cpu_count()} cores  "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"predict {shape} even/odd ({size_gib:.2f} GiB each, float32), preset "
        f"{args.preset} (widths {args.widths or 'preset'}, cube {args.cube_size or 'preset'}), "
        "--memory "
        f"{args.memory:g} MiB: peak RSS {gib:.2f} GiB, "
        f"wall {wall:.0f} s (set-up {setup:.0f} s)"
    )
    print("  " + " ".join(cmd))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
