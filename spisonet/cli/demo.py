"""``spisonet demo``: the whole pipeline on simulated half maps with a real missing cone,
compared with the ground truth before and after the correction."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from ..correction import PRESETS, CorrectionSettings, ground_truth_metrics, preset_settings
from ..fsc_shells import fsc
from ..io import read_map
from ..report import before_after_figure
from ..weights import power_presence
from ._app import app, make_console
from ._files import load_pair
from ._options import choice_parser
from .fsc3d import run_fsc3d
from .reconstruct import run_reconstruct
from .simulate import simulate_to

__all__ = ["DEMO_DISTRIBUTION", "DEMO_ENSEMBLE", "demo_command"]

#: The demo's orientation distribution: every view within 20° of the z axis, so no view
#: samples the Fourier directions within ~60–70° of z: a real missing cone.
DEMO_DISTRIBUTION = "tilt:20"

#: Networks the demo trains: one, whatever the preset says, so that the first command a user
#: runs ends in minutes on a CPU (the ``cpu`` preset's three triple its time).
DEMO_ENSEMBLE = 1

#: What the demo's --preset accepts: the presets by name (its default is cpu, not auto).
_PRESETS = tuple(PRESETS)


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path(
        "spisonet_demo"
    ),
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            parser=choice_parser(_PRESETS),
            metavar="|".join(_PRESETS),
            help="Correction preset: cpu (default; ~9 min on a quiet 2-core CPU with native "
            "bf16, ~40 min on an AVX2-only one), gpu (the published settings, for a GPU) or tiny "
            "(a smoke run, ~1 min).",
        ),
    ] = "cpu",
    epochs: Annotated[
        int | None, typer.Option(min=0, help="Override the preset's number of epochs.")
    ] = None,
    correct: Annotated[
        bool,
        typer.Option("--correct/--no-correct", help="Run the correction (else stop at 3D FSC)."),
    ] = True,
    ensemble: Annotated[
        int,
        typer.Option(
            min=1,
            help="Networks trained and averaged. The demo trains one, to end in ~9 min on 2 "
            "cores; reconstruct's cpu preset averages 3 (docs/method.md).",
        ),
    ] = DEMO_ENSEMBLE,
) -> None:
    """Run the pipeline on built-in example data: simulated half maps with a missing cone."""
    _check_out(out)  # with the options: nothing is simulated when one is wrong
    settings = None
    if correct:
        settings = preset_settings(preset, epochs=epochs, seed=seed, ensemble=ensemble)
    console = make_console()
    t0 = time.perf_counter()
    console.rule("spisonet demo")
    console.print(
        "Simulating a 64³ test molecule at 2 Å/voxel from 2000 particles, all viewed within "
        f"20° of the z axis ({DEMO_DISTRIBUTION}): each view measures the Fourier plane "
        "perpendicular to it, so the directions within 70° of z are never measured (a "
        "missing cone around z)..."
    )
    paths = simulate_to(out, 64, 2.0, DEMO_DISTRIBUTION, 2000, 0.01, seed)
    console.print(f"  wrote {', '.join(p.name for p in paths.values())} in {out}/")
    h1, h2, m = load_pair(paths["half1"], paths["half2"], paths["mask"])
    run_fsc3d(console, h1, h2, m, out / "FSC3D.mrc")
    _directional_summary(console, out / "FSC3D.mrc", paths)
    if settings is not None:
        _correction(console, out, paths, settings)
    console.print(
        f"Demo finished in {time.perf_counter() - t0:.1f} s. "
        f"Outputs are in [bold]{out.resolve()}[/bold]"
    )


def _check_out(out: Path) -> None:
    """The demo's output folder: a folder (or nothing yet) in a place we may write."""
    if out.exists() and not out.is_dir():
        raise typer.BadParameter(f"{out} exists and is not a folder", param_hint="'--out'")
    parent = out if out.exists() else next(p for p in out.absolute().parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"cannot write in {parent}", param_hint="'--out'")


