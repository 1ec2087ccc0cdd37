"""The evaluation matrix: does the correction hold on data it was not tuned on?

Usage::

    python benchmarks/bench_matrix.py [--preset cpu] [--set core|hard|all|ci]
        [--cells NAME,NAME ...] [--out benchmarks/matrix_out] [--seed 0]
        [--override KEY=VALUE ...] [--list] [--jobs N] [--inputs DIR] [--prepare]
        [--train-seeds 0,1,2]

Cells vary one factor at a time around a base cell (the built-in molecule, box 64, a
tight soft mask, views within 20° of z, per-view SNR 0.01, the Fourier noise model),
plus the cases that failed before (a membrane protein with its long axis along the
preferred view, box 48, spherical mask) and cells with real projections and
reconstruction by RELION (``relion_project`` + ``relion_reconstruct``). See
``matrix_cells.py`` for what a cell does. Per cell: the gain of the mean FSC with the
truth over shells 2 … n/4 in the *worst cone* (20°, around the least-measured
direction, found from the truth) with that cone's figure noise (the spread of the same
figure between unrelated maps, ``cone_figure_noise``: ±0.085 at 48³, ±0.031 at 128³), the
worst drop of any global shell, the trust check's score, the time. Each cell's figures
go to ``--out/<cell>.json`` as soon as it ends, and a rerun skips cells already there
(so an interrupted matrix continues).

``--jobs N`` runs N cells at once in separate processes (on a GPU, small networks leave
most of the card idle: several cells share it). ``--inputs DIR`` keeps each cell's
simulated half maps there and reads them back on a rerun; ``--prepare`` only simulates
(e.g. the ``relion`` cells on a machine with RELION, to be corrected on a GPU machine
without it). ``SPISONET_MATRIX_DATA`` points at the real maps when ``../shared/data`` is
not beside the checkout.

At the end: the table (markdown), the acceptance figures (cells with a missing cone:
median gain, the weakest cell; uniform cells; the worst global drop) and the Spearman
rank correlation between the trust score and the true gain (``trust``), and between what
the check vouches for (``vouched``: the score, 0 where the measured band is thin) and
the gain.

``--train-seeds 0,1,2`` trains every cell once per seed (the network's initialisation and
cubes; the data stay those of ``--seed``), because on the `cpu` preset the training seed
alone moves a cell's gain by up to 0.12 (RESULTS.md, session 16): a change judged on one
seed per cell is judged on noise. Each run goes to ``<cell>__<preset>__seed<s>.json`` (maps
to ``--save-maps/seed<s>/``); the table lists every run, and the acceptance figures are
taken over cells with each cell's *mean* gain and trust over its seeds and its *worst*
drop over them (``gain_min``/``gain_max`` give the spread).

The `cpu` preset averages three networks (``ensemble`` 3, seeds s … s+2). To judge it and
its members in one go, train the members one by one and replay their average::

    python benchmarks/bench_matrix.py --preset cpu --train-seeds 0,1,2 \
        --override ensemble=1 --override network_only=true --save-maps DIR ...
    python benchmarks/bench_matrix_replay.py --maps DIR --ensemble ...

(the same training time as ``--preset cpu`` alone; member k of an ensemble is exactly the
one-network run with seed s + k, tests/correction/test_correction.py). The ensemble's trust
score is the mean of its members' (``over_seeds``).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from matrix_cells import Cell, cell_inputs, run_cell

BASE = Cell()


def _vary(**changes) -> Cell:
    return Cell(**{**BASE.to_dict(), **changes})


#: One factor at a time around the base cell.
CORE = [
    BASE,
    _vary(distribution="top"),
    _vary(distribution="tilt:30"),
    _vary(distribution="top+uniform:0.05"),
    _vary(distribution="side"),
    _vary(distribution="uniform"),
    _vary(mask="sphere"),
    _vary(box=48),
    _vary(box=96),
    _vary(box=128),
    _vary(snr=0.003),
    _vary(structure="cftr"),
    _vary(structure="c4channel"),
    _vary(structure="emd3488"),
    _vary(structure="cftr-z"),
    _vary(noise="relion", snr=0.05),
]
#: Cells combining the hard factors (small box, sphere, elongated along the view, real maps).
HARD = [
    Cell("cftr-z", 48, "sphere", "tilt:20"),
    Cell("cftr-z", 64, "sphere", "top"),
    Cell("c4channel", 48, "sphere", "tilt:20"),
    Cell("emd3488", 96, "tight", "side"),
    Cell("cftr", 128, "sphere", "tilt:30"),
    Cell("cftr-z", 48, "sphere", "tilt:20", noise="relion", snr=0.05),
    Cell("c4channel", 64, "tight", "top+uniform:0.05", noise="relion", snr=0.02),
    Cell("emd3488", 64, "sphere", "uniform", snr=0.003),
]
#: The CI subset (tiny preset, small boxes): a smoke test that the matrix still runs.
CI = [
    Cell("molecule", 32, "tight", "tilt:20"),
    Cell("molecule", 32, "sphere", "uniform"),
]
SETS = {"core": CORE, "hard": HARD, "all": CORE + HARD, "ci": CI}


def _overrides(items: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise SystemExit(f"--override needs KEY=VALUE; got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key.strip()] = tuple(value) if isinstance(value, list) else value
    return out


def summarise(rows: list[dict]) -> dict[str, object]:
    """Acceptance figures and the trust check's rank correlation over finished cells."""
    from scipy.stats import spearmanr

    cone = [r for r in rows if r["missing_cone"]]
    uniform = [r for r in rows if r["cell"]["distribution"] == "uniform"]
    out: dict[str, object] = {"cells": len(rows)}
    if cone:
        gains = np.array([r["gain"] for r in cone])
        weakest = cone[int(np.argmin(gains))]
        out.update(
            median_gain_missing_cone=float(np.median(gains)),
            weakest_cell=weakest["name"],
            weakest_gain=float(gains.min()),
        )
        if weakest.get("figure_noise") is not None:  # rows written before session 22 lack it
            out["weakest_figure_noise"] = float(weakest["figure_noise"])
    if uniform:
        out["min_gain_uniform"] = float(min(r["gain"] for r in uniform))
    if rows:
        worst = max(rows, key=lambda r: r["max_global_drop"])
        out.update(max_global_drop=worst["max_global_drop"], max_drop_cell=worst["name"])
    spread = [r for r in rows if "gain_min" in r]
    if spread:  # rows from over_seeds
        widest = max(spread, key=lambda r: r["gain_max"] - r["gain_min"])
        out.update(
            widest_seed_spread=widest["gain_max"] - widest["gain_min"],
            widest_spread_cell=widest["name"],
        )
    # the power score, and the amplitude-blind figure under evaluation (older rows lack it)
    for key, name in (
        ("trust_score", "trust"),
        ("trust_vouched", "vouched"),
        ("trust_phase_score", "phase"),
    ):
        pairs = [(r[key], r["gain"]) for r in cone if r.get(key) is not None]
        if len(pairs) >= 3:
            rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
            out[f"{name}_spearman"] = float(rho.statistic)
            out[f"{name}_pvalue"] = float(rho.pvalue)
        if name == "trust":
            out["trust_cells"] = len(pairs)
    return out


