"""The measured band read from each matrix cell's half maps, against the views' known spread.

Usage::

    python benchmarks/bench_band.py [--set all] [--cells A,B] [--inputs DIR] [--seed 0]
    python benchmarks/bench_band.py --seed 5 --spec c4channel,64,tight,top \
        --spec molecule,64,tight,tilt:10,0.002   # cells outside the matrix

``--spec structure,box,mask,distribution[,snr]`` (repeatable) reads cells that are not in
the matrix (Fourier noise) instead of ``--set``/``--cells``.

For each cell: the measured-power gate exactly as :func:`correct_anisotropy` computes it
(:func:`spisonet.weights.power_presence`, threshold 0.1, masked and unmasked halves, the
cell's mask), then :func:`spisonet.correction.coverage.measured_band`. Prints the band
(±degrees about the plane perpendicular to the axis), the unmeasured cone, the gate's blur
correction, whether the band is *thin*, and the views' spread the cell was simulated with
(``top`` 5°, ``tilt:θ`` θ, ``side`` 20°; none for uniform mixtures). Needs no training: the
inputs are simulated (or read from ``--inputs``, as ``bench_matrix.py --prepare`` writes
them). This is where ``GATE_BLUR_VOXELS`` and ``THIN_BAND_DEG`` were checked (docs/method.md,
the trust check's *thin band*).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matrix import SETS
from matrix_cells import Cell, cell_inputs, cell_mask, ground_truth

from spisonet.correction.coverage import measured_band
from spisonet.simulate.views import NARROW_ANGLE_DEG
from spisonet.weights import power_presence


def views_spread(distribution: str) -> float | None:
    """The half-width (degrees) of the band a distribution measures; None for mixtures."""
    if distribution == "top":
        return float(NARROW_ANGLE_DEG)
    if distribution == "side":
        return 20.0  # the matrix's side cells: views within 20° of x
    if distribution.startswith("tilt:"):
        return float(distribution.split(":")[1])
    return None


def cell_from_spec(text: str) -> Cell:
    """``structure,box,mask,distribution[,snr]`` → a :class:`Cell` (Fourier noise)."""
    parts = text.split(",")
    if len(parts) not in (4, 5):
        raise SystemExit(f"--spec wants structure,box,mask,distribution[,snr]; got {text!r}")
    snr = float(parts[4]) if len(parts) == 5 else Cell().snr
    return Cell(parts[0], int(parts[1]), parts[2], parts[3], snr=snr)


def main(argv: list[str] | None = None) -> list[dict]:
    """Read the band of every chosen cell; print one line each and return the rows."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--set", default="all", choices=sorted(SETS), dest="cell_set")
    p.add_argument("--cells", default=None, help="comma-separated cell names")
    p.add_argument("--inputs", type=Path, default=None, help="folder of simulated half maps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spec", action="append", default=[], help="structure,box,mask,dist[,snr]")
    args = p.parse_args(argv)
    cells = SETS[args.cell_set]
    if args.spec:
        cells = [cell_from_spec(text) for text in args.spec]
    elif args.cells:
        wanted = set(args.cells.split(","))
        cells = [c for c in cells if c.name in wanted]
    print(f"# {time.strftime('%Y-%m-%d')} {platform.node()} python {' '.join(sys.argv)}")
    rows = []
    for cell in cells:
        h1, h2, _apix = cell_inputs(cell, args.seed, args.inputs)
        truth, _ = ground_truth(cell.structure, cell.box)
        gate = power_presence(h1, h2, cell_mask(cell.mask, truth), 0.1, also_unmasked=True)
        band = measured_band(gate)
        spread = views_spread(cell.distribution)
        rows.append({"name": cell.name, "spread": spread, **band.to_dict()})
        known = "—" if spread is None else f"{spread:.0f}°"
        print(
            f"{cell.name:52s} band ±{band.band:4.1f}° (views {known:>4s})  cone {band.cone:4.1f}°"
            f"  blur {band.blur:4.1f}°  thin {band.thin!s:5s}  axis "
            f"({band.axis[0]:+.2f}, {band.axis[1]:+.2f}, {band.axis[2]:+.2f})",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    main()
