"""Plain RELION vs RELION + spisonet (external reconstruct) on a preferred-orientation stack.

The stack is the e2e test's (``tests/relion/test_relion_e2e.py:make_dataset``): a pseudo-atomic
molecule (box 64, 2 Å), ~90 % of the views within 15° of the z axis, white noise (SNR 1),
projected by ``relion_project`` (deterministic) with numpy noise from a seed. Both runs use
the same RELION arguments and random seed; the second adds ``--external_reconstruct`` with
``spisonet-relion`` (gates: healpix order >= 2, resolution < 15 Å).

Judged against the truth (RELION's own resolution cannot show the effect):

- FSC of each final map (``<root>_class001.mrc``) with the truth, in a soft spherical mask:
  resolution at FSC = 0.5 globally and along the worst direction (conical FSC, 20° cones,
  500 directions; the worst = the lowest resolution);
- the angular error of each particle's final orientation (``_data.star``) vs the true one:
  the angle of R_true R_est⁻¹, median and mean, the fraction above 10°, and the same after
  removing the run's global rotation offset (the mean of R_true R_est⁻¹);
- wall time per iteration (the spacing of the ``_it<NNN>_optimiser.star`` files).

    python benchmarks/bench_relion.py [--out /tmp/bench_relion] [--particles 1000]
        [--preset cpu] [--epochs 3] [--only plain|plainext|spisonet|oracle] [--keep-highres]
        [--env SPISONET_KEEP_MEASURED=0 ...] [--label FOLDER] [--reuse]
        [--severe] [--ctf]

``oracle``: RELION with ``benchmarks/oracle_reconstruct.py`` as its external
reconstructor, which hands back the ground truth at RELION's own amplitudes and band: the
best reference any correction could give. With plain, spisonet and oracle in one ``--out``,
the summary gives the fraction of the plain → oracle gap that spisonet closes (median
angular error, raw and after removing the global rotation). The angular errors are also
split into the preferred views (within the data set's cone of the z axis) and the rest.
``--severe``: 97 % of the views within 10° of z (else 90 % within 15°); ``--ctf``: every
particle gets a defocus, ``relion_project --ctf`` applies it and RELION refines with
``--ctf``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "relion"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_relion_e2e import make_dataset, refine


def _rotations(angles: np.ndarray):
    from scipy.spatial.transform import Rotation

    # RELION's matrix is the transpose of the intrinsic ZYZ rotation (rot, tilt, psi); the
    # angle between two orientations does not depend on that transpose.
    return Rotation.from_euler("ZYZ", angles, degrees=True)


def _relative_rotations(true_angles: np.ndarray, data_star: Path):
    """(particle indices, R_true · R_est⁻¹ per particle) of a run's ``_data.star``."""
    import starfile

    blocks = starfile.read(data_star, always_dict=True)
    parts = blocks.get("particles")
    names = parts["rlnImageName"].astype(str)
    index = np.array([int(n.split("@")[0]) - 1 for n in names])
    est = parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=np.float64)
    return index, _rotations(true_angles[index]) * _rotations(est).inv()


def offset_candidates(true_angles: np.ndarray, data_star: Path) -> list:
    """Starting rotations for aligning the run's map to the truth: the poses' global offset
    g and g⁻¹, each in (x, y, z) and in the maps' (z, y, x) index order (the sense depends
    on conventions; the alignment keeps the one that fits)."""
    from scipy.spatial.transform import Rotation

    g = _relative_rotations(true_angles, data_star)[1].mean()
    flip = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    out = []
    for r in (g, g.inv()):
        out += [r, Rotation.from_matrix(flip @ r.as_matrix() @ flip)]
    return out


def particle_errors(true_angles: np.ndarray, data_star: Path):
    """(particle indices, raw error °, residual error °, the run's global turn g) per
    particle of a run's ``_data.star``; see :func:`angular_errors`."""
    index, rel = _relative_rotations(true_angles, data_star)
    g = rel.mean()
    return index, np.degrees(rel.magnitude()), np.degrees((g.inv() * rel).magnitude()), g


def preferred_views(true_angles: np.ndarray, index: np.ndarray, cone_deg: float) -> np.ndarray:
    """True for the particles ``index`` whose true tilt lies within ``cone_deg`` of the z
    axis (either pole)."""
    tilt = true_angles[index, 1]
    return np.minimum(tilt, 180.0 - tilt) <= cone_deg + 0.5


