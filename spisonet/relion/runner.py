"""One RELION external reconstruction, and ``spisonet-relion``, RELION's executable.

:func:`run_external_reconstruct` is the one place that decides RELION keeps running: the
plain map is always made first, and any failure of the correction (an exception, a wrong
shape, NaN values, a bad environment variable or settings file) is logged and the plain
map is written.
Only when even the plain map cannot be made does it raise, and :func:`console_main` exits
non-zero (RELION then stops, which is right: there is no map). Exit codes follow the
``spisonet`` command line: 0 done, 1 an unexpected error, 2 a user error (a
:class:`~spisonet.errors.SpisonetError`, e.g. a missing or malformed file, or a usage
error), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import InvalidValueError, MapShapeError, SpisonetError
from ..io import write_map
from ..io.relion_runs import find_pixel_size, job_name_of_star
from .config import load_relion_settings, log_settings
from .correction import RelionCorrection
from .job import (
    ExternalReconstructJob,
    log_line,
    read_external_star,
    reconstruct,
    write_result_star,
)
from .plain_map import RELION_REFINE_MINRES_MAP, plain_map_options
from .settings import RelionCorrectionSettings, correction_settings_from_env

__all__ = [
    "RELION_REFINE_MINRES_MAP",
    "Correction",
    "console_main",
    "minres_map_setting",
    "resolve_correction",
    "run_external_reconstruct",
]

#: A correction: (job, plain map, pixel size in Å) -> corrected map, or None to keep plain.
Correction = Callable[[ExternalReconstructJob, np.ndarray, float], "np.ndarray | None"]

#: Exit codes, as the ``spisonet`` command line's.
EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class _KeepPlain(Exception):
    """Internal: the correction returned None (its reason is the message)."""


class _BrokenCorrection:
    """A correction whose settings could not be read: raises the error when called."""

    summary = ""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __call__(self, job: ExternalReconstructJob, volume: np.ndarray, pixel: float) -> None:
        raise self.error


def resolve_correction(
    enabled: bool = True,
    config: str | os.PathLike | None = None,
    star: str | os.PathLike | None = None,
) -> Correction | None:
    """The misalignment correction to apply inside RELION, or None for the plain map.

    Returns a :class:`~spisonet.relion.correction.RelionCorrection` configured from the
    settings file ``config`` (when given) and the environment, which overrides the file
    (:func:`~spisonet.relion.config.load_relion_settings`); with ``star``, the settings
    and their sources go to the run's log at its first call. It never raises: an
    unreadable or wrong settings file or a bad environment variable gives a correction
    that raises when called, so the error is logged and the plain map is written (RELION
    keeps running).
    """
    if not enabled:
        return None
    settings, error = _read_settings(config)
    return _correction_of(settings, error, star)


def _read_settings(
    config: str | os.PathLike | None,
) -> tuple[RelionCorrectionSettings | None, Exception | None]:
    """(the settings, None) or (None, the error): never raises (RELION keeps running)."""
    try:
        return load_relion_settings(config), None
    except Exception as exc:  # never kill RELION
        return None, exc


def _correction_of(
    settings: RelionCorrectionSettings | None,
    error: Exception | None,
    star: str | os.PathLike | None,
) -> Correction:
    """The correction of read settings, or one that raises ``error`` when called."""
    if settings is None:
        return _BrokenCorrection(error or SpisonetError("no settings"))
    if star is not None:
        log_settings(star, settings)
    return RelionCorrection(settings)


def _apply(
    correction: Correction, job: ExternalReconstructJob, plain: np.ndarray, voxel: float
) -> tuple[np.ndarray, str, str]:
    """(the map to write, how it was made, detail) — the plain map on any failure."""
    star = job.star_path
    try:
        returned = correction(job, plain, voxel)
        if returned is None:  # the correction decided to keep RELION's map
            raise _KeepPlain(str(getattr(correction, "summary", "") or "kept"))
        corrected = np.asarray(returned)
        if corrected.shape != plain.shape:
            raise MapShapeError(
                f"correction returned shape {corrected.shape}, expected {plain.shape}"
            )
        if not np.all(np.isfinite(corrected)):
            raise SpisonetError("correction returned NaN or infinite values")
    except _KeepPlain as keep:
        return plain, "plain", str(keep)
    except Exception as exc:  # never kill RELION: fall back to the plain map
        log_line(
            star,
            f"{job.name}: correction failed, writing the plain reconstruction: "
            f"{type(exc).__name__}: {exc}",
        )
        for tb_line in traceback.format_exc().rstrip().splitlines():
            log_line(star, f"{job.name}:   {tb_line}", echo=False)
        return plain, "plain (correction failed)", str(getattr(correction, "summary", "") or "")
    return corrected.astype(np.float32), "corrected", str(getattr(correction, "summary", "") or "")


def minres_map_setting(
    value: int | None = None, settings: RelionCorrectionSettings | None = None
) -> int | None:
    """The shell from which the plain map gets the Wiener term, when one was asked for:
    ``value``, else ``settings.minres_map`` (settings file, ``SPISONET_MINRES_MAP``; the
    environment's when ``settings`` is None); None: as the run's ``relion_refine`` (its
    ``--minres_map``, default 5; :func:`~spisonet.relion.plain_map.plain_map_options`).
    -1 reproduces ``relion_external_reconstruct``.

    Raises
    ------
    InvalidValueError when ``value`` (or the variable, read when neither is given) is
    below -1 or does not parse.
    """
    if value is None:
        if settings is None:
            settings = correction_settings_from_env()
        return settings.minres_map
    return _checked_minres(value)


def _checked_minres(value: int | None) -> int | None:
    """``value`` when it is None or a shell >= -1; raises InvalidValueError otherwise."""
    if value is not None and value < -1:
        raise InvalidValueError(f"minres_map is {value}, expected -1 or more")
    return value


def run_external_reconstruct(
    star_path: str | os.PathLike,
    *,
    correction: Correction | None = None,
    keep_inputs: bool = False,
    write_tau2_star: bool = False,
    wiener: bool = True,
    skip_gridding: bool | None = None,
    minres_map: int | None = None,
) -> Path:
    """Do one RELION external reconstruction: read, reconstruct, (correct), write.

    Writes the job's ``rlnExtReconsResult`` map (box³ float32, atomically, with the run's
    pixel size when found, else 1.0 Å and a log line saying so). With ``correction``,
    the plain map is passed to it; when it returns None the plain map is written (its
    ``summary`` attribute, when present, says why); any exception it raises (or a wrong
    shape or non-finite values) is logged and the plain map is written instead. With
    ``write_tau2_star`` the job's tau2 table is written back to
    ``rlnExtReconsResultStarfile`` (unchanged values). The data and weight files are
    deleted after the map is written unless ``keep_inputs``. One line goes to stdout and
    to ``spisonet_relion.log`` beside the STAR. The plain map is the one the run's
    ``relion_refine`` would make itself (:func:`~spisonet.relion.plain_map.plain_map_options`:
    its ``--minres_map``, default 5, and its release's gridding default) unless
    ``minres_map`` or ``skip_gridding`` say otherwise (``spisonet-relion`` reads them from
    the settings, :func:`minres_map_setting`);
    ``minres_map=-1, skip_gridding=False`` is ``relion_external_reconstruct``'s map, whose
    Wiener term from shell 0 damps the sparsely measured low-resolution Fourier space of a
    preferred-orientation data set (docs/relion.md).

    Raises
    ------
    SpisonetError (and OSError) when even the plain reconstruction cannot be made; the
    caller should then exit non-zero (RELION stops, which is right: there is no map).
    """
    start = time.perf_counter()
    star = Path(star_path)
    job = read_external_star(star)
    options = plain_map_options(
        job, minres_map=_checked_minres(minres_map), skip_gridding=skip_gridding
    )
    plain = reconstruct(
        job,
        wiener=wiener,
        skip_gridding=options.skip_gridding,
        minres_map=options.minres_map,
    )
    t_plain = time.perf_counter() - start
    pixel = find_pixel_size(job.star_path, job.pixel_size)
    voxel = pixel.value if pixel.value is not None else 1.0
    volume, how, detail = plain, "plain", ""
    if correction is not None:
        volume, how, detail = _apply(correction, job, plain, voxel)
    write_map(job.result, volume, voxel_size=voxel)
    if write_tau2_star and job.result_star is not None and job.tau2.size:
        write_result_star(job.result_star, job.spectral_index, tau2=job.tau2)
    removed = 0
    if not keep_inputs:
        for p in (job.data_real, job.data_imag, job.weight):
            try:
                p.unlink()
                removed += 1
            except OSError:
                pass
    elapsed = time.perf_counter() - start
    pix_text = f"{voxel:.4g} Å ({pixel.source})" if pixel.value is not None else "1.0 Å (unknown)"
    msg = (
        f"{job.name}: {how} map{f' ({detail})' if detail else ''}, box {job.ori_size}, "
        f"pad {job.padding_factor:g}, "
        f"current size {job.current_size}, "
        f"{'no Wiener term, ' if not wiener else ''}{options.describe()}, pixel {pix_text}, "
        f"reconstruction {t_plain:.1f} s, total {elapsed:.1f} s -> {job.result}"
        + (f"; removed {removed} input files" if removed else "")
    )
    if pixel.value is None:
        log_line(star, f"{job.name}: pixel size not found ({pixel.source}); writing 1.0 Å")
    log_line(star, msg)
    return job.result


def _parse_args(argv: list[str] | None):
    """``spisonet-relion``'s arguments (argparse: no typer start-up in RELION's loop)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="spisonet-relion",
        allow_abbrev=False,  # "--keep-input" must be refused, not read as --keep-inputs
        description="RELION external reconstruction (RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE).",
    )
    parser.add_argument("star", help="RELION's *_external_reconstruct.star")
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="settings file of the correction (docs/relion.md); SPISONET_*/ISONET_* "
        "variables override it",
    )
    parser.add_argument("--no-correction", "--no_correction", action="store_true")
    parser.add_argument("--keep-inputs", "--keep_inputs", action="store_true")
    parser.add_argument(
        "--minres-map",
        "--minres_map",
        type=int,
        default=None,
        metavar="SHELL",
        help="Wiener term of the plain map from this shell on (default: as the run's "
        "relion_refine, its --minres_map or 5; -1: as relion_external_reconstruct; or "
        "SPISONET_MINRES_MAP)",
    )
    gridding = parser.add_mutually_exclusive_group()
    gridding.add_argument(
        "--skip-gridding",
        "--skip_gridding",
        dest="skip_gridding",
        action="store_const",
        const=True,
        default=None,
        help="no gridding correction of the plain map (default: as the run's relion_refine: "
        "skipped from RELION 4.0 on, done by 3.x)",
    )
    gridding.add_argument(
        "--dont-skip-gridding",
        "--dont_skip_gridding",
        dest="skip_gridding",
        action="store_const",
        const=False,
        help="gridding correction of the plain map (as relion_external_reconstruct)",
    )
    return parser.parse_args(argv)


