"""``spisonet anisotropy``: conical FSC diagnostics (directional resolution, sphericity,
area ratio) written as ``<prefix>_report.png`` and ``<prefix>_report.json``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .._outputs import check_output_file
from ..io import Map
from ..report import anisotropy_figure, write_json
from ._app import app, make_console
from ._files import load_pair, report_paths
from ._options import ApixOption
from ._progress import console_progress

__all__ = ["anisotropy_command", "anisotropy_outputs", "anisotropy_table"]


@app.command("anisotropy")
def anisotropy_command(
    half1: Annotated[Path, typer.Argument(help="Half map 1 (MRC).")],
    half2: Annotated[Path, typer.Argument(help="Half map 2 (MRC).")],
    mask: Annotated[Path | None, typer.Option("--mask", "-m", help="Soft mask (MRC).")] = None,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            "--o",
            help="Prefix of the outputs: <PREFIX>_report.png and <PREFIX>_report.json.",
        ),
    ] = Path("anisotropy"),
    n_directions: Annotated[
        int,
        typer.Option(
            "--n-directions", "--n_directions", help="Cone directions over the half sphere."
        ),
    ] = 500,
    cone_angle: Annotated[
        float,
        typer.Option("--cone-angle", "--cone_angle", help="Cone half-angle in degrees."),
    ] = 20.0,
    apix: ApixOption = None,
) -> None:
    """Anisotropy diagnostics only: conical FSC, directional resolution, sphericity, report."""
    check_output_file(report_paths(output)[0], "-o")
    console = make_console()
    h1, h2, m = load_pair(half1, half2, mask, apix)
    if m is None:
        console.print("[yellow]No mask given: using the whole box. A soft mask is recommended.")
    console.print(f"Box {h1.box}³ at {h1.voxel_size:.3f} Å/voxel (masked: {m is not None})")
    anisotropy_outputs(console, h1, h2, m, output, n_directions, cone_angle)


def anisotropy_outputs(
    console: Console,
    h1: Map,
    h2: Map,
    m: Map | None,
    prefix: Path,
    n_directions: int,
    cone_angle: float,
):
    """Run the diagnostics on loaded maps, write the PNG + JSON, print the table; returns
    the :class:`spisonet.anisotropy.AnisotropyReport`."""
    from ..anisotropy import analyse_anisotropy  # numba kernels: compiled on first import

    t0 = time.perf_counter()
    with console_progress(console, "anisotropy") as progress:
        rep = analyse_anisotropy(
            h1.data,
            h2.data,
            voxel_size=h1.voxel_size,
            mask=None if m is None else m.data,
            n_directions=n_directions,
            cone_angle=cone_angle,
            progress=progress,
        )
    png, js = report_paths(prefix)
    anisotropy_figure(rep, png)
    data = rep.to_dict()
    data["inputs"] = {"half1": h1.name, "half2": h2.name, "mask": None if m is None else m.name}
    write_json(js, data)
    console.print(anisotropy_table(rep))
    console.print(
        f"{rep.n_directions} cones of {cone_angle:g}° in {time.perf_counter() - t0:.1f} s. "
        f"Wrote [bold]{png}[/bold] and [bold]{js}[/bold]"
    )
    return rep


def anisotropy_table(rep) -> Table:
    """A rich table of the figures of an :class:`spisonet.anisotropy.AnisotropyReport`."""
    table = Table(title="Anisotropy diagnostics", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    g = rep.global_fsc
    table.add_row(
        "global resolution at FSC 0.143 / 0.5", f"{g.resolution_0143:.2f} / {g.resolution_05:.2f} Å"
    )
    _add_directional_rows(table, rep)
    sph = "undefined" if not math.isfinite(rep.sphericity) else f"{rep.sphericity:.3f}"
    table.add_row(f"sphericity (3DFSC binarised at {rep.sphericity_threshold:g})", sph)
    table.add_row("area ratio (worst / best cone)", f"{rep.area_ratio:.3f}")
    if rep.directions_distinguishable:
        _add_direction_rows(table, rep)
    else:
        table.add_row("worst / best direction", rep.distinguishability_note())
    return table


def _add_directional_rows(table: Table, rep) -> None:
    # "worst"/"best" always mean the named directions (centres of the worst/best regions);
    # the coarsest/finest single cones are shown as the single-cone range (docs/method.md)
    for threshold in ("0.143", "0.5"):
        st = rep.stats(threshold)
        res = rep.resolution_0143 if threshold == "0.143" else rep.resolution_05
        if rep.directions_distinguishable:
            table.add_row(
                f"directional {threshold}: worst / best direction",
                f"{res[rep.worst_index]:.2f} / {res[rep.best_index]:.2f} Å",
            )
        table.add_row(
            f"directional {threshold}: single-cone range",
            f"{st['min']:.2f} – {st['max']:.2f} Å",
        )
        table.add_row(
            f"directional {threshold}: mean ± std", f"{st['mean']:.2f} ± {st['std']:.2f} Å"
        )


def _add_direction_rows(table: Table, rep) -> None:
    from ..anisotropy import direction_to_relion

    for name, idx in (("worst", rep.worst_index), ("best", rep.best_index)):
        v = rep.directions[idx]
        tilt, rot = direction_to_relion(v)
        table.add_row(f"{name} direction (x, y, z)", f"({v[0]:+.2f}, {v[1]:+.2f}, {v[2]:+.2f})")
        table.add_row(
            "  tilt / rot, resolution at 0.143",
            f"{float(tilt):.1f}° / {float(rot):.1f}°, {rep.resolution_0143[idx]:.2f} Å",
        )
