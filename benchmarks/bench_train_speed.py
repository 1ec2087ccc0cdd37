"""Training speed (steps/s) and prediction time of each correction preset.

Usage::

    python benchmarks/bench_train_speed.py [--presets tiny,cpu,gpu] [--steps 6]
        [--devices cpu,cuda] [--box 64] [--threads N]

For every preset, device (CUDA only when present) and precision (float32, and bf16
autocast), a network of the preset's widths is trained for ``--steps`` optimiser steps
on random cubes of the preset's size with the preset's batch size and accumulation (the
full loss: consistency, equivariance and Noise2Noise), after one untimed warm-up step;
then a ``--box``³ map is predicted with the preset's tiles. Prints a markdown table
(and the peak CUDA memory on a GPU). The machine may be shared: the load is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from spisonet.correction import preset_settings
from spisonet.nn.data import CubePairs
from spisonet.nn.predict import predict_map
from spisonet.nn.train import TrainSettings, build_model, train_network


def measure(preset: str, device: str, amp: str, steps: int, box: int) -> dict[str, float]:
    """Steps/s of training and seconds to predict a ``box``³ map."""
    s = preset_settings(preset)
    d = s.cube_size
    rng = np.random.default_rng(0)
    n_cubes = s.batch_size * (steps + 1)
    cubes1 = rng.standard_normal((n_cubes, d, d, d), dtype=np.float32)
    cubes2 = rng.standard_normal((n_cubes, d, d, d), dtype=np.float32)
    w = rng.random((d, d, d), dtype=np.float32)
    ts = TrainSettings(
        widths=s.widths,
        epochs=1,
        batch_size=s.batch_size,
        acc_batches=s.acc_batches,
        learning_rate=s.learning_rate,
        amp=amp,
        device=device,
    )
    model = build_model(s.widths)
    times: list[float] = []

    def tick(stage: str, done: int, total: int, info: object = None) -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter())

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    res = train_network(CubePairs(cubes1, cubes2), w, ts, model=model, progress=tick)
    per_step = np.diff(times)  # the first step (warm-up) is not timed
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else 0.0
    vol = rng.standard_normal((box, box, box), dtype=np.float32)
    t0 = time.perf_counter()
    predict_map(
        res.model,
        vol,
        cube_size=d,
        crop_size=s.predict_crop_size,
        edge=s.predict_edge,
        batch_size=s.batch_size,
        device=device,
        amp_dtype=torch.bfloat16 if amp == "bf16" else None,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_pred = time.perf_counter() - t0
    return {
        "steps_per_s": 1.0 / float(np.median(per_step)),
        "predict_s": t_pred,
        "peak_gib": peak,
    }


def main() -> None:
    """Parse arguments and print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="tiny,cpu")
    p.add_argument("--devices", default="cpu,cuda")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--box", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    print(
        f"# bench_train_speed on {platform.node()}: {os.cpu_count()} CPUs "
        f"(torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f}), "
        f"torch {torch.__version__}, CUDA: "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
    )
    print("# command: python " + " ".join(sys.argv))
    head = f"| preset | device | precision | train steps/s | predict {args.box}³ (s) |"
    print(head + " peak GPU GiB |")
    print("|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        for device in devices:
            for amp in ("off", "bf16"):
                r = measure(preset, device, amp, args.steps, args.box)
                prec = "float32" if amp == "off" else "bf16 autocast"
                print(
                    f"| {preset} | {device} | {prec} | {r['steps_per_s']:.2f} | "
                    f"{r['predict_s']:.2f} | {r['peak_gib']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
