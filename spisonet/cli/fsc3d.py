"""``spisonet fsc3d``: the spIsoNet-flavour 3D FSC of two half maps (``FSC3D.mrc``),
optionally followed by the anisotropy diagnostics (``--report``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .._outputs import check_output_file
from ..errors import InvalidValueError
from ..fsc_shells import fsc
from ..io import Map, write_map
from ._app import app, make_console
from ._files import load_pair
from ._options import ApixOption
from ._progress import console_progress
from .anisotropy import anisotropy_outputs

__all__ = ["fsc3d_command", "run_fsc3d"]


@app.command("fsc3d")
def fsc3d_command(
    half1: Annotated[Path, typer.Argument(help="Half map 1 (MRC).")],
    half2: Annotated[Path, typer.Argument(help="Half map 2 (MRC).")],
    mask_arg: Annotated[
        Path | None, typer.Argument(metavar="[MASK]", help="Soft mask (MRC), optional.")
    ] = None,
    mask: Annotated[Path | None, typer.Option("--mask", "-m", help="Soft mask (MRC).")] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", "--o", help="Output 3D FSC map.")
    ] = Path("FSC3D.mrc"),
    limit_res: Annotated[
        float | None,
        typer.Option(
            "--limit-res",
            "--limit_res",
            help="Resolution limit in Å (default: where the shell-averaged phase agreement "
            "falls below 0.143).",
        ),
    ] = None,
    cone_sampling_angle: Annotated[
        float,
        typer.Option(
            "--cone-sampling-angle",
            "--cone_sampling_angle",
            help="Angle θ (degrees) of the same-shell neighbourhood (chord s·2·sin(θ/2)).",
        ),
    ] = 10.0,
    keep_highres: Annotated[
        bool,
        typer.Option(
            "--keep-highres",
            "--keep_highres",
            help="Set the region beyond the limit to 1 (keeps high frequencies in training).",
        ),
    ] = False,
    ncpus: Annotated[
        int | None,
        typer.Option("--ncpus", "-j", help="CPU threads (default: all)."),
    ] = None,
    report: Annotated[
        bool,
        typer.Option(
            "--report",
            help="Also run the anisotropy diagnostics (conical FSC, 500 cones of 20°) and "
            "write <name>_report.png and <name>_report.json next to the output.",
        ),
    ] = False,
    apix: ApixOption = None,
) -> None:
    """Compute the spIsoNet-flavour 3D FSC (FSC3D.mrc) of two half maps."""
    mask = _one_mask(mask_arg, mask)
    check_output_file(output, "-o")  # before the work: an unwritable output fails now
    console = make_console()
    _set_threads(ncpus)
    h1, h2, m = load_pair(half1, half2, mask, apix)
    run_fsc3d(
        console,
        h1,
        h2,
        m,
        output,
        limit_res=limit_res,
        cone_angle=cone_sampling_angle,
        keep_highres=keep_highres,
    )
    if report:
        anisotropy_outputs(console, h1, h2, m, output.with_suffix(""), 500, 20.0)


def _one_mask(positional: Path | None, option: Path | None) -> Path | None:
    """The mask given as the third argument or as --mask (the same one if both)."""
    if positional is not None and option is not None and positional != option:
        raise InvalidValueError(f"two different masks given: {positional} and {option}; give one")
    return option if option is not None else positional


def _set_threads(ncpus: int | None) -> None:
    if ncpus:
        import numba  # slow to import: only when asked

        numba.set_num_threads(max(1, min(ncpus, numba.config.NUMBA_NUM_THREADS)))


def run_fsc3d(
    console: Console,
    h1: Map,
    h2: Map,
    m: Map | None,
    output: Path,
    *,
    limit_res: float | None = None,
    cone_angle: float = 10.0,
    keep_highres: bool = False,
) -> None:
    """The 3D FSC of a loaded pair written to ``output``, with what was done printed."""
    from ..fsc3d import fsc3d  # numba kernels: compiled on first import

    if m is None:
        console.print("[yellow]No mask given: using the whole box. A soft mask is recommended.")
    g = fsc(h1.data, h2.data, h1.voxel_size, None if m is None else m.data)
    console.print(
        f"Box {h1.box}³ at {h1.voxel_size:.3f} Å/voxel. Global FSC (masked: {m is not None}): "
        f"{g.resolution_0143:.2f} Å at 0.143, {g.resolution_05:.2f} Å at 0.5"
    )
    t0 = time.perf_counter()
    with console_progress(console, "3D FSC") as progress:
        result = fsc3d(
            h1.data,
            h2.data,
            voxel_size=h1.voxel_size,
            mask=None if m is None else m.data,
            limit_res=limit_res,
            cone_angle=cone_angle,
            keep_highres=keep_highres,
            progress=progress,
        )
    elapsed = time.perf_counter() - t0
    how = "0.143 rule on the shell-averaged phase agreement"
    console.print(
        f"Resolution limit {result.limit_res:.2f} Å "
        f"({how if result.limit_res_is_default else 'given'}); shells 1–{result.limit_r - 1} "
        f"computed with θ = {cone_angle:g}° in {elapsed:.1f} s"
    )
    write_map(output, result.volume, voxel_size=h1.voxel_size)
    console.print(f"Wrote [bold]{output}[/bold]")