def over_seeds(rows: list[dict]) -> list[dict]:
    """One row per cell from runs with several training seeds: mean gain and trust score,
    worst global drop, ``gain_min``/``gain_max`` and ``seeds``; cells in first-seen order."""
    by_cell: dict[str, list[dict]] = {}
    for r in rows:
        by_cell.setdefault(r["name"], []).append(r)
    out = []
    for runs in by_cell.values():
        gains = [r["gain"] for r in runs]
        worst = max(runs, key=lambda r: r["max_global_drop"])
        row = {
            **runs[0],
            "gain": float(np.mean(gains)),
            "gain_min": float(min(gains)),
            "gain_max": float(max(gains)),
            "max_global_drop": worst["max_global_drop"],
            "seeds": [r.get("train_seed") for r in runs],
        }
        for key in ("trust_score", "trust_vouched", "trust_phase_score"):
            values = [r.get(key) for r in runs]
            row[key] = None if any(v is None for v in values) else float(np.mean(values))
        out.append(row)
    return out


def table(rows: list[dict]) -> str:
    """The matrix as a markdown table."""
    lines = [
        "| cell | cone raw | corrected | gain (± figure noise) | max global drop | trust | phase "
        "| time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        trust = "n/a" if r["trust_score"] is None else f"{r['trust_score']:.2f}"
        phase = r.get("trust_phase_score")
        phase = "n/a" if phase is None else f"{phase:.2f}"
        seed = r.get("train_seed")
        name = r["name"] if seed is None else f"{r['name']} (seed {seed})"
        lines.append(
            f"| {name} | {r['cone_raw']:.3f} | {r['cone_corrected']:.3f} | "
            f"{r['gain']:+.3f}{_noise(r)} | {r['max_global_drop']:+.3f} | {trust} | {phase} | "
            f"{r['seconds']['correct']:.0f} |"
        )
    return "\n".join(lines)


def _noise(r: dict) -> str:
    """`` ± 0.085``: the worst cone's figure noise (cone_figure_noise); empty for rows
    written before it was recorded."""
    noise = r.get("figure_noise")
    return "" if noise is None else f" ± {noise:.3f}"


def _worker_threads(n: int) -> None:
    """A worker process's CPU threads (its share of the machine)."""
    import torch

    torch.set_num_threads(n)


def _run_and_save(
    c: Cell,
    overrides: dict,
    *,
    preset: str,
    seed: int,
    inputs: Path | None,
    out: Path,
    save_maps: Path | None = None,
    train_seed: int | None = None,
    fill_arms: tuple[float, ...] = (),
) -> dict:
    """Run one cell and write its JSON at once (so an interrupted matrix continues)."""
    from spisonet.report import write_json

    if train_seed is not None and save_maps is not None:
        save_maps = save_maps / f"seed{train_seed}"
    overrides = _with_seed(overrides, train_seed)
    r = run_cell(
        c, preset, seed, inputs=inputs, save_maps=save_maps, fill_arms=fill_arms, **overrides
    )
    r["train_seed"] = train_seed
    write_json(_result_path(out, c, preset, train_seed), r)
    return r


def _with_seed(overrides: dict, train_seed: int | None) -> dict:
    """The overrides of one run: ``seed`` set to the training seed when there is one."""
    return overrides if train_seed is None else {**overrides, "seed": train_seed}


def _result_path(out: Path, c: Cell, preset: str, train_seed: int | None) -> Path:
    tail = "" if train_seed is None else f"__seed{train_seed}"
    return out / f"{c.name}__{preset}{tail}.json"


def _report(r: dict) -> dict:
    trust = "n/a" if r["trust_score"] is None else f"{r['trust_score']:.2f}"
    seed = "" if r.get("train_seed") is None else f" (seed {r['train_seed']})"
    arms = "".join(
        f"; fill ≥ {a}: {v['gain']:+.3f} / {v['max_global_drop']:.4f}@{v['worst_drop_shell']}"
        for a, v in (r.get("fill_arms") or {}).items()
    )
    print(
        f"  {r['name']}{seed}: cone {r['cone_raw']:.3f} → {r['cone_corrected']:.3f} "
        f"(gain {r['gain']:+.3f}{_noise(r)}), max global drop {r['max_global_drop']:+.3f}, "
        f"trust {trust}, {r['seconds']['correct']:.0f} s{arms}",
        flush=True,
    )
    return r


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the chosen cells (skipping finished ones), print the table and the summary."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cpu", choices=["gpu", "cpu", "tiny"])
    p.add_argument("--set", default="core", choices=sorted(SETS), dest="cell_set")
    p.add_argument("--cells", default=None, help="comma-separated cell names (see --list)")
    p.add_argument("--out", default="benchmarks/matrix_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--list", action="store_true", help="print the cell names and exit")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (processes)")
    p.add_argument("--inputs", type=Path, default=None, help="folder of simulated half maps")
    p.add_argument("--prepare", action="store_true", help="only simulate the cells' inputs")
    p.add_argument("--save-maps", type=Path, default=None, help="keep corrected maps here")
    p.add_argument("--train-seeds", default=None, help="comma-separated training seeds")
    p.add_argument(
        "--fill-arms",
        default="",
        help="comma-separated floors a: also score raise_fill(a) on each run (paired)",
    )
    args = p.parse_args(argv)
    train_seeds: list[int | None] = [None]
    if args.train_seeds:
        train_seeds = [int(v) for v in args.train_seeds.split(",")]
    cells = SETS[args.cell_set]
    if args.cells:
        every = {c.name: c for c in CORE + HARD + CI}
        unknown = [n for n in args.cells.split(",") if n not in every]
        if unknown:
            raise SystemExit(f"unknown cell(s): {', '.join(unknown)} (see --list)")
        cells = [every[n] for n in args.cells.split(",")]
    if args.list:
        for c in cells:
            print(c.name)
        return []
    overrides = _overrides(args.override)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"# bench_matrix {datetime.datetime.now().isoformat(timespec='minutes')} on "
        f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}); "
        f"preset {args.preset}; {len(cells)} cells; overrides {overrides or 'none'}",
        flush=True,
    )
    print("# command: python " + " ".join(sys.argv), flush=True)
    if args.prepare:
        if args.inputs is None:
            raise SystemExit("--prepare needs --inputs DIR")
        for c in cells:
            t0 = time.perf_counter()
            cell_inputs(c, args.seed, args.inputs)
            print(f"  {c.name}: inputs ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        return []
    rows: dict[tuple[str, int | None], dict] = {}
    todo = []
    for t in train_seeds:  # every cell's first seed before any second (a cut run has all)
        for c in cells:
            path = _result_path(out, c, args.preset, t)
            if path.exists():
                r = json.loads(path.read_text())
                if r.get("overrides", {}) == _with_seed(overrides, t):
                    rows[c.name, t] = r
                    print(f"  {c.name}: done before (gain {r['gain']:+.3f})", flush=True)
                    continue
            todo.append((c, t))
    job = dict(
        preset=args.preset,
        seed=args.seed,
        inputs=args.inputs,
        out=out,
        save_maps=args.save_maps,
        fill_arms=tuple(float(a) for a in args.fill_arms.split(",") if a.strip()),
    )
    if args.jobs > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(
            args.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_threads,
            initargs=(threads,),
        ) as pool:  # fmt: skip
            futures = {
                pool.submit(_run_and_save, c, overrides, train_seed=t, **job): (c.name, t)
                for c, t in todo
            }
            for f in as_completed(futures):
                rows[futures[f]] = _report(f.result())
    else:
        for c, t in todo:
            rows[c.name, t] = _report(_run_and_save(c, overrides, train_seed=t, **job))
    rows = [rows[c.name, t] for c in cells for t in train_seeds]
    print()
    print(table(rows))
    print()
    print(json.dumps(summarise(over_seeds(rows) if args.train_seeds else rows), indent=1))
    return rows


if __name__ == "__main__":
    main()
