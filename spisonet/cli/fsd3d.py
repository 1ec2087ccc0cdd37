"""``spisonet fsd3d``: the Fourier sampling density of a particle set (``FSD3D.mrc``) from
its angles (a RELION STAR file or a cryoSPARC ``.cs`` file), with a sampling report
(``FSD3D_report.png`` and ``.json``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.table import Table

from .._outputs import check_output_file
from ..io import read_cs_angles, read_star_angles, write_map
from ..report import sampling_figure, write_json
from ..symmetry import group_order
from ._app import app, make_console
from ._files import report_paths
from ._progress import console_progress

__all__ = ["fsd3d_command"]


@app.command("fsd3d")
def fsd3d_command(
    particles: Annotated[
        Path,
        typer.Argument(
            help="Particles: RELION STAR file (3.0 or 3.1+) or cryoSPARC .cs file "
            "(a 3D refinement's particles, with alignments3D/pose).",
            metavar="PARTICLES",
        ),
    ],
    box: Annotated[
        int, typer.Option("--box", "--map-dim", "--map_dim", help="Box size in voxels.")
    ],
    apix: Annotated[float, typer.Option("--apix", "--voxel-size", help="Voxel size in Å.")],
    sym: Annotated[str, typer.Option("--sym", help="Point group: C1, Cn, Dn, T, O or I.")] = "C1",
    output: Annotated[
        Path, typer.Option("--output", "-o", "--o", help="Output sampling-density map.")
    ] = Path("FSD3D.mrc"),
    low_res: Annotated[
        float | None,
        typer.Option("--low-res", "--low_res", help="Shells coarser than this (Å) are set to 1."),
    ] = None,
    high_res: Annotated[
        float | None,
        typer.Option(
            "--high-res",
            "--high_res",
            help="Shells finer than this (Å) are set to 0 (default: Nyquist).",
        ),
    ] = None,
) -> None:
    """Fourier sampling density (FSD3D.mrc) of a particle set, plus a sampling report."""
    group_order(sym)  # refuse an unknown or oversized point group before reading anything
    check_output_file(output, "-o")
    # numba kernels: compiled on first import
    from ..fsd3d import direction_histogram, fourier_shell_density, scf_curve

    console = make_console()
    angles = _read_particle_angles(particles)
    t0 = time.perf_counter()
    with console_progress(console, "FSD3D") as progress:
        fsd = fourier_shell_density(
            angles, box, voxel_size=apix, sym=sym, low_res=low_res, high_res=high_res
        )
        progress("FSD3D", 1, 2)
        raw = fourier_shell_density(angles, box, voxel_size=apix, sym=sym, normalize=False)
        progress("FSD3D", 9, 10)
        hist = direction_histogram(angles, sym=sym)
        scf = scf_curve(raw)
    write_map(output, fsd, voxel_size=apix)
    png, js = report_paths(output.with_suffix(""))
    sampling_figure(hist, scf, fsd, apix, png, sym=sym)
    write_json(js, _sampling_json(particles, hist, scf, sym, box, apix))
    console.print(_sampling_table(hist, scf, box, apix))
    console.print(
        f"Done in {time.perf_counter() - t0:.1f} s. Wrote [bold]{output}[/bold], "
        f"[bold]{png}[/bold] and [bold]{js}[/bold]"
    )


def _read_particle_angles(path: Path) -> np.ndarray:
    """RELION Euler angles (N, 3) in degrees of a particles file, chosen by extension:
    ``.cs`` is read as cryoSPARC's (poses converted, see :mod:`spisonet.io.cryosparc`),
    anything else as a RELION STAR file."""
    if path.suffix.lower() == ".cs":
        return read_cs_angles(path)
    return read_star_angles(path)


def _sampling_json(
    particles: Path, hist, scf: np.ndarray, sym: str, box: int, apix: float
) -> dict[str, Any]:
    """What ``FSD3D_report.json`` holds: the direction histogram and the SCF-like curve."""
    shells = list(range(scf.size))
    return {
        "star": str(particles),  # the particles file (STAR or .cs); key kept for old readers
        "n_particles": hist.n_particles,
        "sym": sym,
        "group_order": hist.group_order,
        "box": int(box),
        "voxel_size_A": float(apix),
        "empty_direction_fraction": hist.empty_fraction,
        "direction_max_over_mean": hist.max_over_mean,
        "scf": {
            "shell": shells,
            "resolution_A": [box * apix / s if s else None for s in shells],
            "value": scf,
        },
        "directions": {
            "tilt_deg": hist.tilt_deg,
            "rot_deg": hist.rot_deg,
            "fraction": hist.fraction,
        },
    }


def _sampling_table(hist, scf: np.ndarray, box: int, apix: float) -> Table:
    """The figures a user reads first: particles, empty directions, peak/mean, SCF."""
    table = Table(title="Fourier sampling", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("particles × symmetry copies", f"{hist.n_particles} × {hist.group_order}")
    table.add_row(
        f"directions with no view ({hist.counts.size} over the half sphere)",
        f"{100 * hist.empty_fraction:.1f} %",
    )
    table.add_row("peak / mean views per direction", f"{hist.max_over_mean:.1f}")
    for s in sorted({max(1, box // 8), max(1, box // 4), max(1, 3 * box // 8)}):
        table.add_row(f"SCF-like figure at {box * apix / s:.1f} Å (1 = uniform)", f"{scf[s]:.3f}")
    return table
