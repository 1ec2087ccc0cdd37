"""Missing-wedge correction of simulated tomograms, against their ground truth.

Usage::

    python benchmarks/bench_tomo.py [--preset cpu] [--shape 64,128,128] [--snr 0.5]
        [--tilt-range=-60,60] [--tilt-step 3] [--defocus UM] [--seed 0]
        [--set KEY=VALUE ...] [--model MODEL] [--out bench_tomo_out] [--json out.json]

Runs the workflow a user runs (``spisonet tomo``'s steps through their Python API):
simulate an even/odd pair with ground truth (real projection and back-projection),
[deconv when ``--defocus``], make-mask, refine with the preset, predict. Then compares
the input (even + odd) / 2 and the corrected tomogram with the truth, over the whole
tomogram's Fourier transform (rfft grid; shells of width 1 / min(Z, Y, X) cycles/voxel):

- ``wedge``: mean over shells 2 … n/4 of the FSC with the truth restricted to the Fourier
  voxels inside the missing wedge (the tilt θ(k) of the voxel's plane outside the range);
- ``measured``: the same restricted to the measured region, per shell; the largest drop
  of any shell 1 … n/2 − 1 below the input's;
- ``z_elongation``: how stretched along z the molecules are (σz / σxy of the average of
  boxes around their true centres; the truth's value is the target);
- the wall time of each step, the machine, its load.

``--model`` predicts with a trained model instead of training (to re-score a run after a
change to ``predict``: same ``--seed``/``--snr``/... give the same simulation). With
``--defocus`` the measured-region drop is also reported against the deconvolved input,
the network's actual input (beyond the CTF's first zero the original's phases are flipped).

Writes ``tomo_before_after.png`` (truth / input / corrected: x-y and x-z slices and the
kx–kz power spectrum) and ``bench_tomo.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from bench_quality import _overrides  # KEY=VALUE settings, as the other benchmarks

from spisonet.io import read_map
from spisonet.report.json_file import write_json
from spisonet.report.tomo import tomogram_figure, tomogram_views
from spisonet.tomo.files import (
    deconv_tomograms,
    make_masks,
    predict_tomograms,
    refine,
    simulate_to_files,
)
from spisonet.tomo.network import tomo_settings


def wedge_regions(shape: tuple[int, int, int], tilt_min: float, tilt_max: float):
    """(shell index, in-wedge bool) on the rfft grid of a (Z, Y, X) volume, tilt axis y."""
    nz, ny, nx = shape
    kz = np.fft.fftfreq(nz)[:, None, None]
    ky = np.fft.fftfreq(ny)[None, :, None]
    kx = np.fft.rfftfreq(nx)[None, None, :]
    n = min(shape)
    r = np.sqrt(kz**2 + ky**2 + kx**2)
    shells = np.floor(r * n + 0.5).astype(int)
    theta = np.degrees(np.arctan2(-kz, kx))
    theta = np.where(theta > 90, theta - 180, theta)
    theta = np.where(theta <= -90, theta + 180, theta)
    on_axis = (np.abs(kz) < 1e-12) & (np.abs(kx) < 1e-12)
    missing = ((theta < tilt_min - 1e-7) | (theta > tilt_max + 1e-7)) & ~on_axis
    return np.broadcast_to(shells, r.shape), np.broadcast_to(missing, r.shape)


def region_fsc(a: np.ndarray, b: np.ndarray, shells: np.ndarray, region: np.ndarray) -> np.ndarray:
    """FSC per shell between two volumes over the Fourier voxels of ``region``."""
    fa, fb = np.fft.rfftn(a.astype(np.float64)), np.fft.rfftn(b.astype(np.float64))
    n_shells = int(min(a.shape)) // 2
    out = np.full(n_shells, np.nan)
    for s in range(n_shells):
        m = region & (shells == s)
        if not m.any():
            continue
        num = np.real(np.sum(fa[m] * np.conj(fb[m])))
        den = np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2))
        out[s] = num / den if den > 0 else np.nan
    return out


def z_elongation(volume: np.ndarray, centres: np.ndarray, box: int = 24) -> float:
    """How stretched along z (the beam) the molecules are: the second moments of the
    average of boxes around the molecules' true centres (random orientations average
    to a round blob; the missing wedge stretches every copy along z), σ_z over the mean
    of σ_y and σ_x, after removing the boxes' border median and clipping below 0."""
    h = box // 2
    acc = np.zeros((box, box, box))
    n = 0
    for c in np.round(np.asarray(centres)).astype(int):
        s = tuple(slice(ci - h, ci + h) for ci in c)
        if all(si.start >= 0 and si.stop <= dim for si, dim in zip(s, volume.shape, strict=True)):
            acc += volume[s]
            n += 1
    if n == 0:
        return float("nan")
    a = acc / n
    border = np.concatenate([np.take(a, i, axis=k).ravel() for k in range(3) for i in (0, -1)])
    a = np.clip(a - np.median(border), 0, None)
    z, y, x = np.indices(a.shape) - (box - 1) / 2
    m = a.sum()
    sz, sy, sx = (np.sqrt((a * q**2).sum() / m) for q in (z, y, x))
    return float(sz / np.sqrt((sx**2 + sy**2) / 2))


