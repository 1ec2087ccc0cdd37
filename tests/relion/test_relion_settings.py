"""Settings of the correction inside RELION (spisonet.relion.settings): read from
``SPISONET_*`` / ``ISONET_*`` variables, one failure mode per case, each declared once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from spisonet._settings import info, setting_fields
from spisonet.correction import CorrectionSettings
from spisonet.errors import InvalidValueError
from spisonet.relion import RelionCorrectionSettings, correction_settings_from_env
from spisonet.relion.settings import settings_markdown

DOCS = Path(__file__).resolve().parents[2] / "docs" / "relion.md"


def test_env_defaults():
    s = correction_settings_from_env({})
    assert (s.start_healpix, s.start_resolution, s.epochs) == (3, 15.0, 5)
    assert (s.whitening, s.whitening_low, s.fsc_weighting) == (True, 10.0, True)
    assert not s.retrain_each_iter and not s.keep_lowres and not s.keep_highres
    assert s.alpha is None and s.beta is None and s.acc_batches is None
    assert s.preset == "auto" and s.threads is None and s.wait_timeout == 600.0
    assert s.keep_measured and s.sources == {}


def test_env_aliases_and_precedence():
    env = {
        "ISONET_START_HEALPIX": "4",
        "ISONET_START_RESOLUTION": "8.5",
        "SPISONET_START_RESOLUTION": "12",  # SPISONET_ wins
        "ISONET_EPOCHS": "7",
        "ISONET_RETRAIN_EACH_ITER": "True",
        "SPISONET_WHITENING": "off",
        "ISONET_WHITENING_LOW": "9",
        "ISONET_FSC_WEIGHTING": "0",
        "ISONET_KEEP_LOWRES": "yes",
        "ISONET_ALPHA": "2",
        "ISONET_BETA": "0.25",
        "ISONET_ACC_BATCHES": "4",
        "SPISONET_PRESET": "tiny",
        "SPISONET_WAIT_TIMEOUT": "3",
        "ISONET_EPOCHS_UNRELATED": "x",
        "SPISONET_THREADS": " ",  # blank = unset
    }
    s = correction_settings_from_env(env)
    assert s.start_healpix == 4 and s.start_resolution == 12.0 and s.epochs == 7
    assert s.retrain_each_iter and not s.whitening and s.whitening_low == 9.0
    assert not s.fsc_weighting and s.keep_lowres
    assert (s.alpha, s.beta, s.acc_batches) == (2.0, 0.25, 4)
    assert s.preset == "tiny" and s.wait_timeout == 3.0 and s.threads is None
    assert s.sources["start_resolution"] == "SPISONET_START_RESOLUTION"
    assert s.sources["start_healpix"] == "ISONET_START_HEALPIX"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ISONET_START_HEALPIX": "2.5"}, r"ISONET_START_HEALPIX='2.5': expected an integer"),
        ({"ISONET_START_RESOLUTION": "abc"}, r"ISONET_START_RESOLUTION='abc': expected a number"),
        ({"ISONET_START_RESOLUTION": "nan"}, r"expected a finite number"),
        ({"ISONET_WHITENING": "maybe"}, r"ISONET_WHITENING='maybe': expected a boolean"),
        ({"SPISONET_EPOCHS": "-1"}, r"SPISONET_EPOCHS=-1: expected an integer >= 0"),
        ({"ISONET_START_RESOLUTION": "0"}, r"ISONET_START_RESOLUTION=0.0: expected a resolution"),
        ({"ISONET_WHITENING_LOW": "-3"}, r"ISONET_WHITENING_LOW=-3.0: expected a resolution"),
        ({"SPISONET_WAIT_TIMEOUT": "-1"}, r"SPISONET_WAIT_TIMEOUT=-1.0: expected seconds"),
        ({"ISONET_ACC_BATCHES": "0"}, r"ISONET_ACC_BATCHES=0: expected an integer >= 1"),
        ({"SPISONET_THREADS": "0"}, r"SPISONET_THREADS=0: expected an integer >= 1"),
        (
            {"SPISONET_PRESET": "huge"},
            r"SPISONET_PRESET='huge': expected one of auto, gpu, cpu, tiny",
        ),
        ({"ISONET_ALPHA": "x"}, r"ISONET_ALPHA='x': expected a number"),
    ],
)
def test_env_errors(env, message):
    with pytest.raises(InvalidValueError, match=message):
        correction_settings_from_env(env)


def test_every_setting_has_a_variable_and_help():
    declared = setting_fields(RelionCorrectionSettings)
    names = {f.name for f in dataclasses.fields(RelionCorrectionSettings)} - {"sources"}
    assert {f.name for f, _ in declared} == names
    assert all(meta.env == f.name.upper() and meta.help for f, meta in declared)


@pytest.mark.parametrize("name", ["epochs", "alpha", "beta", "acc_batches", "preset"])
def test_overrides_share_the_correction_settings_help(name):
    ours = info(RelionCorrectionSettings, name)
    theirs = info(CorrectionSettings, name)
    assert ours.help == theirs.help and ours.choices == theirs.choices


def test_docs_table_is_in_step():
    assert settings_markdown() in DOCS.read_text(encoding="utf-8"), (
        "regenerate the table in docs/relion.md with "
        "python -c 'from spisonet.relion.settings import settings_markdown as m; print(m())'"
    )
