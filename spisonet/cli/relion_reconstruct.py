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
) -> None:
    """Reconstruct one RELION external-reconstruction job (what relion_refine calls).

    Writes the map RELION reads back, exactly as relion_external_reconstruct would (plus
    the correction, when enabled). Exit code 0 unless even the plain map failed.
    """
    # the RELION side is a subsystem of its own (settings from the environment, its
    # runner); loaded only for this command
    from ..relion import resolve_correction, run_external_reconstruct

    run_external_reconstruct(
        star,
        correction=None if no_correction else resolve_correction(True),
        keep_inputs=keep_inputs,
    )