def _directional_summary(console: Console, fsc3d_path: Path, paths: dict[str, Path]) -> None:
    """Print, along z (the view axis) and x, the 3D FSC and the W the correction uses."""
    fsc3d_map = read_map(fsc3d_path)
    vol, apix = fsc3d_map.data, fsc3d_map.voxel_size
    halves_and_mask = (read_map(paths[k]).data for k in ("half1", "half2", "mask"))
    gate = power_presence(*halves_and_mask, also_unmasked=True)  # as the correction's W
    w = vol * gate
    n = vol.shape[0]
    c = n // 2
    shells = [s for s in (2, 4, 8, 12, 16, 24) if s < n - c]
    table = Table(title="Along the view axis (z) and across it (x)")
    table.add_column("shell")
    table.add_column("resolution (Å)")
    for name in ("3D FSC along z", "3D FSC along x", "W along z", "W along x"):
        table.add_column(name, justify="right")
    for s in shells:
        table.add_row(
            str(s),
            f"{n * apix / s:.1f}",
            *(f"{a[s]:.2f}" for a in (vol[c:, c, c], vol[c, c, c:], w[c:, c, c], w[c, c, c:])),
        )
    console.print(table)
    top = shells[-1] + 1
    console.print(
        f"Mean over shells 2–{shells[-1]}: W along z {np.mean(w[c + 2 : c + top, c, c]):.2f}, "
        f"along x {np.mean(w[c, c, c + 2 : c + top]):.2f}: the anisotropy spisonet corrects. "
        "The 3D FSC compares phases only and reads the mask's leak into the empty cone as "
        "agreement; W, the 3D FSC times a gate on the measured Fourier power, is what the "
        "correction uses (docs/method.md)."
    )


def _correction(
    console: Console, out: Path, paths: dict[str, Path], settings: CorrectionSettings
) -> None:
    """Demo step 3: correct the simulated pair, then compare with the ground truth."""
    nets = "one network" if settings.ensemble == 1 else f"{settings.ensemble} networks averaged"
    if settings.ensemble < PRESETS[settings.preset].ensemble:
        nets += f" (reconstruct's preset averages {PRESETS[settings.preset].ensemble}: --ensemble)"
    console.print(
        f"Correcting with the [bold]{settings.preset}[/bold] preset ({settings.epochs} epochs of "
        f"{settings.n_subvolume} cubes of {settings.cube_size}³, network widths "
        f"{'-'.join(map(str, settings.widths))}; {nets})..."
    )
    outputs = run_reconstruct(
        console,
        out / "isonet_maps",
        half1=paths["half1"],
        half2=paths["half2"],
        aniso_file=out / "FSC3D.mrc",
        mask=paths["mask"],
        settings=settings,
    )
    _compare_with_truth(console, out, paths, outputs.result.average)


def _compare_with_truth(
    console: Console, out: Path, paths: dict[str, Path], corrected: np.ndarray
) -> None:
    """The raw average and the corrected map against the ground truth: a table and
    ``before_after.png``."""
    gt = read_map(paths["gt"])
    h1, h2, mask = (read_map(paths[k]).data for k in ("half1", "half2", "mask"))
    raw = 0.5 * (h1 + h2)
    metrics = ground_truth_metrics(
        gt.data, {"raw": raw, "corrected": corrected}, gt.voxel_size, mask
    )
    # like with like: the slices of both maps are low-passed at the same resolution, the
    # one a user would pick for the raw map (its half maps' 0.143 FSC resolution)
    cutoff = float(fsc(h1, h2, gt.voxel_size, mask).resolution_0143)
    figure = out / "before_after.png"
    before_after_figure(
        gt.data,
        raw,
        corrected,
        metrics,
        gt.voxel_size,
        figure,
        mask=mask,
        lowpass_resolution=cutoff,
    )
    console.print(_before_after_table(metrics, gt.box))
    console.print(
        f"  wrote {figure}: slices of both maps low-passed at {cutoff:.1f} Å (the raw half "
        "maps' 0.143 resolution) and FSC with the truth, before / after; the training "
        f"losses are in {out / 'isonet_maps'}/loss_*.png"
    )


def _before_after_table(metrics: dict, n: int) -> Table:
    """The FSC with the truth of the raw average and of the corrected map, side by side."""
    table = Table(title="FSC with the ground truth (masked), the same computation for both")
    table.add_column("")
    table.add_column("before (raw average)", justify="right")
    table.add_column("after (corrected)", justify="right")
    table.add_row(
        f"mean FSC in the 20° cone around z (the missing cone), shells 2–{n // 4}",
        f"{metrics['raw']['cone_mean']:.3f}",
        f"{metrics['corrected']['cone_mean']:.3f}",
    )
    for key, label in (
        ("res0143_global", "global resolution at FSC 0.143 (Å)"),
        ("res05_global", "global resolution at FSC 0.5 (Å)"),
        ("res05_worst", "FSC-0.5 resolution, worst direction (Å)"),
        ("res05_best", "FSC-0.5 resolution, best direction (Å)"),
    ):
        table.add_row(label, f"{metrics['raw'][key]:.1f}", f"{metrics['corrected'][key]:.1f}")
    return table
