"""``spisonet combine-map`` (also ``combine_map``): the low frequencies of one map with
the high frequencies of another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .._outputs import check_output_file
from ..errors import MapMismatchError
from ..io import Map, read_map, write_map
from ..maps import combine_map
from ._app import app, make_console
from ._files import read_mask
from ._options import ApixOption

__all__ = ["combine_map_command"]


@app.command("combine-map")
@app.command("combine_map", hidden=True)
def combine_map_command(
    low_map: Annotated[Path, typer.Argument(help="Map giving the low frequencies (MRC).")],
    high_map: Annotated[Path, typer.Argument(help="Map giving the high frequencies (MRC).")],
    out_map: Annotated[Path, typer.Argument(help="Output map (MRC).")],
    threshold_res: Annotated[float, typer.Argument(help="Hand-over resolution (Å).")],
    mask: Annotated[
        Path | None, typer.Option("--mask", "-m", help="Mask for the amplitude spectra.")
    ] = None,
    apix: ApixOption = None,
) -> None:
    """Low frequencies (below THRESHOLD_RES) from LOW_MAP, the rest from HIGH_MAP."""
    check_output_file(out_map, "OUT_MAP")
    console = make_console()
    lo = read_map(low_map, voxel_size=apix)
    hi = read_map(high_map, voxel_size=apix)
    _check_same_grid(lo, hi)
    m = read_mask(mask, hi, apix)
    out = combine_map(
        lo.data, hi.data, threshold_res, hi.voxel_size, mask=None if m is None else m.data
    )
    write_map(out_map, out, like=hi)
    console.print(
        f"Combined {low_map} (below {threshold_res:g} Å) with {high_map}; "
        f"wrote [bold]{out_map}[/bold]"
    )


def _check_same_grid(lo: Map, hi: Map) -> None:
    """Both maps on one grid: the same box and voxel size (the message names HIGH_MAP)."""
    if lo.data.shape != hi.data.shape:
        raise MapMismatchError(
            f"{hi.name}: shape {hi.data.shape} differs from {lo.name} {lo.data.shape}; "
            "both maps must have the same box"
        )
    if not np.isclose(lo.voxel_size, hi.voxel_size, rtol=1e-3, atol=1e-4):
        raise MapMismatchError(
            f"{hi.name}: voxel size {hi.voxel_size:.4f} Å differs from {lo.name} "
            f"{lo.voxel_size:.4f} Å; both maps must have the same sampling"
        )
