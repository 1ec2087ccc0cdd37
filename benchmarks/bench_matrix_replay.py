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
shells where the data were mixed in, and the gain after the step in :func:`unmeasured_fsc`.

``--oracle-shells LO-HI``: a bound no rule can beat, with the truth as judge: the raw data
put back in full at shells LO … HI (the network's output kept elsewhere), once over the
directions the measured-data step may touch and once over all directions; the worst-cone
gain, the worst global drop and the global FSC drop at each of shells 2 … HI + 2 are
printed for both. If neither removes a drop, no mix of network and data can.

``--ensemble``: ``DIR`` holds ``seed<s>/<cell>.npz`` (``bench_matrix.py --train-seeds 0,1,2
--override network_only=true --save-maps DIR``). For every cell saved under two or more
seeds: each seed's score after the step, and the score of their *ensemble* — the seeds'
corrected halves averaged, then the step — which is what ``--ensemble N`` computes up to
a per-shell scale (each seed's output is brought to the original's amplitude per shell
before the average here, after it there; shell-wise FSCs do not see that), with the
acceptance figures of both. The trust check's power score of an ensemble is the mean of
its members' (the score is linear in the network's output and the hidden data do not
depend on the seed), so ``bench_matrix.over_seeds`` already gives it. Beside the worst-cone
score each row gives :func:`unmeasured_fsc` of the raw map and its gain for each seed and the
ensemble: the shell-mean FSC with the truth over *all* the Fourier space the halves' 3D FSC
calls unmeasured (< 0.143), a second reading of the same maps that does not hang on one
narrow cone (RESULTS.md, session 18). Last, the ensemble's gain over the ``NEAR_CONES``
near-worst cones (:func:`spisonet.correction.evaluate.near_worst_cones`: the raw map's lowest
cone means, ≥ 15° apart; the first is the worst cone): their median and range say how much
the worst-cone gain owes to the one cone the minimum picked (RESULTS.md, session 20).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matrix import CI, CORE, HARD
from matrix_cells import cell_inputs, cell_mask, ground_truth

#: Bands of directions (degrees from the cell's view axis) that ``--bands`` reads.
BANDS = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0))

#: How many near-worst cones (each ≥ NEAR_CONES_SEPARATION° from the others) an ensemble is
#: also scored over: the worst cone is the lowest of 300 noisy cone means, and at 48³ its
#: lowest shells hold 2–12 voxels, so its gain alone can say more about the cone picked
#: than about the correction (RESULTS.md, session 20).
NEAR_CONES = 8
NEAR_CONES_SEPARATION = 15.0


