"""The settings file of the correction inside RELION (spisonet.relion.config and the file
half of spisonet.relion.settings): TOML values typed by the settings' declarations,
defaults < file < environment, one error per failure mode naming the file and the key,
the settings logged at a run's first call, and a broken file never stopping RELION."""

from __future__ import annotations

import os
import re

import mrcfile
import numpy as np
import pytest
from helpers import make_job, write_sampling_star

from spisonet._settings import setting_fields
from spisonet.errors import InvalidValueError
from spisonet.relion import (
    RelionCorrectionSettings,
    check_relion_settings,
    console_main,
    load_relion_settings,
    read_external_star,
    reconstruct,
)
from spisonet.relion.config import log_settings
from spisonet.relion.runner import RELION_REFINE_MINRES_MAP
from spisonet.relion.settings import describe_settings


@pytest.fixture(autouse=True)
def _no_settings_variables(monkeypatch):
    """The tests set the variables they mean; none leak in from the caller's shell."""
    for name in list(os.environ):
        if name.startswith(("SPISONET_", "ISONET_")):
            monkeypatch.delenv(name)


def _toml(folder, text: str, name: str = "relion.toml"):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the file


def test_values_are_typed_by_the_declarations_and_applied(tmp_path):
    path = _toml(
        tmp_path,
        "# spisonet-relion settings\n"
        "start_healpix = 2\n"
        "start_resolution = 12      # an integer where a number is declared: 12.0\n"
        "retrain_each_iter = true\n"
        "whitening_low = 8.5\n"
        'preset = "tiny"\n'
        "alpha = 0.5                # optional number\n"
        "threads = 2                # optional integer\n",
    )
    s = load_relion_settings(path, environ={})
    assert s.start_healpix == 2 and isinstance(s.start_healpix, int)
    assert s.start_resolution == 12.0 and isinstance(s.start_resolution, float)
    assert s.retrain_each_iter is True and s.whitening_low == 8.5
    assert (s.preset, s.alpha, s.threads) == ("tiny", 0.5, 2)
    assert s.epochs == 5 and s.beta is None  # not in the file: defaults
    assert s.sources == {
        key: f"{path}:{key}"
        for key in (
            "start_healpix",
            "start_resolution",
            "retrain_each_iter",
            "whitening_low",
            "preset",
            "alpha",
            "threads",
        )
    }


def test_environment_overrides_the_file_which_overrides_the_defaults(tmp_path):
    path = _toml(tmp_path, 'epochs = 3\nstart_healpix = 2\npreset = "cpu"\nwhitening = false\n')
    env = {
        "SPISONET_EPOCHS": "7",
        "ISONET_START_HEALPIX": "4",  # the public tool's spelling, still an alias
        "SPISONET_PRESET": "  ",  # blank: as if unset, the file's value stays
    }
    s = load_relion_settings(path, environ=env)
    assert (s.epochs, s.start_healpix, s.preset, s.whitening) == (7, 4, "cpu", False)
    assert s.start_resolution == 15.0  # in neither: the default
    assert s.sources["epochs"] == "SPISONET_EPOCHS"
    assert s.sources["start_healpix"] == "ISONET_START_HEALPIX"
    assert s.sources["preset"] == f"{path}:preset"
    assert "start_resolution" not in s.sources
    # and SPISONET_ still wins over ISONET_ when both are set
    both = {"SPISONET_EPOCHS": "9", "ISONET_EPOCHS": "8"}
    assert load_relion_settings(path, environ=both).epochs == 9


def test_no_file_is_the_environment_alone():
    s = load_relion_settings(None, environ={"ISONET_EPOCHS": "2"})
    assert s.epochs == 2 and s.sources == {"epochs": "ISONET_EPOCHS"}


