"""``spisonet relion-reconstruct`` (also ``relion_reconstruct``): one RELION external
reconstruction, what ``RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE`` runs (docs/relion.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._app import app

__all__ = ["relion_reconstruct_command"]


@app.command("relion-reconstruct")
@app.command("relion_reconstruct", hidden=True)
def relion_reconstruct_command(
    star: Annotated[
        Path, typer.Argument(help="RELION's *_external_reconstruct.star (relative to the cwd).")
    ],
    no_correction: Annotated[
        bool,
        typer.Option(
            "--no-correction", "--no_correction", help="Write RELION's plain reconstruction."
        ),
    ] = False,
    keep_inputs: Annotated[
        bool,
        typer.Option(
            "--keep-inputs",
            "--keep_inputs",
            help="Keep RELION's data/weight MRC files (deleted by default after use).",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings file of the correction (TOML, docs/relion.md); SPISONET_*/ISONET_* "
            "variables override it.",
            metavar="TOML",
        ),
    ] = None,
    minres_map: Annotated[
        int | None,
        typer.Option(
            "--minres-map",
            "--minres_map",
            help="Wiener term of the plain map from this shell on (default: as the run's "
            "relion_refine, its --minres_map or 5; -1: as relion_external_reconstruct).",
            metavar="SHELL",
        ),
    ] = None,
    skip_gridding: Annotated[
        bool | None,
        typer.Option(
            "--skip-gridding/--dont-skip-gridding",
            help="Gridding correction of the plain map off/on (default: as the run's "
            "relion_refine: skipped from RELION 4.0 on, done by 3.x; "
            "relion_external_reconstruct does it).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Reconstruct one RELION external-reconstruction job (what relion_refine calls).

    Writes the map RELION reads back: the one the run's relion_refine would make itself
    (plus the correction, when enabled); with --minres-map -1 --dont-skip-gridding exactly
    relion_external_reconstruct's.
    Exit codes as spisonet-relion's (docs/relion.md): 0 when a map was written, 2 for bad
    input, 1 for other failures, 130 when interrupted.
    """
    # the RELION side is a subsystem of its own (settings from a file and the environment,
    # its runner); loaded only for this command
    from ..relion import run_job

    code = run_job(
        star,
        correct=not no_correction,
        keep_inputs=keep_inputs,
        config=config,
        minres_map=minres_map,
        skip_gridding=skip_gridding,
    )
    if code:
        raise typer.Exit(code)