def paired_median_difference(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """median(b) − median(a) of two runs' errors of the same particles (paired arrays),
    with a 95 % bootstrap interval (particles resampled, the pairs kept together): how far
    a difference between two runs' medians lies from what the particle sample allows."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boot = np.median(b[idx], axis=1) - np.median(a[idx], axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(np.median(b) - np.median(a)), float(lo), float(hi)


def angular_errors(
    true_angles: np.ndarray, data_star: Path, cone_deg: float | None = None
) -> dict[str, float]:
    """Degrees between each particle's refined and true orientation.

    ``raw``: the angle of R_true · R_est⁻¹ per particle. A refinement can also drift as a
    whole (the map turns a little against the truth's frame); that shows as one constant
    rotation g = mean(R_true · R_est⁻¹). ``offset`` is its angle and ``residual`` the
    per-particle error once it is removed. With ``cone_deg``, the medians are also given
    for the preferred views (true tilt within ``cone_deg`` of the z axis, either pole) and
    for the others.
    """
    index, raw, residual, g = particle_errors(true_angles, data_star)
    split = {}
    if cone_deg is not None:
        preferred = preferred_views(true_angles, index, cone_deg)
        for name, sel in (("preferred", preferred), ("rare", ~preferred)):
            if sel.any():
                split[f"angular_error_median_{name}_deg"] = float(np.median(raw[sel]))
                split[f"residual_error_median_{name}_deg"] = float(np.median(residual[sel]))
        split["fraction_preferred"] = float(preferred.mean())
    return {
        "angular_error_median_deg": float(np.median(raw)),
        "angular_error_mean_deg": float(np.mean(raw)),
        "fraction_error_above_10deg": float(np.mean(raw > 10)),
        # the same count once the run's global turn is removed: raw > 10° also counts
        # particles that are right relative to a map that turned as a whole
        "fraction_residual_above_10deg": float(np.mean(residual > 10)),
        "global_offset_deg": float(np.degrees(g.magnitude())),
        "residual_error_median_deg": float(np.median(residual)),
        "residual_error_mean_deg": float(np.mean(residual)),
        **split,
    }


def errors_by_iteration(
    true_angles: np.ndarray, folder: Path, cone_deg: float | None
) -> dict[int, list[float]]:
    """(residual, rare-view residual) medians in degrees of every ``run_itNNN_data.star``
    of a run, by iteration: where two runs of the same seed part, and by how much."""
    out = {}
    for star in sorted(folder.glob("run_it[0-9][0-9][0-9]_data.star")):
        errs = angular_errors(true_angles, star, cone_deg)
        out[int(star.name[6:9])] = [
            round(errs["residual_error_median_deg"], 2),
            round(errs.get("residual_error_median_rare_deg", math.nan), 2),
        ]
    return out


def map_metrics(
    final: Path, truth: np.ndarray, voxel: float, candidates: list | None = None
) -> dict[str, float]:
    """Resolution (Å) at FSC 0.5 with the truth: global, and best/worst direction.

    With ``candidates`` (starting rotations, :func:`offset_candidates`), the same figures
    again with the prefix ``aligned_``, after turning and shifting the map onto the truth
    (``benchmarks/map_align.py``): a run that drifted as a whole is not penalised for it.
    """
    from spisonet.io import read_map
    from spisonet.masks import spherical_mask

    m = read_map(final).data.astype(np.float64)
    n = m.shape[0]
    mask = spherical_mask(n, 0.42 * n, soft_edge_voxels=4)
    out = _map_figures(m, truth, voxel, mask)
    if candidates is not None:
        from map_align import align_to_truth

        aligned, found = align_to_truth(m, truth, candidates=candidates, mask=mask)
        out |= {f"aligned_{k}": v for k, v in _map_figures(aligned, truth, voxel, mask).items()}
        out["map_rotation_deg"] = found.angle_deg
        out["map_shift_voxels"] = float(np.linalg.norm(found.shift))
    return out


def _map_figures(
    m: np.ndarray, truth: np.ndarray, voxel: float, mask: np.ndarray
) -> dict[str, float]:
    from spisonet.anisotropy import conical_fsc, directional_resolution, fibonacci_directions
    from spisonet.fsc_shells import fsc_curve, resolution_at

    n = m.shape[0]
    curve, _ = fsc_curve(m, truth, mask)
    dirs = fibonacci_directions(500)
    cones = conical_fsc(m, truth, mask, dirs, cone_angle=20.0)
    res = directional_resolution(cones, 0.5, voxel, n)
    worst = int(np.nanargmax(res))
    area = np.nanmean(cones[:, 1 : n // 2], axis=1)
    return {
        "global_res_0.5": float(resolution_at(curve, 0.5, n, voxel)),
        "global_res_0.143": float(resolution_at(curve, 0.143, n, voxel)),
        "worst_dir_res_0.5": float(res[worst]),
        "best_dir_res_0.5": float(np.nanmin(res)),
        "worst_dir_tilt_deg": float(np.degrees(np.arccos(abs(dirs[worst][2])))),
        "z_dir_res_0.5": float(res[int(np.argmax(np.abs(dirs[:, 2])))]),  # the preferred view
        "mean_fsc_worst_cone": float(area.min()),
        "mean_fsc_global": float(np.mean(curve[1 : n // 2])),
    }


def iteration_times(folder: Path, root: str) -> dict[int, float]:
    """Seconds of each iteration k >= 1 (between the optimiser files of k - 1 and k)."""
    pat = re.compile(re.escape(root) + r"_it(\d{3,})_optimiser\.star$")
    stamps = sorted(
        (int(m.group(1)), p.stat().st_mtime) for p in folder.iterdir() if (m := pat.match(p.name))
    )
    return {b[0]: b[1] - a[1] for a, b in itertools.pairwise(stamps)}


def correction_calls(log: Path) -> dict[int, list[int]]:
    """Training steps of each corrected call per iteration, from spisonet_relion.log."""
    calls: dict[int, list[int]] = {}
    if not log.exists():
        return calls
    pat = re.compile(r"_it(\d{3,})_half\d_class001: corrected map \(.*; (\d+) steps, [\d.]+ s\)")
    for m in pat.finditer(log.read_text()):
        calls.setdefault(int(m.group(1)), []).append(int(m.group(2)))
    return calls


#: Figures summarised over seeds (lower is better for the angles, higher for the FSCs).
SPREAD_KEYS = (
    "angular_error_median_deg",
    "residual_error_median_deg",
    "residual_error_median_preferred_deg",
    "residual_error_median_rare_deg",
    "fraction_error_above_10deg",
    "aligned_mean_fsc_worst_cone",
    "aligned_mean_fsc_global",
)


def seed_spread(results: dict[str, dict]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per arm (``plain``, ``spisonet``, ...; runs keyed ``<arm>`` or ``<arm>_seed<N>``):
    (mean, sample standard deviation, number of seeds) of each figure in SPREAD_KEYS."""
    arms: dict[str, list[dict]] = {}
    for key, run in results.items():
        arms.setdefault(re.sub(r"_seed\d+$", "", key), []).append(run)
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for arm, runs in arms.items():
        out[arm] = {}
        for k in SPREAD_KEYS:
            values = np.array([r[k] for r in runs if r.get(k) is not None], dtype=np.float64)
            if values.size:
                sd = float(values.std(ddof=1)) if values.size > 1 else math.nan
                out[arm][k] = (float(values.mean()), sd, int(values.size))
    return out


def print_seed_spread(results: dict[str, dict]) -> None:
    """Print mean ± standard deviation over seeds for the arms that have more than one."""
    spread = seed_spread(results)
    for arm, figures in spread.items():
        if not figures or max(n for *_, n in figures.values()) < 2:
            continue
        text = ", ".join(f"{k} {m:.3f} ± {sd:.3f} (n={n})" for k, (m, sd, n) in figures.items())
        print(f"{arm} over seeds: {text}")


def print_paired(out: Path, labels: list[str], true_angles: np.ndarray, cone_deg: float) -> None:
    """Print :func:`paired_median_difference` of the final residuals of two runs in ``out``."""
    (ia, _, ra, _), (ib, _, rb, _) = (
        particle_errors(true_angles, out / label / "run_data.star") for label in labels
    )
    order_a, order_b = np.argsort(ia), np.argsort(ib)
    if not np.array_equal(ia[order_a], ib[order_b]):
        raise SystemExit("the two runs hold different particles")
    ra, rb, index = ra[order_a], rb[order_b], ia[order_a]
    preferred = preferred_views(true_angles, index, cone_deg)
    print(f"# {out}: residual of {labels[1]} minus {labels[0]}, 95 % bootstrap interval")
    for name, sel in (("all", slice(None)), ("preferred", preferred), ("rare", ~preferred)):
        d, lo, hi = paired_median_difference(ra[sel], rb[sel])
        n = len(ra[sel])
        print(f"{name:>9} ({n} particles): {d:+.2f}° [{lo:+.2f}, {hi:+.2f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_relion"))
    ap.add_argument("--particles", type=int, default=1000)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--start-healpix", type=int, default=2)
    ap.add_argument("--start-resolution", type=float, default=15.0)
    ap.add_argument(
        "--only",
        choices=["plain", "plainext", "spisonet", "oracle", "oracle-network"],
        default=None,
    )
    ap.add_argument("--severe", action="store_true", help="97 %% of views within 10° of z")
    ap.add_argument("--ctf", action="store_true", help="particles with a CTF; refine with --ctf")
    ap.add_argument(
        "--keep-highres",
        action="store_true",
        help="SPISONET_KEEP_HIGHRES=1 (RELION's map beyond the current resolution); "
        "the run's folder is Spisonet_keephigh",
    )
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the spisonet run (repeatable), e.g. SPISONET_KEEP_MEASURED=0",
    )
    ap.add_argument(
        "--label", default=None, help="folder name of the spisonet run (default Spisonet)"
    )
    ap.add_argument(
        "--reuse", action="store_true", help="analyse finished runs in --out again (no RELION)"
    )
    ap.add_argument(
        "--relion-seed",
        type=int,
        default=0,
        help="RELION's --random_seed (the same particles; another split into halves): runs "
        "with a seed other than 0 go to folders ending in _seed<N>, to measure RELION's "
        "run-to-run spread",
    )
    ap.add_argument(
        "--relion5",
        type=Path,
        default=None,
        metavar="ROOT",
        help="run RELION 5.1 from this Debian sid root (tests/relion/relion5.py; .ci/run "
        "builds it at /var/cache/spisonet/relion5-sid) instead of the host's RELION",
    )
    ap.add_argument(
        "--defocus",
        type=float,
        nargs=2,
        default=(1.0, 2.5),
        metavar=("MIN", "MAX"),
        help="defocus range (µm) of the --ctf stack",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=4 * 3600.0,
        help="seconds one RELION run may take (a spisonet run on 2 loaded cores took over an "
        "hour; the old fixed limit of 3600 s killed one)",
    )
    ap.add_argument(
        "--paired",
        nargs=2,
        metavar=("A", "B"),
        help="only compare two finished runs in --out (folder names, e.g. Plainext_seed2 "
        "Spisonet_seed2): median residual of B minus A with a 95 %% bootstrap interval over "
        "the particles, all / preferred / rare",
    )
    args = ap.parse_args()
    if args.paired:
        args.reuse = True

    from spisonet.io import read_map

    cone_deg = 10.0 if args.severe else 15.0
    recipe = {
        "particles": args.particles,
        "preferred_fraction": 0.97 if args.severe else 0.9,
        "cone_deg": cone_deg,
        "ctf": bool(args.ctf),
        "defocus_um": list(args.defocus),
    }
    recipe_file = args.out / "dataset.json"
    if (args.out / "particles.star").exists() and not args.reuse:
        # a RELION run of an earlier call may be reading this stack right now: never
        # rewrite it under its feet (it killed a run once); a different stack needs
        # another --out
        held = json.loads(recipe_file.read_text()) if recipe_file.exists() else None
        if held is not None and held != recipe:
            raise SystemExit(
                f"{args.out} holds another data set ({held}); use another --out for {recipe}"
            )
        reuse_data = True
    else:
        reuse_data = args.reuse
    if reuse_data and (args.out / "particles.star").exists():
        import starfile

        table = starfile.read(args.out / "angles.star", always_dict=True)["particles"]
        cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
        data = {"truth": args.out / "truth.mrc"}
        data["voxel_size"] = read_map(data["truth"]).voxel_size
        data["angles"] = table[cols].to_numpy(dtype=np.float64)
    else:
        data = make_dataset(
            args.out,
            n_particles=args.particles,
            seed=0,
            preferred_fraction=0.97 if args.severe else 0.9,
            cone_deg=cone_deg,
            ctf=args.ctf,
            defocus_um=tuple(args.defocus),
        )
        recipe_file.write_text(json.dumps(recipe))
    if args.paired:
        print_paired(args.out, args.paired, data["angles"], cone_deg)
        return
    truth = read_map(data["truth"]).data
    voxel = float(data["voxel_size"])
    gates = {
        "ISONET_START_HEALPIX": str(args.start_healpix),
        "ISONET_START_RESOLUTION": str(args.start_resolution),
        "SPISONET_KEEP_HIGHRES": "1" if args.keep_highres else "0",
    }
    oracle = {
        "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE": (
            f"{sys.executable} {Path(__file__).resolve().parent / 'oracle_reconstruct.py'}"
        ),
        "SPISONET_ORACLE_TRUTH": str(Path(data["truth"]).resolve()),
    }
    runs = {
        "plain": (False, {}),
        # the same external-reconstruct path with the correction off: RELION follows the
        # spisonet run's path exactly until the gates open (a control for RELION's own
        # run-to-run differences in convergence)
        "plainext": (
            True,
            {"RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE": "spisonet-relion --no-correction"},
        ),
        "spisonet": (
            True,
            {
                "RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE": "spisonet-relion",
                "SPISONET_PRESET": args.preset,
                "ISONET_EPOCHS": str(args.epochs),
                **gates,
                **dict(e.split("=", 1) for e in args.env),
            },
        ),
        "oracle": (True, oracle),
        # the truth in place of the network inside spisonet's correction (same gates)
        "oracle-network": (
            True,
            {**oracle, **gates, "SPISONET_ORACLE_MODE": "network"},
        ),
    }
    results = {}
    for name, (external, env) in runs.items():
        if args.only and name != args.only:
            continue
        keep = name == "spisonet" and args.keep_highres
        label = name.capitalize().replace("-", "_") + ("_keephigh" if keep else "")
        if name == "spisonet" and args.label:
            label = args.label
        if args.relion_seed:
            label += f"_seed{args.relion_seed}"
        root = f"{label}/run"
        t = time.perf_counter()
        folder = args.out / label
        final = folder / "run_class001.mrc"
        if args.reuse and final.exists():  # analyse an earlier run again
            stamps = sorted(p.stat().st_mtime for p in folder.glob("run_it*_optimiser.star"))
            seconds = final.stat().st_mtime - stamps[0] if stamps else float("nan")
        else:
            proc, seconds = refine(
                args.out,
                root,
                external=external,
                env=env,
                timeout=args.timeout,
                extra="--ctf" if args.ctf else "",
                seed=args.relion_seed,
                relion5_root=args.relion5,
            )
            if proc.returncode != 0 or not final.exists():
                print(f"{name}: RELION failed (exit {proc.returncode})\n{proc.stdout[-2000:]}")
                continue
        errs = angular_errors(data["angles"], folder / "run_data.star", cone_deg)
        times = iteration_times(folder, "run")
        calls = correction_calls(folder / "spisonet_relion.log")
        corrected = sorted(calls)
        in_corrected = [t for k, t in times.items() if k in calls]
        key = name + (f"_seed{args.relion_seed}" if args.relion_seed else "")
        if name == "spisonet" and (args.label or keep):
            key = label.lower()  # a variant keeps its own entry in results.json
        results[key] = {
            "wall_s": round(seconds, 1),
            "iterations": len(times) + 1,
            "s_per_iteration": round(float(np.mean(list(times.values()))), 1) if times else None,
            "s_per_corrected_iteration": (
                round(float(np.mean(in_corrected)), 1) if in_corrected else None
            ),
            "seconds_by_iteration": {k: round(t, 1) for k, t in times.items()},
            "corrected_iterations": corrected,
            "steps_by_iteration": calls,
            "residual_rare_by_iteration": errors_by_iteration(data["angles"], folder, cone_deg),
            **{k: round(v, 3) for k, v in errs.items()},
            **{
                k: round(v, 3)
                for k, v in map_metrics(
                    final,
                    truth,
                    voxel,
                    offset_candidates(data["angles"], folder / "run_data.star"),
                ).items()
            },
        }
        print(key, json.dumps(results[key]), f"({time.perf_counter() - t:.0f} s)", flush=True)
    previous = args.out / "results.json"
    if previous.exists():  # runs made by earlier calls (--only) join the summary
        results = {**json.loads(previous.read_text()), **results}
    previous.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    keys = (
        "angular_error_median_deg",
        "residual_error_median_deg",
        "residual_error_median_preferred_deg",
        "residual_error_median_rare_deg",
    )
    print_seed_spread(results)
    for yardstick in ("oracle", "oracle-network"):
        if not all(k in results for k in ("plain", "spisonet", yardstick)):
            continue
        for key in keys:
            p_, s_, o_ = (results[k].get(key, math.nan) for k in ("plain", "spisonet", yardstick))
            gap = p_ - o_
            frac = (p_ - s_) / gap if abs(gap) > 1e-9 else math.nan
            print(
                f"{key}: plain {p_:.2f}, spisonet {s_:.2f}, {yardstick} {o_:.2f}: spisonet "
                f"closes {100 * frac:.0f} % of the plain → {yardstick} gap"
            )


if __name__ == "__main__":
    main()
