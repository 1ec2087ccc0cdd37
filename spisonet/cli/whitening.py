"""``spisonet whitening``: flatten the radial Fourier amplitude of a map in a band."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .._outputs import check_output_file
from ..io import read_map, write_map
from ..maps import whiten
from ._app import app, make_console
from ._files import read_mask
from ._options import ApixOption

__all__ = ["whitening_command"]


@app.command("whitening")
def whitening_command(
    input_map: Annotated[Path, typer.Argument(help="Map to whiten (MRC).")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            "--o",
            "--output-map",
            "--output_map",
            help="Output map (default: <input>_whitened.mrc next to the input).",
        ),
    ] = None,
    mask: Annotated[
        Path | None, typer.Option("--mask", "-m", help="Mask for the amplitude spectrum.")
    ] = None,
    low_res: Annotated[
        float, typer.Option("--low-res", "--low_res", help="Band start (Å).")
    ] = 10.0,
    high_res: Annotated[
        float, typer.Option("--high-res", "--high_res", help="Band end (Å).")
    ] = 3.0,
    apix: ApixOption = None,
) -> None:
    """Flatten the radial Fourier amplitude of a map between --low-res and --high-res."""
    if output is None:
        output = input_map.with_name(f"{input_map.stem}_whitened.mrc")
    check_output_file(output, "-o")
    console = make_console()
    vol = read_map(input_map, voxel_size=apix)
    m = read_mask(mask, vol, apix)
    out = whiten(
        vol.data,
        vol.voxel_size,
        mask=None if m is None else m.data,
        low_res=low_res,
        high_res=high_res,
    )
    write_map(output, out, like=vol)
    console.print(
        f"Whitened {input_map} between {low_res:g} and {high_res:g} Å; wrote [bold]{output}[/bold]"
    )