def main(argv: list[str] | None = None) -> list[dict]:
    """Score every saved cell before and after the measured-data blend; returns the rows."""
    from spisonet.correction.evaluate import score_correction
    from spisonet.correction.pipeline import measured_data_step

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--maps", type=Path, required=True)
    p.add_argument("--inputs", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--oracle-shells", default=None, help="LO-HI: put the data back there")
    p.add_argument("--ensemble", action="store_true", help="DIR/seed<s>/: score each seed's "
                   "maps and their average")  # fmt: skip
    p.add_argument("--bands", action="store_true", help="with --ensemble: FSC per low shell "
                   "and band of directions from the view axis")  # fmt: skip
    args = p.parse_args(argv)
    if args.bands and not args.ensemble:
        p.error("--bands needs --ensemble")
    if args.ensemble:
        return ensemble_rows(args.maps, args.inputs, args.seed, args.bands)
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
        halves = _saved_halves(path)
        if halves is None:
            continue
        truth, mask, h1, h2, apix, volume, limit = _cell_data(cell, args.inputs, args.seed)
        raw = 0.5 * (h1 + h2)
        blend = measured_data_step(halves, [h1, h2], mask, volume, apix, limit)
        ungated = measured_data_step(halves, [h1, h2], mask, volume, apix, limit, margin=None)
        free_s = score_correction(truth, raw, np.mean(ungated.maps, axis=0), mask)
        before_s = score_correction(truth, raw, np.mean(halves, axis=0), mask)
        after = np.mean(blend.maps, axis=0)
        after_s = score_correction(truth, raw, after, mask)
        row = {
            "name": cell.name,
            "before": (before_s.gain, before_s.max_global_drop, before_s.worst_drop_shell),
            "after": (after_s.gain, after_s.max_global_drop, after_s.worst_drop_shell),
            "mixed_shells": np.flatnonzero(blend.network_weight < 1.0).tolist(),
            "ungated": (free_s.gain, free_s.max_global_drop, free_s.worst_drop_shell),
            "unmeasured": (
                unmeasured_fsc(truth, raw, mask, volume),
                unmeasured_fsc(truth, after, mask, volume),
            ),
        }
        if oracle is not None:
            row["oracle"] = _oracle_lines(truth, raw, halves, (h1, h2), mask, volume, oracle)
        rows.append(row)
        b, a, u = row["before"], row["after"], row["ungated"]
        print(
            f"  {cell.name}: before {b[0]:+.4f} / {b[1]:.4f}@{b[2]}, "
            f"after {a[0]:+.4f} / {a[1]:.4f}@{a[2]} (mixed at shells "
            f"{row['mixed_shells'] or 'none'}); without the margin {u[0]:+.4f} / "
            f"{u[1]:.4f}@{u[2]}; unmeasured region {row['unmeasured'][0]:+.3f} raw, "
            f"gain {row['unmeasured'][1] - row['unmeasured'][0]:+.3f} after the step",
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


def _cell_data(cell, inputs: Path | None, data_seed: int):
    """(truth, mask, half 1, half 2, voxel size, 3D FSC, its limit) of a cell, as the
    pipeline sees them (the limit is its hand-over without ``limit_res``)."""
    from spisonet.fsc3d import fsc3d, support_limit

    truth, _ = ground_truth(cell.structure, cell.box, data_seed)
    mask = cell_mask(cell.mask, truth)
    h1, h2, apix = cell_inputs(cell, data_seed, inputs)
    volume = fsc3d(h1, h2, voxel_size=apix, mask=mask, cone_angle=10.0).volume
    return truth, mask, h1, h2, apix, volume, support_limit(volume, apix)


def _saved_halves(path: Path) -> list[np.ndarray] | None:
    """A saved run's corrected halves, None (and a line saying why) when unusable here."""
    with np.load(path) as z:
        if "corrected_halves" not in z:
            print(f"  {path}: saved without its halves, skipped")
            return None
        if "network_only" in z and not bool(z["network_only"]):
            print(f"  {path}: saved after the measured-data step (no network_only), skipped")
            return None
        return list(z["corrected_halves"])


def ensemble_rows(
    maps: Path, inputs: Path | None, data_seed: int = 0, bands: bool = False
) -> list[dict]:
    """Each seed's score and the seeds' ensemble score, per cell saved under ≥ 2 seeds.

    Returns one dict per cell: ``name``, ``missing_cone``, ``cell`` (its description),
    ``seeds``, ``per_seed`` [(gain, worst drop, its shell)], ``ensemble`` (the same for the
    seeds' mean), and ``gain``/``max_global_drop`` of the ensemble (so that
    ``bench_matrix.summarise`` reads the rows as they are); with ``bands``, ``bands``:
    {"shells": [...], "raw": (shells, bands), "per_seed": [...], "ensemble": ...} of
    :func:`band_fsc`.
    """
    from bench_matrix import summarise

    cells = {c.name: c for c in CORE + HARD + CI}
    seed_dirs = {}
    for d in maps.glob("seed*"):
        if d.is_dir() and d.name[4:].isdigit():
            seed_dirs[int(d.name[4:])] = d
    names = sorted({p.stem for d in seed_dirs.values() for p in d.glob("*.npz")})
    rows = []
    for name in names:
        cell = cells.get(name)
        if cell is None:
            print(f"  {name}: not a cell of the matrix, skipped")
            continue
        runs = {}
        for s in sorted(seed_dirs):
            path = seed_dirs[s] / f"{name}.npz"
            halves = _saved_halves(path) if path.exists() else None
            if halves is not None:
                runs[s] = halves
        if len(runs) < 2:
            continue
        per_seed, ens, region, near, noise, band_table = _seeds_and_ensemble(
            cell, list(runs.values()), inputs, data_seed, bands
        )
        rows.append({
            "name": name, "missing_cone": cell.has_missing_cone, "cell": cell.to_dict(),
            "seeds": list(runs), "per_seed": per_seed, "ensemble": ens,
            "gain": ens[0], "max_global_drop": ens[1],
            "unmeasured_raw": region[0], "unmeasured_per_seed": region[1:-1],
            "unmeasured_ensemble": region[-1], "near_cones_ensemble": near.tolist(),
            "figure_noise": noise,
        })  # fmt: skip
        seeds = ", ".join(
            f"{s}: {g:+.3f} / {d:.4f}@{k}" for s, (g, d, k) in zip(runs, per_seed, strict=True)
        )
        unmeasured = ", ".join(f"{v - region[0]:+.3f}" for v in region[1:-1])
        print(
            f"  {name}: seeds {seeds}; ensemble of {len(runs)}: {ens[0]:+.3f} "
            f"(± {noise:.3f}, the figure's noise) / "
            f"{ens[1]:.4f}@{ens[2]}; unmeasured region {region[0]:+.3f} raw, gains "
            f"{unmeasured}, ensemble {region[-1] - region[0]:+.3f}; ensemble over the "
            f"{near.size} near-worst cones: median {np.median(near):+.3f}, "
            f"{near.min():+.3f} … {near.max():+.3f}",
            flush=True,
        )
        if band_table is not None:
            rows[-1]["bands"] = band_table
            _print_bands(band_table, list(runs))
    if rows:
        single = [
            {
                **r,
                "gain": float(np.mean([g for g, _, _ in r["per_seed"]])),
                "max_global_drop": max(d for _, d, _ in r["per_seed"]),
            }
            for r in rows
        ]
        print("seeds (mean gain, worst drop): " + json.dumps(summarise(single)))
        print("ensembles: " + json.dumps(summarise(rows)))
    return rows


def unmeasured_fsc(truth, volume_map, mask, fsc3d_volume) -> float:
    """Mean over shells 2 … n/4 of the FSC between ``volume_map`` and the ``truth`` (both
    masked) over the Fourier voxels the 3D FSC calls unmeasured (< 0.143): the missing
    region as the *data* define it, all of it, where the worst cone is one narrow cone
    found from the truth."""
    from spisonet.correction.evaluate import cone_mean
    from spisonet.correction.trust import region_fsc
    from spisonet.fourier import shell_index

    n = truth.shape[0]
    region = np.asarray(fsc3d_volume) < 0.143
    curve = region_fsc(volume_map * mask, truth * mask, region.astype(np.float64))
    # shells without an unmeasured voxel do not take part (region_fsc gives them 0)
    count = np.bincount(shell_index(n)[region], minlength=n // 2 + 1)[: n // 2 + 1]
    curve = np.where(count > 0, curve, np.nan)
    return float(cone_mean(curve, n))


def _seeds_and_ensemble(
    cell, runs: list[list[np.ndarray]], inputs: Path | None, data_seed: int, bands: bool = False
):
    """((gain, worst drop, its shell) after the step for each run and for the runs' mean,
    (raw, each run's, the mean's) :func:`unmeasured_fsc`, the mean's gains over the
    :data:`NEAR_CONES` near-worst cones (the worst first), the worst cone's figure noise
    (:func:`spisonet.correction.evaluate.cone_figure_noise`), and with ``bands`` the
    :func:`band_fsc` table (else None))."""
    from spisonet.correction.evaluate import (
        cone_figure_noise,
        cone_gains,
        near_worst_cones,
        score_correction,
    )
    from spisonet.correction.pipeline import measured_data_step

    truth, mask, h1, h2, apix, volume, limit = _cell_data(cell, inputs, data_seed)
    raw = 0.5 * (h1 + h2)
    out, region = [], [unmeasured_fsc(truth, raw, mask, volume)]
    n = raw.shape[0]
    axis = (1.0, 0.0, 0.0) if cell.distribution == "side" else (0.0, 0.0, 1.0)
    shells = list(range(2, n // 8 + 2))
    table = None
    if bands:
        table = {"shells": shells, "axis": list(axis), "bands": [list(b) for b in BANDS]}
        table.update(raw=band_fsc(raw, truth, mask, axis, shells).tolist(), per_seed=[])
    mean = [np.mean([halves[i] for halves in runs], axis=0) for i in range(2)]
    for halves in [*runs, mean]:
        blend = measured_data_step(halves, [h1, h2], mask, volume, apix, limit)
        corrected = np.mean(blend.maps, axis=0)
        s = score_correction(truth, raw, corrected, mask)
        out.append((s.gain, s.max_global_drop, s.worst_drop_shell))
        region.append(unmeasured_fsc(truth, corrected, mask, volume))
        if table is not None:
            table["per_seed"].append(band_fsc(corrected, truth, mask, axis, shells).tolist())
    if table is not None:
        table["ensemble"] = table["per_seed"].pop()
    directions, _ = near_worst_cones(raw, truth, mask, NEAR_CONES, NEAR_CONES_SEPARATION)
    near = cone_gains(truth, raw, corrected, directions, mask)  # the last: the mean's
    noise = cone_figure_noise(raw.shape[0], directions[0])
    return out[:-1], out[-1], region, near, noise, table


def band_fsc(
    volume_map: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray,
    axis: tuple[float, float, float],
    shells: list[int],
    bands: tuple[tuple[float, float], ...] = BANDS,
) -> np.ndarray:
    """FSC between ``volume_map`` and the ``truth`` (both multiplied by ``mask``) over the
    Fourier voxels of each shell (round(|k|)) whose direction lies ``lo`` ≤ θ < ``hi``
    degrees from ``axis`` ((x, y, z); θ in [0, 90], a direction and its opposite alike;
    90 is included in the last band ending at 90). Returns (len(shells), len(bands));
    NaN where a band holds no voxel of the shell."""
    from spisonet.fourier import frequency_axis

    n = truth.shape[0]
    u = np.asarray(axis, dtype=np.float64)
    u = u / np.linalg.norm(u)
    k = frequency_axis(n).astype(np.float64)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    radius = np.sqrt(kx**2 + ky**2 + kz**2)
    shell = np.rint(radius).astype(np.int64)
    cos = np.abs(kx * u[0] + ky * u[1] + kz * u[2]) / np.where(radius > 0, radius, 1.0)
    theta = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
    fa = np.fft.fftshift(np.fft.fftn(np.asarray(volume_map, np.float64) * mask))
    fb = np.fft.fftshift(np.fft.fftn(np.asarray(truth, np.float64) * mask))
    out = np.full((len(shells), len(bands)), np.nan)
    for i, s in enumerate(shells):
        for j, (lo, hi) in enumerate(bands):
            upper = theta <= hi if hi >= 90 else theta < hi
            sel = (shell == s) & (theta >= lo) & upper
            a, b = fa[sel], fb[sel]
            den = np.sqrt(np.sum(np.abs(a) ** 2) * np.sum(np.abs(b) ** 2))
            if sel.any() and den > 0:
                out[i, j] = np.real(np.sum(a * np.conj(b))) / den
    return out


def _print_bands(table: dict, seeds: list[int]) -> None:
    """One line per shell: the raw map's FSC per band, then each seed's and the ensemble's."""
    names = ["raw", *(f"seed {s}" for s in seeds), "ensemble"]
    grids = [table["raw"], *table["per_seed"], table["ensemble"]]
    labels = " | ".join(f"{lo:g}–{hi:g}°" for lo, hi in table["bands"])
    print(f"    FSC with the truth per band of directions from {table['axis']} ({labels}):")
    for i, shell in enumerate(table["shells"]):
        parts = []
        for name, grid in zip(names, grids, strict=True):
            parts.append(f"{name} " + " ".join(f"{v:+.2f}" for v in grid[i]))
        print(f"      shell {shell}: " + "; ".join(parts))


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
