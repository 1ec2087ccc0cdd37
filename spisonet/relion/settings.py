"""Settings of the correction (and the plain map) inside RELION: a settings file, then
environment variables.

RELION refuses command-line options it does not know, so these settings come from a
settings file (``spisonet-relion --config relion.toml``, read by :mod:`.config`) and from
environment variables. Each field of :class:`RelionCorrectionSettings` is declared once
with :func:`spisonet._settings.setting` (default, help, unit, variable); the file's keys
are the field names, the variables ``SPISONET_<NAME>``, else ``ISONET_<NAME>`` (the public
tool's spelling). :func:`correction_settings` merges them: defaults < file < variables,
and :func:`check_relion_settings` checks the ranges whatever the source. The fields that
override a correction setting (``epochs``, ``alpha``, ``beta``, ``acc_batches``,
``preset``) take their help from :class:`spisonet.correction.CorrectionSettings`. The
table in docs/relion.md is :func:`settings_markdown` (a test keeps it in step).

Pure Python: the file is read by :mod:`.config`; this module gets its table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._settings import (
    from_environment,
    from_table,
    info,
    markdown_table,
    setting,
    setting_fields,
)
from ..correction.settings import PRESET_CHOICES, CorrectionSettings
from ..errors import InvalidValueError

__all__ = [
    "RelionCorrectionSettings",
    "check_relion_settings",
    "closed_gates",
    "correction_settings",
    "correction_settings_from_env",
    "describe_settings",
    "settings_markdown",
    "settings_rows",
]


def _help(name: str) -> str:
    """The help of the correction setting ``name`` (one text for both places)."""
    return info(CorrectionSettings, name).help


@dataclass(frozen=True)
class RelionCorrectionSettings:
    """Settings of the correction inside RELION (from a settings file and the environment).

    Each field's meaning, unit and variable are in its declaration (and docs/relion.md).
    ``alpha``, ``beta`` and ``acc_batches`` None keep the preset's value; ``preset``
    ``auto`` is ``gpu`` with CUDA, else ``cpu``; ``threads`` None is half the cores (the
    other half runs the other half map). ``sources`` says where each value that is not
    a default came from, ``"<file>:<key>"`` or the variable's name (for the log and the
    error messages).
    """

    start_healpix: int = setting(
        3, "The network runs once RELION's healpix order is at least this", env="START_HEALPIX"
    )
    start_resolution: float = setting(
        15.0,
        "The network runs once RELION's current resolution is better (smaller) than this",
        unit="Å",
        env="START_RESOLUTION",
    )
    epochs: int = setting(5, _help("epochs"), env="EPOCHS")
    retrain_each_iter: bool = setting(
        False,
        "Start every iteration from a fresh network instead of the previous iteration's",
        env="RETRAIN_EACH_ITER",
    )
    settle_change: float = setting(
        0.1,
        "Train only SETTLED_FRACTION of the steps once one iteration's training changed the "
        "missing-cone content by less than this (relative, scaled to a full iteration); "
        "0: always train in full",
        env="SETTLE_CHANGE",
    )
    settled_fraction: float = setting(
        0.25,
        "Share of an iteration's training steps once the network has settled (SETTLE_CHANGE)",
        env="SETTLED_FRACTION",
    )
    whitening: bool = setting(
        True,
        "Flatten the amplitude spectrum between WHITENING_LOW and the current resolution "
        "before training",
        env="WHITENING",
    )
    whitening_low: float = setting(
        10.0, "Low-resolution end of the whitening band", unit="Å", env="WHITENING_LOW"
    )
    fsc_weighting: bool = setting(
        True, "Weight the unregularised half map by max(FSC, 0) per shell", env="FSC_WEIGHTING"
    )
    keep_lowres: bool = setting(
        False,
        "Keep the initial reference's (--ref) content below --ini_high",
        env="KEEP_LOWRES",
    )
    keep_highres: bool = setting(
        False,
        "spisonet only: keep RELION's map beyond the current resolution instead of "
        "low-passing the result there",
        env="KEEP_HIGHRES",
    )
    keep_measured: bool = setting(
        True,
        "spisonet only: keep RELION's map where the 3D FSC says Fourier space was measured; "
        "the network fills the rest",
        env="KEEP_MEASURED",
    )
    alpha: float | None = setting(None, _help("alpha"), env="ALPHA")
    beta: float | None = setting(None, _help("beta"), env="BETA")
    acc_batches: int | None = setting(None, _help("acc_batches"), env="ACC_BATCHES")
    wait_timeout: float = setting(
        600.0,
        "How long to wait for the other half; then RELION's map",
        unit="s",
        env="WAIT_TIMEOUT",
    )
    preset: str = setting("auto", _help("preset"), env="PRESET", choices=PRESET_CHOICES)
    threads: int | None = setting(None, "Torch CPU threads per half", env="THREADS")
    minres_map: int | None = setting(
        None,
        "The plain map's Wiener term from this Fourier shell on; by default as the run's "
        "relion_refine makes its own map (its --minres_map, default 5); -1 with the gridding "
        "correction is relion_external_reconstruct's map (also without the correction)",
        unit="shells",
        env="MINRES_MAP",
    )
    sources: dict[str, str] = field(default_factory=dict, compare=False)


def correction_settings(
    config: Mapping[str, Any] | None = None,
    *,
    config_name: str = "settings file",
    environ: Mapping[str, str] | None = None,
) -> RelionCorrectionSettings:
    """:class:`RelionCorrectionSettings` from a settings file's table and the environment.

    Precedence: the defaults, then ``config`` (the file's table, keys = field names;
    ``config_name`` names the file in ``sources`` and errors), then the variables
    (``SPISONET_NAME``, else ``ISONET_NAME``; unset or empty ones do not count), so a
    variable overrides the file for a one-off run. ``environ`` None is ``os.environ``.

    Raises
    ------
    InvalidValueError when a key is unknown, a value does not parse or has the wrong type,
    or is out of range (the file and key, or the variable, and the value are named).
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if config is not None:
        values, sources = from_table(RelionCorrectionSettings, config, config_name)
    env_values, env_sources = from_environment(
        RelionCorrectionSettings, os.environ if environ is None else environ
    )
    values.update(env_values)
    sources.update(env_sources)
    return check_relion_settings(RelionCorrectionSettings(**values, sources=sources))


