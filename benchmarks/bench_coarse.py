"""The coarse pass replayed on saved main networks: its settings and hand-over varied
without training the main network again.

Usage::

    python benchmarks/bench_coarse.py --cell NAME --maps DIR --out DIR2 \
        [--train-seeds 0,1,2] [--seed 0] [--inputs DIR] [--ramp LO,HI] \
        [--override KEY=VALUE ...] [--none] [--preset cpu] [--grid C] [--all-directions]

``DIR`` holds ``seed<s>/<cell>.npz`` written by ``bench_matrix.py --train-seeds … --override
ensemble=1 --override network_only=true --override coarse_pass=false --save-maps DIR``: each
member's corrected halves and its main network's raw outputs (``network_outputs``). For each
training seed s the cell's halves are prepared as :func:`correct_anisotropy` prepares them
(``--preset``, default ``cpu``; seed s, one network, the ``--override`` settings, the automatic
input filter decided as there), the coarse pass is trained
(:func:`spisonet.correction.coarse.coarse_outputs`), blended into the saved main outputs with
the hand-over ``LO … HI`` (shells, as fractions of n; default the package's 1/12, 1/6) in the
directions the halves call unmeasured (the package's
:func:`~spisonet.correction.coarse.blend_coarse` with
:func:`~spisonet.correction.pipeline.measured_weights`; ``--all-directions``: in every
direction, the blend of sessions 26–27) and brought back to the input's units
(``restore_units``), exactly the package's path with ``--coarse-pass``. The result goes to
``DIR2/seed<s>/<cell>.npz`` for ``bench_matrix_replay.py --maps DIR2 --ensemble`` (which
applies the measured-data step and scores each member and their ensemble). The coarse
outputs are kept beside it (``<cell>.coarse.npy``): a rerun with the same ``--override``s
and another ``--ramp`` reads them instead of training. ``--none``: no coarse pass (the
main network alone, the paired figure). ``--grid C``: the coarse grid's edge instead of the
package's (``coarse_box``), the hand-over following it unless ``--ramp`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matrix import CI, CORE, HARD, _overrides
from matrix_cells import cell_inputs, cell_mask, ground_truth


def ramp_weight(n: int, lo: float, hi: float) -> np.ndarray:
    """(n, n, n) fftshift-ed weight of the coarse output: 1 up to shell lo·n, 0 from hi·n."""
    from spisonet.fourier import frequency_radius

    r = frequency_radius(n)
    return np.clip((hi * n - r) / ((hi - lo) * n), 0.0, 1.0).astype(np.float32)


def replay_member(
    cell_name: str,
    fine_npz: Path,
    out_dir: Path,
    train_seed: int,
    data_seed: int,
    inputs: Path | None,
    overrides: dict,
    ramp: tuple[float, float] | bool | None,
    preset: str = "cpu",
    grid: int | None = None,
    all_directions: bool = False,
) -> float:
    """Write one member's corrected halves with the coarse pass (hand-over ``ramp``, None:
    the package's) or without it (``ramp`` False); returns the seconds the coarse pass took
    to train (0 when read back)."""
    from spisonet.correction import coarse as coarse_module
    from spisonet.correction import pipeline, preset_settings
    from spisonet.correction.coarse import coarse_box, coarse_outputs, coarse_weight
    from spisonet.fourier import fourier_blend

    cell = {c.name: c for c in CORE + HARD + CI}[cell_name]
    truth, _ = ground_truth(cell.structure, cell.box, data_seed)
    mask = cell_mask(cell.mask, truth)
    h1, h2, apix = cell_inputs(cell, data_seed, inputs)
    s = preset_settings(
        preset,
        **{"seed": train_seed, "ensemble": 1, "network_only": True, "coarse_pass": True},
        **overrides,
    )
    notes: list[str] = []
    checked = pipeline.check_inputs(h1, h2, None, mask, None, apix, s)
    maps = pipeline.prepare_maps(checked, apix, s, notes)
    weight = pipeline.sampling_weight(checked, apix, s, notes)
    s = pipeline.decide_filter_input(checked, weight, s, notes)
    if s.filter_input:
        maps = pipeline.filter_network_input(maps, weight)
    with np.load(fine_npz) as z:
        fine = list(z["network_outputs"])
    seconds = 0.0
    outputs = fine
    if ramp is not False:
        cache = out_dir / f"{cell_name}.coarse.npy"
        if cache.exists():
            coarse = list(np.load(cache))
        else:
            t0 = time.perf_counter()
            package_box = coarse_module.coarse_box
            if grid is not None:
                coarse_module.coarse_box = lambda _n, _s: grid
            try:
                coarse = coarse_outputs(maps.network_input, weight.gated, s, apix, notes)
            finally:
                coarse_module.coarse_box = package_box
            seconds = time.perf_counter() - t0
            out_dir.mkdir(parents=True, exist_ok=True)
            np.save(cache, np.stack(coarse).astype(np.float32))
        n = fine[0].shape[0]
        if ramp is None:  # the package's hand-over for the grid used
            w = coarse_weight(n, grid if grid is not None else coarse_box(n, s))
        else:
            w = ramp_weight(n, *ramp)
        if not all_directions:  # as blend_coarse: only where the halves call unmeasured
            halves, m = checked.halves, checked.mask
            measured = pipeline.measured_weights(*halves, m, weight.fsc3d_volume)[2]
            w = w * (1.0 - np.clip(measured, 0.0, 1.0))
        outputs = [fourier_blend(f, g, w) for f, g in zip(fine, coarse, strict=True)]
    corrected, _ = pipeline.restore_units(outputs, maps, checked.mask, apix, s, notes, weight)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out_dir / f"{cell_name}.npz",
        network_only=np.bool_(True),
        corrected=(0.5 * (corrected[0] + corrected[1])).astype(np.float32),
        corrected_halves=np.stack(corrected).astype(np.float32),
    )
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cell", required=True)
    p.add_argument("--maps", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--train-seeds", default="0")
    p.add_argument("--seed", type=int, default=0, help="the data's seed")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--inputs", type=Path, default=None)
    p.add_argument("--ramp", default=None, help="LO,HI as fractions of n (1/12, 1/6)")
    p.add_argument("--override", action="append", default=[])
    p.add_argument("--none", action="store_true", help="no coarse pass")
    p.add_argument("--grid", type=int, default=None, help="the coarse grid's edge")
    p.add_argument("--all-directions", action="store_true", help="blend in every direction")
    args = p.parse_args(argv)
    ramp: tuple[float, float] | bool | None = False if args.none else None
    if args.ramp and not args.none:
        lo, hi = (float(Fraction(x)) for x in args.ramp.split(","))  # "1/12,1/6"
        ramp = (lo, hi)
    overrides = _overrides(args.override)
    print("# command: python benchmarks/bench_coarse.py " + " ".join(sys.argv[1:]), flush=True)
    for seed in (int(x) for x in args.train_seeds.split(",")):
        fine = args.maps / f"seed{seed}" / f"{args.cell}.npz"
        out = args.out / f"seed{seed}"
        t = replay_member(
            args.cell,
            fine,
            out,
            seed,
            args.seed,
            args.inputs,
            overrides,
            ramp,
            args.preset,
            args.grid,
            args.all_directions,
        )
        print(f"  seed {seed}: written to {out} (coarse training {t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