def console_main(argv: list[str] | None = None) -> int:
    """``spisonet-relion [--config TOML] [--no-correction] [--keep-inputs] [--minres-map N]
    [--skip-gridding | --dont-skip-gridding] STAR``: RELION's executable.

    RELION runs ``/bin/sh -c "$RELION_EXTERNAL_RECONSTRUCT_EXECUTABLE <star>"``, so
    options may be put in the variable before the STAR. Returns the exit code: 0 when a
    map was written (plain or corrected), 2 when the plain reconstruction failed on the
    input (a :class:`~spisonet.errors.SpisonetError`) or for a usage error, 1 for any
    other failure, 130 when interrupted; one ``spisonet-relion: error:`` line goes to
    stderr (and the log).
    """
    try:
        args = _parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return EXIT_USER_ERROR if exc.code not in (0, None) else EXIT_OK
    return run_job(
        Path(args.star),
        correct=not args.no_correction,
        keep_inputs=args.keep_inputs,
        config=args.config,
        minres_map=args.minres_map,
        skip_gridding=args.skip_gridding,
    )


def run_job(
    star: Path,
    *,
    correct: bool = True,
    keep_inputs: bool = False,
    config: str | os.PathLike | None = None,
    minres_map: int | None = None,
    skip_gridding: bool | None = None,
) -> int:
    """One external reconstruction with its error handling; returns the exit code.

    What ``spisonet-relion`` and ``spisonet relion-reconstruct`` both run: 0 when a map was
    written (plain or corrected); otherwise one ``spisonet-relion: error:`` line on stderr,
    a ``FAILED`` line in the run's log, and 2 (a :class:`~spisonet.errors.SpisonetError`:
    the input), 1 (anything else) or 130 (interrupted). ``config`` is the settings file
    (a problem with it is logged and gives the plain map, like any correction failure).
    """
    settings, error = _read_settings(config)
    try:
        if settings is None and not correct:  # the plain map's setting may be what failed
            log_line(
                star,
                f"{job_name_of_star(star.name)}: settings not read ({error}); "
                "plain map as the run's relion_refine makes it",
            )
        run_external_reconstruct(
            star,
            correction=_correction_of(settings, error, star) if correct else None,
            keep_inputs=keep_inputs,
            minres_map=minres_map_setting(
                minres_map, settings if settings is not None else RelionCorrectionSettings()
            ),
            skip_gridding=skip_gridding,
        )
    except KeyboardInterrupt:
        print("spisonet-relion: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except Exception as exc:
        user = isinstance(exc, SpisonetError)
        message = str(exc) if user else f"{type(exc).__name__}: {exc}"
        print(f"spisonet-relion: error: {message}", file=sys.stderr, flush=True)
        log_line(star, f"{job_name_of_star(star.name)}: FAILED: {message}", echo=False)
        return EXIT_USER_ERROR if user else EXIT_FAILED
    return EXIT_OK