def _deconvolved(list_path: Path) -> list[str]:
    from spisonet.io.tomograms import read_tomogram_list

    return read_tomogram_list(list_path)[0].inputs()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--shape", default="64,128,128")
    ap.add_argument("--snr", type=float, default=0.5)
    ap.add_argument("--tilt-range", default="-60,60")
    ap.add_argument("--tilt-step", type=float, default=3.0)
    ap.add_argument("--defocus", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="bench_tomo_out")
    ap.add_argument("--json", default=None)
    ap.add_argument("--model", default=None, help="predict with this model; no training")
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    lo, hi = (float(v) for v in args.tilt_range.split(","))
    out = Path(args.out)
    settings = tomo_settings(args.preset, **_overrides(args.set))
    command = " ".join([Path(sys.executable).name, *sys.argv])
    times = {}

    t = time.perf_counter()
    paths = simulate_to_files(
        out / "sim",
        shape=shape,
        tilt_min=lo,
        tilt_max=hi,
        tilt_step=args.tilt_step,
        snr=args.snr,
        defocus=args.defocus,
        seed=args.seed,
    )
    times["simulate"] = time.perf_counter() - t
    lst = paths["list"]
    t0 = time.perf_counter()  # the user's workflow starts here
    if args.defocus is not None:
        t = time.perf_counter()
        deconv_tomograms(lst, out / "deconv")
        times["deconv"] = time.perf_counter() - t
    t = time.perf_counter()
    make_masks(lst, out / "masks")
    times["make_mask"] = time.perf_counter() - t
    t = time.perf_counter()
    if args.model:
        model, steps = Path(args.model), None
    else:
        run = refine(lst, out / "refine", settings)
        model, steps = run.model, run.steps
        times["refine"] = time.perf_counter() - t
    t = time.perf_counter()
    written = predict_tomograms(lst, model, out / "predict", settings)
    times["predict"] = time.perf_counter() - t
    times["workflow_total"] = time.perf_counter() - t0

    truth = read_map(paths["truth"], require_cubic=False).data
    even = read_map(paths["even"], require_cubic=False).data
    odd = read_map(paths["odd"], require_cubic=False).data
    corrected = read_map(written[0], require_cubic=False).data
    raw = (even + odd) / 2
    inputs = [("raw", raw), ("corrected", corrected)]
    if args.defocus is not None:
        halves = [read_map(p, require_cubic=False).data for p in _deconvolved(lst)]
        inputs.append(("deconvolved", sum(halves) / len(halves)))
    shells, missing = wedge_regions(shape, lo, hi)
    n = min(shape)
    band = slice(2, n // 4 + 1)
    res = {}
    for name, vol in inputs:
        w = region_fsc(truth, vol, shells, missing)
        m = region_fsc(truth, vol, shells, ~missing)
        res[name] = {
            "wedge_fsc": w.tolist(),
            "measured_fsc": m.tolist(),
            "wedge_mean": float(np.nanmean(w[band])),
            "measured_mean": float(np.nanmean(m[band])),
        }
    centres = json.loads(Path(paths["simulation"]).read_text())["molecule_positions_zyx"]
    for name, vol in (("truth", truth), ("raw", raw), ("corrected", corrected)):
        res.setdefault(name, {})["z_elongation"] = z_elongation(vol, np.array(centres))
    drop = np.array(res["raw"]["measured_fsc"]) - np.array(res["corrected"]["measured_fsc"])
    worst = int(np.nanargmax(drop[1 : n // 2])) + 1
    if "deconvolved" in res:
        drop_d = np.array(res["deconvolved"]["measured_fsc"]) - np.array(
            res["corrected"]["measured_fsc"]
        )
        worst_d = int(np.nanargmax(drop_d[1 : n // 2])) + 1
    summary = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.processor()}",
        "load_avg_1m": os.getloadavg()[0],
        "command": command,
        "preset": settings.preset,
        "settings": settings.to_dict(),
        "shape": shape,
        "snr": args.snr,
        "tilt_range": [lo, hi],
        "defocus": args.defocus,
        "wedge_gain": res["corrected"]["wedge_mean"] - res["raw"]["wedge_mean"],
        "measured_gain": res["corrected"]["measured_mean"] - res["raw"]["measured_mean"],
        "worst_measured_drop": float(drop[worst]),
        "worst_measured_shell": worst,
        "worst_drop_vs_deconvolved": float(drop_d[worst_d]) if "deconvolved" in res else None,
        "worst_shell_vs_deconvolved": worst_d if "deconvolved" in res else None,
        "model": str(model),
        "train_steps": steps,
        "times_s": times,
        "results": res,
    }
    views = {
        "truth": tomogram_views(truth),
        "input (even + odd) / 2": tomogram_views(raw),
        "corrected": tomogram_views(corrected),
    }
    tomogram_figure(
        views, out / "tomo_before_after.png", title=f"{shape}, tilts {lo:g}…{hi:g}°, snr {args.snr}"
    )
    write_json(out / "bench_tomo.json", summary)
    if args.json:
        write_json(args.json, summary)
    print(f"$ {command}")
    print(f"{summary['date']}  {summary['machine']}  load {summary['load_avg_1m']:.2f}")
    trained = f"{steps} steps" if steps is not None else f"model {model}"
    print(f"preset {settings.preset}: {trained}; shape {shape}, snr {args.snr}")
    print(
        f"wedge FSC with truth (shells 2…{n // 4}): {res['raw']['wedge_mean']:.3f} → "
        f"{res['corrected']['wedge_mean']:.3f} ({summary['wedge_gain']:+.3f})"
    )
    print(
        f"measured FSC with truth (same shells): {res['raw']['measured_mean']:.3f} → "
        f"{res['corrected']['measured_mean']:.3f}; worst drop of a shell "
        f"{summary['worst_measured_drop']:+.3f} (shell {worst})"
    )
    if "deconvolved" in res:
        print(
            "  against the deconvolved input: worst drop "
            f"{summary['worst_drop_vs_deconvolved']:+.3f} (shell {worst_d})"
        )
    print(
        "molecules' z-elongation (σz / σxy of their average): truth "
        f"{res['truth']['z_elongation']:.3f}, input {res['raw']['z_elongation']:.3f}, "
        f"corrected {res['corrected']['z_elongation']:.3f}"
    )
    print("times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return summary


if __name__ == "__main__":
    main()
