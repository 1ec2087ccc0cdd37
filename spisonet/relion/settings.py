"""Settings of the correction inside RELION, read from environment variables.

RELION refuses command-line options it does not know, so these settings are environment
variables: each field of :class:`RelionCorrectionSettings` is declared once with
:func:`spisonet._settings.setting` (default, help, unit, variable) and read as
``SPISONET_<NAME>``, else ``ISONET_<NAME>`` (the public tool's spelling) by
:func:`correction_settings_from_env`. The fields that override a correction setting
(``epochs``, ``alpha``, ``beta``, ``acc_batches``, ``preset``) take their help from
:class:`spisonet.correction.CorrectionSettings`. The table in docs/relion.md is
:func:`settings_markdown` (a test keeps it in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._settings import from_environment, info, markdown_table, setting
from ..correction.settings import PRESET_CHOICES, CorrectionSettings
from ..errors import InvalidValueError

__all__ = ["RelionCorrectionSettings", "correction_settings_from_env", "settings_markdown"]


def _help(name: str) -> str:
    """The help of the correction setting ``name`` (one text for both places)."""
    return info(CorrectionSettings, name).help


@dataclass(frozen=True)
class RelionCorrectionSettings:
    """Settings of the correction inside RELION (from the environment).

    Each field's meaning, unit and variable are in its declaration (and docs/relion.md).
    ``alpha``, ``beta`` and ``acc_batches`` None keep the preset's value; ``preset``
    ``auto`` is ``gpu`` with CUDA, else ``cpu``; ``threads`` None is half the cores (the
    other half runs the other half map). ``sources`` says which variable set each value
    read from the environment (for the log and the error messages).
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
    sources: dict[str, str] = field(default_factory=dict, compare=False)


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
    env = os.environ if environ is None else environ
    values, sources = from_environment(RelionCorrectionSettings, env)
    s = RelionCorrectionSettings(**values, sources=sources)

    def bad(attr: str, expected: str) -> InvalidValueError:
        return InvalidValueError(
            f"{sources.get(attr, attr)}={getattr(s, attr)!r}: expected {expected}"
        )

    if s.epochs < 0:
        raise bad("epochs", "an integer >= 0")
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
    return s


#: What the table shows where a None default means "decided at run time".
_SHOWN_DEFAULTS = {
    "alpha": "preset's",
    "beta": "preset's (unused: one network per half)",
    "acc_batches": "preset's",
    "threads": "cores / 2",
}


def settings_markdown() -> str:
    """The table of docs/relion.md: every variable with its default, unit and meaning."""
    return markdown_table(RelionCorrectionSettings, defaults=_SHOWN_DEFAULTS)