def test_a_relative_path_is_read_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    _toml(tmp_path / "conf", "epochs = 1\n")
    monkeypatch.chdir(tmp_path)
    s = load_relion_settings("conf/relion.toml", environ={})
    assert s.epochs == 1 and s.sources["epochs"] == "conf/relion.toml:epochs"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epoch = 3\n", r": unknown setting 'epoch'; did you mean 'epochs'\?"),
        ("START_HEALPIX = 3\n", r": unknown setting 'START_HEALPIX'; did you mean 'start_healpix'"),
        ("SPISONET_EPOCHS = 3\n", r": unknown setting 'SPISONET_EPOCHS'; did you mean 'epochs'"),
        ("colour = 3\n", r": unknown setting 'colour'; the settings are start_healpix, "),
        ("sources = 3\n", r": unknown setting 'sources'"),  # a field, but not a setting
        ("[relion]\nepochs = 3\n", r": unknown setting 'relion'"),
        ('epochs = "5"\n', r":epochs='5': expected an integer, found a string"),
        ("epochs = 2.5\n", r":epochs=2.5: expected an integer, found a number"),
        ("epochs = true\n", r":epochs=True: expected an integer, found a boolean"),
        ("whitening = 1\n", r":whitening=1: expected a boolean \(true or false\), found an int"),
        ('start_resolution = "8"\n', r":start_resolution='8': expected a number, found a str"),
        ("start_resolution = nan\n", r":start_resolution=nan: expected a finite number"),
        ("preset = 1\n", r":preset=1: expected a string, found an integer"),
        ('preset = "huge"\n', r":preset='huge': expected one of auto, gpu, cpu, tiny"),
        ("alpha = [1, 2]\n", r":alpha=\[1, 2\]: expected a number, found an array"),
        # the ranges: the same checks as for the environment, naming the file and key
        ("epochs = -1\n", r":epochs=-1: expected an integer >= 0"),
        ("start_resolution = 0\n", r":start_resolution=0.0: expected a resolution > 0"),
        ("whitening_low = -2\n", r":whitening_low=-2.0: expected a resolution > 0"),
        ("wait_timeout = -1\n", r":wait_timeout=-1.0: expected seconds >= 0"),
        ("acc_batches = 0\n", r":acc_batches=0: expected an integer >= 1"),
        ("threads = 0\n", r":threads=0: expected an integer >= 1"),
    ],
)
def test_errors_name_the_file_the_key_and_both_values(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(InvalidValueError, match=re.escape(str(path)) + message):
        load_relion_settings(path, environ={})


def test_a_bad_file_value_is_an_error_even_when_a_variable_overrides_it(tmp_path):
    """The file is wrong and will be wrong tomorrow: say so now, not when the variable
    is gone."""
    path = _toml(tmp_path, 'epochs = "5"\n')
    with pytest.raises(InvalidValueError, match="epochs='5'"):
        load_relion_settings(path, environ={"SPISONET_EPOCHS": "5"})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "none.toml", r"none.toml: settings file not found \(relative paths start"),
        (lambda d: d, r": cannot read the settings file"),  # a folder
        (lambda d: _toml(d, "epochs = \n"), r"relion.toml: not a TOML settings file: .*line 1"),
        (lambda d: _toml(d, "epochs = 3\nepochs = 4\n"), r"not a TOML settings file"),
    ],
)
def test_a_file_that_cannot_be_read_is_named(tmp_path, make, message):
    with pytest.raises(InvalidValueError, match=message):
        load_relion_settings(make(tmp_path), environ={})


def test_one_range_check_whatever_the_source():
    """Settings built in code are checked by the same function (named by field)."""
    with pytest.raises(InvalidValueError, match=r"^epochs=-2: expected an integer >= 0"):
        check_relion_settings(RelionCorrectionSettings(epochs=-2))
    ok = RelionCorrectionSettings(epochs=0)
    assert check_relion_settings(ok) is ok


def test_every_setting_can_be_set_in_the_file(tmp_path):
    """Each declared setting is a key: a value other than its default comes back."""
    defaults = RelionCorrectionSettings()
    lines = []
    for f, _ in setting_fields(RelionCorrectionSettings):
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            lines.append(f"{f.name} = {'false' if default else 'true'}")
        elif f.name == "preset":
            lines.append('preset = "tiny"')
        elif isinstance(default, int) or f.name in ("acc_batches", "threads", "minres_map"):
            lines.append(f"{f.name} = {(default or 0) + 3}")
        else:  # numbers, and the optional numbers (None: the preset's)
            lines.append(f"{f.name} = {(default or 0.0) + 0.5}")
    s = load_relion_settings(_toml(tmp_path, "\n".join(lines) + "\n"), environ={})
    assert len(s.sources) == len(lines) == 19
    assert all(getattr(s, name) != getattr(defaults, name) for name in s.sources)


# --------------------------------------------------------------------------- the log


