"""The ``spisonet`` command line: one typer app, one module per command.

:data:`app` is the typer app and :func:`main` the console-script entry point (user
errors: one red line, exit code 2). Each command module registers its command on the app
when imported here. Commands load numba kernels, torch and matplotlib inside their
functions, so ``spisonet --help`` stays fast.
"""

from __future__ import annotations

from . import (  # noqa: F401  (imported to register their commands)
    anisotropy,
    combine_map,
    demo,
    fsc3d,
    fsd3d,
    reconstruct,
    relion_check,
    relion_reconstruct,
    simulate,
    tomo,
    whitening,
)
from ._app import app, main

__all__ = ["app", "main"]

#: The order of ``spisonet --help`` (command modules import each other's helpers, so the
#: order they register in is not this one); hidden aliases come last.
_ORDER = (
    "fsc3d",
    "simulate",
    "demo",
    "reconstruct",
    "anisotropy",
    "fsd3d",
    "whitening",
    "combine-map",
    "relion-reconstruct",
    "relion-check",
    "tomo",
)
app.registered_commands.sort(key=lambda c: _ORDER.index(c.name) if c.name in _ORDER else 99)
