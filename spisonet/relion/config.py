"""The settings file of the correction inside RELION (``spisonet-relion --config FILE``).

RELION runs ``/bin/sh -c "$RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE <star>"``, so
``RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE="spisonet-relion --config /abs/relion.toml"``
hands every call the same file. The file is TOML whose keys are the field names of
:class:`~spisonet.relion.settings.RelionCorrectionSettings` (``start_healpix = 2``,
``preset = "cpu"``); :func:`load_relion_settings` reads it and lets environment
variables override it (:func:`~spisonet.relion.settings.correction_settings`).
:func:`log_settings` writes the settings with their sources to the run's log once, at the
run's first call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InvalidValueError
from ..io.relion_runs import (
    job_name_of_star,
    newest_iteration_file,
    parse_job_name,
    parse_run_file,
)
from .job import log_line
from .settings import RelionCorrectionSettings, correction_settings, describe_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (tomli is tomllib's original)
    import tomli as tomllib

__all__ = ["load_relion_settings", "log_settings", "read_settings_file"]


def read_settings_file(path: str | os.PathLike) -> dict[str, Any]:
    """The table of a TOML settings file (a relative path is relative to the cwd, which
    is RELION's project folder when RELION runs us).

    Raises
    ------
    InvalidValueError when the file is missing, unreadable or not TOML (the file is
    named; TOML errors give the line and column).
    """
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InvalidValueError(
            f"{path}: settings file not found (relative paths start in {Path.cwd()})"
        ) from None
    except OSError as exc:
        raise InvalidValueError(f"{path}: cannot read the settings file: {exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InvalidValueError(f"{path}: not a TOML settings file: {exc}") from None


def load_relion_settings(
    config: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None
) -> RelionCorrectionSettings:
    """The correction's settings: defaults < the settings file ``config`` (when given) <
    ``SPISONET_*`` / ``ISONET_*`` variables of ``environ`` (``os.environ`` when None).

    Raises
    ------
    InvalidValueError for an unreadable file, an unknown key, a wrong type or a value out
    of range (file and key, or the variable, named).
    """
    table = None if config is None else read_settings_file(config)
    return correction_settings(table, config_name=os.fspath(config or ""), environ=environ)


def _first_call_of_run(star: Path) -> bool:
    """Whether ``star``'s job is the first RELION hands over in its run: no sampling file
    of an earlier iteration >= 1 of the same run (RELION writes ``_it000_`` files before
    the first iteration; a continued run has a new root). Unknown names count as first."""
    jn = parse_job_name(job_name_of_star(star.name))
    if jn is None:
        return True
    earlier = newest_iteration_file(star.parent, jn, "_sampling.star", before=True)
    parsed = parse_run_file(earlier.name) if earlier is not None else None
    return parsed is None or parsed.iteration == 0


def log_settings(star: str | os.PathLike, settings: RelionCorrectionSettings) -> bool:
    """At the run's first call, write the settings and their sources to the run's log
    (``spisonet_relion.log``; not to RELION's stdout, which gets one line per call).
    Returns whether it wrote. Never raises: a log must not stop RELION."""
    path = Path(star)
    try:
        if not _first_call_of_run(path):
            return False
        text = f"{job_name_of_star(path.name)}: settings: {describe_settings(settings)}"
    except Exception:  # a log line is not worth RELION's run
        return False
    log_line(path, text, echo=False)
    return True