def test_settings_line_shows_values_and_sources(tmp_path):
    path = _toml(tmp_path, "start_healpix = 2\n")
    s = load_relion_settings(path, environ={"SPISONET_EPOCHS": "3"})
    line = describe_settings(s)
    assert line.startswith(f"start_healpix=2 ({path}:start_healpix), epochs=3 (SPISONET_EPOCHS)")
    assert "; defaults: start_resolution=15, " in line and "threads=cores / 2" in line
    assert describe_settings(RelionCorrectionSettings()).startswith("all defaults: ")


def test_settings_are_logged_at_the_run_s_first_call_only(tmp_path):
    folder = tmp_path / "Refine3D" / "job7"
    folder.mkdir(parents=True)
    # before iteration 1 RELION writes it000's data, model and optimiser files, no sampling
    (folder / "run_it000_optimiser.star").write_text("data_optimiser_general\n")
    s = RelionCorrectionSettings(epochs=2, sources={"epochs": "relion.toml:epochs"})
    first = folder / "run_it001_half1_class001_external_reconstruct.star"
    assert log_settings(first, s)
    write_sampling_star(folder / "run_it001_sampling.star", 1)
    assert not log_settings(folder / "run_it002_half2_class001_external_reconstruct.star", s)
    # a continued run has a root of its own: its first call is logged again
    assert log_settings(folder / "run_ct2_it003_half1_class001_external_reconstruct.star", s)
    log = (folder / "spisonet_relion.log").read_text()
    assert log.count("settings: epochs=2 (relion.toml:epochs)") == 2
    assert "run_it001_half1_class001: settings:" in log and "run_it002" not in log


# --------------------------------------------------------------------------- in RELION


def test_spisonet_relion_reads_a_relative_config_and_logs_its_sources(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # RELION's project folder
    star = make_job(tmp_path / "Refine3D" / "job1", "run_it001_half1_class001", ori=8, pad=1)
    _toml(tmp_path, "start_healpix = 99\n")
    assert console_main(["--config", "relion.toml", "--keep-inputs", str(star)]) == 0
    out = capsys.readouterr().out
    assert "gate closed" in out and re.search(r"start 99\b", out)  # the file's value is used
    log = (star.parent / "spisonet_relion.log").read_text()
    first = log.splitlines()[0]
    assert "run_it001_half1_class001: settings: start_healpix=99 (relion.toml:start_healpix)" in (
        first
    )
    # a one-off override, by a variable
    monkeypatch.setenv("SPISONET_START_HEALPIX", "42")
    assert console_main(["--config", "relion.toml", "--keep-inputs", str(star)]) == 0
    assert re.search(r"start 42\b", capsys.readouterr().out)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "relion.toml: settings file not found"),
        ("epochs = [\n", "relion.toml: not a TOML settings file"),
        ("epoch = 3\n", "unknown setting 'epoch'; did you mean 'epochs'?"),
        ("epochs = -1\n", "relion.toml:epochs=-1: expected an integer >= 0"),
    ],
)
def test_a_broken_config_gives_relion_the_plain_map(tmp_path, monkeypatch, capsys, text, message):
    """RELION must never stop because of us: the error is logged, the plain map written."""
    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", "r_it002_half1_class001", ori=8, pad=1)
    if text is not None:
        _toml(tmp_path, text)
    plain = reconstruct(read_external_star(star), minres_map=RELION_REFINE_MINRES_MAP)
    assert console_main(["--keep-inputs", "--config", "relion.toml", str(star)]) == 0
    np.testing.assert_array_equal(mrcfile.read(str(read_external_star(star).result)), plain)
    out = capsys.readouterr().out
    assert "correction failed, writing the plain reconstruction" in out and message in out
    assert "plain (correction failed) map" in out


def test_cli_relion_reconstruct_takes_the_config_too(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spisonet.cli import app

    monkeypatch.chdir(tmp_path)
    star = make_job(tmp_path / "job", "run_it001_half2_class001", ori=8, pad=2)
    _toml(tmp_path, "start_resolution = 3.5\n")
    result = CliRunner().invoke(app, ["relion-reconstruct", "--config", "relion.toml", str(star)])
    assert result.exit_code == 0, result.output
    assert "start 3.5 Å" in result.output
    assert "(relion.toml:start_resolution)" in (star.parent / "spisonet_relion.log").read_text()
