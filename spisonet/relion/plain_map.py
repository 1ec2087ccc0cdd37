"""The plain map: the reconstruction ``relion_refine`` would make itself for a job.

``relion_external_reconstruct`` (the template RELION offers external reconstructors) and
``relion_refine``'s own M step call the same ``BackProjector::reconstruct``, with two
options that differ (RELION's sources, ``ml_optimiser.cpp``):

- the Wiener term 1/(T·tau2) starts at shell ``--minres_map`` (default 5) in
  ``relion_refine``, at shell 0 in ``relion_external_reconstruct``;
- the gridding correction (dividing the map by the interpolation kernel's sinc²) is done
  by ``relion_refine`` 3.x unless ``--skip_gridding``, and skipped by ``relion_refine`` 4.0
  and later unless ``--dont_skip_gridding``; ``relion_external_reconstruct`` does it in
  every release unless ``--skip_gridding``.

:func:`plain_map_options` reads the run's release and command line atop its
``_optimiser.star`` (:func:`~spisonet.io.relion_runs.read_refine_command`) and returns the
options of ``relion_refine``'s own call, so that ``spisonet-relion --no-correction`` hands
RELION the map it would have made without ``--external_reconstruct``. Without that file
the release is taken from the job's STAR (``rlnPixelSize``: 4.0 or later).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from ..io.relion_runs import RefineCommand, read_refine_command
from .job import ExternalReconstructJob

__all__ = [
    "RELION_REFINE_MINRES_MAP",
    "PlainMapOptions",
    "plain_map_options",
    "refine_map_options",
]

#: ``relion_refine``'s ``--minres_map`` default (every release from 3.0 to 5.0).
RELION_REFINE_MINRES_MAP = 5


@dataclass(frozen=True)
class PlainMapOptions:
    """How the plain map is reconstructed.

    ``minres_map``: the Wiener term from this Fourier shell on (-1: everywhere);
    ``skip_gridding``: no gridding correction; ``source``: where the choice came from
    (for the log).
    """

    minres_map: int
    skip_gridding: bool
    source: str

    def describe(self) -> str:
        """For the log, e.g. ``Wiener term from shell 5, no gridding correction (as
        relion_refine 5.1.0: run_it000_optimiser.star)``."""
        gridding = "no gridding correction" if self.skip_gridding else "gridding correction"
        return f"Wiener term from shell {max(self.minres_map, 0)}, {gridding} ({self.source})"


def _refine_skips_gridding(
    command: RefineCommand | None, modern_star: bool | None
) -> tuple[bool, str]:
    """(whether relion_refine skips the gridding correction, why)."""
    major = command.major if command is not None else None
    if major is None and modern_star is None:
        modern, why = False, "RELION's release unknown: 3.x assumed"
    elif major is None:  # no release atop the optimiser file: the STAR's labels tell 4.0+
        modern = modern_star
        why = f"RELION {'4.0 or later' if modern_star else '3.x'} by the job's STAR"
    else:
        modern = major >= 4
        why = f"relion_refine {command.release}: {command.source}"  # type: ignore[union-attr]
    if command is not None and command.has("--dont_skip_gridding"):
        return False, why + ", --dont_skip_gridding"
    if command is not None and command.has("--skip_gridding"):
        return True, why + ", --skip_gridding"
    return modern, why


def refine_map_options(
    command: RefineCommand | None,
    *,
    modern_star: bool | None = None,
    minres_map: int | None = None,
    skip_gridding: bool | None = None,
) -> PlainMapOptions:
    """The options of ``relion_refine``'s own reconstruction in the run ``command``
    describes (None: unknown; ``modern_star`` then says whether the job's STAR is 4.0 or
    later, None: not known either, 3.x assumed). ``minres_map`` / ``skip_gridding``, when
    given, win. Never raises."""
    skip, why = _refine_skips_gridding(command, modern_star)
    if skip_gridding is not None:
        skip, why = skip_gridding, "as asked"
    minres, minres_why = RELION_REFINE_MINRES_MAP, ""
    if minres_map is not None:
        minres, minres_why = minres_map, "shell as asked"
    elif command is not None and command.value("--minres_map") is not None:
        with contextlib.suppress(ValueError):
            minres = int(command.value("--minres_map"))  # type: ignore[arg-type]
            minres_why = "--minres_map of the run"
    source = "; ".join(part for part in (why, minres_why) if part)
    return PlainMapOptions(minres, skip, source)


def plain_map_options(
    job: ExternalReconstructJob,
    *,
    minres_map: int | None = None,
    skip_gridding: bool | None = None,
    command: RefineCommand | None = None,
) -> PlainMapOptions:
    """The options of the reconstruction ``relion_refine`` makes itself for ``job``.

    ``minres_map`` / ``skip_gridding``, when given, win; otherwise the run's command line
    (``--minres_map N``, ``--skip_gridding``, ``--dont_skip_gridding``) and release decide
    (``command``: read from the run's files beside the STAR when None; without them the
    STAR's ``rlnPixelSize`` tells 4.0 and later). Never raises: an unreadable run gives
    ``relion_refine``'s defaults for the STAR's release.
    """
    if command is None:
        command = read_refine_command(job.star_path)
    modern_star = job.pixel_size is not None or job.star_version == 50001
    return refine_map_options(
        command, modern_star=modern_star, minres_map=minres_map, skip_gridding=skip_gridding
    )
