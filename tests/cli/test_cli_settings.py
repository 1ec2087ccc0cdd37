"""``spisonet reconstruct``'s options and the settings model: every option sets a field of
CorrectionSettings (built from the field's declaration) or is one of the run's inputs,
outputs and launch options listed in spisonet.cli.reconstruct.RUN_OPTIONS; every field has
its option in every declared spelling; and a value given reaches the settings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers import write_noisy_pair
from typer.main import get_command
from typer.testing import CliRunner

import spisonet.cli.reconstruct as command
from spisonet._settings import info, setting_fields
from spisonet.cli import app
from spisonet.correction import PRESETS, CorrectionSettings

FIELDS = {f.name: meta for f, meta in setting_fields(CorrectionSettings)}

#: a valid value for every setting, unlike the tiny preset's (and together valid)
VALUES = {
    "preset": ("cpu", "cpu"),
    "widths": ("4,8", (4, 8)),
    "cube_size": ("20", 20),
    "predict_crop_size": ("32", 32),
    "predict_edge": ("3", 3),
    "n_subvolume": ("3", 3),
    "epochs": ("2", 2),
    "batch_size": ("4", 4),
    "acc_batches": ("2", 2),
    "learning_rate": ("0.002", 0.002),
    "alpha": ("0.7", 0.7),
    "beta": ("0.3", 0.3),
    "self_weight": ("0.25", 0.25),
    "consistency_border": ("2", 2),
    "consistency_residual": ("low", "low"),
    "equivariance_rotations": ("uniform", "uniform"),
    "equivariance_weight": ("measured", "measured"),
    "schedule": ("onecycle", "onecycle"),
    "amp": ("auto", "auto"),
    "limit_res": ("7.5", 7.5),
    "correct_beyond_limit": (None, True),
    "network_only": (None, True),
    "ref_resolution": ("12", 12.0),
    "independent": (None, True),
    "ensemble": ("3", 3),
    "fsc3d_cone_angle": ("15", 15.0),
    "presence_threshold": ("0.05", 0.05),
    "compile": (None, True),
    "presence_unmasked": (None, True),
    "filter_input": (None, True),
    "fill_floor": ("0.2", 0.2),
    "coarse_pass": (None, True),
    "predict_rotations": ("auto", "auto"),
    "seed": ("7", 7),
    "device": ("auto", "auto"),
}


def _params() -> dict:
    return {p.name: p for p in get_command(app).commands["reconstruct"].params}


@pytest.fixture(scope="module")
def maps(tmp_path_factory) -> dict[str, Path]:
    return write_noisy_pair(tmp_path_factory.mktemp("maps"), 24, 2.0)


@pytest.fixture
def captured(monkeypatch) -> list:
    """Replace the run by one that records its settings (nothing is trained)."""
    seen = []
    monkeypatch.setattr(command, "run_reconstruct", lambda console, out, **kw: seen.append(kw))
    return seen


def test_every_option_is_a_setting_or_a_listed_run_option() -> None:
    names = set(_params())
    assert names == set(FIELDS) | set(command.RUN_OPTIONS)
    assert not set(FIELDS) & set(command.RUN_OPTIONS)
    assert set(VALUES) == set(FIELDS)  # a new setting needs a value in this test too


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_setting_has_its_option_as_declared(name) -> None:
    meta = info(CorrectionSettings, name)
    param = _params()[name]
    assert meta.cli, f"{name} declares no command-line spelling"
    assert param.opts == list(meta.cli)
    negations = [f"--no-{s.removeprefix('--')}" for s in meta.cli] if param.is_flag else []
    assert param.secondary_opts == negations
    assert param.help == meta.help_with_unit
    assert param.default == ("auto" if name == "preset" else None)  # None: the preset's value


@pytest.mark.parametrize(
    ("name", "spelling"), [(n, s) for n, meta in FIELDS.items() for s in meta.cli]
)
def test_each_spelling_reaches_the_settings(maps, tmp_path, captured, name, spelling) -> None:
    text, expected = VALUES[name]
    base = [] if name == "preset" else ["--preset", "tiny"]
    value = [] if text is None else [text]
    args = ["reconstruct", str(maps["h1"]), *base, "-o", str(tmp_path / "o"), spelling, *value]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert getattr(captured[0]["settings"], name) == expected


BOOLEANS = sorted(n for n, (text, _) in VALUES.items() if text is None)


@pytest.mark.parametrize("name", BOOLEANS)
def test_a_boolean_setting_turns_off_what_the_preset_turns_on(
    maps, tmp_path, captured, monkeypatch, name
) -> None:
    """``--no-<flag>`` overrides a preset that sets the flag; not given, the preset's value
    stays."""
    import spisonet.correction.settings as settings_module

    all_on = dataclasses.replace(PRESETS["tiny"], **dict.fromkeys(BOOLEANS, True))
    monkeypatch.setitem(settings_module.PRESETS, "tiny", all_on)
    base = ["reconstruct", str(maps["h1"]), "--preset", "tiny", "-o", str(tmp_path / "o")]
    off = f"--no-{FIELDS[name].cli[0].removeprefix('--')}"
    for args in (base, [*base, off]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)
    kept, turned_off = captured
    assert getattr(kept["settings"], name) is True
    assert getattr(turned_off["settings"], name) is False
    others = {n: getattr(turned_off["settings"], n) for n in BOOLEANS if n != name}
    assert all(others.values()), others


def test_options_not_given_leave_the_presets_values(maps, tmp_path, captured) -> None:
    args = ["reconstruct", str(maps["h1"]), "--preset", "tiny", "-o", str(tmp_path / "o")]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert captured[0]["settings"] == PRESETS["tiny"]


def test_all_settings_at_once(maps, tmp_path, captured) -> None:
    args = ["reconstruct", str(maps["h1"]), "-o", str(tmp_path / "o")]
    for name, (text, _) in VALUES.items():
        args += [FIELDS[name].cli[0], *([] if text is None else [text])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    got = captured[0]["settings"]
    assert {f.name: getattr(got, f.name) for f in dataclasses.fields(got)} == {
        name: expected for name, (_, expected) in VALUES.items()
    }


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--schedule", "cosine", "'cosine' is not one of constant, onecycle"),
        ("--amp", "fp16", "'fp16' is not one of auto, bf16, off"),
        ("--preset", "fast", "'fast' is not one of auto, gpu, cpu, tiny"),
        ("--widths", "4,x", "expected comma-separated integers, got '4,x'"),
    ],
)
def test_bad_values_are_usage_errors(maps, tmp_path, captured, option, value, message) -> None:
    args = ["reconstruct", str(maps["h1"]), "-o", str(tmp_path / "o"), option, value]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2 and not captured
    assert option in result.output and message in result.output


@pytest.mark.slow
def test_options_reach_reconstruct_json(maps, tmp_path) -> None:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is fastest on a busy machine
    try:
        out = tmp_path / "o"
        args = ["reconstruct", str(maps["h1"]), str(maps["h2"]), "--mask", str(maps["mask"]),
                "--preset", "tiny", "--epochs", "1", "--schedule", "onecycle",
                "--fsc3d_cone_angle", "12", "-o", str(out)]  # fmt: skip
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, (result.output, result.exception)
    s = json.loads((out / "reconstruct.json").read_text())["settings"]
    assert (s["preset"], s["epochs"], s["schedule"]) == ("tiny", 1, "onecycle")
    assert s["fsc3d_cone_angle"] == 12.0 and s["widths"] == list(PRESETS["tiny"].widths)


def test_units_show_in_the_rendered_help():
    """Rich renders the help: a unit must survive it (``[Å]`` would be read as markup)."""
    from spisonet.cli import app

    out = CliRunner().invoke(app, ["reconstruct", "--help"], env={"COLUMNS": "200"}).output
    units = {meta.unit for _, meta in setting_fields(CorrectionSettings) if meta.unit}
    assert units and all(f"({u})" in out for u in units), out
