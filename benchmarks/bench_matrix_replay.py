"""Replay post-processing on corrected maps saved by the matrix, without retraining.

Usage::

    python benchmarks/bench_matrix_replay.py --maps DIR [--inputs DIR]

``DIR`` holds ``<cell>.npz`` files written by ``bench_matrix.py --save-maps DIR`` (the
corrected average of each cell as the run produced it, before this replay). For every cell
the half maps are simulated again (or read from ``--inputs``, as the RELION cells must be),
and the corrected average is scored against the truth as it was and after the hand-over
at the 3D FSC's own limit (:func:`spisonet.fsc3d.support_limit` with
:func:`spisonet.maps.combine_map`, what ``correct_anisotropy`` now does by default; here
applied to the average rather than to each half, which differs only by the per-shell
amplitude matching). Prints one line per cell: worst-cone gain / worst global-shell drop @
shell, before and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matrix import CI, CORE, HARD
from matrix_cells import cell_inputs, cell_mask, ground_truth


def main(argv: list[str] | None = None) -> list[dict]:
    """Score every saved cell before and after the hand-over; returns the rows."""
    from spisonet.correction.evaluate import score_correction
    from spisonet.fsc3d import fsc3d, support_limit
    from spisonet.maps import combine_map

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--maps", type=Path, required=True)
    p.add_argument("--inputs", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cells = {c.name: c for c in CORE + HARD + CI}
    print("# command: python " + " ".join(sys.argv), flush=True)
    rows = []
    for path in sorted(args.maps.glob("*.npz")):
        cell = cells.get(path.stem)
        if cell is None:
            print(f"  {path.stem}: not a cell of the matrix, skipped")
            continue
        truth, _ = ground_truth(cell.structure, cell.box, args.seed)
        mask = cell_mask(cell.mask, truth)
        h1, h2, apix = cell_inputs(cell, args.seed, args.inputs)
        with np.load(path) as z:
            corrected = z["corrected"]
        raw = 0.5 * (h1 + h2)
        volume = fsc3d(h1, h2, voxel_size=apix, mask=mask, cone_angle=10.0).volume
        limit = support_limit(volume, apix)
        after = corrected if limit is None else combine_map(corrected, raw, limit, apix, mask)
        before_s = score_correction(truth, raw, corrected, mask)
        after_s = score_correction(truth, raw, after.astype(np.float32), mask)
        row = {
            "name": cell.name,
            "limit": limit,
            "before": (before_s.gain, before_s.max_global_drop, before_s.worst_drop_shell),
            "after": (after_s.gain, after_s.max_global_drop, after_s.worst_drop_shell),
        }
        rows.append(row)
        b, a = row["before"], row["after"]
        print(
            f"  {cell.name}: limit {limit:.2f} Å; before {b[0]:+.3f} / {b[1]:.3f}@{b[2]}, "
            f"after {a[0]:+.3f} / {a[1]:.3f}@{a[2]}",
            flush=True,
        )
    if rows:
        worst = {k: max(r[k][1] for r in rows) for k in ("before", "after")}
        print(f"worst global drop before {worst['before']:.3f}, after {worst['after']:.3f}")
    return rows


if __name__ == "__main__":
    main()
