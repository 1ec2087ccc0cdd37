"""Replay post-processing on corrected maps saved by the matrix, without retraining.

Usage::

    python benchmarks/bench_matrix_replay.py --maps DIR [--inputs DIR]

``DIR`` holds ``<cell>.npz`` files written by ``bench_matrix.py --save-maps DIR`` (each
corrected half as the run produced it). For every cell the half maps are simulated again
(or read from ``--inputs``, as the RELION cells must be), and the corrected average is
scored against the truth as it was and after
:func:`spisonet.correction.pipeline.measured_data_step` (per shell, over the measured directions,
the mix of network and data the half maps estimate closest in correlation to the truth,
where it beats the network alone by the margin), as ``correct_anisotropy`` now does, and
without the margin (wherever the mix beats the network at all); for maps saved by a run
without the step (``--override network_only=true``). Prints one line per cell: worst-cone
gain / worst global-shell drop @ shell before, after and without the margin, and the
shells where the data were mixed in.

``--oracle-shells LO-HI``: a bound no rule can beat, with the truth as judge: the raw data
put back in full at shells LO … HI (the network's output kept elsewhere), once over the
directions the measured-data step may touch and once over all directions; the worst-cone
gain, the worst global drop and the global FSC drop at each of shells 2 … HI + 2 are
printed for both. If neither removes a drop, no mix of network and data can.
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
    """Score every saved cell before and after the measured-data blend; returns the rows."""
    from spisonet.correction.evaluate import score_correction
    from spisonet.correction.pipeline import measured_data_step
    from spisonet.fsc3d import fsc3d, support_limit

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--maps", type=Path, required=True)
    p.add_argument("--inputs", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle-shells", default=None, help="LO-HI: put the data back there")
    args = p.parse_args(argv)
    oracle = None
    if args.oracle_shells:
        lo, hi = (int(v) for v in args.oracle_shells.split("-"))
        oracle = (lo, hi)
    cells = {c.name: c for c in CORE + HARD + CI}
    print("# command: python " + " ".join(sys.argv), flush=True)
    rows = []
    for path in sorted(args.maps.glob("*.npz")):
        cell = cells.get(path.stem)
        if cell is None:
            print(f"  {path.stem}: not a cell of the matrix, skipped")
            continue
        with np.load(path) as z:
            if "corrected_halves" not in z:
                print(f"  {path.stem}: saved without its halves, skipped")
                continue
            halves = list(z["corrected_halves"])
        truth, _ = ground_truth(cell.structure, cell.box, args.seed)
        mask = cell_mask(cell.mask, truth)
        h1, h2, apix = cell_inputs(cell, args.seed, args.inputs)
        raw = 0.5 * (h1 + h2)
        volume = fsc3d(h1, h2, voxel_size=apix, mask=mask, cone_angle=10.0).volume
        limit = support_limit(volume, apix)  # the pipeline's hand-over (no limit_res here)
        blend = measured_data_step(halves, [h1, h2], mask, volume, apix, limit)
        ungated = measured_data_step(halves, [h1, h2], mask, volume, apix, limit, margin=None)
        free_s = score_correction(truth, raw, np.mean(ungated.maps, axis=0), mask)
        before_s = score_correction(truth, raw, np.mean(halves, axis=0), mask)
        after_s = score_correction(truth, raw, np.mean(blend.maps, axis=0), mask)
        row = {
            "name": cell.name,
            "before": (before_s.gain, before_s.max_global_drop, before_s.worst_drop_shell),
            "after": (after_s.gain, after_s.max_global_drop, after_s.worst_drop_shell),
            "mixed_shells": np.flatnonzero(blend.network_weight < 1.0).tolist(),
            "ungated": (free_s.gain, free_s.max_global_drop, free_s.worst_drop_shell),
        }
        if oracle is not None:
            row["oracle"] = _oracle_lines(truth, raw, halves, (h1, h2), mask, volume, oracle)
        rows.append(row)
        b, a, u = row["before"], row["after"], row["ungated"]
        print(
            f"  {cell.name}: before {b[0]:+.4f} / {b[1]:.4f}@{b[2]}, "
            f"after {a[0]:+.4f} / {a[1]:.4f}@{a[2]} (mixed at shells "
            f"{row['mixed_shells'] or 'none'}); without the margin {u[0]:+.4f} / "
            f"{u[1]:.4f}@{u[2]}",
            flush=True,
        )
        for line in row.get("oracle", []):
            print("    " + line, flush=True)
    if rows:
        worst = {k: max(r[k][1] for r in rows) for k in ("before", "after", "ungated")}
        print(
            f"worst global drop before {worst['before']:.4f}, after {worst['after']:.4f}, "
            f"without the margin {worst['ungated']:.4f}"
        )
    return rows


def _oracle_lines(truth, raw, networks, halves, mask, volume, shells) -> list[str]:
    """The data put back in full at ``shells`` (over the step's directions, then over all)."""
    from spisonet.correction.evaluate import score_correction
    from spisonet.fourier import fourier_blend, shell_index
    from spisonet.fsc_shells import fsc_curve
    from spisonet.weights import directional_weight, measured_weight

    lo, hi = shells
    n = raw.shape[0]
    index = shell_index(n)
    band = ((index >= lo) & (index <= hi)).astype(np.float32)
    measured = measured_weight(volume, halves[0], halves[1], mask)
    applied = np.maximum(measured, directional_weight(measured))
    g_raw = fsc_curve(raw, truth, mask)[0]
    shown = slice(2, min(hi + 3, n // 2))
    lines = []
    choices = (("network alone", None), ("measured dirs", applied * band), ("all dirs", band))
    for label, weight in choices:
        if weight is None:
            mixed = np.mean(networks, axis=0)
        else:
            pairs = zip(networks, halves, strict=True)
            mixed = np.mean([fourier_blend(o, h, weight) for o, h in pairs], axis=0)
        s = score_correction(truth, raw, mixed, mask)
        drops = np.round(g_raw[shown] - fsc_curve(mixed, truth, mask)[0][shown], 4)
        lines.append(
            f"data at shells {lo}-{hi}, {label:13s}: gain {s.gain:+.4f}, worst "
            f"drop {s.max_global_drop:.4f}@{s.worst_drop_shell}; drop at shells "
            f"{shown.start}…{shown.stop - 1}: {drops.tolist()}"
        )
    return lines


if __name__ == "__main__":
    main()