def correction_settings_from_env(
    environ: Mapping[str, str] | None = None,
) -> RelionCorrectionSettings:
    """Read :class:`RelionCorrectionSettings` from ``ISONET_*`` / ``SPISONET_*`` variables.

    Each field ``NAME`` (e.g. ``START_HEALPIX``) is read from ``SPISONET_NAME`` when set,
    else from ``ISONET_NAME``; unset or empty variables keep the default.

    Raises
    ------
    InvalidValueError when a value does not parse or is out of range (the variable's name
    and value are in the message).
    """
    return correction_settings(None, environ=environ)


def check_relion_settings(s: RelionCorrectionSettings) -> RelionCorrectionSettings:
    """``s`` itself when every value is in range, whatever its source (file, variables,
    code); the types are the readers' business.

    Raises
    ------
    InvalidValueError naming the value's source (``sources``: the file and key, or the
    variable; the field's name otherwise), the value and what was expected.
    """

    def bad(attr: str, expected: str) -> InvalidValueError:
        return InvalidValueError(
            f"{s.sources.get(attr, attr)}={getattr(s, attr)!r}: expected {expected}"
        )

    if s.epochs < 0:
        raise bad("epochs", "an integer >= 0")
    if not s.settle_change >= 0:
        raise bad("settle_change", "a relative change >= 0 (0: always train in full)")
    if not 0 < s.settled_fraction <= 1:
        raise bad("settled_fraction", "a share of the steps in (0, 1]")
    if s.start_resolution <= 0:
        raise bad("start_resolution", "a resolution > 0 Å")
    if s.whitening_low <= 0:
        raise bad("whitening_low", "a resolution > 0 Å")
    if s.wait_timeout < 0:
        raise bad("wait_timeout", "seconds >= 0")
    if s.acc_batches is not None and s.acc_batches < 1:
        raise bad("acc_batches", "an integer >= 1")
    if s.threads is not None and s.threads < 1:
        raise bad("threads", "an integer >= 1")
    if s.minres_map is not None and s.minres_map < -1:
        raise bad("minres_map", "a Fourier shell >= -1 (-1: the Wiener term everywhere)")
    return s


#: What the table shows where a None default means "decided at run time".
_SHOWN_DEFAULTS = {
    "alpha": "preset's",
    "beta": "preset's (unused: one network per half)",
    "acc_batches": "preset's",
    "threads": "cores / 2",
    "minres_map": "the run's (5)",
}


def settings_markdown() -> str:
    """The table of docs/relion.md: every variable with its default, unit and meaning."""
    return markdown_table(RelionCorrectionSettings, defaults=_SHOWN_DEFAULTS)


def _value_text(name: str, value: Any) -> str:
    """A value as the docs and the log show it (None: what it means, e.g. "cores / 2")."""
    if value is None:
        return _SHOWN_DEFAULTS.get(name, "none")
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def settings_rows(s: RelionCorrectionSettings) -> list[tuple[str, str, str]]:
    """(name, value, source) of every setting, in declaration order; the source is
    ``"default"`` for a value nobody set."""
    return [
        (f.name, _value_text(f.name, getattr(s, f.name)), s.sources.get(f.name, "default"))
        for f, _ in setting_fields(RelionCorrectionSettings)
    ]


def describe_settings(s: RelionCorrectionSettings) -> str:
    """One line for the log: the values that were set, with their sources, then the
    defaults, e.g. ``start_healpix=2 (relion.toml:start_healpix), ...; defaults: ...``."""
    rows = settings_rows(s)
    chosen = [f"{n}={v} ({src})" for n, v, src in rows if src != "default"]
    defaults = [f"{n}={v}" for n, v, src in rows if src == "default"]
    parts = [", ".join(chosen) if chosen else "all defaults"]
    if chosen and defaults:
        parts.append("defaults: " + ", ".join(defaults))
    elif defaults:
        parts[0] += ": " + ", ".join(defaults)
    return "; ".join(parts)


def closed_gates(
    order: int | None,
    resolution: float | None,
    start_healpix: int,
    start_resolution: float,
    held_open: bool = False,
) -> tuple[str, ...]:
    """Why the gates are closed for a healpix order and a resolution (Å) (``start_healpix``,
    ``start_resolution``); empty when open. ``held_open``: the network already ran in this
    refinement, so the resolution gate stays open (RELION's resolution wavers around the
    start). The one statement of the rule: the correction and ``spisonet relion-check``
    both ask it."""
    closed = []
    if order is None or order < start_healpix:
        closed.append("healpix order below start")
    if not held_open and (resolution is None or not resolution < start_resolution):
        closed.append("resolution not better than start")
    return tuple(closed)
